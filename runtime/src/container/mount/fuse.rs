//! FUSE mounts: opening `/dev/fuse` and mounting the connection behind it.
//! Two servers use this, so it is written once: the image's SquashFS
//! through squashfuse for unprivileged runs
//! ([`crate::unprivileged::squashfuse`]) and the decrypted image file of an
//! encrypted SIF ([`crate::crypt::fuse_file`]).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::error::{Error, Result};

/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";

/// Checks, before anything is forked, that `/dev/fuse` exists and that the
/// caller may open it: the two most common reasons FUSE cannot work.
pub fn check_device() -> Result<()> {
    open_device().map(drop)
}

/// Opens `/dev/fuse` read-write (close-on-exec) with one-line errors for a
/// missing or forbidden device.
pub fn open_device() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
        .map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) | Some(Errno::ENODEV) | Some(Errno::ENXIO) => Error::system(format!(
                "{FUSE_DEVICE} is missing: load the fuse kernel module (modprobe fuse) or, in a container, pass the device in; unprivileged sifrun needs FUSE"
            )),
            Some(Errno::EACCES) | Some(Errno::EPERM) => Error::system(format!(
                "FUSE is not permitted: {FUSE_DEVICE} cannot be opened by this user ({}); it is normally mode 0666, ask the administrator or run as root",
                device_mode()
            )),
            _ => Error::system(format!("opening {FUSE_DEVICE}: {e}")),
        })
}

/// `mode 0600, owner 0:0` for the error message.
fn device_mode() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(FUSE_DEVICE) {
        Ok(m) => format!(
            "mode {:04o}, owner {}:{}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ),
        Err(e) => e.to_string(),
    }
}

/// One FUSE mount: always read-only, nosuid, nodev, and checked by the
/// kernel against the files' modes (`default_permissions`).
#[derive(Debug, Clone, Copy)]
pub struct FuseMount<'a> {
    /// The server's name: the mount's source and its type `fuse.<name>`,
    /// as /proc/self/mountinfo shows them.
    pub name: &'a str,
    /// The only user and group the kernel lets in (without `allow_other`).
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Let in every process; the files' modes still apply.
    pub allow_other: bool,
    /// What the file system is, for error messages ("the image through
    /// squashfuse").
    pub what: &'a str,
}

impl FuseMount<'_> {
    /// Mounts the connection behind `device` on `target`.
    pub fn mount(&self, device: &File, target: &Path) -> Result<()> {
        let data = format!(
            "fd={},rootmode=40000,user_id={},group_id={},default_permissions{}",
            device.as_raw_fd(),
            self.uid,
            self.gid,
            if self.allow_other { ",allow_other" } else { "" }
        );
        nix::mount::mount(
            Some(self.name),
            target,
            Some(format!("fuse.{}", self.name).as_str()),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| self.mount_error(e, target))
    }

    fn mount_error(&self, errno: Errno, target: &Path) -> Error {
        let at = target.display();
        match errno {
            Errno::EPERM | Errno::EACCES => Error::system(format!(
                "mounting {} on {at}: FUSE is not permitted here ({}); in an unprivileged user namespace the kernel needs Linux >= 4.18",
                self.what,
                errno.desc()
            )),
            Errno::ENODEV => Error::system(
                "FUSE is not available: the kernel has no fuse filesystem (modprobe fuse)",
            ),
            other => Error::system(format!("mounting {} on {at}: {}", self.what, other.desc())),
        }
    }
}
