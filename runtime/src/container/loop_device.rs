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
nix::ioctl_write_ptr_bad!(loop_configure, LOOP_CONFIGURE, LoopConfig);

/// `LOOP_CONFIGURE` (Linux 5.8+): attach and set status in one call.
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from `<linux/loop.h>` (stable kernel ABI).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `backing[offset, offset+size)` to `device`, read-only with
/// autoclear.
///
/// Prefers `LOOP_CONFIGURE`: the older `LOOP_SET_FD` + `LOOP_SET_STATUS64`
/// pair makes the kernel freeze and flush the device queue a second time,
/// which measured 15 ms here, most of a warm step's budget. Falls back to
/// the pair (through `loopdev`) on kernels that predate the ioctl.
fn configure(device: &LoopDevice, backing: &File, offset: u64, size: u64) -> io::Result<()> {
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: size,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // lays out exactly (repr(C), kernel UAPI field order and sizes).
    match unsafe { loop_configure(device.as_raw_fd(), &config) } {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOTTY) => device
            .with()
            .read_only(true)
            .autoclear(true)
            .offset(offset)
            .size_limit(size)
            .attach_fd(backing.as_fd()),
        Err(e) => Err(io::Error::from(e)),
    }
}

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
            return Err(Error::image("partition is empty").at(file));
        }
        // Open the backing file ourselves (read-only) so loopdev does not need write access.
        let backing = File::open(file).context_at(file, "opening")?;
        let control = LoopControl::open().context("opening /dev/loop-control")?;
        let mut last_err: Option<io::Error> = None;
        for _ in 0..ATTACH_ATTEMPTS {
            let device = control.next_free().context("finding a free loop device")?;
            match configure(&device, &backing, offset, size) {
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
                Err(e) => return Err(e).context_at(file, "attaching to a loop device"),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EBUSY)))
            .context_at(file, "attaching to a loop device")
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

/// Removes `/dev/loop<n>` if it is free (best effort): autoclear detaches
/// a device when its last user goes, but the free device node stays until
/// someone removes it. Busy devices (a container still holding a lazily
/// unmounted image) are left alone.
pub fn remove_if_free(n: u32) {
    const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
    let Ok(control) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
    else {
        return;
    };
    // SAFETY: LOOP_CTL_REMOVE takes the device number as its argument; the
    // kernel refuses (EBUSY) a device that is still attached or open.
    unsafe {
        libc::ioctl(
            AsRawFd::as_raw_fd(&control),
            LOOP_CTL_REMOVE,
            libc::c_ulong::from(n),
        )
    };
}
