//! `sifrun catalogue`: stage images once for the whole cluster, and check
//! what a node would conclude about staged images (see
//! `sifrun_runtime::node::ecl::catalogue` for the trust rules).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use sif::integrity::hex;
use sifrun_runtime::error::{Context, Error, Result};
use sifrun_runtime::node::ecl::catalogue::{
    check_stage_name, record_name, staged_identity, Lookup, Record, RECORD_FORMAT,
};
use sifrun_runtime::node::ecl::enforce::{verify_image, EclCheck};
use sifrun_runtime::node::ecl::{decide, EclConfig, SignerFacts};

/// What one partition's list decides about an image.
#[derive(Debug, Serialize)]
pub struct PartitionDecision {
    pub partition: String,
    pub allowed: bool,
    pub rule: String,
    pub reason: String,
}

/// The outcome of staging, for the summary (or `--json`).
#[derive(Debug, Serialize)]
pub struct Staged {
    pub image: PathBuf,
    pub record: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub seconds: f64,
    pub partitions: Vec<PartitionDecision>,
}

/// `sifrun catalogue stage`: copies `image` into `dir` as `name`, read-only,
/// verifies the copy against every activated list's keys and writes the
/// record beside it.
pub fn stage(config: &Path, image: &Path, dir: &Path, name: Option<&str>) -> Result<Staged> {
    let start = Instant::now();
    let config = EclConfig::load(config)?;
    let policies = config.activated_policies();
    if policies.is_empty() {
        return Err(Error::usage(format!(
            "{}: no partition has an activated execution control list: nothing to verify staged images for",
            config.path().display()
        )));
    }
    let checks = policies
        .iter()
        .map(|(partition, policy)| EclCheck::for_policy(partition, policy, None))
        .collect::<Result<Vec<_>>>()?;
    let name = match name {
        Some(name) => name.to_string(),
        None => image
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                Error::usage(format!(
                    "{}: give the staged name with --name",
                    image.display()
                ))
            })?
            .to_string(),
    };
    check_stage_name(&name).map_err(|m| Error::usage(format!("--name: {m}")))?;
    let configured = config
        .catalogue
        .as_ref()
        .is_some_and(|c| c.dirs.iter().any(|d| d == dir));
    if !configured {
        eprintln!(
            "sifrun: note: {} is not among the catalogue dirs of {}; nodes trust only those (as they see them)",
            dir.display(),
            config.path().display()
        );
    }

    let staging = dir.join(format!(".{name}.stage-{}", std::process::id()));
    let result = (|| {
        let (file, sha256, bytes) = copy_hashing(image, &staging)?;
        // Verified from the copy, the bytes that will be served: nothing
        // read from the source decides anything.
        let mut facts_by_digest: BTreeMap<String, SignerFacts> = BTreeMap::new();
        for check in &checks {
            if !facts_by_digest.contains_key(check.digest()) {
                let facts = verify_image(&staging, &check.verify_options()?)?;
                facts_by_digest.insert(check.digest().to_string(), facts);
            }
        }
        let target = dir.join(&name);
        std::fs::rename(&staging, &target)
            .with_context(|| format!("renaming into {}", target.display()))?;
        let meta = file.metadata().context("reading the staged file")?;
        let record = Record {
            format: RECORD_FORMAT,
            image: name.clone(),
            identity: staged_identity(&file, &meta).context("reading the staged file")?,
            sha256,
            staged_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            verified: facts_by_digest.clone(),
        };
        let record_path = dir.join(record_name(&name));
        write_read_only(
            &record_path,
            &serde_json::to_vec_pretty(&record).unwrap_or_default(),
        )?;
        let image_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let partitions = checks
            .iter()
            .map(|check| {
                let facts = &facts_by_digest[check.digest()];
                let d = decide(&check.policy.ecl, &image_dir, facts);
                PartitionDecision {
                    partition: check.partition.clone(),
                    allowed: d.allowed,
                    rule: d.rule,
                    reason: d.reason,
                }
            })
            .collect();
        Ok(Staged {
            image: target,
            record: record_path,
            bytes,
            sha256: record.sha256,
            seconds: start.elapsed().as_secs_f64(),
            partitions,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

/// Copies `source` to a new file at `dest` (mode 0444 when done), hashing
/// what it writes; the open copy, its SHA-256 and its size.
fn copy_hashing(source: &Path, dest: &Path) -> Result<(File, String, u64)> {
    let mut input =
        File::open(source).map_err(|e| Error::image(format!("{}: {e}", source.display())))?;
    let mut output = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let (sha256, bytes) = hash_reading(&mut input, source, |chunk| {
        output
            .write_all(chunk)
            .with_context(|| format!("writing {}", dest.display()))
    })?;
    output
        .sync_all()
        .with_context(|| format!("writing {}", dest.display()))?;
    output
        .set_permissions(std::fs::Permissions::from_mode(0o444))
        .with_context(|| format!("making {} read-only", dest.display()))?;
    Ok((output, sha256, bytes))
}

/// Reads `reader` (the file `what`) to its end in 1 MiB chunks, handing
/// each to `also`: the SHA-256 (hex) of everything read, and its size.
fn hash_reading(
    reader: &mut impl Read,
    what: &Path,
    mut also: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(String, u64)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("reading {}", what.display()))?;
        if n == 0 {
            return Ok((hex(&hash.finalize()), bytes));
        }
        hash.update(&buf[..n]);
        also(&buf[..n])?;
        bytes += n as u64;
    }
}

/// Writes `bytes` to `path` (mode 0444) through a temporary file renamed
/// into place: a node never reads half a record.
fn write_read_only(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("record");
    let tmp = path.with_file_name(format!(".{name}.stage-{}", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `sifrun catalogue check` found for one image.
#[derive(Debug, Serialize)]
pub struct EntryState {
    pub image: PathBuf,
    /// `trusted`, `unrecorded`, `untrusted` or `not-staged`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
    /// Per activated list: allowed or not, from the record (trusted only).
    pub partitions: Vec<PartitionDecision>,
    /// With `--verify`: the whole file hashed and verified again, and
    /// compared with the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverified: Option<bool>,
}

impl EntryState {
    /// True when a node would use the record (and `--verify` agreed).
    pub fn good(&self) -> bool {
        self.state == "trusted" && self.reverified != Some(false)
    }

    pub fn line(&self) -> String {
        let mut line = format!("{}: {}", self.image.display(), self.state);
        if let Some(reason) = &self.reason {
            line += &format!(" ({reason})");
        }
        if !self.partitions.is_empty() {
            let parts: Vec<String> = self
                .partitions
                .iter()
                .map(|p| {
                    format!(
                        "{} {}",
                        p.partition,
                        if p.allowed { "allowed" } else { "refused" }
                    )
                })
                .collect();
            line += &format!("; {}", parts.join(", "));
        }
        match self.reverified {
            Some(true) => line += "; verified again: matches the record",
            Some(false) => line += "; verified again: DOES NOT match the record",
            None => {}
        }
        line
    }
}

/// `sifrun catalogue check`: what a node would conclude about each image
/// (opened as the caller: run it as a job user to see what a job sees).
pub fn check(config: &Path, images: &[PathBuf], reverify: bool) -> Result<Vec<EntryState>> {
    let config = EclConfig::load(config)?;
    let checks = config
        .activated_policies()
        .iter()
        .map(|(partition, policy)| {
            EclCheck::for_policy(partition, policy, config.catalogue.clone())
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(catalogue) = &config.catalogue else {
        return Err(Error::usage(format!(
            "{}: no [catalogue] section: nodes trust no staged images",
            config.path().display()
        )));
    };
    images
        .iter()
        .map(|image| {
            let file =
                File::open(image).map_err(|e| Error::image(format!("{}: {e}", image.display())))?;
            let mut state = EntryState {
                image: image.clone(),
                state: "not-staged",
                reason: None,
                record: None,
                partitions: Vec::new(),
                reverified: None,
            };
            match catalogue.lookup(&file) {
                Lookup::NotStaged => {
                    state.reason = Some("not in a catalogue directory".into());
                }
                Lookup::Unrecorded { reason } => {
                    state.state = "unrecorded";
                    state.reason = Some(reason);
                }
                Lookup::Untrusted { reason } => {
                    state.state = "untrusted";
                    state.reason = Some(reason);
                }
                Lookup::Trusted {
                    record_path,
                    record,
                } => {
                    state.state = "trusted";
                    let image_dir = record_path.parent().unwrap_or(Path::new("/"));
                    for check in &checks {
                        match check.decide_staged(&record_path, &record, image_dir) {
                            Ok(v) => state.partitions.push(PartitionDecision {
                                partition: check.partition.clone(),
                                allowed: v.decision.allowed,
                                rule: v.decision.rule,
                                reason: v.decision.reason,
                            }),
                            Err(_) => state.partitions.push(PartitionDecision {
                                partition: check.partition.clone(),
                                allowed: false,
                                rule: "not staged for these keys".into(),
                                reason: "the node verifies the image in full".into(),
                            }),
                        }
                    }
                    if reverify {
                        state.reverified = Some(reverify_entry(image, &file, &record, &checks)?);
                    }
                    state.record = Some(record_path);
                }
            }
            Ok(state)
        })
        .collect()
}

/// Hashes the whole file and verifies it again under each list's keys:
/// true when everything matches the record.
fn reverify_entry(image: &Path, file: &File, record: &Record, checks: &[EclCheck]) -> Result<bool> {
    let mut reader = file;
    let (sha256, _) = hash_reading(&mut reader, image, |_| Ok(()))?;
    if sha256 != record.sha256 {
        return Ok(false);
    }
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ));
    for check in checks {
        if let Some(recorded) = record.verified.get(check.digest()) {
            if &verify_image(&path, &check.verify_options()?)? != recorded {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
