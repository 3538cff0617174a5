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

    /// Opens the regular file `path` read-only as the user.
    ///
    /// Never blocks (a FIFO or device named as an image or key is refused,
    /// not waited on) and never follows `/proc` magic links (see
    /// [`open_no_magiclinks`]).
    pub fn open_file(&self, path: &Path) -> Result<File> {
        self.run_as(|| open_regular_file(path))?
            .map_err(|e| Error::image(format!("{}: {}", path.display(), reason(&e))))
    }

    /// Resolves `path` as the user and returns an `O_PATH` handle to what
    /// it names: root can then bind that exact object through
    /// `/proc/self/fd/N` without resolving the user's path again.
    pub fn open_path(&self, path: &Path) -> Result<PathHandle> {
        let file = self
            .run_as(|| open_no_magiclinks(path, libc::O_PATH | libc::O_CLOEXEC))?
            .map_err(|e| Error::usage(format!("{}: {}", path.display(), reason(&e))))?;
        let canonical = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .unwrap_or_else(|_| path.to_path_buf());
        Ok(PathHandle { file, canonical })
    }
}

/// Opens the regular file `path` read-only, without blocking (a FIFO or
/// device is refused, never waited on) and never through a `/proc` magic
/// link. Not a regular file: `EISDIR` for a directory, `ENXIO` otherwise.
pub fn open_regular_file(path: &Path) -> std::io::Result<File> {
    open_regular_file_with(path, 0)
}

/// [`open_regular_file`] with `extra` open flags (`O_NOFOLLOW`).
pub fn open_regular_file_with(path: &Path, extra: libc::c_int) -> std::io::Result<File> {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY | extra;
    let file = open_no_magiclinks(path, flags)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !meta.is_file() {
        return Err(std::io::Error::from_raw_os_error(libc::ENXIO));
    }
    Ok(file)
}

/// `open(path, flags)` that refuses `/proc` magic links (`/proc/PID/root`,
/// `/proc/PID/cwd`, `/proc/self/fd/N`, also when reached through a
/// symlink): through them a path resolves in another process's mount
/// namespace or root (a user's own namespace, where they can mount
/// anything over a trusted directory), or as the helper's own root and
/// working directory. Ordinary symlinks are followed as usual.
pub fn open_no_magiclinks(path: &Path, flags: libc::c_int) -> std::io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    open_no_magiclinks_c(&c, flags)
}

/// [`open_no_magiclinks`] of a path already in C form: allocates nothing,
/// so a child forked from a multi-threaded process may call it.
pub fn open_no_magiclinks_c(c: &std::ffi::CStr, flags: libc::c_int) -> std::io::Result<File> {
    // SAFETY: open_how is plain old data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid C string and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

/// The directory `file` really sits in, as this process's mount namespace
/// sees it, or `None` when that cannot be established.
///
/// The kernel's name for an open file (`/proc/self/fd/N`) is its path in
/// the mount where it was opened, which may be a mount in someone else's
/// namespace: the name alone is not proof. So the name's directory is
/// opened here and must hold an entry that is the very same file (device
/// and inode); only then is that directory where the file is.
pub fn real_parent_dir(file: &File) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
    let (parent, base) = (name.parent()?, name.file_name()?);
    let dir = open_no_magiclinks(
        parent,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
    )
    .ok()?;
    let entry = nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        base,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .ok()?;
    let meta = file.metadata().ok()?;
    (entry.st_dev == meta.dev() && entry.st_ino == meta.ino()).then(|| parent.to_path_buf())
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

/// Why a user-named file could not be opened as the job user, in the
/// words every such error uses.
pub fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (not readable by the job user)".to_string()
        }
        _ if e.raw_os_error() == Some(libc::ELOOP) => {
            "refused: too many symbolic links, or a /proc link into another process's files"
                .to_string()
        }
        _ if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::EISDIR)) => {
            "not a regular file".to_string()
        }
        _ => e.to_string(),
    }
}
