//! Ending the processes left in a step's mount namespace when the step
//! ends.
//!
//! Slurm ends a step's tasks, but what it can track depends on the site's
//! `ProctrackType`: with `proctrack/linuxproc` or `pgid`, a task that
//! double-forks (`setsid -f`, a daemon) escapes, and with it the step's
//! container: its namespace keeps the image mounted, the loop device
//! attached and, for an encrypted image, the decrypting server and key in
//! memory, after the job. Every process in the step's namespace belongs to
//! the step (tasks join it, nothing else can), so the plugin ends them all
//! once slurmstepd is done with the step.
//!
//! Processes are found by the identity (device and inode) of
//! `/proc/PID/ns/mnt` and killed through a pidfd opened before the
//! identity is checked again, so a recycled PID never gets the signal.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::pidfd::PidFd;

/// Scans before giving up on processes that keep forking (each scan kills
/// everything it finds, so a process must fork faster than a scan to
/// survive one).
const MAX_SCANS: usize = 20;
/// Pause between scans, for the killed ones to leave.
const SCAN_PAUSE: Duration = Duration::from_millis(5);

/// What [`end_members`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Processes sent SIGKILL.
    pub killed: usize,
    /// Whether members were still found after the last scan.
    pub remaining: bool,
}

/// Sends SIGKILL to every process in mount namespace `ns` until a scan
/// finds none (at most `MAX_SCANS` scans). Refuses (does nothing) when
/// the caller itself is in `ns`.
pub fn end_members(ns: &File) -> Swept {
    let Ok(meta) = ns.metadata() else {
        return Swept::default();
    };
    let target = (meta.dev(), meta.ino());
    if namespace_of("self") == Some(target) {
        return Swept::default();
    }
    let own_pid = std::process::id() as i32;
    let mut swept = Swept::default();
    for _ in 0..MAX_SCANS {
        let found = members(target, own_pid);
        if found.is_empty() {
            return swept;
        }
        swept.killed += found
            .into_iter()
            .filter(|&pid| kill_if_member(pid, target))
            .count();
        std::thread::sleep(SCAN_PAUSE);
    }
    swept.remaining = !members(target, own_pid).is_empty();
    swept
}

/// Identity of the mount namespace of `/proc/<who>`.
fn namespace_of(who: &str) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{who}/ns/mnt")).ok()?;
    Some((meta.dev(), meta.ino()))
}

fn members(target: (u64, u64), own_pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own_pid)
        .filter(|pid| namespace_of(&pid.to_string()) == Some(target))
        .collect()
}

/// Kills `pid` if, once pinned by a pidfd, it is still in `target`.
fn kill_if_member(pid: i32, target: (u64, u64)) -> bool {
    let Ok(pidfd) = PidFd::open(pid) else {
        return false;
    };
    // The PID may have been recycled between the scan and the pidfd: the
    // check after pinning is the one that counts.
    if namespace_of(&pid.to_string()) != Some(target) {
        return false;
    }
    pidfd.send_signal(Signal::SIGKILL).is_ok()
}
