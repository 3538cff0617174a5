//! The job's partition, from a source the job user cannot forge.
//!
//! SPANK offers no partition item and the job's environment
//! (`SLURM_JOB_PARTITION`) is the user's to set, so root asks slurmctld
//! (authenticated by munge as root) for the job record as JSON
//! (`scontrol --json show job ID`; Slurm 22.05's scontrol has no `--json`,
//! so there `squeue --json`, found beside the configured scontrol, whose
//! answer lists every job and is searched for ours). JSON matters: the text form
//! (`scontrol -o show job`) prints user-chosen fields such as `JobName`
//! before `Partition=`, unescaped, so a job named `x Partition=debug` could
//! pick the list that judges it. In JSON every user string is one quoted,
//! escaped value of its own key.
//!
//! The answer is cached per node in a root-only record named by job ID and
//! restart count (a requeued job may move to another partition), holding
//! the partition, the job's owner and its submit time. A record is used
//! only by steps of the same owner, is removed at job end (the plugin's
//! job epilog, [`forget_job`]) and expires after a day at the
//! latest, so a job ID that slurmctld hands out again (its state lost)
//! cannot inherit an old job's partition.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// How long a cached answer is trusted (older records are swept and asked
/// again): a day bounds a record that outlived its job's epilog.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper bound on the query to slurmctld.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound on slurmctld's answer (22.05's squeue lists every job).
const MAX_ANSWER: u64 = 256 << 20;

/// Where the records live under the node's state directory.
pub fn records_dir(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("jobs")
}

/// What slurmctld said about a job, as cached on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub partition: String,
    /// The job's owner: a record is only used for steps of that user.
    pub user_id: u32,
    /// Seconds since the epoch (0 if slurmctld did not say).
    pub submit_time: i64,
}

/// The partition of job `job_id` (restart `restart_count`) owned by
/// `uid`, cached under `cache_dir` (created root-only).
pub fn job_partition(
    job_id: u32,
    restart_count: u32,
    uid: u32,
    cache_dir: &Path,
    scontrol: &Path,
) -> Result<String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let entry = cache_dir.join(format!("{job_id}.{restart_count}"));
    if let Some(record) = read_record(&entry).filter(|r| r.user_id == uid) {
        return Ok(record.partition);
    }
    let record = query(job_id, scontrol)?;
    if record.user_id != uid {
        return Err(Error::system(format!(
            "slurmctld says job {job_id} belongs to uid {}, not to the step's uid {uid}",
            record.user_id
        )));
    }
    sweep(cache_dir);
    // Write-then-rename: a concurrent step never reads a half-written record.
    let tmp = cache_dir.join(format!(".{job_id}.{restart_count}.{}", std::process::id()));
    let text = serde_json::to_vec(&record).map_err(|e| Error::system(e.to_string()))?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
        .and_then(|()| std::fs::rename(&tmp, &entry));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(record.partition)
}

/// Removes every record of job `job_id` (all restarts) from `cache_dir`:
/// the job has ended on this node.
pub fn forget_job(job_id: u32, cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    let prefix = format!("{job_id}.");
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A cached record younger than [`CACHE_TTL`].
fn read_record(entry: &Path) -> Option<JobRecord> {
    let meta = std::fs::metadata(entry).ok()?;
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .unwrap_or_default();
    if age > CACHE_TTL || meta.len() > 4096 {
        return None;
    }
    let record: JobRecord = serde_json::from_slice(&std::fs::read(entry).ok()?).ok()?;
    is_partition_name(&record.partition).then_some(record)
}

/// Asks slurmctld: `scontrol --json show job ID`, or where scontrol has no
/// `--json` (Slurm 22.05) `squeue --json --jobs=ID`. Each bounded by
/// [`QUERY_TIMEOUT`].
fn query(job_id: u32, scontrol: &Path) -> Result<JobRecord> {
    let id = job_id.to_string();
    let out = match run_bounded(scontrol, &["--json", "show", "job", &id], job_id)? {
        Ok(out) => out,
        Err(err) if err.contains("unrecognized option") => {
            let squeue = scontrol.with_file_name("squeue");
            let jobs = format!("--jobs={id}");
            run_bounded(&squeue, &["--json", &jobs], job_id)?.map_err(|err| {
                Error::system(format!(
                    "asking slurmctld for the partition of job {job_id}: {err}"
                ))
            })?
        }
        Err(err) => {
            return Err(Error::system(format!(
                "asking slurmctld for the partition of job {job_id}: {err}"
            )))
        }
    };
    parse_job(&out, job_id).ok_or_else(|| {
        Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: no job record with a valid partition in its answer"
        ))
    })
}

/// Runs `program args` with a clean environment: `Ok(stdout)` when it
/// succeeds, `Ok(Err(stderr))` when it fails, `Err` when it cannot run or
/// does not finish within [`QUERY_TIMEOUT`].
fn run_bounded(
    program: &Path,
    args: &[&str],
    job_id: u32,
) -> Result<std::result::Result<Vec<u8>, String>> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", program.display()))?;
    // Read while it runs: a large answer would fill the pipe and block it.
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_ANSWER).read_to_end(&mut out);
        }
        out
    });
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let waited = crate::process::wait_until(&mut child, deadline, Duration::from_millis(2))
        .with_context(|| format!("waiting for {}", program.display()))?;
    let Some(status) = waited else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: no answer within {} s",
            QUERY_TIMEOUT.as_secs()
        )));
    };
    let out = reader.join().unwrap_or_default();
    let mut err = String::new();
    if let Some(s) = child.stderr.take() {
        let _ = s.take(64 * 1024).read_to_string(&mut err);
    }
    Ok(if status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{}: {}",
            program.display(),
            err.trim().replace('\n', " ")
        ))
    })
}

/// The record of job `job_id` from `scontrol --json show job` output.
/// Accepts the field shapes of every supported Slurm: plain numbers
/// (22.05) and `{"set":..,"number":..}` objects (23.02 and later).
fn parse_job(json: &[u8], job_id: u32) -> Option<JobRecord> {
    let doc: serde_json::Value = serde_json::from_slice(json).ok()?;
    let job = doc
        .get("jobs")?
        .as_array()?
        .iter()
        .find(|j| j.get("job_id").and_then(number) == Some(i64::from(job_id)))?;
    let partition = job.get("partition")?.as_str()?;
    if !is_partition_name(partition) {
        return None;
    }
    Some(JobRecord {
        partition: partition.to_string(),
        user_id: u32::try_from(job.get("user_id").and_then(number)?).ok()?,
        submit_time: job.get("submit_time").and_then(number).unwrap_or(0),
    })
}

/// A number, or Slurm's `{"set": true, "number": N}` wrapper.
fn number(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let set = v.get("set").and_then(serde_json::Value::as_bool)?;
        set.then(|| v.get("number").and_then(serde_json::Value::as_i64))
            .flatten()
    })
}

fn is_partition_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn sweep(cache_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return;
    };
    let now = SystemTime::now();
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() > CACHE_TTL)
            .unwrap_or(false);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_name_cannot_pick_the_partition() {
        // What `scontrol --json show job` prints for a job named to look
        // like another partition (22.05 shape).
        let json = br#"{"jobs":[{"job_id":12,"name":"x Partition=debug","user_id":1001,
            "partition":"secure","submit_time":1700000000,"comment":"\"partition\":\"debug\""}]}"#;
        let r = parse_job(json, 12).unwrap();
        assert_eq!(r.partition, "secure");
        assert_eq!(r.user_id, 1001);
        assert_eq!(r.submit_time, 1_700_000_000);
        // Another job's record is not ours.
        assert_eq!(parse_job(json, 13), None);
    }

    #[test]
    fn newer_slurm_number_objects_are_read() {
        let json = br#"{"jobs":[{"job_id":7,"user_id":1001,"partition":"gpu",
            "submit_time":{"set":true,"infinite":false,"number":1800000000}}]}"#;
        let r = parse_job(json, 7).unwrap();
        assert_eq!(
            (r.partition.as_str(), r.submit_time),
            ("gpu", 1_800_000_000)
        );
    }

    #[test]
    fn hostile_partition_names_and_garbage_are_refused() {
        assert_eq!(
            parse_job(
                br#"{"jobs":[{"job_id":1,"user_id":1,"partition":"a/../b"}]}"#,
                1
            ),
            None
        );
        assert_eq!(parse_job(b"JobId=1 Partition=secure", 1), None);
        assert_eq!(
            parse_job(br#"{"jobs":[{"job_id":1,"partition":"p"}]}"#, 1),
            None
        );
    }

    fn store(dir: &Path, name: &str, record: &JobRecord) {
        std::fs::write(dir.join(name), serde_json::to_vec(record).unwrap()).unwrap();
    }

    #[test]
    fn cached_answers_skip_the_query_for_the_same_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let record = JobRecord {
            partition: "gpu".into(),
            user_id: 1001,
            submit_time: 5,
        };
        store(dir.path(), "5.0", &record);
        // A scontrol that cannot run proves the cache answered.
        let none = Path::new("/nonexistent/scontrol");
        assert_eq!(job_partition(5, 0, 1001, dir.path(), none).unwrap(), "gpu");
        assert!(job_partition(5, 1, 1001, dir.path(), none).is_err());
        // Another user's step never uses the record.
        assert!(job_partition(5, 0, 1002, dir.path(), none).is_err());
        // The old text format is not a record.
        std::fs::write(dir.path().join("6.0"), "debug\n").unwrap();
        assert!(job_partition(6, 0, 1001, dir.path(), none).is_err());
    }

    #[test]
    fn job_end_forgets_every_restart_of_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let record = JobRecord {
            partition: "p".into(),
            user_id: 1,
            submit_time: 0,
        };
        for name in ["9.0", "9.1", "19.0", "90.0"] {
            store(dir.path(), name, &record);
        }
        forget_job(9, dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["19.0", "90.0"]);
    }
}
