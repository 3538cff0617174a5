//! Signing object groups the way sylabs/sif `pkg/integrity` does: one
//! clear-signed metadata document per group, stored as an ungrouped
//! signature object linked to the group, with the signer's primary-key
//! fingerprint in the descriptor.

use std::io::{Read, Seek};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::clearsign;
use super::digest::{Digest, DigestAlg};
use super::metadata::{
    descriptor_integrity_bytes, header_integrity_bytes, ImageMetadata, ObjectMetadata,
    METADATA_VERSION,
};
use super::pgp::{KeyError, SigningKey};
use super::select;
use super::verify::DigestCache;
use crate::{add_object, AddOptions, DataType, HashType, Image, ObjectInput};

/// What to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignTarget {
    /// Every object group, one signature each.
    #[default]
    AllGroups,
    /// One group.
    Group(u32),
    /// One object; the signature covers only it but, as in the reference
    /// library, is linked to the object's group.
    Object(u32),
}

/// Signing options.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// What to sign.
    pub target: SignTarget,
    /// Digest algorithm for the metadata document (default SHA-256).
    pub digest: Option<DigestAlg>,
    /// Signature and descriptor time; now when `None`.
    pub time: Option<SystemTime>,
}

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Reading or writing the image failed.
    #[error(transparent)]
    Image(#[from] crate::Error),
    /// The key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The image has no object groups.
    #[error("the image has no object groups to sign")]
    NoGroups,
    /// No such group.
    #[error("object group {0} not found")]
    GroupNotFound(u32),
    /// No such object.
    #[error("object {0} not found")]
    ObjectNotFound(u32),
    /// The object is in no group, so nothing can link a signature to it.
    #[error("object {0} is not in an object group")]
    ObjectNotGrouped(u32),
    /// SIF descriptors hold 20-byte (OpenPGP v4) fingerprints only.
    #[error("the signing key is not an OpenPGP v4 key; SIF records 20-byte fingerprints")]
    FingerprintSize,
    /// An object could not be hashed.
    #[error("hashing failed: {0}")]
    Hash(String),
}

/// The metadata document for objects `ids` of group `group`.
pub fn group_metadata<R: Read + Seek + Send>(
    img: &mut Image<R>,
    group: u32,
    ids: &[u32],
    alg: DigestAlg,
) -> Result<ImageMetadata, SignError> {
    let min_id = select::group_min_id(img, group).ok_or(SignError::GroupNotFound(group))?;
    let mut cache = DigestCache::default();
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut objects = Vec::new();
    for id in ids {
        let d = img
            .descriptor(id)
            .cloned()
            .ok_or(SignError::ObjectNotFound(id))?;
        if d.group_id != Some(group) {
            return Err(SignError::ObjectNotGrouped(id));
        }
        let rel = id - min_id;
        let value = cache
            .object(img, &d, alg)
            .map_err(|e| SignError::Hash(e.to_string()))?;
        objects.push(ObjectMetadata {
            relative_id: rel,
            descriptor_digest: Digest {
                alg,
                value: alg.digest(&descriptor_integrity_bytes(&d, rel)),
            },
            object_digest: Digest { alg, value },
        });
    }
    Ok(ImageMetadata {
        version: METADATA_VERSION,
        header_digest: Digest {
            alg,
            value: alg.digest(&header_integrity_bytes(img.header())),
        },
        objects,
    })
}

/// Signs the image at `path` and returns the new signature object ids.
pub fn sign(path: &Path, key: &mut SigningKey, opts: &SignOptions) -> Result<Vec<u32>, SignError> {
    let fingerprint: [u8; 20] = key
        .fingerprint()
        .try_into()
        .map_err(|_| SignError::FingerprintSize)?;
    let alg = opts.digest.unwrap_or(DigestAlg::Sha256);
    let time = opts.time.unwrap_or_else(SystemTime::now);
    let unix = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));

    // Work out every (group, objects) to sign before writing anything, so a
    // bad argument leaves the image untouched.
    let mut img = Image::open(path)?;
    let jobs: Vec<(u32, Vec<u32>)> = match opts.target {
        SignTarget::AllGroups => {
            let groups = select::group_ids(&img);
            if groups.is_empty() {
                return Err(SignError::NoGroups);
            }
            groups
                .into_iter()
                .map(|g| {
                    let ids = select::group_objects(&img, g)
                        .iter()
                        .map(|d| d.id)
                        .collect();
                    (g, ids)
                })
                .collect()
        }
        SignTarget::Group(g) => {
            let ids: Vec<u32> = select::group_objects(&img, g)
                .iter()
                .map(|d| d.id)
                .collect();
            if ids.is_empty() {
                return Err(SignError::GroupNotFound(g));
            }
            vec![(g, ids)]
        }
        SignTarget::Object(id) => {
            let d = img.descriptor(id).ok_or(SignError::ObjectNotFound(id))?;
            let g = d.group_id.ok_or(SignError::ObjectNotGrouped(id))?;
            vec![(g, vec![id])]
        }
    };
    let mut envelopes = Vec::new();
    for (group, ids) in jobs {
        let md = group_metadata(&mut img, group, &ids, alg)?;
        let json = md.to_json();
        let sig = key.sign_text(json.as_bytes(), time)?;
        envelopes.push((group, clearsign::encode(json.as_bytes(), "SHA256", &sig)));
    }
    drop(img);

    let mut ids = Vec::new();
    for (group, envelope) in envelopes {
        let obj = ObjectInput::new(DataType::Signature, envelope)
            .no_group()
            .link_group(group)
            .signature(HashType::Sha256, fingerprint);
        let add = AddOptions {
            time: Some(unix),
            ..AddOptions::default()
        };
        ids.push(add_object(path, obj, &add)?);
    }
    Ok(ids)
}
