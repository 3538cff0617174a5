//! The job's partition, from a source the job user cannot forge.
//!
//! SPANK offers no partition item and the job's environment
//! (`SLURM_JOB_PARTITION`) is the user's to set, so root asks slurmctld
//! (authenticated by munge as root): `squeue --jobs=ID --format=%P|%U|%V`,
//! with `squeue` found beside the configured `scontrol`. The format names
//! only fields Slurm owns (partition, numeric user ID, submit time), so no
//! text a user can write (job name, comment, work directory) is in the
//! answer at all. The text form of `scontrol -o show job` must never be
//! used: it prints the user's `JobName=` before `Partition=`, unescaped, so
//! a job named `x Partition=debug` could pick the list that judges it.
//! (JSON would be safe too, but Slurm 22.05's scontrol has none and its
//! `squeue --json` lists every job the controller knows: 100 ms a step on a
//! busy controller.)
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
/// Upper bound on slurmctld's answer (one line).
const MAX_ANSWER: u64 = 64 << 10;

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
    if expired(&meta) || meta.len() > 4096 {
        return None;
    }
    let record: JobRecord = serde_json::from_slice(&std::fs::read(entry).ok()?).ok()?;
    is_partition_name(&record.partition).then_some(record)
}

/// Asks slurmctld, bounded by [`QUERY_TIMEOUT`].
fn query(job_id: u32, scontrol: &Path) -> Result<JobRecord> {
    let squeue = scontrol.with_file_name("squeue");
    let jobs = format!("--jobs={job_id}");
    let out = run_bounded(&squeue, &["--noheader", &jobs, "--format=%P|%U|%V"], job_id)?.map_err(
        |err| {
            Error::system(format!(
                "asking slurmctld for the partition of job {job_id}: {err}"
            ))
        },
    )?;
    parse_job(&out).ok_or_else(|| {
        Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: no single job with a valid partition in its answer"
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

/// The record from `squeue --format=%P|%U|%V` output: exactly one line
/// of a partition name, a numeric user ID and a submit time.
fn parse_job(out: &[u8]) -> Option<JobRecord> {
    let text = std::str::from_utf8(out).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let line = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    let mut fields = line.trim().split('|');
    let (partition, uid, submit) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() || !is_partition_name(partition) {
        return None;
    }
    Some(JobRecord {
        partition: partition.to_string(),
        user_id: uid.parse().ok()?,
        submit_time: submit_seconds(submit).unwrap_or(0),
    })
}

/// Seconds since the epoch of Slurm's `YYYY-MM-DDTHH:MM:SS` (UTC assumed:
/// the value only tells records apart, it decides nothing).
fn submit_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
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
    for e in entries.flatten() {
        if e.metadata().is_ok_and(|m| expired(&m)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Older than [`CACHE_TTL`] (a record without a time counts as expired).
fn expired(meta: &std::fs::Metadata) -> bool {
    meta.modified()
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() > CACHE_TTL)
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_holds_only_fields_slurm_owns() {
        let r = parse_job(b"secure|1001|2026-12-01T21:54:24\n").unwrap();
        assert_eq!(r.partition, "secure");
        assert_eq!(r.user_id, 1001);
        assert_eq!(r.submit_time, 1_796_162_064);
        assert_eq!(submit_seconds("1970-01-01T00:00:00"), Some(0));
    }

    #[test]
    fn anything_but_one_clean_record_is_refused() {
        // What the old text query let a job name inject, and other garbage.
        for bad in [
            &b"JobId=1 JobName=x Partition=debug Partition=secure"[..],
            b"a/../b|1001|2026-12-01T00:00:00",
            b"debug,secure|1001|2026-12-01T00:00:00",
            b"secure|me|2026-12-01T00:00:00",
            b"secure|1001",
            b"secure|1001|x|y",
            b"secure|1001|2026-12-01T00:00:00\ndebug|1001|2026-12-01T00:00:00",
            b"",
        ] {
            assert_eq!(parse_job(bad), None, "{}", String::from_utf8_lossy(bad));
        }
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
