//! A minimal `/dev` for the container: a fresh tmpfs with only the harmless
//! character devices bind-mounted from the host, a private devpts instance
//! and a private `/dev/shm`. The host's disks and other devices stay invisible.

use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::MsFlags;

use super::{bind, create_dir_in_root, create_file_in_root, mount_fs};
use crate::error::{Context, Result};

/// Character devices every program expects.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks into /proc that shells and libc rely on.
const LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Binds the host device node `device` (a path under `/dev`) at the same
/// path into the container's `/dev` (made by [`mount_dev`]): nosuid and
/// noexec, not nodev, since the node must work.
pub fn bind_device(root: &Path, device: &Path) -> Result<()> {
    bind_device_at(root, device, device)
}

/// Binds host device node `host` at `container` (under `/dev`) in `root`:
/// a CDI device's node, which its spec may name differently on the host.
/// Only character and block devices are bound.
pub fn bind_device_at(root: &Path, host: &Path, container: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(host)
        .map_err(|e| crate::Error::usage(format!("device node {}: {e}", host.display())))?
        .file_type();
    if !(kind.is_char_device() || kind.is_block_device()) {
        return Err(crate::Error::usage(format!(
            "device node {}: not a device",
            host.display()
        )));
    }
    let relative = container.strip_prefix("/dev").map_err(|_| {
        crate::Error::usage(format!("{}: not a path under /dev", container.display()))
    })?;
    let target = create_file_in_root(root, &Path::new("/dev").join(relative))?;
    bind(
        host,
        &target,
        false,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    )
}

/// Builds `/dev` inside `root` (the container root, before `pivot_root`).
/// `in_user_namespace`: the devpts instance cannot take the host's `tty`
/// group there (it is not mapped), so its ptys keep the user's group.
pub fn mount_dev(root: &Path, in_user_namespace: bool) -> Result<()> {
    let dev = create_dir_in_root(root, Path::new("/dev"))?;
    // nodev: a node made here (`mknod`) never works; the devices that
    // must work are bind mounts of the host's nodes below, each its own
    // mount without nodev. noexec and nosuid because nothing legitimate
    // executes from /dev.
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        Some("mode=755,size=1m"),
    )?;

    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if !host.exists() {
            continue;
        }
        let target = create_file_in_root(root, &Path::new("/dev").join(name))?;
        bind(
            &host,
            &target,
            false,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        )?;
    }

    let pts = create_dir_in_root(root, Path::new("/dev/pts"))?;
    // A new devpts instance: the container cannot see or open the host's ptys.
    let tty_gid = if in_user_namespace { None } else { tty_gid() };
    let pts_opts = match tty_gid {
        Some(gid) => format!("newinstance,ptmxmode=0666,mode=0620,gid={gid}"),
        None => "newinstance,ptmxmode=0666,mode=0620".to_string(),
    };
    mount_fs(
        "devpts",
        &pts,
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(&pts_opts),
    )?;

    let shm = create_dir_in_root(root, Path::new("/dev/shm"))?;
    mount_fs(
        "tmpfs",
        &shm,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;

    for (name, target) in LINKS {
        let link = dev.join(name);
        symlink(target, &link).with_context(|| format!("creating /dev/{name}"))?;
    }
    Ok(())
}

/// The host's `tty` group, so pty slaves get the usual group ownership.
fn tty_gid() -> Option<u32> {
    nix::unistd::Group::from_name("tty")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}
