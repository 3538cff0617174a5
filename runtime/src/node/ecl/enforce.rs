//! Applying a partition's ECL to one image, for `sifrun slurm-setup` and
//! `sifrun ecl check`: which bytes to trust, verification against the
//! partition's keyrings, the decision, and the per-node record of what was
//! verified.
//!
//! # The bytes verified are the bytes mounted
//!
//! The loop device reads the image file live, so verifying a file its
//! owner can still write proves nothing about what the kernel reads later.
//! An image is therefore mounted straight from the user's file only when
//! the file cannot change under us: owned by root and not writable by
//! group or others ([`ImageSource::File`]). Any other image is first copied
//! into the node cache entry (a root-only directory, see [`super::copy`]),
//! and from then on everything comes from the *copy* alone: its
//! descriptors, the partition's offset and size, the environment, the
//! bytes verified and the bytes mounted ([`ImageSource::Copy`]). A writer
//! racing the copy only produces a copy that fails verification; nothing
//! read from the live file before the copy decides anything.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sif::integrity::{self, Format, Keyring, Report, VerifyOptions};
use sif::Link;

use super::catalogue::{Catalogue, Lookup, Record};
use super::config::{EclConfig, PartitionPolicy};
use super::decide::{decide, Decision, SigStatus, SignatureFact, SignerFacts};
use crate::error::{Context, Error, Result};

/// Where the bytes that run come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// The user's file itself (it cannot change: root-owned, not group or
    /// other writable), or no ECL applies.
    File,
    /// A root-owned copy in the node cache.
    Copy,
}

impl ImageSource {
    /// For an ECL-checked image with metadata `meta`.
    pub fn for_checked_image(meta: &std::fs::Metadata) -> Self {
        if crate::node::trusted::root_owned_not_writable(meta) {
            ImageSource::File
        } else {
            ImageSource::Copy
        }
    }

    /// Distinguishes cache keys: a copy and the live file are different
    /// bytes as far as trust goes.
    pub fn tag(self) -> u64 {
        match self {
            ImageSource::File => 0,
            ImageSource::Copy => 1,
        }
    }
}

/// A partition's activated ECL, ready to check images.
#[derive(Debug)]
pub struct EclCheck {
    pub partition: String,
    pub policy: PartitionPolicy,
    /// The partition's keyrings as read (path, bytes): read once, parsed
    /// only when an image has to be verified (a recorded verdict needs
    /// just their digest).
    keyrings: Vec<(PathBuf, Vec<u8>)>,
    /// Names this policy's verification records.
    digest: String,
    /// Where images verified once for every node are staged.
    catalogue: Option<Catalogue>,
}

/// An ECL decision and the verification facts it rests on.
#[derive(Debug, serde::Serialize)]
pub struct Verdict {
    pub partition: String,
    /// The list's source file.
    pub ecl: PathBuf,
    #[serde(flatten)]
    pub decision: Decision,
    pub facts: SignerFacts,
    /// True when the facts came from the node's record or the catalogue's
    /// (no hashing).
    pub cached: bool,
    /// The catalogue record the facts came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue_record: Option<PathBuf>,
}

impl Verdict {
    /// The refusal as the user sees it (one line, image named by the caller).
    pub fn refusal(&self) -> String {
        format!(
            "refused by the execution control list of partition {} ({}): {}",
            self.partition, self.decision.rule, self.decision.reason
        )
    }
}

impl EclCheck {
    /// The check for job `job_id` (restart `restart_count`, owned by
    /// `uid`) under the site file `config`: `None` when no activated list
    /// applies to its partition. The partition comes from slurmctld, cached
    /// in `<state_dir>/jobs`.
    pub fn for_job(
        config: &Path,
        job_id: u32,
        restart_count: u32,
        uid: u32,
        state_dir: &Path,
    ) -> Result<Option<Self>> {
        let config = EclConfig::load(config)?;
        if !config.any_activated() {
            return Ok(None);
        }
        let partition = super::partition::job_partition(
            job_id,
            restart_count,
            uid,
            &super::partition::records_dir(state_dir),
            &config.scontrol,
        )?;
        Self::for_partition(&config, &partition)
    }

    /// The check for `partition`; `None` when no activated list applies.
    pub fn for_partition(config: &EclConfig, partition: &str) -> Result<Option<Self>> {
        let Some(policy) = config.for_partition(partition) else {
            return Ok(None);
        };
        if !policy.ecl.activated {
            return Ok(None);
        }
        Self::for_policy(partition, policy, config.catalogue.clone()).map(Some)
    }

    /// The check of `policy` (named by `partition`), activated or not.
    pub fn for_policy(
        partition: &str,
        policy: &PartitionPolicy,
        catalogue: Option<Catalogue>,
    ) -> Result<Self> {
        let keyrings = policy
            .keyrings
            .iter()
            .map(|path| {
                std::fs::read(path)
                    .map(|bytes| (path.clone(), bytes))
                    .with_context(|| format!("reading keyring {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(EclCheck {
            partition: partition.to_string(),
            digest: policy_digest(policy.ecl.legacyinsecure, &keyrings),
            keyrings,
            policy: policy.clone(),
            catalogue,
        })
    }

    /// Names what this list's keys (and legacy setting) verify: records
    /// are kept per digest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the catalogue says about `image` (an open file) for this list:
    /// a trusted record without facts for this list's keys is no use.
    pub fn catalogue_lookup(&self, image: &std::fs::File) -> Lookup {
        let Some(catalogue) = &self.catalogue else {
            return Lookup::NotStaged;
        };
        match catalogue.lookup(image) {
            Lookup::Trusted {
                record_path,
                record,
            } if !record.verified.contains_key(&self.digest) => Lookup::Unrecorded {
                reason: format!(
                    "{}: staged for other keys than partition {}'s (stage the image again)",
                    record_path.display(),
                    self.partition
                ),
            },
            other => other,
        }
    }

    /// The decision from the facts a trusted catalogue `record` holds for
    /// this list's keys (see [`Self::catalogue_lookup`]).
    pub fn decide_staged(
        &self,
        record_path: &Path,
        record: &Record,
        image_dir: &Path,
    ) -> Result<Verdict> {
        let facts = record.verified.get(&self.digest).cloned().ok_or_else(|| {
            Error::system(format!(
                "{}: no facts for partition {}'s keys",
                record_path.display(),
                self.partition
            ))
        })?;
        Ok(Verdict {
            partition: self.partition.clone(),
            ecl: self.policy.source.clone(),
            decision: decide(&self.policy.ecl, image_dir, &facts),
            facts,
            cached: true,
            catalogue_record: Some(record_path.to_path_buf()),
        })
    }

    /// Verifies the image at `backing` (or reuses the record kept in
    /// `record_dir` from an earlier verification of the same bytes under
    /// the same keys) and decides. `image_dir` is the real directory of
    /// the image the user named (for `dirpath` rules).
    pub fn check(
        &self,
        backing: &Path,
        image_dir: &Path,
        record_dir: Option<&Path>,
    ) -> Result<Verdict> {
        let record = record_dir.map(|d| d.join(format!("verified-{}.json", self.digest)));
        let cached = record.as_deref().and_then(load_facts);
        let (facts, was_cached) = match cached {
            Some(facts) => (facts, true),
            None => {
                let facts = verify_image(backing, &self.verify_options()?)?;
                if let Some(record) = &record {
                    store_facts(record, &facts)?;
                }
                (facts, false)
            }
        };
        Ok(Verdict {
            partition: self.partition.clone(),
            ecl: self.policy.source.clone(),
            decision: decide(&self.policy.ecl, image_dir, &facts),
            facts,
            cached: was_cached,
            catalogue_record: None,
        })
    }
}

impl EclCheck {
    /// The partition's keyrings, parsed, and the verification options they
    /// imply.
    pub fn verify_options(&self) -> Result<VerifyOptions> {
        let mut opts = VerifyOptions {
            legacy: self.policy.ecl.legacyinsecure,
            ..VerifyOptions::default()
        };
        for (path, bytes) in &self.keyrings {
            let ring = Keyring::from_bytes(bytes).map_err(|e| {
                Error::usage(format!(
                    "ECL configuration: keyring {}: {e}",
                    path.display()
                ))
            })?;
            opts.keyring.extend(ring);
        }
        Ok(opts)
    }
}

/// Names a verification record: the same image verified against other
/// keys (another partition) is another record.
fn policy_digest(legacy: bool, keyrings: &[(PathBuf, Vec<u8>)]) -> String {
    let mut hash = Sha256::new();
    hash.update([u8::from(legacy)]);
    for (_, bytes) in keyrings {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    }
    integrity::hex(&hash.finalize()[..8])
}

/// Verifies the image at `path` and returns what an ECL needs to know.
pub fn verify_image(path: &Path, opts: &VerifyOptions) -> Result<SignerFacts> {
    let mut image = sif::Image::open(path).map_err(|e| Error::image(e.to_string()).at(path))?;
    Ok(facts_from_report(&integrity::verify(&mut image, opts)))
}

/// Per-signature outcomes. Any failed verdict other than "unknown key"
/// also becomes an invalid pseudo-signature, so every mode refuses it.
///
/// Legacy signatures (only reported under `legacyinsecure`) may cover a
/// single object: Singularity < 3.6 signed the primary partition alone.
/// Such a signature counts for the group holding its object, and the
/// groups that need a signature are those the legacy signatures cover:
/// the legacy verdict already requires the primary partition (the bytes
/// that run) to be covered, as Apptainer's `legacyinsecure` does.
pub fn facts_from_report(report: &Report) -> SignerFacts {
    let group_of_object = |id: u32| {
        report
            .groups
            .iter()
            .find(|g| g.objects.contains(&id))
            .map(|g| g.id)
    };
    let mut signatures: Vec<SignatureFact> = report
        .signatures
        .iter()
        .map(|s| SignatureFact {
            group: match s.target {
                Link::Group(g) => Some(g),
                Link::Object(id) if s.format == Format::Legacy => group_of_object(id),
                _ => None,
            },
            fingerprint: s.fingerprint.clone(),
            status: match &s.result {
                Ok(()) => SigStatus::Verified {
                    signer: s
                        .signer
                        .clone()
                        .or_else(|| s.fingerprint.clone())
                        .unwrap_or_default(),
                },
                Err(e) if e.kind() == "unknown-key" => SigStatus::UnknownKey,
                Err(e) => SigStatus::Invalid {
                    reason: e.to_string(),
                },
            },
        })
        .collect();
    if let Err(e) = &report.verdict {
        if e.kind() != "unknown-key" {
            // Covers image-level failures the per-signature view cannot
            // show (an object outside every group, an unreadable image).
            signatures.push(SignatureFact {
                group: None,
                fingerprint: None,
                status: SigStatus::Invalid {
                    reason: e.to_string(),
                },
            });
        }
    }
    let legacy = report.signatures.iter().any(|s| s.format == Format::Legacy);
    let groups = if legacy {
        let mut covered: Vec<u32> = signatures.iter().filter_map(|s| s.group).collect();
        covered.sort_unstable();
        covered.dedup();
        covered
    } else {
        report.groups.iter().map(|g| g.id).collect()
    };
    SignerFacts { groups, signatures }
}

/// Reads a stored verification record.
pub fn load_facts(path: &Path) -> Option<SignerFacts> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Stores a verification record (write, then rename: readers never see
/// half a record).
pub fn store_facts(path: &Path, facts: &SignerFacts) -> Result<()> {
    let tmp: PathBuf = path.with_extension(format!("tmp.{}", std::process::id()));
    let text = serde_json::to_vec(facts).map_err(|e| Error::system(e.to_string()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&text))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sif::integrity::{GroupReport, SignatureReport, VerifyError};

    const FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

    fn report(target: Link, format: Format, verdict: Result<(), VerifyError>) -> Report {
        Report {
            groups: vec![
                GroupReport {
                    id: 1,
                    objects: vec![1, 2],
                },
                GroupReport {
                    id: 2,
                    objects: vec![3],
                },
            ],
            signatures: vec![SignatureReport {
                id: 4,
                target,
                format,
                fingerprint: Some(FP.into()),
                signer: Some(FP.into()),
                verified_objects: vec![2],
                result: Ok(()),
            }],
            verdict,
        }
    }

    #[test]
    fn legacy_object_signatures_count_for_their_group() {
        // Singularity < 3.6 signed the primary partition (object 2) alone;
        // the legacy verdict already checked that it covers what runs.
        let facts = facts_from_report(&report(Link::Object(2), Format::Legacy, Ok(())));
        assert_eq!(facts.groups, vec![1]);
        assert_eq!(facts.signatures[0].group, Some(1));
        // A failed legacy verdict still refuses.
        let facts = facts_from_report(&report(
            Link::Object(2),
            Format::Legacy,
            Err(VerifyError::UnsignedObject { id: 3 }),
        ));
        assert!(facts
            .signatures
            .iter()
            .any(|s| matches!(s.status, SigStatus::Invalid { .. })));
    }

    #[test]
    fn current_signatures_need_every_group() {
        let facts = facts_from_report(&report(
            Link::Group(1),
            Format::OpenPgp,
            Err(VerifyError::Unsigned {
                group: 2,
                legacy_only: false,
            }),
        ));
        assert_eq!(facts.groups, vec![1, 2]);
        // An object signature that is not legacy names no group.
        let facts = facts_from_report(&report(Link::Object(2), Format::OpenPgp, Ok(())));
        assert_eq!(facts.signatures[0].group, None);
    }
}
