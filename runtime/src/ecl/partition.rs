//! The job's partition, from a source the job user cannot forge.
//!
//! SPANK offers no partition item and the job's environment
//! (`SLURM_JOB_PARTITION`) is the user's to set, so root asks slurmctld
//! (`scontrol -o show job ID`, authenticated by munge as root). The answer
//! is cached per node in a root-only file keyed by job ID and restart count
//! (a requeued job may move to another partition), so only the first step
//! of a job on a node pays for the query.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Context, Error, Result};

/// How long a cached answer is kept (files older than this are swept).
const CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Upper bound on the query to slurmctld.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);

/// The partition of job `job_id` (restart `restart_count`), cached under
/// `cache_dir` (created root-only).
pub fn job_partition(
    job_id: u32,
    restart_count: u32,
    cache_dir: &Path,
    scontrol: &Path,
) -> Result<String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(cache_dir)
        .with_context(|| format!("creating {}", cache_dir.display()))?;
    let entry = cache_dir.join(format!("{job_id}.{restart_count}"));
    if let Ok(cached) = std::fs::read_to_string(&entry) {
        if let Some(name) = cached.lines().next().filter(|n| is_partition_name(n)) {
            return Ok(name.to_string());
        }
    }
    let partition = query(job_id, scontrol)?;
    sweep(cache_dir);
    // Write-then-rename: a concurrent step never reads a half-written name.
    let tmp = cache_dir.join(format!(".{job_id}.{restart_count}.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{partition}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &entry));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(partition)
}

/// Asks slurmctld. Bounded by [`QUERY_TIMEOUT`].
fn query(job_id: u32, scontrol: &Path) -> Result<String> {
    let mut child = Command::new(scontrol)
        .args(["-o", "show", "job", &job_id.to_string()])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", scontrol.display()))?;
    let deadline = Instant::now() + QUERY_TIMEOUT;
    let waited = crate::process::wait_until(&mut child, deadline, Duration::from_millis(2))
        .context("waiting for scontrol")?;
    let Some(status) = waited else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: no answer within {} s",
            QUERY_TIMEOUT.as_secs()
        )));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: {}",
            err.trim().replace('\n', " ")
        )));
    }
    parse_partition(&out).ok_or_else(|| {
        Error::system(format!(
            "asking slurmctld for the partition of job {job_id}: no Partition= in the answer"
        ))
    })
}

/// `Partition=NAME` from `scontrol -o show job` output.
fn parse_partition(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|field| field.strip_prefix("Partition="))
        .filter(|name| is_partition_name(name))
        .map(str::to_string)
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
    fn partition_from_scontrol_output() {
        let line =
            "JobId=12 JobName=x UserId=u(1001) GroupId=u(1001) Partition=secure AllocNode:Sid=h:1";
        assert_eq!(parse_partition(line).as_deref(), Some("secure"));
        assert_eq!(parse_partition("JobId=12 JobName=x"), None);
        assert_eq!(parse_partition("Partition=a/../b"), None);
    }

    #[test]
    fn cached_answers_skip_the_query() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("5.0"), "gpu\n").unwrap();
        // A scontrol that cannot run proves the cache answered.
        let p = job_partition(5, 0, dir.path(), Path::new("/nonexistent/scontrol")).unwrap();
        assert_eq!(p, "gpu");
        assert!(job_partition(5, 1, dir.path(), Path::new("/nonexistent/scontrol")).is_err());
    }
}
