//! Mount helpers and the container root filesystem builder.
//!
//! Everything in here runs inside a private mount namespace (see
//! [`crate::namespaces::unshare_mount_namespace`]); nothing touches the host's
//! mount table.

pub mod dev;
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

/// Bind-mounts `source` on `target`, then applies `flags` (nosuid, nodev,
/// rdonly, ...) with a remount: the kernel ignores per-mount flags on the
/// initial `MS_BIND` call.
pub fn bind(source: &Path, target: &Path, recursive: bool, flags: MsFlags) -> Result<()> {
    let mut bind_flags = MsFlags::MS_BIND;
    if recursive {
        bind_flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, bind_flags, None::<&str>)
        .with_context(|| format!("bind mounting {} on {}", source.display(), target.display()))?;
    if !flags.is_empty() {
        remount_bind(target, flags)?;
    }
    Ok(())
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

/// Creates directory `path` (container path) and its parents inside `root`;
/// returns the resolved host path.
pub fn create_dir_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let target = resolve_in_root(root, path)?;
    if !target.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&target)
            .with_context(|| format!("creating mount point {} in the container", path.display()))?;
    }
    Ok(target)
}

/// Creates an empty regular file `path` (container path) inside `root`, as a
/// mount point for a file bind; returns the resolved host path.
pub fn create_file_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let target = resolve_in_root(root, path)?;
    if target.exists() {
        return Ok(target);
    }
    if let Some(parent) = path.parent() {
        create_dir_in_root(root, parent)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&target)
        .with_context(|| format!("creating mount point {} in the container", path.display()))?;
    Ok(target)
}

/// Creates a mount point of the same kind (directory or file) as `source`.
pub fn create_mount_point(root: &Path, path: &Path, source: &Path) -> Result<PathBuf> {
    if source.is_dir() {
        create_dir_in_root(root, path)
    } else {
        create_file_in_root(root, path)
    }
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
