//! Mount helpers and the container root filesystem builder.
//!
//! Everything in here runs inside a private mount namespace (see
//! [`crate::container::namespaces::unshare_mount_namespace`]); nothing touches the host's
//! mount table.

pub mod dev;
pub mod fuse;
pub mod rootfs;
pub mod upper;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{Context, Error, Result};

/// Maximum number of symlinks followed while resolving one path, like the
/// kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Mounts a filesystem (`fstype` from `source`) at `target` with `flags` and `data`.
pub fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} ({source}) on {}", target.display()))
}

/// Mounts the SquashFS on `device` (a loop device over an image partition)
/// at `target`: read-only, and neither setuid bits nor device nodes in the
/// image take effect.
pub fn mount_squashfs(device: &Path, target: &Path) -> Result<()> {
    let source = device
        .to_str()
        .ok_or_else(|| Error::system("loop device path is not UTF-8"))?;
    mount_fs(
        source,
        target,
        "squashfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None,
    )
}

/// Attaches the SquashFS partition `[offset, offset + size)` of `file` to
/// a read-only autoclear loop device and mounts it at `target`
/// ([`mount_squashfs`]). On success the mount holds the device (autoclear
/// detaches it with the last unmount); on failure it is detached here, as
/// nothing else holds it.
pub fn mount_squashfs_partition(file: &Path, offset: u64, size: u64, target: &Path) -> Result<()> {
    let device = crate::container::loop_device::LoopAttachment::attach(file, offset, size)?;
    mount_squashfs(device.path(), target).inspect_err(|_| {
        let _ = device.detach();
    })
}

/// Bind-mounts `source` on `target`, then applies `flags` (nosuid, nodev,
/// rdonly, ...): the kernel ignores per-mount flags on the initial
/// `MS_BIND` call.
///
/// A `recursive` bind brings the source's submounts along, and `flags`
/// then apply to every one of them (`set_flags_recursive`). A bind of
/// a directory that something is mounted under should be recursive: a
/// non-recursive one shows what those mounts hide on the host (the files
/// under a tmpfs, the real `/tmp` under a node's private one), which the
/// kernel forbids unprivileged users for exactly that reason.
pub fn bind(source: &Path, target: &Path, recursive: bool, flags: MsFlags) -> Result<()> {
    let mut bind_flags = MsFlags::MS_BIND;
    if recursive {
        bind_flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, bind_flags, None::<&str>)
        .with_context(|| format!("bind mounting {} on {}", source.display(), target.display()))?;
    if flags.is_empty() {
        return Ok(());
    }
    if !recursive {
        return remount_bind(target, flags);
    }
    match set_flags_recursive(target, flags) {
        Err(nix::errno::Errno::ENOSYS) => {
            // Kernels before 5.12 cannot set flags on a whole tree: bind
            // the top mount alone, so that `flags` (read-only above all)
            // hold for everything visible.
            nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", target.display()))?;
            bind(source, target, false, flags)
        }
        other => other.with_context(|| format!("setting flags on {}", target.display())),
    }
}

/// `struct mount_attr` of <linux/mount.h> (not in the libc crate).
#[repr(C)]
pub(crate) struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}
pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `mount_setattr(2)` on `path` (relative to the working directory): the
/// raw return value, errno set on -1. A bare system call, so a forked
/// child may make it before exec.
pub(crate) fn mount_setattr(
    path: &std::ffi::CStr,
    flags: libc::c_int,
    attr: &MountAttr,
) -> libc::c_long {
    // SAFETY: a valid C string and a correctly sized mount_attr the
    // caller owns, both alive for the call.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    }
}

/// Sets `flags` (read-only, nosuid, nodev, noexec) on the mount at
/// `target` and every mount below it, in one `mount_setattr(2)` call.
/// Flags are only added, never cleared, so mounts whose flags a user
/// namespace locks are no obstacle.
fn set_flags_recursive(
    target: &Path,
    flags: MsFlags,
) -> std::result::Result<(), nix::errno::Errno> {
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    let map = [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ];
    let attr = MountAttr {
        attr_set: map
            .iter()
            .filter(|(ms, _)| flags.contains(*ms))
            .fold(0, |acc, (_, a)| acc | a),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let rc = mount_setattr(&c, libc::AT_RECURSIVE, &attr);
    if rc != 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// A mount tree taken out of another mount namespace
/// (`open_tree(OPEN_TREE_CLONE)`): detached, it belongs to no namespace
/// until [`DetachedMount::attach`] moves it into the caller's.
#[derive(Debug, Clone)]
pub struct DetachedMount {
    /// Where it was, and where it goes in the container.
    pub path: PathBuf,
    pub tree: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl DetachedMount {
    /// Mounts the tree on `target` (an existing directory) with `flags`
    /// on every mount of it, as [`bind`] does for a recursive bind.
    pub fn attach(&self, target: &Path, flags: MsFlags) -> Result<()> {
        use std::os::fd::AsRawFd;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        let to = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::system(format!("{}: path holds a NUL", target.display())))?;
        // SAFETY: both strings are NUL-terminated and outlive the call; the
        // kernel only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc != 0 {
            return Err(Error::system(format!(
                "mounting the job's {} on {}: {}",
                self.path.display(),
                target.display(),
                std::io::Error::last_os_error()
            )));
        }
        match set_flags_recursive(target, flags) {
            Err(nix::errno::Errno::ENOSYS) => remount_bind(target, flags),
            other => other.with_context(|| format!("setting flags on {}", target.display())),
        }
    }
}

/// Changes the per-mount flags of the mount at `target`.
///
/// In a user namespace the kernel locks the restrictive flags (nosuid,
/// nodev, noexec, read-only, atime) of mounts inherited from the host, and
/// refuses a remount that would drop one with EPERM. Then the remount is
/// retried with the mount's current flags added: the result is at least as
/// restrictive as asked. As root the first attempt always succeeds, so the
/// privileged path is unchanged.
pub fn remount_bind(target: &Path, flags: MsFlags) -> Result<()> {
    let remount = |flags: MsFlags| {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
            None::<&str>,
        )
    };
    match remount(flags) {
        Err(nix::errno::Errno::EPERM) => remount(flags | current_flags(target)?),
        other => other,
    }
    .with_context(|| format!("remounting {}", target.display()))
}

/// The per-mount flags of the mount at `target`, as mount(2) flags.
fn current_flags(target: &Path) -> Result<MsFlags> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let st = statvfs(target).with_context(|| format!("reading flags of {}", target.display()))?;
    let map = [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    Ok(map
        .iter()
        .filter(|(st_flag, _)| st.flags().contains(*st_flag))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
}

/// Resolves `path` (an absolute container path) to a host path under `root`,
/// following symlinks *as if `root` were `/`*.
///
/// A plain `root.join(path)` would let an image symlink such as
/// `/data -> /etc` redirect a bind mount onto the host's `/etc` while the
/// container is being assembled. Components that do not exist are kept as
/// they are (they are created later by [`create_dir_in_root`] /
/// [`create_file_in_root`]).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.to_str() {
            Some("..") => {
                resolved.pop();
                continue;
            }
            Some(".") | Some("") => continue,
            _ => {}
        }
        let candidate = root.join(&resolved).join(&name);
        match fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::system(format!(
                        "too many symbolic links resolving {} in the container",
                        path.display()
                    )));
                }
                let target = fs::read_link(&candidate)
                    .with_context(|| format!("reading link {}", candidate.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                push_components(&mut pending, &target);
            }
            _ => resolved.push(&name),
        }
    }
    Ok(root.join(resolved))
}

/// Pushes the components of `path` on `stack` so that popping yields them in order.
fn push_components(stack: &mut Vec<std::ffi::OsString>, path: &Path) {
    let parts: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsStr::new("..").to_os_string()),
            _ => None,
        })
        .collect();
    stack.extend(parts.into_iter().rev());
}

/// Host directories and files bound into a container root being built,
/// by the mount that holds each: root never creates a mount point inside
/// one (see [`create_mount_point`]).
#[derive(Debug, Default)]
pub struct HostBinds(Vec<u64>);

impl HostBinds {
    /// Records the bind just made at `target`.
    pub fn record(&mut self, target: &Path) -> Result<()> {
        self.0.push(mount_id(target)?);
        Ok(())
    }

    /// Whether `path` lies on a recorded bind or on a mount below one
    /// (recursive binds bring the source's submounts along).
    fn holds(&self, path: &Path) -> Result<bool> {
        if self.0.is_empty() {
            return Ok(false);
        }
        let parents = mount_parents();
        let mut id = mount_id(path)?;
        // Bounded by the table's size: a parent chain cannot be longer.
        for _ in 0..=parents.len() {
            if self.0.contains(&id) {
                return Ok(true);
            }
            match parents.get(&id) {
                Some(&parent) if parent != id => id = parent,
                _ => break,
            }
        }
        Ok(false)
    }
}

/// Mount ID → parent mount ID, from this process's mount table.
fn mount_parents() -> std::collections::HashMap<u64, u64> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .collect()
}

/// The ID of the mount holding `path` itself (a final symlink is not
/// followed).
fn mount_id(path: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::system(format!("{}: path contains NUL", path.display())))?;
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a statx buffer we own.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    if rc != 0 {
        return Err(Error::system(format!(
            "reading the mount of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(st.stx_mnt_id)
}

/// What kind of mount point to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// Creates directory `path` (container path) and its parents inside `root`;
/// returns the resolved host path. Only for the root's own filesystems
/// (nothing of the host is bound in yet); see [`create_mount_point`].
pub fn create_dir_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    create_in_root(root, path, Kind::Dir, &HostBinds::default())
}

/// Creates an empty regular file `path` (container path) inside `root`, as a
/// mount point for a file bind; returns the resolved host path.
pub fn create_file_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    create_in_root(root, path, Kind::File, &HostBinds::default())
}

/// Creates a mount point of the same kind (directory or file) as `source`
/// at container path `path`, unless it exists.
///
/// Root creates it only on the container's own filesystems (the overlay's
/// in-memory upper layer, the container's /dev): never inside a host
/// directory bound earlier (`host`), where a user's bind such as
/// `/etc:/y,$HOME/d:/y/newdir` would otherwise make root create
/// `/etc/newdir` on the host. The container's own filesystems are private
/// to this process's mount namespace, so no one can swap a component
/// between this check and the creation. A mount point that already exists
/// is used as it is (mounting on it creates nothing).
pub fn create_mount_point(
    root: &Path,
    path: &Path,
    source: &Path,
    host: &HostBinds,
) -> Result<PathBuf> {
    let kind = if source.is_dir() {
        Kind::Dir
    } else {
        Kind::File
    };
    create_in_root(root, path, kind, host)
}

fn create_in_root(root: &Path, path: &Path, kind: Kind, host: &HostBinds) -> Result<PathBuf> {
    let target = resolve_in_root(root, path)?;
    if fs::symlink_metadata(&target).is_ok() {
        return Ok(target);
    }
    // The nearest existing ancestor decides where the creation happens.
    let mut existing = target.parent();
    while let Some(p) = existing.filter(|p| fs::symlink_metadata(p).is_err()) {
        existing = p.parent();
    }
    let existing = existing.unwrap_or(root);
    if host.holds(existing)? {
        return Err(Error::usage(format!(
            "mount point {} does not exist and lies inside a host directory bound into the container; \
             sifrun never creates files in host directories: create it there first or choose another destination",
            path.display()
        )));
    }
    let created = match kind {
        Kind::Dir => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target),
        Kind::File => target
            .parent()
            .map_or(Ok(()), |p| {
                fs::DirBuilder::new().recursive(true).mode(0o755).create(p)
            })
            .and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o644)
                    .open(&target)
                    .map(drop)
            }),
    };
    created.with_context(|| format!("creating mount point {} in the container", path.display()))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_keeps_absolute_symlinks_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink("/real/etc", root.join("data")).unwrap();
        symlink("../../..", root.join("real/etc/up")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/data/passwd")).unwrap(),
            root.join("real/etc/passwd")
        );
        // ".." cannot climb above the root.
        assert_eq!(
            resolve_in_root(root, Path::new("/data/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/missing/a/b")).unwrap(),
            root.join("missing/a/b")
        );
    }

    #[test]
    fn resolve_detects_loops() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/b", dir.path().join("a")).unwrap();
        symlink("/a", dir.path().join("b")).unwrap();
        assert!(resolve_in_root(dir.path(), Path::new("/a/x")).is_err());
    }

    #[test]
    fn create_dirs_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = create_dir_in_root(dir.path(), Path::new("/x/y")).unwrap();
        assert!(d.is_dir());
        let f = create_file_in_root(dir.path(), Path::new("/z/w/file")).unwrap();
        assert!(f.is_file());
    }
}
