//! Writing a LUKS2 container around a plaintext stream.
//!
//! Layout (all offsets from the container's start):
//!
//! | bytes | what |
//! |---|---|
//! | 0 .. 16 KiB | primary header: binary header + JSON metadata |
//! | 16 .. 32 KiB | secondary header (same metadata, its own magic) |
//! | 32 KiB .. | keyslot 0: the volume key, anti-forensically split into 4000 stripes, AES-XTS encrypted under the passphrase-derived key |
//! | [`FormatOptions::data_offset`] .. end | the data segment: plaintext, zero-padded to whole sectors, AES-XTS with 512-byte sectors |
//!
//! The data segment's size is `dynamic` (to the end of the device), as
//! `cryptsetup luksFormat` writes it, so the container is exactly as long
//! as this function's output.

use std::io::{Read, Write};

use zeroize::Zeroizing;

use crate::af;
use crate::error::{Error, Result};
use crate::header::BinaryHeader;
use crate::kdf::Kdf;
use crate::metadata::{
    base64, Af, Area, Config, DigestEntry, KdfEntry, Keyslot, Metadata, Segment,
};
use crate::sector::SectorCipher;
use crate::{CIPHER, SECTOR_SIZE};

/// Header copy size (binary + JSON), the smallest the format allows.
const HDR_SIZE: u64 = 0x4000;
/// Volume key bytes (AES-256-XTS).
const KEY_SIZE: usize = 64;
/// Anti-forensic stripes (the only count LUKS2 tools write).
const STRIPES: usize = 4000;
/// Salt bytes for the keyslot KDF and the digest.
const SALT_SIZE: usize = 32;
/// Plaintext read per encryption step.
const CHUNK: usize = 1 << 20;

/// How to format.
#[derive(Debug, Clone, Copy)]
pub struct FormatOptions {
    /// Keyslot KDF.
    pub kdf: Kdf,
    /// Where the data starts; a multiple of 4096, past the keyslot area.
    /// Default 1 MiB (cryptsetup aligns to 1 MiB too, but reserves 16 MiB).
    pub data_offset: u64,
    /// PBKDF2 iterations of the volume-key digest (checked once per unlock).
    pub digest_iterations: u32,
}

impl Default for FormatOptions {
    fn default() -> Self {
        FormatOptions {
            kdf: Kdf::PASSPHRASE_DEFAULT,
            data_offset: 1 << 20,
            digest_iterations: 1000,
        }
    }
}

/// Keyslot area: the split key, rounded up to 4096 as cryptsetup requires.
fn keyslot_area_size() -> u64 {
    ((KEY_SIZE * STRIPES) as u64).div_ceil(4096) * 4096
}

fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| Error::Crypto(format!("random numbers: {e}")))
}

/// Writes a LUKS2 container holding everything `plain` yields, unlocked by
/// `passphrase`, to `out`. Returns the container's size in bytes.
pub fn format<R: Read, W: Write>(
    plain: &mut R,
    passphrase: &[u8],
    opts: &FormatOptions,
    out: &mut W,
) -> Result<u64> {
    let area_offset = 2 * HDR_SIZE;
    let area_size = keyslot_area_size();
    if opts.data_offset & 4095 != 0 || opts.data_offset < area_offset + area_size {
        return Err(Error::Crypto(format!(
            "data offset {} must be a multiple of 4096 past the keyslot area ({})",
            opts.data_offset,
            area_offset + area_size
        )));
    }

    let mut volume_key = Zeroizing::new([0u8; KEY_SIZE]);
    random(&mut volume_key[..])?;
    let mut slot_salt = [0u8; SALT_SIZE];
    random(&mut slot_salt)?;
    let mut digest_salt = [0u8; SALT_SIZE];
    random(&mut digest_salt)?;

    // Keyslot: split the volume key, encrypt the stripes under the
    // passphrase-derived key (512-byte sectors, IVs from 0).
    let mut area_key = Zeroizing::new([0u8; KEY_SIZE]);
    opts.kdf.derive(passphrase, &slot_salt, &mut area_key[..])?;
    let mut material = Zeroizing::new(af::split(&volume_key[..], STRIPES, random)?);
    material.resize(area_size as usize, 0);
    SectorCipher::new(&area_key[..])?.encrypt(&mut material, SECTOR_SIZE, 0);

    let mut digest = [0u8; 32];
    Kdf::Pbkdf2 {
        iterations: opts.digest_iterations,
    }
    .derive(&volume_key[..], &digest_salt, &mut digest)?;

    let metadata = build_metadata(
        opts,
        &slot_salt,
        &digest_salt,
        &digest,
        area_offset,
        area_size,
    );
    let json = serde_json::to_vec(&metadata).map_err(|e| Error::Crypto(e.to_string()))?;
    let uuid = random_uuid()?;
    for hdr_offset in [0, HDR_SIZE] {
        let mut salt = [0u8; 64];
        random(&mut salt)?;
        let copy = BinaryHeader {
            hdr_size: HDR_SIZE,
            seqid: 1,
            uuid: uuid.clone(),
            hdr_offset,
        }
        .encode(&json, &salt)?;
        out.write_all(&copy)?;
    }
    out.write_all(&material)?;
    write_zeros(out, opts.data_offset - area_offset - area_size)?;

    let cipher = SectorCipher::new(&volume_key[..])?;
    let mut written = opts.data_offset;
    let mut sector: u64 = 0;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK]);
    loop {
        let n = read_full(plain, &mut buf)?;
        if n == 0 {
            break;
        }
        let padded = n.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        buf[n..padded].fill(0);
        cipher.encrypt(&mut buf[..padded], SECTOR_SIZE, sector);
        out.write_all(&buf[..padded])?;
        sector += (padded / SECTOR_SIZE) as u64;
        written += padded as u64;
        if n < CHUNK {
            break;
        }
    }
    out.flush()?;
    Ok(written)
}

fn build_metadata(
    opts: &FormatOptions,
    slot_salt: &[u8],
    digest_salt: &[u8],
    digest: &[u8],
    area_offset: u64,
    area_size: u64,
) -> Metadata {
    let keyslot = Keyslot {
        kind: "luks2".into(),
        key_size: KEY_SIZE as u64,
        af: Af {
            kind: "luks1".into(),
            stripes: STRIPES as u64,
            hash: af::HASH.into(),
        },
        area: Area {
            kind: "raw".into(),
            offset: area_offset.to_string(),
            size: area_size.to_string(),
            encryption: CIPHER.into(),
            key_size: KEY_SIZE as u64,
        },
        kdf: KdfEntry::from_kdf(&opts.kdf, slot_salt),
        priority: None,
    };
    let segment = Segment {
        kind: "crypt".into(),
        offset: opts.data_offset.to_string(),
        size: "dynamic".into(),
        iv_tweak: "0".into(),
        encryption: CIPHER.into(),
        sector_size: SECTOR_SIZE as u64,
        flags: None,
    };
    let digest = DigestEntry {
        kind: "pbkdf2".into(),
        keyslots: vec!["0".into()],
        segments: vec!["0".into()],
        hash: "sha256".into(),
        iterations: opts.digest_iterations.into(),
        salt: base64(digest_salt),
        digest: base64(digest),
    };
    Metadata {
        keyslots: [("0".to_string(), keyslot)].into(),
        tokens: Default::default(),
        segments: [("0".to_string(), segment)].into(),
        digests: [("0".to_string(), digest)].into(),
        config: Config {
            json_size: (HDR_SIZE - crate::header::BINARY_SIZE as u64).to_string(),
            keyslots_size: (opts.data_offset - 2 * HDR_SIZE).to_string(),
            flags: None,
            requirements: None,
        },
    }
}

/// A random (version 4) UUID in text form.
fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    random(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

fn write_zeros<W: Write>(out: &mut W, mut n: u64) -> Result<()> {
    let zeros = [0u8; 4096];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or the stream ends.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}
