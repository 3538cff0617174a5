//! A machine-readable view of an image's header and descriptors, for JSON
//! output (`sifrun inspect --json`), and the lower-case names of the format's
//! enums that it and error messages use. The keys are a public contract:
//! add, never rename.

use serde::Serialize;

use crate::{DataType, Descriptor, FsType, Header, Link, PartType};

impl DataType {
    /// Lower-case name: `partition`, `signature`, `deffile`, `envvar`,
    /// `labels`, `generic-json`, `generic`, `crypto-message`, `sbom`,
    /// `oci-root-index`, `oci-blob`, or `unknown(0x....)`.
    pub fn json_name(self) -> String {
        match self {
            Self::Deffile => "deffile".into(),
            Self::EnvVar => "envvar".into(),
            Self::Labels => "labels".into(),
            Self::Partition => "partition".into(),
            Self::Signature => "signature".into(),
            Self::GenericJson => "generic-json".into(),
            Self::Generic => "generic".into(),
            Self::CryptoMessage => "crypto-message".into(),
            Self::Sbom => "sbom".into(),
            Self::OciRootIndex => "oci-root-index".into(),
            Self::OciBlob => "oci-blob".into(),
            Self::Unknown(n) => format!("unknown({n:#x})"),
        }
    }
}

impl FsType {
    /// Lower-case name: `squashfs`, `ext3`, `archive`, `raw`,
    /// `encrypted-squashfs`, `gocryptfs-squashfs`, or `unknown(N)`.
    pub fn json_name(self) -> String {
        match self {
            Self::Squashfs => "squashfs".into(),
            Self::Ext3 => "ext3".into(),
            Self::ImmutableObject => "archive".into(),
            Self::Raw => "raw".into(),
            Self::EncryptedSquashfs => "encrypted-squashfs".into(),
            Self::GocryptfsSquashfs => "gocryptfs-squashfs".into(),
            Self::Unknown(n) => format!("unknown({n})"),
        }
    }
}

impl PartType {
    /// Lower-case name: `system`, `primsys`, `data`, `overlay`, or
    /// `unknown(N)`.
    pub fn json_name(self) -> String {
        match self {
            Self::System => "system".into(),
            Self::PrimSys => "primsys".into(),
            Self::Data => "data".into(),
            Self::Overlay => "overlay".into(),
            Self::Unknown(n) => format!("unknown({n})"),
        }
    }
}

/// The whole image: header and used descriptors.
#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    /// The path the image was opened from, as the caller names it.
    pub path: String,
    /// The global header.
    pub header: Header,
    /// Used descriptors in id order.
    pub objects: Vec<ObjectView>,
}

impl ImageView {
    /// The view of an open image; `path` is how the caller names it.
    pub fn of<R: std::io::Read + std::io::Seek>(image: &crate::Image<R>, path: &str) -> Self {
        ImageView {
            path: path.to_string(),
            header: image.header().clone(),
            objects: image.descriptors().iter().map(ObjectView::of).collect(),
        }
    }
}

/// Serializes a field through its `Display` text (`arch`: its Go name).
pub(crate) fn display_string<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Serializes an image ID as its UUID string.
pub(crate) fn uuid<S: serde::Serializer>(id: &[u8; 16], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::uuid_string(id))
}

/// One object.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectView {
    /// Object id.
    pub id: u32,
    /// Data type ([`DataType::json_name`]).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Group id or `null`.
    pub group: Option<u32>,
    /// `{"object": N}`, `{"group": N}` or `null`.
    pub link: Option<LinkView>,
    /// File offset of the data.
    pub offset: u64,
    /// Data size.
    pub size: u64,
    /// Object name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Present for partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionView>,
    /// Present for signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureView>,
}

impl ObjectView {
    /// The view of `d`; partition and signature metadata that does not
    /// decode is left out rather than failing the whole view.
    pub fn of(d: &Descriptor) -> Self {
        ObjectView {
            id: d.id,
            data_type: d.data_type.json_name(),
            group: d.group_id,
            link: LinkView::of(d.link),
            offset: d.offset,
            size: d.size,
            name: d.name.clone(),
            created: d.created,
            partition: d.partition().ok().map(|p| PartitionView {
                fstype: p.fs_type.json_name(),
                parttype: p.part_type.json_name(),
                arch: p.arch.to_string(),
            }),
            signature: d.signature().ok().map(|s| SignatureView {
                hash: s.hash_type.to_string(),
                fingerprint: s
                    .fingerprint
                    .map(|f| f.iter().map(|b| format!("{b:02X}")).collect()),
            }),
        }
    }
}

/// An object's link.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkView {
    /// Linked to an object id.
    Object(u32),
    /// Linked to a group id.
    Group(u32),
}

impl LinkView {
    /// The view of `link`: `None` (JSON `null`) for no link.
    pub fn of(link: Link) -> Option<Self> {
        match link {
            Link::None => None,
            Link::Object(id) => Some(LinkView::Object(id)),
            Link::Group(id) => Some(LinkView::Group(id)),
        }
    }
}

/// Partition metadata.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    /// [`FsType::json_name`].
    pub fstype: String,
    /// [`PartType::json_name`].
    pub parttype: String,
    /// Architecture (Go name).
    pub arch: String,
}

/// Signature metadata.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureView {
    /// Hash algorithm (`SHA-256`, ...).
    pub hash: String,
    /// Upper-case hex OpenPGP fingerprint, `null` when absent (DSSE).
    pub fingerprint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_unknown_codes_keep_their_number() {
        assert_eq!(DataType::from_raw(0x4004).json_name(), "partition");
        assert_eq!(DataType::from_raw(0x4fff).json_name(), "unknown(0x4fff)");
        assert_eq!(FsType::from_raw(5).json_name(), "encrypted-squashfs");
        assert_eq!(FsType::from_raw(9).json_name(), "unknown(9)");
        assert_eq!(PartType::from_raw(2).json_name(), "primsys");
    }
}
