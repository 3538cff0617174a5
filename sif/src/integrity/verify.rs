//! Verifying every object group of an image, the way sylabs/sif
//! `pkg/integrity` does, with a typed verdict.

use std::collections::HashMap;
use std::io::{Read, Seek};

use super::clearsign;
use super::digest::{feed_reader, hex, DigestAlg};
use super::dsse::{self, PemPublicKey};
use super::error::VerifyError;
use super::legacy;
use super::metadata::{descriptor_integrity_bytes, header_integrity_bytes, ImageMetadata};
use super::pgp::{self, Keyring, PgpFailure};
use super::select::{self, Format};
use crate::{DataType, Descriptor, HashType, Image, Link};

/// What to verify against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// OpenPGP certificates for clear-signed (and legacy) signatures.
    pub keyring: Keyring,
    /// PEM public keys for DSSE signatures.
    pub pem_keys: Vec<PemPublicKey>,
    /// Check legacy (pre-3.6 `SIFHASH`) signatures instead of current ones.
    /// They cover object data only, not the header or descriptors.
    pub legacy: bool,
}

/// One signature object and what became of it.
#[derive(Debug, Clone)]
pub struct SignatureReport {
    /// Signature object id.
    pub id: u32,
    /// What it is linked to.
    pub target: Link,
    /// Encoding.
    pub format: Format,
    /// Fingerprint recorded in the descriptor (upper-case hex), if any.
    pub fingerprint: Option<String>,
    /// Who verifiably made it: certificate fingerprint (OpenPGP) or PEM key id.
    pub signer: Option<String>,
    /// Objects whose integrity it established.
    pub verified_objects: Vec<u32>,
    /// Outcome.
    pub result: Result<(), VerifyError>,
}

/// An object group and its members.
#[derive(Debug, Clone)]
pub struct GroupReport {
    /// Group id.
    pub id: u32,
    /// Object ids in the group.
    pub objects: Vec<u32>,
}

/// Everything verification found out, and the verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// Groups of the image.
    pub groups: Vec<GroupReport>,
    /// Signatures checked, in the order checked.
    pub signatures: Vec<SignatureReport>,
    /// `Ok` only when every group is signed and every signature checks out.
    /// The first failure in group/signature order otherwise.
    pub verdict: Result<(), VerifyError>,
}

impl Report {
    /// Distinct verified signers.
    pub fn signers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .signatures
            .iter()
            .filter(|s| s.result.is_ok())
            .filter_map(|s| s.signer.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Object data digests already computed, so that several signatures over the
/// same object hash it once.
#[derive(Default)]
pub(crate) struct DigestCache {
    map: HashMap<(u32, DigestAlg), Vec<u8>>,
}

impl DigestCache {
    /// Digest of object `d`'s data with `alg`.
    pub(crate) fn object<R: Read + Seek + Send>(
        &mut self,
        img: &mut Image<R>,
        d: &Descriptor,
        alg: DigestAlg,
    ) -> Result<Vec<u8>, VerifyError> {
        if let Some(v) = self.map.get(&(d.id, alg)) {
            return Ok(v.clone());
        }
        let mut hashers = [alg.hasher()];
        let r = img
            .object_reader(d)
            .map_err(|e| VerifyError::Image(e.to_string()))?;
        feed_reader(r, &mut hashers).map_err(|e| VerifyError::Image(e.to_string()))?;
        let [h] = hashers;
        let v = h.finish();
        self.map.insert((d.id, alg), v.clone());
        Ok(v)
    }
}

/// Verifies the image. Never panics on hostile input: every problem ends up
/// in the report's verdict.
pub fn verify<R: Read + Seek + Send>(img: &mut Image<R>, opts: &VerifyOptions) -> Report {
    let groups: Vec<GroupReport> = select::group_ids(img)
        .into_iter()
        .map(|g| GroupReport {
            id: g,
            objects: select::group_objects(img, g).iter().map(|d| d.id).collect(),
        })
        .collect();
    let mut report = Report {
        groups,
        signatures: Vec::new(),
        verdict: Ok(()),
    };
    report.verdict = run(img, opts, &mut report);
    report
}

fn run<R: Read + Seek + Send>(
    img: &mut Image<R>,
    opts: &VerifyOptions,
    report: &mut Report,
) -> Result<(), VerifyError> {
    // Rule 1: a data object outside every group could be swapped freely.
    if let Some(d) = img
        .descriptors()
        .iter()
        .find(|d| d.group_id.is_none() && d.data_type != DataType::Signature)
    {
        return Err(VerifyError::Ungrouped { id: d.id });
    }
    if report.groups.is_empty() {
        return Err(VerifyError::NoGroups);
    }
    let mut cache = DigestCache::default();
    if opts.legacy {
        return legacy::verify(img, opts, &mut cache, report);
    }
    // Whether the image carries legacy signatures at all, to point users at
    // legacy verification when a group has nothing else.
    let sig_descriptors: Vec<Descriptor> = img.find_by_type(DataType::Signature).cloned().collect();
    let has_legacy = sig_descriptors.iter().any(|d| {
        select::read_signature(img, d).is_ok_and(|b| select::classify(&b) == Format::Legacy)
    });
    let mut verdict = Ok(());
    for g in report.groups.clone() {
        let mut sigs = Vec::new();
        let legacy_only = has_legacy;
        for d in select::signatures_linked_to(img, Link::Group(g.id)) {
            let data = select::read_signature(img, &d);
            if data.as_deref().map(select::classify) == Ok(Format::Legacy) {
                continue;
            }
            sigs.push((d, data));
        }
        if sigs.is_empty() {
            verdict = verdict.and(Err(VerifyError::Unsigned {
                group: g.id,
                legacy_only,
            }));
            continue;
        }
        for (d, data) in sigs {
            let r = verify_group_signature(img, opts, &mut cache, g.id, &d, data);
            verdict = verdict.and(r.result.clone());
            report.signatures.push(r);
        }
    }
    // A group whose objects were all deleted leaves its signature behind
    // linked to nothing. The reference library silently skips it; here it
    // fails, since the image no longer holds what was signed.
    let present: Vec<u32> = report.groups.iter().map(|g| g.id).collect();
    let orphans: Vec<Descriptor> = img
        .descriptors()
        .iter()
        .filter(|d| d.data_type == DataType::Signature)
        .filter(|d| matches!(d.link, Link::Group(g) if !present.contains(&g)))
        .cloned()
        .collect();
    for d in orphans {
        let Link::Group(group) = d.link else { continue };
        let data = select::read_signature(img, &d);
        if data.as_deref().map(select::classify) == Ok(Format::Legacy) {
            continue;
        }
        verdict = verdict.and(Err(VerifyError::GroupRemoved {
            group,
            signature: d.id,
        }));
    }
    verdict
}

/// A signature descriptor's recorded fingerprint as hex, if non-zero.
pub(crate) fn descriptor_fingerprint(d: &Descriptor) -> Option<[u8; 20]> {
    d.signature().ok().and_then(|s| s.fingerprint)
}

/// The hash a signature descriptor declares; an unreadable one makes the
/// signature malformed.
pub(crate) fn descriptor_hash(d: &Descriptor) -> Result<HashType, VerifyError> {
    d.signature()
        .map(|s| s.hash_type)
        .map_err(|e| VerifyError::Malformed {
            signature: d.id,
            reason: e.to_string(),
        })
}

/// Checks an OpenPGP clear-signed signature object against the keyring and
/// the descriptor's fingerprint; returns the message text and the signer.
pub(crate) fn check_clearsigned(
    keyring: &Keyring,
    d: &Descriptor,
    data: &[u8],
) -> Result<(Vec<u8>, String), VerifyError> {
    let signature = d.id;
    let malformed = |reason: String| VerifyError::Malformed { signature, reason };
    let cs = clearsign::decode(data)
        .ok_or_else(|| malformed("not a clear-signed OpenPGP message".into()))?;
    if keyring.is_empty() {
        return Err(VerifyError::NoKeyMaterial {
            signature,
            format: "openpgp",
        });
    }
    let sig = pgp::parse_signature(&cs.signature).map_err(malformed)?;
    let signer = pgp::verify_text(keyring, &cs.signed, &sig).map_err(|f| match f {
        PgpFailure::Malformed(reason) => VerifyError::Malformed { signature, reason },
        PgpFailure::UnknownKey { issuer } => VerifyError::UnknownKey {
            signature,
            signer: issuer,
        },
        PgpFailure::KeyNotUsable {
            fingerprint,
            reason,
        } => VerifyError::KeyNotUsable {
            signature,
            fingerprint,
            reason,
        },
        PgpFailure::BadSignature {
            fingerprint,
            reason,
        } => VerifyError::BadSignature {
            signature,
            fingerprint,
            reason,
        },
    })?;
    let recorded = descriptor_fingerprint(d);
    if recorded.map(|f| f.to_vec()) != Some(signer.clone()) {
        return Err(VerifyError::FingerprintMismatch {
            signature,
            descriptor: recorded.map(|f| hex(&f).to_uppercase()),
            signer: hex(&signer).to_uppercase(),
        });
    }
    Ok((cs.text, hex(&signer).to_uppercase()))
}

/// Checks a DSSE envelope against the PEM keys; returns the payload and the
/// id of the key that verified.
fn check_dsse(
    keys: &[PemPublicKey],
    d: &Descriptor,
    data: &[u8],
) -> Result<(Vec<u8>, String), VerifyError> {
    let signature = d.id;
    let env = dsse::parse(data).map_err(|reason| VerifyError::Malformed { signature, reason })?;
    if keys.is_empty() {
        return Err(VerifyError::NoKeyMaterial {
            signature,
            format: "dsse",
        });
    }
    let hash = descriptor_hash(d)?;
    let pae = dsse::pae(dsse::PAYLOAD_TYPE, &env.payload);
    // Threshold 1: one signature verified by one given key suffices.
    for (_, sig) in &env.signatures {
        if let Some(k) = keys.iter().find(|k| k.verify(hash, &pae, sig)) {
            return Ok((env.payload, k.id().to_string()));
        }
    }
    let ids: Vec<&str> = env
        .signatures
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !id.is_empty())
        .collect();
    Err(VerifyError::UnknownKey {
        signature,
        signer: (!ids.is_empty()).then(|| format!("key {}", ids.join(", "))),
    })
}

fn verify_group_signature<R: Read + Seek + Send>(
    img: &mut Image<R>,
    opts: &VerifyOptions,
    cache: &mut DigestCache,
    group: u32,
    d: &Descriptor,
    data: Result<Vec<u8>, String>,
) -> SignatureReport {
    let mut r = SignatureReport {
        id: d.id,
        target: d.link,
        format: Format::Unknown,
        fingerprint: descriptor_fingerprint(d).map(|f| hex(&f).to_uppercase()),
        signer: None,
        verified_objects: Vec::new(),
        result: Ok(()),
    };
    r.result = (|| {
        let data = data.map_err(|reason| VerifyError::Malformed {
            signature: d.id,
            reason,
        })?;
        r.format = select::classify(&data);
        let (text, signer) = match r.format {
            Format::Dsse => check_dsse(&opts.pem_keys, d, &data)?,
            Format::OpenPgp => check_clearsigned(&opts.keyring, d, &data)?,
            _ => {
                return Err(VerifyError::Malformed {
                    signature: d.id,
                    reason: "signature format not recognized".into(),
                })
            }
        };
        r.signer = Some(signer);
        let md = ImageMetadata::from_json(&text).map_err(|e| VerifyError::Malformed {
            signature: d.id,
            reason: e.to_string(),
        })?;
        check_metadata(img, cache, group, d.id, &md, &mut r.verified_objects)
    })();
    r
}

/// Checks the signed document against the image: same object set, then the
/// header, then each object's descriptor and data, in the reference order.
fn check_metadata<R: Read + Seek + Send>(
    img: &mut Image<R>,
    cache: &mut DigestCache,
    group: u32,
    signature: u32,
    md: &ImageMetadata,
    verified: &mut Vec<u32>,
) -> Result<(), VerifyError> {
    let objects = select::group_objects(img, group);
    let min_id = select::group_min_id(img, group).unwrap_or(0);
    let signed_ids: Vec<u64> = md
        .objects
        .iter()
        .map(|o| u64::from(min_id) + u64::from(o.relative_id))
        .collect();
    if let Some(d) = objects
        .iter()
        .find(|d| !signed_ids.contains(&u64::from(d.id)))
    {
        return Err(VerifyError::ObjectAdded {
            id: d.id,
            group,
            signature,
        });
    }
    if let Some(&id) = signed_ids
        .iter()
        .filter(|id| !objects.iter().any(|d| u64::from(d.id) == **id))
        .min()
    {
        return Err(VerifyError::ObjectRemoved {
            id: u32::try_from(id).unwrap_or(u32::MAX),
            group,
            signature,
        });
    }
    let header = header_integrity_bytes(img.header());
    if md.header_digest.alg.digest(&header) != md.header_digest.value {
        return Err(VerifyError::HeaderTampered { signature });
    }
    for d in &objects {
        let rel = d.id - min_id;
        let Some(om) = md.objects.iter().find(|o| o.relative_id == rel) else {
            unreachable_added(d.id, group, signature)?;
            continue;
        };
        let db = descriptor_integrity_bytes(d, rel);
        if om.descriptor_digest.alg.digest(&db) != om.descriptor_digest.value {
            return Err(VerifyError::DescriptorTampered {
                id: d.id,
                signature,
            });
        }
        if cache.object(img, d, om.object_digest.alg)? != om.object_digest.value {
            return Err(VerifyError::ObjectTampered {
                id: d.id,
                signature,
            });
        }
        verified.push(d.id);
    }
    Ok(())
}

/// Set equality was checked above; kept as an error rather than a panic so
/// hostile input can never abort the verifier.
fn unreachable_added(id: u32, group: u32, signature: u32) -> Result<(), VerifyError> {
    Err(VerifyError::ObjectAdded {
        id,
        group,
        signature,
    })
}
