//! Read-only loop device covering exactly one SIF partition.
//!
//! The device is attached with `LO_FLAGS_AUTOCLEAR`: the kernel detaches it by
//! itself once the last user (our file descriptor or a mount) goes away. That
//! is what keeps `losetup -a` clean even when the container command or sifrun
//! is SIGKILLed: the mount lives only in the container's private mount
//! namespace, which dies with its last process.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use loopdev::{LoopControl, LoopDevice};

use crate::error::{Context, Error, Result};

/// How often to retry when another process grabs the same free device
/// between `LOOP_CTL_GET_FREE` and `LOOP_SET_FD` (happens with parallel runs).
const ATTACH_ATTEMPTS: usize = 32;

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);

/// An attached loop device. Dropping it closes our descriptor; with
/// autoclear the kernel then detaches the device unless something (a mount)
/// still uses it.
#[derive(Debug)]
pub struct LoopAttachment {
    device: LoopDevice,
    path: PathBuf,
}

impl LoopAttachment {
    /// Attaches `file[offset, offset+size)` read-only with autoclear and
    /// checks that the kernel honoured the size limit.
    pub fn attach(file: &Path, offset: u64, size: u64) -> Result<Self> {
        if size == 0 {
            return Err(Error::image(format!(
                "{}: partition is empty",
                file.display()
            )));
        }
        // Open the backing file ourselves (read-only) so loopdev does not need write access.
        let backing = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let control = LoopControl::open().context("opening /dev/loop-control")?;
        let mut last_err: Option<io::Error> = None;
        for _ in 0..ATTACH_ATTEMPTS {
            let device = control.next_free().context("finding a free loop device")?;
            let result = device
                .with()
                .read_only(true)
                .autoclear(true)
                .offset(offset)
                .size_limit(size)
                .attach_fd(backing.as_fd());
            match result {
                Ok(()) => {
                    let path = device
                        .path()
                        .ok_or_else(|| Error::system("cannot determine loop device path"))?;
                    let attachment = LoopAttachment { device, path };
                    attachment.verify_size(size)?;
                    return Ok(attachment);
                }
                // Lost a race for this device: try the next free one.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last_err = Some(e),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("attaching {} to a loop device", file.display()))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
            .with_context(|| format!("attaching {} to a loop device", file.display()))
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the block device as the kernel sees it, in bytes.
    pub fn device_size(&self) -> Result<u64> {
        let mut bytes: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 into `bytes`.
        unsafe { blk_get_size64(self.device.as_raw_fd(), &mut bytes) }
            .with_context(|| format!("querying size of {}", self.path.display()))?;
        Ok(bytes)
    }

    /// Old kernels silently ignored `lo_sizelimit` in some paths; a device
    /// larger than the partition would expose the following SIF objects to
    /// the filesystem driver, so refuse it.
    fn verify_size(&self, size: u64) -> Result<()> {
        let actual = self.device_size();
        // Block devices have 512-byte sectors; the kernel rounds the limit down.
        let expected = size & !511;
        match actual {
            Ok(actual) if actual == expected => Ok(()),
            Ok(actual) => {
                let _ = self.device.detach();
                Err(Error::system(format!(
                    "{}: kernel did not honour the loop size limit ({actual} bytes instead of {expected})",
                    self.path.display()
                )))
            }
            Err(e) => {
                let _ = self.device.detach();
                Err(e)
            }
        }
    }

    /// Detaches the device explicitly. Used when setup failed before anything
    /// was mounted from it, so nothing can be left behind even on kernels
    /// where autoclear only fires after a mount has used the device.
    pub fn detach(self) -> Result<()> {
        match self.device.detach() {
            Ok(()) => Ok(()),
            // Already gone (autoclear beat us to it).
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("detaching {}", self.path.display())),
        }
    }
}
