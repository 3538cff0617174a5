//! Error type shared by the reader, the writer and the metadata accessors.

use crate::types::DataType;

/// Everything that can go wrong while reading, validating or writing a SIF image.
///
/// Messages are single lower-case lines; where an object is involved the
/// descriptor id is part of the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error from the underlying file or stream.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// The file ends before a structure that the header says is there.
    #[error("file truncated: {what} needs {needed} bytes but only {available} are present")]
    Truncated {
        /// What was being read ("global header", "descriptor table", ...).
        what: &'static str,
        /// Bytes needed (end offset of the structure).
        needed: u64,
        /// Bytes actually available (file length).
        available: u64,
    },

    /// The magic string at offset 32 is not `SIF_MAGIC\0`.
    #[error("not a sif image: bad magic")]
    BadMagic,

    /// The version field is not `01`.
    #[error("unsupported sif version {0:?}")]
    UnsupportedVersion(String),

    /// A global header field holds a value that cannot be valid.
    #[error("invalid header field {field}: {value}")]
    InvalidHeaderField {
        /// Name of the field.
        field: &'static str,
        /// The offending value.
        value: i64,
    },

    /// The header claims more descriptors than this crate accepts.
    #[error("descriptor count {total} exceeds the limit of {max}")]
    TooManyDescriptors {
        /// Claimed descriptor capacity.
        total: i64,
        /// Accepted maximum.
        max: u64,
    },

    /// A used descriptor slot carries object id 0.
    #[error("descriptor slot {slot} is used but has object id 0")]
    InvalidObjectId {
        /// Zero-based slot index in the descriptor table.
        slot: u64,
    },

    /// Two used descriptors carry the same object id.
    #[error("object id {id} is used by more than one descriptor")]
    DuplicateObjectId {
        /// The repeated id.
        id: u32,
    },

    /// A descriptor has a negative offset, size or padded size.
    #[error("object {id}: negative {field} {value}")]
    NegativeObjectField {
        /// Object id.
        id: u32,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: i64,
    },

    /// An object's data extends beyond the end of the file (or overflows).
    #[error("object {id}: data at offset {offset} with size {size} lies beyond the end of the file ({file_len} bytes)")]
    ObjectOutOfBounds {
        /// Object id.
        id: u32,
        /// Claimed offset.
        offset: u64,
        /// Claimed size.
        size: u64,
        /// File length.
        file_len: u64,
    },

    /// An object's data overlaps the global header or the descriptor table.
    #[error("object {id}: data at offset {offset} overlaps the header or descriptor table (which ends at {metadata_end})")]
    ObjectOverlapsMetadata {
        /// Object id.
        id: u32,
        /// Claimed offset.
        offset: u64,
        /// End of the descriptor table.
        metadata_end: u64,
    },

    /// The data of two objects overlap.
    #[error("object {id}: data overlaps object {other}")]
    ObjectsOverlap {
        /// Object id.
        id: u32,
        /// Id of the object it overlaps.
        other: u32,
    },

    /// The image has no primary system partition.
    #[error("image has no primary system partition")]
    NoPrimaryPartition,

    /// The image has more than one primary system partition.
    #[error("image has more than one primary system partition (objects {first} and {second})")]
    MultiplePrimaryPartitions {
        /// First PrimSys object id.
        first: u32,
        /// Second PrimSys object id.
        second: u32,
    },

    /// No used descriptor has this id.
    #[error("object {0} not found")]
    ObjectNotFound(u32),

    /// A metadata accessor was called on a descriptor of another type.
    #[error("object {id}: data type is {actual}, expected {expected}")]
    WrongDataType {
        /// Object id.
        id: u32,
        /// Type the accessor needs.
        expected: DataType,
        /// Type of the descriptor.
        actual: DataType,
    },

    /// `read_object` refused to load an object larger than the caller's limit.
    #[error("object {id}: size {size} exceeds the limit of {max} bytes")]
    ObjectTooLarge {
        /// Object id.
        id: u32,
        /// Object size.
        size: u64,
        /// Caller's limit.
        max: u64,
    },

    /// The type-specific `extra` field of a descriptor cannot be decoded.
    #[error("object {id}: invalid metadata: {reason}")]
    InvalidExtra {
        /// Object id.
        id: u32,
        /// What is wrong.
        reason: String,
    },

    /// The launch script does not fit the 32-byte header field (31 bytes plus NUL).
    #[error("launch script is {len} bytes, at most 31 fit")]
    LaunchScriptTooLong {
        /// Length in bytes.
        len: usize,
    },

    /// An object name does not fit the 128-byte descriptor field.
    #[error("object name is {len} bytes, at most 128 fit")]
    NameTooLong {
        /// Length in bytes.
        len: usize,
    },

    /// Group id 0 was requested; groups are numbered from 1.
    #[error("invalid group id 0")]
    InvalidGroupId,

    /// Link to object or group 0 was requested.
    #[error("invalid link target 0")]
    InvalidLinkId,

    /// Type-specific metadata was set on an object of another data type.
    #[error("{expected} metadata cannot be set on a {actual} object")]
    MetadataTypeMismatch {
        /// Type the metadata belongs to.
        expected: DataType,
        /// Type of the object.
        actual: DataType,
    },

    /// A partition was given an unknown architecture.
    #[error("partition architecture must be known")]
    UnknownArchitecture,

    /// An invalid descriptor capacity was requested.
    #[error("invalid descriptor capacity {0}")]
    InvalidCapacity(i64),

    /// All descriptor slots are in use.
    #[error("no free descriptor slot (capacity {capacity})")]
    InsufficientCapacity {
        /// Descriptor capacity of the image.
        capacity: i64,
    },

    /// A second primary system partition was added.
    #[error("image already contains a primary system partition")]
    PrimaryPartitionExists,

    /// `compact` deletion was requested for an object that is not the last one.
    #[error("object {id}: compaction is only possible for the last object in the image")]
    CompactNotLast {
        /// Object id.
        id: u32,
    },

    /// An object's padded size reaches before the start of the data section,
    /// so compaction cannot tell where to truncate.
    #[error("object {id}: size with padding {size_with_padding} reaches before the data section")]
    InvalidPadding {
        /// Object id.
        id: u32,
        /// The stored padded size.
        size_with_padding: u64,
    },

    /// An offset or size computation overflowed while writing.
    #[error("offset arithmetic overflow while writing object data")]
    Overflow,
}
