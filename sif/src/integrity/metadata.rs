//! The metadata document that a (non-legacy) signature signs: digests of the
//! header, and of each signed object's descriptor and data.
//!
//! The JSON text must be byte-identical to what sylabs/sif `pkg/integrity`
//! marshals, because that text is what the OpenPGP signature covers and
//! other implementations re-derive nothing from it: field order, compact
//! form and lower-case hex are fixed.

use std::fmt::Write as _;

use serde::Deserialize;

use super::digest::{Digest, DigestAlg};
use crate::descriptor::{Descriptor, NAME_SIZE};
use crate::header::{Header, MAGIC, VERSION};

/// Length of the header bytes covered by signatures.
pub const HEADER_INTEGRITY_LEN: usize = 32 + 10 + 3 + 16;
/// Length of the descriptor bytes covered by signatures.
pub const DESCRIPTOR_INTEGRITY_LEN: usize = 557;

/// The only metadata document version there is.
pub const METADATA_VERSION: u32 = 1;

/// Header fields covered by signatures: launch script, magic, version and
/// image id. Times, architecture and the descriptor/data layout are left
/// out so that adding a signature object does not invalidate others.
pub fn header_integrity_bytes(h: &Header) -> [u8; HEADER_INTEGRITY_LEN] {
    let mut b = [0u8; HEADER_INTEGRITY_LEN];
    b[..32].copy_from_slice(&h.raw_launch_script);
    // The reader only accepts images with exactly this magic and version,
    // so the constants are the bytes on disk.
    b[32..42].copy_from_slice(MAGIC);
    b[42..45].copy_from_slice(VERSION);
    b[45..].copy_from_slice(&h.id);
    b
}

/// Descriptor fields covered by signatures. The id is relative to the
/// group's smallest id, and offset, group, padded size and modification time
/// are left out, so objects may move and the group may be renumbered as a
/// whole without invalidating the signature.
pub fn descriptor_integrity_bytes(
    d: &Descriptor,
    relative_id: u32,
) -> [u8; DESCRIPTOR_INTEGRITY_LEN] {
    let mut b = [0u8; DESCRIPTOR_INTEGRITY_LEN];
    b[0..4].copy_from_slice(&d.data_type.to_raw().to_le_bytes());
    b[4] = 1; // only used descriptors are ever hashed
    b[5..9].copy_from_slice(&relative_id.to_le_bytes());
    b[9..13].copy_from_slice(&d.raw_link_id.to_le_bytes());
    // Sizes were non-negative i64 values on disk.
    b[13..21].copy_from_slice(&d.size.to_le_bytes());
    b[21..29].copy_from_slice(&d.created.to_le_bytes());
    b[29..37].copy_from_slice(&d.uid.to_le_bytes());
    b[37..45].copy_from_slice(&d.gid.to_le_bytes());
    b[45..45 + NAME_SIZE].copy_from_slice(&d.raw_name);
    b[45 + NAME_SIZE..].copy_from_slice(&d.extra);
    b
}

/// Digests recorded for one signed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMetadata {
    /// Object id minus the smallest id in its group.
    pub relative_id: u32,
    /// Digest of [`descriptor_integrity_bytes`].
    pub descriptor_digest: Digest,
    /// Digest of the object data.
    pub object_digest: Digest,
}

/// The signed document: header digest and per-object digests in ascending id
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMetadata {
    /// Document version (always 1 when produced here).
    pub version: u32,
    /// Digest of [`header_integrity_bytes`].
    pub header_digest: Digest,
    /// Objects, ascending relative id.
    pub objects: Vec<ObjectMetadata>,
}

/// Why a signed document could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// Not JSON of the expected shape.
    #[error("metadata document is not valid: {0}")]
    Json(String),
    /// A version other than 1.
    #[error("unsupported metadata version {0}")]
    Version(u64),
    /// A digest string that does not parse.
    #[error("metadata document: {0}")]
    Digest(#[from] super::digest::DigestParseError),
    /// Two entries for the same object.
    #[error("metadata document lists relative id {0} twice")]
    DuplicateObject(u32),
}

#[derive(Deserialize)]
struct RawDoc {
    version: u64,
    header: RawHeader,
    // Go marshals an empty list as null.
    objects: Option<Vec<RawObject>>,
}

#[derive(Deserialize)]
struct RawHeader {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawObject {
    relative_id: u32,
    descriptor_digest: String,
    object_digest: String,
}

impl ImageMetadata {
    /// The exact JSON text sylabs/sif produces for this document.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            r#"{{"version":{},"header":{{"digest":"{}"}},"objects":"#,
            self.version, self.header_digest
        );
        if self.objects.is_empty() {
            s.push_str("null");
        } else {
            s.push('[');
            for (i, o) in self.objects.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(
                    s,
                    r#"{{"relativeId":{},"descriptorDigest":"{}","objectDigest":"{}"}}"#,
                    o.relative_id, o.descriptor_digest, o.object_digest
                );
            }
            s.push(']');
        }
        s.push('}');
        s
    }

    /// Parses a signed document. Unknown fields are ignored, as the
    /// reference library does; digests must name an accepted algorithm and
    /// have the right length.
    pub fn from_json(text: &[u8]) -> Result<Self, MetadataError> {
        let raw: RawDoc =
            serde_json::from_slice(text).map_err(|e| MetadataError::Json(e.to_string()))?;
        if raw.version != u64::from(METADATA_VERSION) {
            return Err(MetadataError::Version(raw.version));
        }
        let mut objects = Vec::new();
        for o in raw.objects.unwrap_or_default() {
            if objects
                .iter()
                .any(|m: &ObjectMetadata| m.relative_id == o.relative_id)
            {
                return Err(MetadataError::DuplicateObject(o.relative_id));
            }
            objects.push(ObjectMetadata {
                relative_id: o.relative_id,
                descriptor_digest: Digest::parse(&o.descriptor_digest)?,
                object_digest: Digest::parse(&o.object_digest)?,
            });
        }
        Ok(Self {
            version: METADATA_VERSION,
            header_digest: Digest::parse(&raw.header.digest)?,
            objects,
        })
    }

    /// Every distinct algorithm used for object data digests.
    pub fn object_algs(&self) -> Vec<DigestAlg> {
        let mut algs: Vec<DigestAlg> = self.objects.iter().map(|o| o.object_digest.alg).collect();
        algs.sort();
        algs.dedup();
        algs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(alg: DigestAlg, byte: u8) -> Digest {
        Digest {
            alg,
            value: vec![byte; alg.digest_len()],
        }
    }

    #[test]
    fn json_matches_go_layout_and_parses_back() {
        let m = ImageMetadata {
            version: 1,
            header_digest: d(DigestAlg::Sha256, 0xab),
            objects: vec![ObjectMetadata {
                relative_id: 0,
                descriptor_digest: d(DigestAlg::Sha256, 1),
                object_digest: d(DigestAlg::Sha256, 2),
            }],
        };
        let j = m.to_json();
        assert_eq!(
            j,
            format!(
                "{{\"version\":1,\"header\":{{\"digest\":\"sha256:{}\"}},\"objects\":[{{\"relativeId\":0,\
                 \"descriptorDigest\":\"sha256:{}\",\"objectDigest\":\"sha256:{}\"}}]}}",
                "ab".repeat(32),
                "01".repeat(32),
                "02".repeat(32)
            )
        );
        assert_eq!(ImageMetadata::from_json(j.as_bytes()).unwrap(), m);
        // Go's clear-sign decoder hands over the text with a final newline.
        assert_eq!(
            ImageMetadata::from_json(format!("{j}\n").as_bytes()).unwrap(),
            m
        );
    }

    #[test]
    fn hostile_documents_are_errors() {
        for doc in [
            &b""[..],
            b"{}",
            b"[]",
            b"{\"version\":2,\"header\":{\"digest\":\"sha256:00\"},\"objects\":null}",
            b"{\"version\":1,\"header\":{\"digest\":\"sha1:00\"},\"objects\":null}",
            b"{\"version\":1,\"header\":{\"digest\":7},\"objects\":null}",
            b"{\"version\":1e999}",
            b"\xff\xfe",
        ] {
            assert!(ImageMetadata::from_json(doc).is_err(), "{doc:?}");
        }
    }
}
