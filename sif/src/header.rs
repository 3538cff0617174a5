//! The 128-byte global header at file offset 0.

use crate::codec::{get_array, get_i64, put, trim_nul};
use crate::types::Arch;
use crate::Error;

/// Size of the global header on disk.
pub const HEADER_SIZE: usize = 128;
/// Magic string at offset 32.
pub const MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
/// The only format version sylabs/sif accepts.
pub const VERSION: &[u8; 3] = b"01\0";
/// Go's zero `time.Time` as Unix seconds; deterministic images use it for every timestamp.
pub const GO_ZERO_TIME: i64 = -62_135_596_800;
/// Launch script written when the caller does not choose one.
pub const DEFAULT_LAUNCH_SCRIPT: &str = "#!/usr/bin/env run-singularity\n";
/// Descriptor capacity sylabs/sif uses by default.
pub const DEFAULT_DESCRIPTOR_CAPACITY: i64 = 48;
/// Offset of the descriptor table written by sylabs/sif.
pub const DEFAULT_DESCRIPTORS_OFFSET: i64 = 4096;

const OFF_MAGIC: usize = 32;
const OFF_VERSION: usize = 42;
const OFF_ARCH: usize = 45;
const OFF_ID: usize = 48;
const OFF_CREATED: usize = 64;
const OFF_MODIFIED: usize = 72;
const OFF_DESC_FREE: usize = 80;
const OFF_DESC_TOTAL: usize = 88;
const OFF_DESC_OFFSET: usize = 96;
const OFF_DESC_SIZE: usize = 104;
const OFF_DATA_OFFSET: usize = 112;
const OFF_DATA_SIZE: usize = 120;

/// Decoded global header.
///
/// The numeric fields are kept exactly as stored (signed, like sylabs/sif);
/// [`crate::Image`] validates them against the file before exposing them.
/// `raw_launch_script` and `raw_arch` keep the exact bytes and are what
/// [`Header::encode`] writes; `launch_script` and `arch` are derived views.
///
/// Serialized (the `header` of [`crate::json::ImageView`]) without the raw
/// fields, with `arch` as its Go name and `id` as a UUID string.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// Launch script with trailing NULs removed.
    pub launch_script: String,
    /// Version text with trailing NULs removed (always "01" after validation).
    pub version: String,
    /// Primary architecture (copied from the PrimSys partition by writers).
    #[serde(serialize_with = "crate::json::display_string")]
    pub arch: Arch,
    /// Image UUID in RFC 4122 byte order; all zero in deterministic images.
    #[serde(serialize_with = "crate::json::uuid")]
    pub id: [u8; 16],
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Modification time, Unix seconds.
    pub modified: i64,
    /// Number of unused descriptor slots.
    pub descriptors_free: i64,
    /// Descriptor capacity.
    pub descriptors_total: i64,
    /// File offset of the descriptor table.
    pub descriptors_offset: i64,
    /// Size of the descriptor table in bytes.
    pub descriptors_size: i64,
    /// File offset of the data section.
    pub data_offset: i64,
    /// Size of the data section in bytes.
    pub data_size: i64,
    /// The launch script field exactly as stored.
    #[serde(skip)]
    pub raw_launch_script: [u8; 32],
    /// The architecture field exactly as stored.
    #[serde(skip)]
    pub raw_arch: [u8; 3],
}

impl Header {
    /// Decodes a header, checking only the magic and version (the layout
    /// fields are checked against the file by [`crate::Image`]).
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, Error> {
        if b[OFF_MAGIC..OFF_MAGIC + 10] != MAGIC[..] {
            return Err(Error::BadMagic);
        }
        let version: [u8; 3] = get_array(b, OFF_VERSION);
        if &version != VERSION {
            return Err(Error::UnsupportedVersion(trim_nul(&version)));
        }
        let raw_launch_script: [u8; 32] = get_array(b, 0);
        let raw_arch: [u8; 3] = get_array(b, OFF_ARCH);
        Ok(Self {
            launch_script: trim_nul(&raw_launch_script),
            version: trim_nul(&version),
            arch: Arch::from_code(raw_arch),
            id: get_array(b, OFF_ID),
            created: get_i64(b, OFF_CREATED),
            modified: get_i64(b, OFF_MODIFIED),
            descriptors_free: get_i64(b, OFF_DESC_FREE),
            descriptors_total: get_i64(b, OFF_DESC_TOTAL),
            descriptors_offset: get_i64(b, OFF_DESC_OFFSET),
            descriptors_size: get_i64(b, OFF_DESC_SIZE),
            data_offset: get_i64(b, OFF_DATA_OFFSET),
            data_size: get_i64(b, OFF_DATA_SIZE),
            raw_launch_script,
            raw_arch,
        })
    }

    /// Encodes the header. The launch script and architecture come from the
    /// `raw_*` fields; magic and version are always the current ones.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        put(&mut b, 0, &self.raw_launch_script);
        put(&mut b, OFF_MAGIC, MAGIC);
        put(&mut b, OFF_VERSION, VERSION);
        put(&mut b, OFF_ARCH, &self.raw_arch);
        put(&mut b, OFF_ID, &self.id);
        put(&mut b, OFF_CREATED, &self.created.to_le_bytes());
        put(&mut b, OFF_MODIFIED, &self.modified.to_le_bytes());
        put(&mut b, OFF_DESC_FREE, &self.descriptors_free.to_le_bytes());
        put(
            &mut b,
            OFF_DESC_TOTAL,
            &self.descriptors_total.to_le_bytes(),
        );
        put(
            &mut b,
            OFF_DESC_OFFSET,
            &self.descriptors_offset.to_le_bytes(),
        );
        put(&mut b, OFF_DESC_SIZE, &self.descriptors_size.to_le_bytes());
        put(&mut b, OFF_DATA_OFFSET, &self.data_offset.to_le_bytes());
        put(&mut b, OFF_DATA_SIZE, &self.data_size.to_le_bytes());
        b
    }

    /// Sets the architecture, keeping `arch` and `raw_arch` consistent.
    pub fn set_arch(&mut self, arch: Arch) {
        self.arch = arch;
        self.raw_arch = arch.code();
    }

    /// The image id in canonical UUID text form (lower-case, hyphenated).
    pub fn id_string(&self) -> String {
        uuid_string(&self.id)
    }

    /// True when the image id is the nil UUID (deterministic images).
    pub fn id_is_nil(&self) -> bool {
        self.id == [0u8; 16]
    }
}

/// Formats 16 raw bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn uuid_string(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, byte) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{byte:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_form() {
        let id = [
            0x3f, 0xa8, 0x02, 0xcc, 0x35, 0x8b, 0x45, 0xe3, 0xbc, 0xc0, 0x69, 0xdc, 0x7a, 0x45,
            0xf9, 0xf8,
        ];
        assert_eq!(uuid_string(&id), "3fa802cc-358b-45e3-bcc0-69dc7a45f9f8");
    }

    #[test]
    fn decode_encode_round_trip() {
        let mut b = [0u8; HEADER_SIZE];
        b[..5].copy_from_slice(b"#!sh\n");
        b[32..42].copy_from_slice(MAGIC);
        b[42..45].copy_from_slice(VERSION);
        b[45..48].copy_from_slice(b"04\0");
        b[88..96].copy_from_slice(&48i64.to_le_bytes());
        let h = Header::decode(&b).unwrap();
        assert_eq!(h.launch_script, "#!sh\n");
        assert_eq!(h.arch, Arch::Arm64);
        assert_eq!(h.descriptors_total, 48);
        assert_eq!(h.encode(), b);
    }
}
