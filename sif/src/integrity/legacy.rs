//! Legacy signatures (Singularity < 3.6): a clear-signed `SIFHASH:` line with
//! a digest of object data. They do not cover the header or descriptors, so
//! they are only checked when explicitly asked for.
//!
//! Accepted when: every legacy signature in the image verifies, and the
//! primary system partition (or, without one, every grouped data object) is
//! covered by an object signature or by a signature over its group. This is
//! what Apptainer's `verify --legacy-insecure` relies on: the partition that
//! is run is the one whose bytes were signed. Overlay partitions are run
//! too (their files lie over the primary partition's), so each must be
//! covered the same way: a legacy signature over the primary partition
//! alone says nothing about an overlay added next to it.

use std::io::{Read, Seek};

use super::digest::{decode_hex, feed_reader, DigestAlg};
use super::error::VerifyError;
use super::select::{self, Format};
use super::verify::{
    check_clearsigned, descriptor_fingerprint, descriptor_hash, DigestCache, Report,
    SignatureReport, VerifyOptions,
};
use crate::{DataType, Descriptor, HashType, Image, Link, PartType};

/// Parses `SIFHASH:\n<hex>\n` with the descriptor's hash type.
fn parse_digest(text: &[u8], hash: HashType) -> Result<(DigestAlg, Vec<u8>), String> {
    let alg = match hash {
        HashType::Sha256 => DigestAlg::Sha256,
        HashType::Sha384 => DigestAlg::Sha384,
        HashType::Sha512 => DigestAlg::Sha512,
        other => return Err(format!("unsupported legacy hash type {other}")),
    };
    let body = text
        .strip_prefix(b"SIFHASH:\n")
        .ok_or("not a SIFHASH message")?;
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    let value = std::str::from_utf8(body)
        .ok()
        .and_then(decode_hex)
        .ok_or("SIFHASH digest is not hex")?;
    if value.len() != alg.digest_len() {
        return Err(format!("SIFHASH digest has the wrong length for {alg}"));
    }
    Ok((alg, value))
}

/// Runs legacy verification, filling `report.signatures`.
pub(crate) fn verify<R: Read + Seek + Send>(
    img: &mut Image<R>,
    opts: &VerifyOptions,
    cache: &mut DigestCache,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let sigs: Vec<Descriptor> = img
        .descriptors()
        .iter()
        .filter(|d| d.data_type == DataType::Signature)
        .cloned()
        .collect();
    let mut verdict = Ok(());
    let mut covered: Vec<u32> = Vec::new();
    for d in sigs {
        let Ok(data) = select::read_signature(img, &d) else {
            continue;
        };
        if select::classify(&data) != Format::Legacy {
            continue;
        }
        let mut r = SignatureReport {
            id: d.id,
            target: d.link,
            format: Format::Legacy,
            fingerprint: descriptor_fingerprint(&d).map(|f| super::digest::hex(&f).to_uppercase()),
            signer: None,
            verified_objects: Vec::new(),
            result: Ok(()),
        };
        r.result = check_one(img, opts, cache, &d, &data, &mut r);
        if r.result.is_ok() {
            covered.extend(&r.verified_objects);
        }
        verdict = verdict.and(r.result.clone());
        report.signatures.push(r);
    }
    if report.signatures.is_empty() {
        let group = report.groups.first().map_or(0, |g| g.id);
        return verdict.and(Err(VerifyError::Unsigned {
            group,
            legacy_only: false,
        }));
    }
    // Coverage: the primary partition and the overlays, else every
    // grouped data object.
    let must: Vec<u32> = match img.primary_partition() {
        Ok(p) => std::iter::once(p.id)
            .chain(
                img.descriptors()
                    .iter()
                    .filter(|d| d.is_partition_of_type(PartType::Overlay))
                    .map(|d| d.id),
            )
            .collect(),
        Err(_) => img
            .descriptors()
            .iter()
            .filter(|d| d.group_id.is_some() && d.data_type != DataType::Signature)
            .filter(|d| !d.is_partition_of_type(PartType::PrimSys))
            .map(|d| d.id)
            .collect(),
    };
    if let Some(id) = must.into_iter().find(|id| !covered.contains(id)) {
        verdict = verdict.and(Err(VerifyError::UnsignedObject { id }));
    }
    verdict
}

fn check_one<R: Read + Seek + Send>(
    img: &mut Image<R>,
    opts: &VerifyOptions,
    cache: &mut DigestCache,
    d: &Descriptor,
    data: &[u8],
    r: &mut SignatureReport,
) -> Result<(), VerifyError> {
    let signature = d.id;
    let (text, signer) = check_clearsigned(&opts.keyring, d, data)?;
    r.signer = Some(signer);
    let hash = descriptor_hash(d)?;
    let (alg, want) =
        parse_digest(&text, hash).map_err(|reason| VerifyError::Malformed { signature, reason })?;
    match d.link {
        Link::Object(id) => {
            let obj = img.descriptor(id).cloned().ok_or(VerifyError::Malformed {
                signature,
                reason: format!("linked object {id} does not exist"),
            })?;
            if cache.object(img, &obj, alg)? != want {
                return Err(VerifyError::ObjectTampered { id, signature });
            }
            r.verified_objects.push(id);
        }
        Link::Group(group) => {
            // The digest covers the group's objects' data back to back.
            let objects = select::group_objects(img, group);
            if objects.is_empty() {
                return Err(VerifyError::Malformed {
                    signature,
                    reason: format!("linked group {group} does not exist"),
                });
            }
            let mut hashers = [alg.hasher()];
            for o in &objects {
                let rd = img
                    .object_reader(o)
                    .map_err(|e| VerifyError::Image(e.to_string()))?;
                feed_reader(rd, &mut hashers).map_err(|e| VerifyError::Image(e.to_string()))?;
            }
            let [h] = hashers;
            if h.finish() != want {
                return Err(VerifyError::GroupDataTampered { group, signature });
            }
            r.verified_objects.extend(objects.iter().map(|o| o.id));
        }
        Link::None => {
            return Err(VerifyError::Malformed {
                signature,
                reason: "signature is not linked to an object or group".into(),
            })
        }
    }
    Ok(())
}
