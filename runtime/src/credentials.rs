//! Acting with the job user's credentials while still root.
//!
//! The helper that builds a Slurm step's container runs as root, but every
//! path the job user names (the image, bind sources, the working directory)
//! must be resolved with the user's own permissions: a file the user cannot
//! read must never end up in their container. The helper is single-threaded,
//! so switching the effective IDs of the process is safe; the real UID stays
//! 0, which lets us switch back.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::unistd::{getegid, geteuid, getgroups, setegid, seteuid, setgroups, Gid, Uid};

use crate::error::{Context, Error, Result};

/// The identity whose permissions apply to user-named paths.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl UserCredentials {
    /// Runs `f` with this identity's effective IDs and groups, then restores
    /// root's. Must be called from a single-threaded root process.
    pub fn run_as<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let (saved_uid, saved_gid) = (geteuid(), getegid());
        let saved_groups = getgroups().context("reading supplementary groups")?;
        let groups: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).context("setting the job user's groups")?;
        setegid(Gid::from_raw(self.gid)).context("setting the job user's group ID")?;
        seteuid(Uid::from_raw(self.uid)).context("setting the job user's user ID")?;
        let result = f();
        // Restoring must not fail silently: continuing as the user would
        // make later root steps fail in confusing ways.
        seteuid(saved_uid).context("restoring root's user ID")?;
        setegid(saved_gid).context("restoring root's group ID")?;
        setgroups(&saved_groups).context("restoring root's groups")?;
        Ok(result)
    }

    /// Opens `path` read-only as the user.
    pub fn open_file(&self, path: &Path) -> Result<File> {
        self.run_as(|| File::open(path))?
            .map_err(|e| Error::image(format!("{}: {}", path.display(), reason(&e))))
    }

    /// Resolves `path` as the user and returns an `O_PATH` handle to what
    /// it names: root can then bind that exact object through
    /// `/proc/self/fd/N` without resolving the user's path again.
    pub fn open_path(&self, path: &Path) -> Result<PathHandle> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| Error::usage(format!("{}: path contains NUL", path.display())))?;
        let fd = self.run_as(|| {
            // SAFETY: plain open(2) with a valid C string.
            unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) }
        })?;
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::usage(format!("{}: {}", path.display(), reason(&e))));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let canonical = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap_or_else(|_| path.to_path_buf());
        Ok(PathHandle { file, canonical })
    }
}

/// A path resolved with the user's credentials.
#[derive(Debug)]
pub struct PathHandle {
    file: File,
    /// Where it really is on the host (symlinks resolved).
    pub canonical: PathBuf,
}

impl PathHandle {
    /// The `/proc/self/fd/N` link to the object (valid in this process).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (not readable by the job user)".to_string()
        }
        _ => e.to_string(),
    }
}
