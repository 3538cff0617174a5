//! The 585-byte object descriptor and its type-specific `extra` encodings.

use crate::codec::{get_array, get_i32, get_i64, get_u32, put, trim_nul};
use crate::types::{
    Arch, CryptoFormat, DataType, FsType, HashType, Link, MessageType, PartType, SbomFormat,
    GROUP_MASK,
};
use crate::Error;

/// Size of one descriptor slot on disk.
pub const DESCRIPTOR_SIZE: usize = 585;
/// Size of the object name field.
pub const NAME_SIZE: usize = 128;
/// Size of the type-specific `extra` field.
pub const EXTRA_SIZE: usize = 384;

const OFF_USED: usize = 4;
const OFF_ID: usize = 5;
const OFF_GROUP: usize = 9;
const OFF_LINK: usize = 13;
const OFF_OFFSET: usize = 17;
const OFF_SIZE: usize = 25;
const OFF_SIZE_PADDED: usize = 33;
const OFF_CREATED: usize = 41;
const OFF_MODIFIED: usize = 49;
const OFF_UID: usize = 57;
const OFF_GID: usize = 65;
const OFF_NAME: usize = 73;
const OFF_EXTRA: usize = 201;

/// Metadata of a partition object (`extra`: fstype i32, parttype i32, arch `[3]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// File system type.
    pub fs_type: FsType,
    /// Partition role.
    pub part_type: PartType,
    /// CPU architecture of the contents.
    pub arch: Arch,
}

/// Metadata of a signature object (`extra`: hashtype i32, entity `[256]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureInfo {
    /// Hash algorithm recorded by the signer.
    pub hash_type: HashType,
    /// OpenPGP v4 primary-key fingerprint (first 20 entity bytes), `None` when all zero.
    pub fingerprint: Option<[u8; 20]>,
}

/// Metadata of a cryptographic message object (`extra`: format i32, message type i32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoMessageInfo {
    /// Message encoding.
    pub format: CryptoFormat,
    /// Message kind.
    pub message_type: MessageType,
}

/// A used descriptor, decoded.
///
/// The `raw_*` fields hold the exact on-disk values and are what
/// [`Descriptor::encode`] writes; `group_id`, `link` and `name` are the
/// decoded views sylabs/sif exposes. Descriptors are cheap to clone; clone
/// one to pass it to [`crate::Image::object_reader`] while the image is
/// mutably borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Object data type.
    pub data_type: DataType,
    /// Object id (1-based).
    pub id: u32,
    /// Logical group (raw value without the mask), `None` when not grouped.
    pub group_id: Option<u32>,
    /// Object or group this object is linked to.
    pub link: Link,
    /// Absolute file offset of the data.
    pub offset: u64,
    /// Data length.
    pub size: u64,
    /// Alignment gap before the object plus its size.
    pub size_with_padding: u64,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Modification time, Unix seconds.
    pub modified: i64,
    /// Deprecated owner uid (0 in current images, 1000 in legacy ones).
    pub uid: i64,
    /// Deprecated owner gid.
    pub gid: i64,
    /// Name with trailing NULs removed.
    pub name: String,
    /// Type-specific metadata, zero-filled.
    pub extra: [u8; EXTRA_SIZE],
    /// Group field as stored (mask included).
    pub raw_group_id: u32,
    /// Linked-id field as stored (mask included for group links).
    pub raw_link_id: u32,
    /// Name field as stored.
    pub raw_name: [u8; NAME_SIZE],
    pub(crate) slot: u64,
}

/// A descriptor slot whose `used` flag is set, with the signed on-disk values
/// that still need validation against the file.
pub(crate) struct RawUsed {
    pub(crate) offset: i64,
    pub(crate) size: i64,
    pub(crate) size_with_padding: i64,
}

/// True if the slot's `used` byte is set (Go decodes any non-zero byte as true).
pub(crate) fn slot_is_used(b: &[u8; DESCRIPTOR_SIZE]) -> bool {
    b[OFF_USED] != 0
}

/// Object id stored in a slot.
pub(crate) fn slot_id(b: &[u8; DESCRIPTOR_SIZE]) -> u32 {
    get_u32(b, OFF_ID)
}

pub(crate) fn slot_raw_ranges(b: &[u8; DESCRIPTOR_SIZE]) -> RawUsed {
    RawUsed {
        offset: get_i64(b, OFF_OFFSET),
        size: get_i64(b, OFF_SIZE),
        size_with_padding: get_i64(b, OFF_SIZE_PADDED),
    }
}

impl Descriptor {
    /// Decodes a used slot. Returns `Ok(None)` for an unused slot and an error
    /// for negative offset/size fields; bounds against the file are checked by
    /// [`crate::Image`].
    pub fn decode(b: &[u8; DESCRIPTOR_SIZE], slot: u64) -> Result<Option<Self>, Error> {
        if !slot_is_used(b) {
            return Ok(None);
        }
        let id = slot_id(b);
        if id == 0 {
            return Err(Error::InvalidObjectId { slot });
        }
        let raw = slot_raw_ranges(b);
        let non_negative = |field: &'static str, value: i64| {
            u64::try_from(value).map_err(|_| Error::NegativeObjectField { id, field, value })
        };
        let offset = non_negative("offset", raw.offset)?;
        let size = non_negative("size", raw.size)?;
        let size_with_padding = non_negative("size with padding", raw.size_with_padding)?;
        let raw_group_id = get_u32(b, OFF_GROUP);
        let raw_link_id = get_u32(b, OFF_LINK);
        let raw_name: [u8; NAME_SIZE] = get_array(b, OFF_NAME);
        let group = raw_group_id & !GROUP_MASK;
        Ok(Some(Self {
            data_type: DataType::from_raw(get_i32(b, 0)),
            id,
            group_id: (group != 0).then_some(group),
            link: Link::from_raw(raw_link_id),
            offset,
            size,
            size_with_padding,
            created: get_i64(b, OFF_CREATED),
            modified: get_i64(b, OFF_MODIFIED),
            uid: get_i64(b, OFF_UID),
            gid: get_i64(b, OFF_GID),
            name: trim_nul(&raw_name),
            extra: get_array(b, OFF_EXTRA),
            raw_group_id,
            raw_link_id,
            raw_name,
            slot,
        }))
    }

    /// Encodes the descriptor as a used on-disk slot.
    pub fn encode(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        put(&mut b, 0, &self.data_type.to_raw().to_le_bytes());
        b[OFF_USED] = 1;
        put(&mut b, OFF_ID, &self.id.to_le_bytes());
        put(&mut b, OFF_GROUP, &self.raw_group_id.to_le_bytes());
        put(&mut b, OFF_LINK, &self.raw_link_id.to_le_bytes());
        // Offsets and sizes were non-negative i64 values when decoded or written.
        put(&mut b, OFF_OFFSET, &self.offset.to_le_bytes());
        put(&mut b, OFF_SIZE, &self.size.to_le_bytes());
        put(
            &mut b,
            OFF_SIZE_PADDED,
            &self.size_with_padding.to_le_bytes(),
        );
        put(&mut b, OFF_CREATED, &self.created.to_le_bytes());
        put(&mut b, OFF_MODIFIED, &self.modified.to_le_bytes());
        put(&mut b, OFF_UID, &self.uid.to_le_bytes());
        put(&mut b, OFF_GID, &self.gid.to_le_bytes());
        put(&mut b, OFF_NAME, &self.raw_name);
        put(&mut b, OFF_EXTRA, &self.extra);
        b
    }

    /// Zero-based index of the descriptor's slot in the descriptor table.
    pub fn slot(&self) -> u64 {
        self.slot
    }

    fn expect_type(&self, expected: DataType) -> Result<(), Error> {
        if self.data_type == expected {
            Ok(())
        } else {
            Err(Error::WrongDataType {
                id: self.id,
                expected,
                actual: self.data_type,
            })
        }
    }

    /// Partition metadata; [`Error::WrongDataType`] for other object types.
    pub fn partition(&self) -> Result<PartitionInfo, Error> {
        self.expect_type(DataType::Partition)?;
        Ok(PartitionInfo {
            fs_type: FsType::from_raw(get_i32(&self.extra, 0)),
            part_type: PartType::from_raw(get_i32(&self.extra, 4)),
            arch: Arch::from_code(get_array(&self.extra, 8)),
        })
    }

    /// True if this is a partition object of the given role.
    pub fn is_partition_of_type(&self, part_type: PartType) -> bool {
        self.partition()
            .map(|p| p.part_type == part_type)
            .unwrap_or(false)
    }

    /// Signature metadata; [`Error::WrongDataType`] for other object types.
    ///
    /// Unlike sylabs/sif, an unsupported hash code is not an error here: it is
    /// returned as [`HashType::Unknown`] for the verifier to reject.
    pub fn signature(&self) -> Result<SignatureInfo, Error> {
        self.expect_type(DataType::Signature)?;
        let fp: [u8; 20] = get_array(&self.extra, 4);
        Ok(SignatureInfo {
            hash_type: HashType::from_raw(get_i32(&self.extra, 0)),
            fingerprint: (fp != [0u8; 20]).then_some(fp),
        })
    }

    /// Cryptographic message metadata; [`Error::WrongDataType`] for other object types.
    pub fn crypto_message(&self) -> Result<CryptoMessageInfo, Error> {
        self.expect_type(DataType::CryptoMessage)?;
        Ok(CryptoMessageInfo {
            format: CryptoFormat::from_raw(get_i32(&self.extra, 0)),
            message_type: MessageType::from_raw(get_i32(&self.extra, 4)),
        })
    }

    /// SBOM format; [`Error::WrongDataType`] for other object types.
    pub fn sbom_format(&self) -> Result<SbomFormat, Error> {
        self.expect_type(DataType::Sbom)?;
        Ok(SbomFormat::from_raw(get_i32(&self.extra, 0)))
    }

    /// Digest of an OCI root index or blob object (`sha256:<64 hex>`).
    ///
    /// [`Error::WrongDataType`] for other object types, [`Error::InvalidExtra`]
    /// when the stored text is not a well-formed SHA-256 digest.
    pub fn oci_digest(&self) -> Result<String, Error> {
        if self.data_type != DataType::OciRootIndex && self.data_type != DataType::OciBlob {
            return Err(Error::WrongDataType {
                id: self.id,
                expected: DataType::OciBlob,
                actual: self.data_type,
            });
        }
        let end = self
            .extra
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(EXTRA_SIZE);
        let text = &self.extra[..end];
        let invalid = |reason: &str| Error::InvalidExtra {
            id: self.id,
            reason: reason.to_string(),
        };
        let hex = text
            .strip_prefix(b"sha256:")
            .ok_or_else(|| invalid("oci digest does not start with \"sha256:\""))?;
        if hex.len() != 64 || !hex.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("oci digest is not 64 lower-case hex digits"));
        }
        // Only ASCII was accepted above, so this conversion is lossless.
        Ok(String::from_utf8_lossy(text).into_owned())
    }
}

/// Encodes partition metadata into an `extra` field.
pub(crate) fn partition_extra(info: &PartitionInfo) -> [u8; EXTRA_SIZE] {
    let mut e = [0u8; EXTRA_SIZE];
    put(&mut e, 0, &info.fs_type.to_raw().to_le_bytes());
    put(&mut e, 4, &info.part_type.to_raw().to_le_bytes());
    put(&mut e, 8, &info.arch.code());
    e
}

/// Encodes signature metadata into an `extra` field.
pub(crate) fn signature_extra(hash: HashType, fingerprint: &[u8; 20]) -> [u8; EXTRA_SIZE] {
    let mut e = [0u8; EXTRA_SIZE];
    put(&mut e, 0, &hash.to_raw().to_le_bytes());
    put(&mut e, 4, fingerprint);
    e
}

/// Encodes cryptographic message metadata into an `extra` field.
pub(crate) fn crypto_extra(format: CryptoFormat, message: MessageType) -> [u8; EXTRA_SIZE] {
    let mut e = [0u8; EXTRA_SIZE];
    put(&mut e, 0, &format.to_raw().to_le_bytes());
    put(&mut e, 4, &message.to_raw().to_le_bytes());
    e
}

/// Encodes an SBOM format into an `extra` field.
pub(crate) fn sbom_extra(format: SbomFormat) -> [u8; EXTRA_SIZE] {
    let mut e = [0u8; EXTRA_SIZE];
    put(&mut e, 0, &format.to_raw().to_le_bytes());
    e
}

/// Encodes an OCI digest string into an `extra` field (NUL-terminated).
pub(crate) fn oci_extra(digest: &str) -> Result<[u8; EXTRA_SIZE], Error> {
    let b = digest.as_bytes();
    if b.len() >= EXTRA_SIZE {
        return Err(Error::InvalidExtra {
            id: 0,
            reason: "oci digest too long".into(),
        });
    }
    let mut e = [0u8; EXTRA_SIZE];
    put(&mut e, 0, b);
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Descriptor {
        let mut raw_name = [0u8; NAME_SIZE];
        raw_name[..4].copy_from_slice(b"test");
        Descriptor {
            data_type: DataType::Partition,
            id: 2,
            group_id: Some(1),
            link: Link::None,
            offset: 36864,
            size: 4096,
            size_with_padding: 8188,
            created: GO_ZERO,
            modified: GO_ZERO,
            uid: 0,
            gid: 0,
            name: "test".into(),
            extra: partition_extra(&PartitionInfo {
                fs_type: FsType::Squashfs,
                part_type: PartType::PrimSys,
                arch: Arch::I386,
            }),
            raw_group_id: 0xf000_0001,
            raw_link_id: 0,
            raw_name,
            slot: 1,
        }
    }
    const GO_ZERO: i64 = crate::header::GO_ZERO_TIME;

    #[test]
    fn encode_decode_round_trip() {
        let d = sample();
        let b = d.encode();
        assert_eq!(&b[OFF_EXTRA..OFF_EXTRA + 11], b"\x01\0\0\0\x02\0\0\x0001\0");
        let back = Descriptor::decode(&b, 1).unwrap().unwrap();
        assert_eq!(back, d);
        let p = back.partition().unwrap();
        assert_eq!(p.part_type, PartType::PrimSys);
        assert_eq!(p.arch, Arch::I386);
    }

    #[test]
    fn wrong_type_accessor_is_an_error() {
        let d = sample();
        assert!(matches!(
            d.signature(),
            Err(Error::WrongDataType {
                id: 2,
                expected: DataType::Signature,
                actual: DataType::Partition
            })
        ));
    }

    #[test]
    fn oci_digest_validation() {
        let mut d = sample();
        d.data_type = DataType::OciBlob;
        let good = format!("sha256:{}", "ab".repeat(32));
        d.extra = oci_extra(&good).unwrap();
        assert_eq!(d.oci_digest().unwrap(), good);
        d.extra = oci_extra("sha256:xyz").unwrap();
        assert!(matches!(
            d.oci_digest(),
            Err(Error::InvalidExtra { id: 2, .. })
        ));
    }

    #[test]
    fn unused_slot_decodes_to_none() {
        assert!(Descriptor::decode(&[0u8; DESCRIPTOR_SIZE], 0)
            .unwrap()
            .is_none());
    }
}
