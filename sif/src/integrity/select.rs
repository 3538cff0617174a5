//! Which objects a signature belongs to: object groups, the objects in a
//! group, and the signature objects linked to a group or an object, with the
//! same selection rules as sylabs/sif.

use std::io::{Read, Seek};

use super::clearsign;
use super::dsse;
use crate::{DataType, Descriptor, Image, Link};

/// Largest signature object read into memory. Real signatures are a few
/// KiB; a hostile image must not make the verifier allocate gigabytes.
pub const MAX_SIGNATURE_SIZE: u64 = 1 << 20;

/// Sorted, distinct ids of the object groups present in the image.
pub fn group_ids<R>(img: &Image<R>) -> Vec<u32>
where
    R: Read + Seek,
{
    let mut ids: Vec<u32> = img
        .descriptors()
        .iter()
        .filter_map(|d| d.group_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Every object in group `group`, ascending id. As in the reference
/// library this includes signature objects placed in the group (legacy
/// object signatures are), since they are part of what the group is.
pub fn group_objects<R>(img: &Image<R>, group: u32) -> Vec<Descriptor>
where
    R: Read + Seek,
{
    img.descriptors()
        .iter()
        .filter(|d| d.group_id == Some(group))
        .cloned()
        .collect()
}

/// Smallest object id in group `group` (relative ids count from it).
pub fn group_min_id<R>(img: &Image<R>, group: u32) -> Option<u32>
where
    R: Read + Seek,
{
    img.descriptors()
        .iter()
        .filter(|d| d.group_id == Some(group))
        .map(|d| d.id)
        .min()
}

/// Signature objects linked to `target`, ascending id.
pub fn signatures_linked_to<R>(img: &Image<R>, target: Link) -> Vec<Descriptor>
where
    R: Read + Seek,
{
    img.descriptors()
        .iter()
        .filter(|d| d.data_type == DataType::Signature && d.link == target)
        .cloned()
        .collect()
}

/// The encoding of a signature object's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Clear-signed OpenPGP over the JSON metadata document.
    OpenPgp,
    /// DSSE envelope over the JSON metadata document.
    Dsse,
    /// Pre-3.6 clear-signed `SIFHASH:` digest of object data only.
    Legacy,
    /// None of these.
    Unknown,
}

impl Format {
    /// Short stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenPgp => "openpgp",
            Self::Dsse => "dsse",
            Self::Legacy => "legacy",
            Self::Unknown => "unknown",
        }
    }
}

/// Detects the format of signature data, in the reference library's order:
/// DSSE if it is a JSON envelope with the SIF payload type, else clear-sign
/// (legacy when the text starts with `SIFHASH:`), else unknown.
pub fn classify(data: &[u8]) -> Format {
    if dsse::is_envelope(data) {
        return Format::Dsse;
    }
    match clearsign::decode(data) {
        Some(cs) if cs.text.starts_with(b"SIFHASH:\n") => Format::Legacy,
        Some(_) => Format::OpenPgp,
        None => Format::Unknown,
    }
}

/// Reads a signature object's data, refusing oversized ones.
pub fn read_signature<R>(img: &mut Image<R>, d: &Descriptor) -> Result<Vec<u8>, String>
where
    R: Read + Seek,
{
    img.read_object(d, MAX_SIGNATURE_SIZE)
        .map_err(|e| e.to_string())
}
