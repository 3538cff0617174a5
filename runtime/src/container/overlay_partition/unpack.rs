//! Copying a directory tree out of an ext2/3/4 filesystem read with
//! `ext4-view`, run by the unprivileged child of [`super::unpack_into`].
//!
//! What each kind of file becomes:
//! - directories, regular files, symbolic links: themselves, with their
//!   permission bits (setuid and setgid cleared; the container is nosuid
//!   anyway) and modification times (Python compares them with its
//!   `.pyc` files); owned by the user who unpacks them;
//! - character devices: overlay whiteouts (device 0/0, which an
//!   unprivileged process may create): in an overlay's upper directory
//!   that is what a deleted file is, and no other device is ever made;
//! - FIFOs: FIFOs; block devices and sockets: left out (counted).
//!
//! Bounded: [`MAX_ENTRIES`] entries, [`MAX_DEPTH`] levels (a corrupt
//! filesystem may link a directory into itself), bytes by the tmpfs
//! underneath, time by the caller.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ext4_view::{Ext4, FileType, Metadata};
use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

/// Most entries unpacked.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Deepest directory nesting unpacked.
pub const MAX_DEPTH: usize = 256;

/// What was unpacked.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub whiteouts: u64,
    /// Block devices and sockets, left out.
    pub skipped: u64,
    /// Bytes of regular files.
    pub bytes: u64,
    /// Wall time, filled in by the caller.
    #[serde(default)]
    pub millis: u64,
}

impl Summary {
    fn entries(&self) -> u64 {
        self.dirs + self.files + self.symlinks + self.whiteouts + self.skipped
    }
}

/// Copies directory `from` of `fs` (with everything below it) into the
/// existing directory `into`. One error line on failure.
pub fn tree(fs: &Ext4, from: &str, into: &Path) -> Result<Summary, String> {
    let top = fs.metadata(from).map_err(|e| match e {
        ext4_view::Ext4Error::NotFound => format!(
            "it has no {from} directory (an overlay made by `apptainer overlay create` has one)"
        ),
        e => format!("{from}: {e}"),
    })?;
    if !top.is_dir() {
        return Err(format!("{from} is not a directory"));
    }
    let from = ext4_view::PathBuf::try_from(from).map_err(|e| format!("{from}: {e}"))?;
    let mut summary = Summary::default();
    // Directory modes and times are set last, deepest first: writing into a
    // directory changes its time, and a read-only mode would stop the copy.
    let mut made_dirs: Vec<(PathBuf, Metadata)> = Vec::new();
    let mut pending = vec![(from, into.to_path_buf(), 0usize)];
    while let Some((source, dest, depth)) = pending.pop() {
        let entries = fs
            .read_dir(&source)
            .map_err(|e| format!("{}: {e}", source.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", source.display()))?;
            let name = entry.file_name();
            let name: &[u8] = name.as_ref();
            if name == b"." || name == b".." {
                continue;
            }
            if summary.entries() >= MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} entries"));
            }
            let path = entry.path();
            let target = dest.join(OsStr::from_bytes(name));
            let meta = entry
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let failed = |e: std::io::Error| format!("{}: {e}", path.display());
            match meta.file_type() {
                FileType::Directory => {
                    if depth >= MAX_DEPTH {
                        return Err(format!("directories nested deeper than {MAX_DEPTH}"));
                    }
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&target)
                        .map_err(failed)?;
                    made_dirs.push((target.clone(), meta));
                    pending.push((path, target, depth + 1));
                    summary.dirs += 1;
                }
                FileType::Regular => {
                    summary.bytes += copy_file(fs, &path, &target, &meta)?;
                    summary.files += 1;
                }
                FileType::Symlink => {
                    let link = fs
                        .read_link(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    std::os::unix::fs::symlink(OsStr::from_bytes(link.as_ref()), &target)
                        .map_err(failed)?;
                    set_times(&target, &meta).map_err(failed)?;
                    summary.symlinks += 1;
                }
                FileType::CharacterDevice => {
                    nix::sys::stat::mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0)
                        .map_err(|e| failed(e.into()))?;
                    summary.whiteouts += 1;
                }
                FileType::Fifo => {
                    nix::unistd::mkfifo(&target, permissions(&meta))
                        .map_err(|e| failed(e.into()))?;
                    summary.files += 1;
                }
                FileType::BlockDevice | FileType::Socket => summary.skipped += 1,
            }
        }
    }
    for (dir, meta) in made_dirs.iter().rev() {
        let failed = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::set_permissions(
            dir,
            std::fs::Permissions::from_mode(permissions(meta).bits()),
        )
        .map_err(failed)?;
        set_times(dir, meta).map_err(failed)?;
    }
    Ok(summary)
}

/// Copies one regular file; returns its size.
fn copy_file(
    fs: &Ext4,
    path: &ext4_view::PathBuf,
    target: &Path,
    meta: &Metadata,
) -> Result<u64, String> {
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut source = fs
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(failed)?;
    let bytes = std::io::copy(&mut source, &mut out).map_err(failed)?;
    out.flush().map_err(failed)?;
    out.set_permissions(std::fs::Permissions::from_mode(permissions(meta).bits()))
        .map_err(failed)?;
    drop(out);
    set_times(target, meta).map_err(failed)?;
    Ok(bytes)
}

/// The permission bits kept: read/write/execute and sticky, never
/// setuid or setgid.
fn permissions(meta: &Metadata) -> Mode {
    Mode::from_bits_truncate(u32::from(meta.mode()) & 0o1777)
}

/// The entry's modification time (access time too), not following a
/// symbolic link.
fn set_times(target: &Path, meta: &Metadata) -> std::io::Result<()> {
    let modified = meta.modified();
    let time = TimeSpec::new(modified.seconds(), i64::from(modified.nanoseconds()));
    utimensat(None, target, &time, &time, UtimensatFlags::NoFollowSymlink)
        .map_err(std::io::Error::from)
}
