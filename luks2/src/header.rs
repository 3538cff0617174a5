//! The LUKS2 binary header: 4096 bytes in front of each copy of the JSON
//! metadata. Two copies exist (primary at 0, secondary at `hdr_size`); each
//! carries a SHA-256 over itself plus its JSON area, with the checksum
//! field zeroed while hashing.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Size of the binary part.
pub const BINARY_SIZE: usize = 4096;
/// Magic of the primary header.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary header.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The header sizes (binary + JSON) the format allows.
pub const VALID_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];

// Field offsets within the binary header.
const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_CSUM_ALG: usize = 72;
const OFF_SALT: usize = 104;
const OFF_UUID: usize = 168;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const CSUM_LEN: usize = 64;

/// The fields of one binary header sifrun uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// Binary header plus JSON area, bytes.
    pub hdr_size: u64,
    /// Incremented on every metadata update.
    pub seqid: u64,
    /// Volume UUID (text).
    pub uuid: String,
    /// Where this copy lives (0 or `hdr_size`).
    pub hdr_offset: u64,
}

impl BinaryHeader {
    /// Serialises one copy (binary header followed by `json`, NUL-padded
    /// to `hdr_size`) with its checksum. `salt` is the per-copy random salt.
    pub fn encode(&self, json: &[u8], salt: &[u8; 64]) -> Result<Vec<u8>> {
        let json_area = self.hdr_size as usize - BINARY_SIZE;
        if json.len() >= json_area {
            return Err(Error::Crypto("LUKS2 metadata does not fit its area".into()));
        }
        let mut buf = vec![0u8; self.hdr_size as usize];
        let magic = if self.hdr_offset == 0 {
            MAGIC_PRIMARY
        } else {
            MAGIC_SECONDARY
        };
        buf[..6].copy_from_slice(&magic);
        buf[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&2u16.to_be_bytes());
        buf[OFF_HDR_SIZE..OFF_HDR_SIZE + 8].copy_from_slice(&self.hdr_size.to_be_bytes());
        buf[OFF_SEQID..OFF_SEQID + 8].copy_from_slice(&self.seqid.to_be_bytes());
        buf[OFF_CSUM_ALG..OFF_CSUM_ALG + 6].copy_from_slice(b"sha256");
        buf[OFF_SALT..OFF_SALT + 64].copy_from_slice(salt);
        let uuid = self.uuid.as_bytes();
        if uuid.len() >= 40 {
            return Err(Error::Crypto("LUKS2 UUID too long".into()));
        }
        buf[OFF_UUID..OFF_UUID + uuid.len()].copy_from_slice(uuid);
        buf[OFF_HDR_OFFSET..OFF_HDR_OFFSET + 8].copy_from_slice(&self.hdr_offset.to_be_bytes());
        buf[BINARY_SIZE..BINARY_SIZE + json.len()].copy_from_slice(json);
        let sum = Sha256::digest(&buf);
        buf[OFF_CSUM..OFF_CSUM + sum.len()].copy_from_slice(&sum);
        Ok(buf)
    }

    /// Parses the first [`BINARY_SIZE`] bytes of a copy: magic, version,
    /// size and offset. The checksum needs the JSON area: see [`verify`].
    pub fn decode(bin: &[u8], expect_offset: u64) -> Result<Self> {
        if bin.len() < BINARY_SIZE {
            return Err(Error::NotLuks);
        }
        let magic = if expect_offset == 0 {
            MAGIC_PRIMARY
        } else {
            MAGIC_SECONDARY
        };
        if bin[..6] != magic {
            return Err(Error::NotLuks);
        }
        let version = u16::from_be_bytes([bin[OFF_VERSION], bin[OFF_VERSION + 1]]);
        if version != 2 {
            return Err(Error::Unsupported(format!("LUKS version {version}")));
        }
        let hdr_size = be64(&bin[OFF_HDR_SIZE..]);
        if !VALID_SIZES.contains(&hdr_size) {
            return Err(Error::corrupt(format!("invalid header size {hdr_size}")));
        }
        let hdr_offset = be64(&bin[OFF_HDR_OFFSET..]);
        if hdr_offset != expect_offset {
            return Err(Error::corrupt(format!(
                "header at {expect_offset} claims offset {hdr_offset}"
            )));
        }
        let alg = nul_terminated(&bin[OFF_CSUM_ALG..OFF_CSUM_ALG + 32]);
        if alg != b"sha256" {
            return Err(Error::Unsupported(format!(
                "header checksum {}",
                String::from_utf8_lossy(alg)
            )));
        }
        let uuid =
            String::from_utf8_lossy(nul_terminated(&bin[OFF_UUID..OFF_UUID + 40])).into_owned();
        Ok(BinaryHeader {
            hdr_size,
            seqid: be64(&bin[OFF_SEQID..]),
            uuid,
            hdr_offset,
        })
    }
}

/// Checks the SHA-256 of one whole copy (`hdr_size` bytes).
pub fn verify(copy: &[u8]) -> Result<()> {
    if copy.len() < BINARY_SIZE {
        return Err(Error::corrupt("header copy too short"));
    }
    let mut zeroed = copy.to_vec();
    zeroed[OFF_CSUM..OFF_CSUM + CSUM_LEN].fill(0);
    let sum = Sha256::digest(&zeroed);
    if copy[OFF_CSUM..OFF_CSUM + sum.len()] != sum[..] {
        return Err(Error::corrupt("header checksum mismatch"));
    }
    Ok(())
}

/// The JSON text of a copy: up to the first NUL of its area.
pub fn json_text(copy: &[u8]) -> Result<&str> {
    let area = copy.get(BINARY_SIZE..).unwrap_or_default();
    std::str::from_utf8(nul_terminated(area)).map_err(|_| Error::corrupt("metadata is not UTF-8"))
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn nul_terminated(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_verify() {
        let h = BinaryHeader {
            hdr_size: 0x4000,
            seqid: 3,
            uuid: "0b5f3c0e-0000-4000-8000-000000000001".into(),
            hdr_offset: 0,
        };
        let copy = h.encode(b"{}", &[9; 64]).unwrap();
        assert_eq!(BinaryHeader::decode(&copy, 0).unwrap(), h);
        verify(&copy).unwrap();
        assert_eq!(json_text(&copy).unwrap(), "{}");
        let mut bad = copy.clone();
        bad[BINARY_SIZE] = b'[';
        assert!(verify(&bad).is_err());
        assert!(matches!(
            BinaryHeader::decode(&copy, 0x4000),
            Err(Error::NotLuks)
        ));
        assert!(BinaryHeader::decode(&copy[..100], 0).is_err());
    }
}
