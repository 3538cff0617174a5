//! The LUKS2 JSON metadata: serde types for the parts sifrun reads and
//! writes, and their validation into checked parameters.
//!
//! The format writes 64-bit numbers as JSON strings (so that no JSON
//! implementation rounds them); small ones (key sizes) as numbers.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kdf::Kdf;
use crate::{CIPHER, SECTOR_SIZE};

/// The whole metadata document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metadata {
    /// Keyslots by id.
    pub keyslots: BTreeMap<String, Keyslot>,
    /// Tokens (unused by sifrun, kept for the format).
    #[serde(default)]
    pub tokens: BTreeMap<String, serde_json::Value>,
    /// Segments by id.
    pub segments: BTreeMap<String, Segment>,
    /// Digests by id.
    pub digests: BTreeMap<String, DigestEntry>,
    /// Area sizes and flags.
    pub config: Config,
}

/// A keyslot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyslot {
    /// `luks2` (others, like `reencrypt`, are not key holders).
    #[serde(rename = "type")]
    pub kind: String,
    /// Volume key size in bytes.
    pub key_size: u64,
    /// Anti-forensic splitter.
    pub af: Af,
    /// Where the split key lives and how it is encrypted.
    pub area: Area,
    /// Passphrase → area key.
    pub kdf: KdfEntry,
    /// Unlock order hint (0 ignore, 1 normal, 2 high).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u64>,
}

/// Anti-forensic splitter parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Af {
    /// `luks1`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Number of stripes (4000).
    pub stripes: u64,
    /// Diffusion hash.
    pub hash: String,
}

/// A keyslot area.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Area {
    /// `raw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset from the start of the container.
    pub offset: String,
    /// Bytes.
    pub size: String,
    /// Cipher of the area.
    pub encryption: String,
    /// Key size of the area cipher.
    pub key_size: u64,
}

/// A keyslot KDF as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfEntry {
    /// `pbkdf2`, `argon2i` or `argon2id`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Base64 salt.
    pub salt: String,
    /// PBKDF2 hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// PBKDF2 iterations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
    /// Argon2 passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// Argon2 memory, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Argon2 lanes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u64>,
}

/// A data segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    /// `crypt`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset of the data.
    pub offset: String,
    /// Bytes, or `dynamic` (to the end of the device).
    pub size: String,
    /// Sector number of the first sector (IV offset).
    pub iv_tweak: String,
    /// Cipher.
    pub encryption: String,
    /// Bytes per sector.
    pub sector_size: u64,
    /// Segment flags (none is understood; any is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
}

/// A volume-key digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestEntry {
    /// `pbkdf2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslots whose key this digest checks.
    pub keyslots: Vec<String>,
    /// Segments using that key.
    pub segments: Vec<String>,
    /// PBKDF2 hash.
    pub hash: String,
    /// PBKDF2 iterations.
    pub iterations: u64,
    /// Base64 salt.
    pub salt: String,
    /// Base64 digest.
    pub digest: String,
}

/// The `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// JSON area size.
    pub json_size: String,
    /// Size of the keyslots area (after both header copies).
    pub keyslots_size: String,
    /// Activation flags (irrelevant here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    /// Requirements: a mandatory one means "do not touch without support".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<serde_json::Value>,
}

/// A keyslot ready to be tried.
#[derive(Debug, Clone)]
pub struct CheckedKeyslot {
    /// Keyslot id.
    pub id: String,
    /// Volume key size.
    pub key_size: usize,
    /// AF stripes.
    pub stripes: usize,
    /// AF hash.
    pub af_hash: String,
    /// Area byte offset.
    pub area_offset: u64,
    /// Area key size.
    pub area_key_size: usize,
    /// Passphrase KDF.
    pub kdf: Kdf,
    /// KDF salt.
    pub salt: Vec<u8>,
}

/// The data segment, checked.
#[derive(Debug, Clone, Copy)]
pub struct CheckedSegment {
    /// Byte offset of the data.
    pub offset: u64,
    /// Bytes, `None` for dynamic.
    pub size: Option<u64>,
    /// IV of the first sector.
    pub iv_tweak: u64,
    /// Sector size.
    pub sector_size: usize,
}

/// A digest, checked.
#[derive(Debug, Clone)]
pub struct CheckedDigest {
    /// PBKDF2-SHA256 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// Expected value.
    pub digest: Vec<u8>,
}

/// Largest stripes count accepted (the only value LUKS2 uses).
const MAX_STRIPES: u64 = 4000;
/// Largest volume key accepted (aes-xts with AES-256).
const MAX_KEY: u64 = 64;

pub(crate) fn number(field: &str, text: &str) -> Result<u64> {
    text.parse::<u64>()
        .map_err(|_| Error::corrupt(format!("{field} is not a number: {text:?}")))
}

pub(crate) fn unbase64(field: &str, text: &str) -> Result<Vec<u8>> {
    B64.decode(text)
        .map_err(|_| Error::corrupt(format!("{field} is not base64")))
}

pub(crate) fn base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

impl Metadata {
    /// Parses the JSON text of a header copy.
    pub fn parse(text: &str) -> Result<Self> {
        let m: Metadata =
            serde_json::from_str(text).map_err(|e| Error::corrupt(format!("metadata: {e}")))?;
        if let Some(req) = &m.config.requirements {
            let mandatory = req.get("mandatory").and_then(|v| v.as_array());
            if mandatory.is_some_and(|a| !a.is_empty()) {
                return Err(Error::Unsupported(format!("requirements {req}")));
            }
        }
        Ok(m)
    }

    /// The single data segment sifrun reads.
    pub fn segment(&self) -> Result<CheckedSegment> {
        let mut crypt = self.segments.values().filter(|s| s.kind == "crypt");
        let s = crypt
            .next()
            .ok_or_else(|| Error::Unsupported("no crypt segment".into()))?;
        if crypt.next().is_some() || self.segments.len() != 1 {
            return Err(Error::Unsupported(
                "more than one segment (reencryption in progress?)".into(),
            ));
        }
        if s.encryption != CIPHER {
            return Err(Error::Unsupported(format!("data cipher {}", s.encryption)));
        }
        if s.flags.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(Error::Unsupported("segment flags".into()));
        }
        if !matches!(s.sector_size, 512 | 1024 | 2048 | 4096) {
            return Err(Error::corrupt(format!("sector size {}", s.sector_size)));
        }
        let size = match s.size.as_str() {
            "dynamic" => None,
            n => Some(number("segment size", n)?),
        };
        Ok(CheckedSegment {
            offset: number("segment offset", &s.offset)?,
            size,
            iv_tweak: number("segment iv_tweak", &s.iv_tweak)?,
            sector_size: s.sector_size as usize,
        })
    }

    /// Keyslots holding a volume key, in the order to try them (high
    /// priority first, priority 0 skipped, as cryptsetup does).
    pub fn keyslots(&self) -> Result<Vec<CheckedKeyslot>> {
        let mut out: Vec<(u64, CheckedKeyslot)> = Vec::new();
        for (id, k) in &self.keyslots {
            if k.kind != "luks2" || k.priority == Some(0) {
                continue;
            }
            out.push((k.priority.unwrap_or(1), check_keyslot(id, k)?));
        }
        out.sort_by_key(|k| std::cmp::Reverse(k.0));
        Ok(out.into_iter().map(|(_, k)| k).collect())
    }

    /// The digest that checks keys of keyslot `id`.
    pub fn digest_for(&self, id: &str) -> Result<CheckedDigest> {
        let d = self
            .digests
            .values()
            .find(|d| d.keyslots.iter().any(|k| k == id))
            .ok_or_else(|| Error::corrupt(format!("no digest for keyslot {id}")))?;
        if d.kind != "pbkdf2" || d.hash != "sha256" {
            return Err(Error::Unsupported(format!("digest {} {}", d.kind, d.hash)));
        }
        let iterations = u32::try_from(d.iterations)
            .ok()
            .filter(|&i| i > 0)
            .ok_or_else(|| Error::corrupt("digest iterations out of range"))?;
        let digest = unbase64("digest", &d.digest)?;
        if digest.is_empty() || digest.len() > 64 {
            return Err(Error::corrupt("digest length"));
        }
        Ok(CheckedDigest {
            iterations,
            salt: unbase64("digest salt", &d.salt)?,
            digest,
        })
    }
}

fn check_keyslot(id: &str, k: &Keyslot) -> Result<CheckedKeyslot> {
    if k.key_size == 0 || k.key_size > MAX_KEY {
        return Err(Error::Unsupported(format!(
            "keyslot {id}: key size {}",
            k.key_size
        )));
    }
    if k.af.kind != "luks1" || k.af.stripes == 0 || k.af.stripes > MAX_STRIPES {
        return Err(Error::Unsupported(format!(
            "keyslot {id}: anti-forensic {} with {} stripes",
            k.af.kind, k.af.stripes
        )));
    }
    if k.area.kind != "raw" || k.area.encryption != CIPHER {
        return Err(Error::Unsupported(format!(
            "keyslot {id}: area {} {}",
            k.area.kind, k.area.encryption
        )));
    }
    let area_offset = number("keyslot area offset", &k.area.offset)?;
    let area_size = number("keyslot area size", &k.area.size)?;
    let material = k.key_size * k.af.stripes;
    if area_size < material.div_ceil(SECTOR_SIZE as u64) * SECTOR_SIZE as u64 {
        return Err(Error::corrupt(format!(
            "keyslot {id}: area of {area_size} bytes cannot hold {material}"
        )));
    }
    let salt = unbase64("keyslot salt", &k.kdf.salt)?;
    let small = |v: Option<u64>, what: &str| -> Result<u32> {
        v.and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Error::corrupt(format!("keyslot {id}: {what} missing or out of range")))
    };
    let kdf = match k.kdf.kind.as_str() {
        "pbkdf2" => {
            if k.kdf.hash.as_deref() != Some("sha256") {
                return Err(Error::Unsupported(format!(
                    "keyslot {id}: PBKDF2 hash {:?}",
                    k.kdf.hash
                )));
            }
            Kdf::Pbkdf2 {
                iterations: small(k.kdf.iterations, "iterations")?,
            }
        }
        "argon2id" => Kdf::Argon2id {
            time: small(k.kdf.time, "time")?,
            memory_kib: small(k.kdf.memory, "memory")?,
            parallel: small(k.kdf.cpus, "cpus")?,
        },
        other => return Err(Error::Unsupported(format!("keyslot {id}: KDF {other}"))),
    };
    Ok(CheckedKeyslot {
        id: id.to_string(),
        key_size: k.key_size as usize,
        stripes: k.af.stripes as usize,
        af_hash: k.af.hash.clone(),
        area_offset,
        area_key_size: usize::try_from(k.area.key_size)
            .ok()
            .filter(|&n| n as u64 <= MAX_KEY)
            .ok_or_else(|| Error::corrupt(format!("keyslot {id}: area key size")))?,
        kdf,
        salt,
    })
}

impl KdfEntry {
    /// The stored form of `kdf` with `salt`.
    pub fn from_kdf(kdf: &Kdf, salt: &[u8]) -> Self {
        let mut e = KdfEntry {
            kind: String::new(),
            salt: base64(salt),
            hash: None,
            iterations: None,
            time: None,
            memory: None,
            cpus: None,
        };
        match *kdf {
            Kdf::Pbkdf2 { iterations } => {
                e.kind = "pbkdf2".into();
                e.hash = Some("sha256".into());
                e.iterations = Some(iterations.into());
            }
            Kdf::Argon2id {
                time,
                memory_kib,
                parallel,
            } => {
                e.kind = "argon2id".into();
                e.time = Some(time.into());
                e.memory = Some(memory_kib.into());
                e.cpus = Some(parallel.into());
            }
        }
        e
    }
}
