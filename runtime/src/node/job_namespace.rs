//! The job's own directories when Slurm gives each job a mount namespace.
//!
//! Many sites enable Slurm's `job_container/tmpfs` (up to 25.11) or
//! `namespace/tmpfs` / `namespace/linux` (26.05): every job gets a private
//! `/tmp` (and with `namespace/linux` a fresh `/dev/shm`) in a mount
//! namespace that slurmstepd creates at job start and keeps alive as a
//! bind mount of its `/proc/PID/ns/mnt` file under the plugin's base path.
//! Tasks join it before SPANK's `task_init_privileged`. The step's helper
//! is started from slurmstepd, which runs outside it with the tmpfs plugins
//! ([`JobNamespace::File`]) and inside it with `namespace/linux` or
//! `EntireStepInNS` ([`JobNamespace::Current`]).
//!
//! [`capture`] takes the job's directories out of that namespace as
//! detached mount trees (`open_tree(OPEN_TREE_CLONE)`), and the container
//! build moves them in at the same paths ([`DetachedMount::attach`]).
//! Outside it, the helper enters the job's namespace only for that and
//! returns at once: everything else (opening the image as the user, the
//! node cache's mounts, the staging directory) stays in the node's
//! namespace, where other jobs see it.
//!
//! Trust: the namespace file's path comes from the admin's configuration
//! and the numeric job id, never from the job; the file must be a mount
//! namespace (`NS_GET_NSTYPE`), which only root can bind there. Inside the
//! job's namespace only fixed paths are opened, without following a
//! symlink at the last component.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

use crate::container::mount::DetachedMount;
use crate::error::{Context, Error, Result};

/// Where the job's mount namespace is, seen from slurmstepd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobNamespace {
    /// Bound at this file; slurmstepd runs in the node's namespace.
    File(PathBuf),
    /// slurmstepd (and so the helper) runs inside it already
    /// (`namespace/linux`, `EntireStepInNS`).
    Current,
}

/// The directories a Slurm job namespace may make private, in the order
/// they are moved into the container.
pub const JOB_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// `NS_GET_NSTYPE` of <linux/nsfs.h>: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
/// <linux/mount.h>, not in the libc crate for every target.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// The job's directories as [`JobNamespace`] says where they are.
pub fn capture(job_ns: &JobNamespace) -> Result<Vec<DetachedMount>> {
    match job_ns {
        JobNamespace::File(ns_file) => capture_from(ns_file),
        // Already in the job's namespace: all three are the job's. /tmp and
        // /var/tmp would be bound from here anyway; /dev/shm would be a
        // fresh one for the step.
        JobNamespace::Current => JOB_DIRS
            .iter()
            .filter(|d| dir_identity(d).is_some())
            .map(|d| take(d))
            .collect(),
    }
}

/// The job's private directories (those of [`JOB_DIRS`] that the job's
/// namespace shows differently from this node's), from the mount namespace
/// bound at `ns_file`. Must be called by a single-threaded root process;
/// returns with this process back in its own namespace and directory.
fn capture_from(ns_file: &Path) -> Result<Vec<DetachedMount>> {
    let job_ns = open_mount_namespace(ns_file)?;
    let own_ns =
        File::open("/proc/self/ns/mnt").context("opening this process's mount namespace")?;
    let cwd = File::open(".").context("opening the working directory")?;
    let node_view: Vec<Option<(u64, u64)>> = JOB_DIRS.iter().map(|d| dir_identity(d)).collect();

    setns(&job_ns, CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::system(format!(
            "joining the job's mount namespace {}: {}",
            ns_file.display(),
            e.desc()
        ))
    })?;
    let taken = JOB_DIRS
        .iter()
        .zip(&node_view)
        .filter(|(dir, node)| {
            let job = dir_identity(dir);
            // Only what the job sees differently: the rest stays bound from
            // the node as without a job namespace.
            job.is_some() && job != **node
        })
        .map(|(dir, _)| take(dir))
        .collect::<Result<Vec<_>>>();
    // Back before anything else, whatever the outcome: the caller goes on
    // in the node's namespace.
    setns(&own_ns, CloneFlags::CLONE_NEWNS).map_err(|e| {
        Error::system(format!(
            "returning to the node's mount namespace: {}",
            e.desc()
        ))
    })?;
    nix::unistd::fchdir(cwd.as_raw_fd()).context("returning to the working directory")?;
    taken
}

/// A detached copy of `dir`'s mount tree in the current namespace.
fn take(dir: &'static str) -> Result<DetachedMount> {
    clone_tree(dir).map(|tree| DetachedMount {
        path: PathBuf::from(dir),
        tree: Arc::new(tree),
    })
}

/// Opens `ns_file` and checks that it is a mount namespace.
fn open_mount_namespace(ns_file: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(ns_file)
        .map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                _ => e.to_string(),
            };
            Error::system(format!(
                "the job's mount namespace {}: {why} (job_namespace in sifrun.toml must match the base path of Slurm's namespace plugin)",
                ns_file.display()
            ))
        })?;
    // SAFETY: NS_GET_NSTYPE reads nothing from user memory and returns the
    // namespace type, or fails with ENOTTY on a file that is not one.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNS {
        return Err(Error::system(format!(
            "the job's mount namespace {}: not a mount namespace file",
            ns_file.display()
        )));
    }
    Ok(file)
}

/// (device, inode) of directory `dir` in the current namespace, without
/// following a symlink at its last component.
fn dir_identity(dir: &str) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// A detached copy of the mount tree at `dir` (current namespace).
fn clone_tree(dir: &str) -> Result<OwnedFd> {
    let path = std::ffi::CString::new(dir).expect("fixed paths hold no NUL");
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | AT_RECURSIVE
        | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new
    // descriptor (or -1), which is owned here and nowhere else.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Error::system(format!(
            "taking the job's {dir}: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a fresh descriptor returned above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The path of the job's mount namespace file from the configured template:
/// `%j` is the job id, `%n` the node name, `%%` a percent sign.
pub fn expand_template(template: &str, job_id: u32, node: &str) -> Result<PathBuf> {
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('j') => out.push_str(&job_id.to_string()),
            Some('n') => out.push_str(node),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::usage(format!(
                    "job_namespace {template:?}: unknown escape %{}",
                    other.map(String::from).unwrap_or_default()
                )))
            }
        }
    }
    let path = PathBuf::from(out);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::usage(format!(
            "job_namespace {template:?}: must be an absolute path without '..'"
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_job_and_node() {
        let p = expand_template("/var/spool/jobns/%n/%j/.ns", 42, "node1").unwrap();
        assert_eq!(p, Path::new("/var/spool/jobns/node1/42/.ns"));
        assert_eq!(
            expand_template("/b/100%%/%j", 7, "n").unwrap(),
            Path::new("/b/100%/7")
        );
    }

    #[test]
    fn templates_refuse_relative_paths_and_unknown_escapes() {
        assert!(expand_template("jobns/%j/.ns", 1, "n").is_err());
        assert!(expand_template("/b/%j/../../etc", 1, "n").is_err());
        assert!(expand_template("/b/%u/.ns", 1, "n").is_err());
        assert!(expand_template("/b/%", 1, "n").is_err());
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ns");
        std::fs::write(&f, b"").unwrap();
        let e = capture_from(&f).unwrap_err().to_string();
        assert!(e.contains("not a mount namespace"), "{e}");
        let e = capture_from(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_symlink_to_a_namespace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ns");
        std::os::unix::fs::symlink("/proc/self/ns/mnt", &link).unwrap();
        assert!(capture_from(&link).is_err());
    }
}
