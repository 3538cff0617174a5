//! Opening a LUKS2 container: find a valid header copy, unlock a keyslot,
//! check the volume key against its digest, then decrypt data on demand.

use std::fs::File;
use std::os::unix::fs::FileExt;

use zeroize::Zeroizing;

use crate::af;
use crate::error::{Error, Result};
use crate::header::{self, BinaryHeader, BINARY_SIZE, VALID_SIZES};
use crate::kdf::{Kdf, MAX_KEYSLOTS_TRIED, MAX_PBKDF2_ITERATIONS};
use crate::metadata::{CheckedKeyslot, CheckedSegment, Metadata};
use crate::sector::SectorCipher;
use crate::SECTOR_SIZE;

/// Where a container's bytes come from: a byte range of a file (for SIF,
/// the partition's offset and size).
#[derive(Debug)]
pub struct Source {
    file: File,
    offset: u64,
    len: u64,
}

impl Source {
    /// `len` bytes of `file` from `offset`.
    pub fn new(file: File, offset: u64, len: u64) -> Self {
        Source { file, offset, len }
    }

    /// Container length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the container is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from container offset `pos`; short containers are
    /// [`Error::Truncated`].
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> Result<()> {
        let end = pos.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Error::Truncated(format!(
                "{} bytes needed at offset {pos}, container has {}",
                buf.len(),
                self.len
            )));
        }
        self.file
            .read_exact_at(buf, self.offset + pos)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::Truncated(format!("file ends before offset {}", self.offset + pos))
                } else {
                    Error::Io(e)
                }
            })
    }
}

/// A parsed (not yet unlocked) container.
#[derive(Debug)]
pub struct Header {
    /// The metadata of the copy used.
    pub metadata: Metadata,
    /// Its binary header.
    pub binary: BinaryHeader,
}

impl Header {
    /// Reads the primary header copy, or, when it is damaged, the first
    /// valid secondary copy (that is what the second copy is for).
    pub fn read(src: &Source) -> Result<Header> {
        let primary = read_copy(src, 0);
        if primary.is_ok() {
            return primary;
        }
        if matches!(primary, Err(Error::NotLuks)) && !has_secondary(src) {
            return primary;
        }
        for off in VALID_SIZES {
            if let Ok(h) = read_copy(src, off) {
                return Ok(h);
            }
        }
        primary
    }
}

fn has_secondary(src: &Source) -> bool {
    VALID_SIZES.iter().any(|&off| {
        let mut magic = [0u8; 6];
        src.read_exact_at(&mut magic, off).is_ok() && magic == header::MAGIC_SECONDARY
    })
}

fn read_copy(src: &Source, at: u64) -> Result<Header> {
    let mut bin = vec![0u8; BINARY_SIZE];
    src.read_exact_at(&mut bin, at).map_err(|e| match e {
        Error::Truncated(_) if at == 0 => Error::NotLuks,
        other => other,
    })?;
    let binary = BinaryHeader::decode(&bin, at)?;
    let mut copy = vec![0u8; binary.hdr_size as usize];
    src.read_exact_at(&mut copy, at)?;
    header::verify(&copy)?;
    let metadata = Metadata::parse(header::json_text(&copy)?)?;
    Ok(Header { metadata, binary })
}

/// An unlocked container: decrypts its data segment on demand.
pub struct Volume {
    src: Source,
    cipher: SectorCipher,
    segment: CheckedSegment,
    size: u64,
    uuid: String,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Volume")
            .field("src", &self.src)
            .field("segment", &self.segment)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Volume {
    /// Parses the header of `src`, unlocks a keyslot with `passphrase` and
    /// checks the data area is all there: [`Volume::find_key`] then
    /// [`Volume::with_key`].
    pub fn unlock(src: Source, passphrase: &[u8]) -> Result<Volume> {
        let key = Volume::find_key(&src, passphrase)?;
        Volume::with_key(src, &key)
    }

    /// The costly half of [`Volume::unlock`]: the volume key, from the
    /// first keyslot (of at most `MAX_KEYSLOTS_TRIED`, 4) that `passphrase`
    /// opens, checked against the volume-key digest. All the key
    /// derivation happens here, so a caller that distrusts the header's
    /// costs can run this alone in a process with limits.
    pub fn find_key(src: &Source, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let header = Header::read(src)?;
        data_area(src, &header)?;
        let keyslots = header.metadata.keyslots()?;
        if keyslots.is_empty() {
            return Err(Error::corrupt("no usable keyslot"));
        }
        // A hostile header may list many keyslots, each as costly as the
        // limits allow: only the first few are tried.
        let total = keyslots.len();
        for slot in keyslots.into_iter().take(MAX_KEYSLOTS_TRIED) {
            if let Some(key) = try_keyslot(src, &header.metadata, &slot, passphrase)? {
                return Ok(key);
            }
        }
        if total > MAX_KEYSLOTS_TRIED {
            return Err(Error::Unsupported(format!(
                "no keyslot opens with this key among the first {MAX_KEYSLOTS_TRIED} of {total} (more are not tried)"
            )));
        }
        Err(Error::WrongPassphrase)
    }

    /// The cheap half of [`Volume::unlock`]: opens `src` with a volume key
    /// that [`Volume::find_key`] returned for it (only its length is
    /// checked here; a wrong key decrypts to noise).
    pub fn with_key(src: Source, key: &[u8]) -> Result<Volume> {
        let header = Header::read(&src)?;
        let (segment, size) = data_area(&src, &header)?;
        Ok(Volume {
            cipher: SectorCipher::new(key)?,
            src,
            segment,
            size,
            uuid: header.binary.uuid.clone(),
        })
    }

    /// The container's UUID (from its header).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Plaintext size (whole sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Decrypts up to `buf.len()` bytes at plaintext offset `pos`; returns
    /// the count (short only at the end of the data).
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> Result<usize> {
        if pos >= self.size {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - pos) as usize;
        let sector = self.segment.sector_size as u64;
        let first = pos / sector;
        let last = (pos + want as u64).div_ceil(sector);
        let mut tmp = Zeroizing::new(vec![0u8; ((last - first) * sector) as usize]);
        self.src
            .read_exact_at(&mut tmp, self.segment.offset + first * sector)?;
        // IVs count sectors of the segment's own size (LUKS2 always
        // activates with large-sector IVs), offset by iv_tweak.
        self.cipher.decrypt(
            &mut tmp,
            self.segment.sector_size,
            self.segment.iv_tweak.wrapping_add(first),
        );
        let skip = (pos - first * sector) as usize;
        buf[..want].copy_from_slice(&tmp[skip..skip + want]);
        Ok(want)
    }
}

/// The data segment of `header` and its plaintext size (whole sectors),
/// once it is known to lie inside `src`.
fn data_area(src: &Source, header: &Header) -> Result<(CheckedSegment, u64)> {
    let segment = header.metadata.segment()?;
    let end = match segment.size {
        Some(size) => segment
            .offset
            .checked_add(size)
            .ok_or_else(|| Error::corrupt("segment offset + size overflows"))?,
        None => src.len(),
    };
    if segment.offset > src.len() || end > src.len() {
        return Err(Error::Truncated(format!(
            "data segment ends at {end}, container has {} bytes",
            src.len()
        )));
    }
    let sector = segment.sector_size as u64;
    let size = (end.saturating_sub(segment.offset)) / sector * sector;
    Ok((segment, size))
}

/// The volume key if `passphrase` opens `slot`, `None` if it does not.
fn try_keyslot(
    src: &Source,
    metadata: &Metadata,
    slot: &CheckedKeyslot,
    passphrase: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let digest = metadata.digest_for(&slot.id)?;
    // Refused before any work: the slot's own cost is checked by `derive`.
    if digest.iterations > MAX_PBKDF2_ITERATIONS {
        return Err(Error::Unsupported(format!(
            "volume-key digest cost beyond limits ({} PBKDF2 iterations, at most {MAX_PBKDF2_ITERATIONS})",
            digest.iterations
        )));
    }
    let material_len = (slot.key_size * slot.stripes).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    let mut material = Zeroizing::new(vec![0u8; material_len]);
    src.read_exact_at(&mut material, slot.area_offset)
        .map_err(|e| match e {
            Error::Truncated(why) => Error::corrupt(format!("keyslot {} area: {why}", slot.id)),
            other => other,
        })?;
    let mut area_key = Zeroizing::new(vec![0u8; slot.area_key_size]);
    slot.kdf.derive(passphrase, &slot.salt, &mut area_key)?;
    SectorCipher::new(&area_key)?.decrypt(&mut material, SECTOR_SIZE, 0);
    let key = Zeroizing::new(af::merge(
        &material,
        slot.key_size,
        slot.stripes,
        &slot.af_hash,
    )?);
    let mut check = Zeroizing::new(vec![0u8; digest.digest.len()]);
    Kdf::Pbkdf2 {
        iterations: digest.iterations,
    }
    .derive(&key, &digest.salt, &mut check)?;
    // Compare without an early exit: the digest is not secret, but there
    // is no reason to leak how much of it matched either.
    let diff = check
        .iter()
        .zip(&digest.digest)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok((diff == 0).then_some(key))
}
