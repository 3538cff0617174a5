//! The overlay partition of a SIF image (`apptainer overlay create`): an
//! ext3 filesystem whose `/upper` directory holds files that lie over the
//! image's, as Apptainer uses it read-only by default.
//!
//! # Why it is unpacked, and by whom
//!
//! The partition is a filesystem image the user wrote. Mounting it with
//! the kernel's ext3/ext4 driver as root would hand hostile metadata to
//! one of the kernel's largest parsers (the reason Apptainer refuses
//! kernel mounts of such images in its setuid mode). So nothing of it is
//! mounted: a [`user_child`] running as the job user (no privileges, not
//! dumpable) reads it with `ext4-view` (pure Rust, `forbid(unsafe_code)`,
//! built so that invalid data gives errors, never panics or endless
//! loops) and copies `/upper` onto a private tmpfs that root mounted for
//! it (size- and inode-limited, owned by the user, reachable only through
//! the root-only staging directory). That tmpfs becomes the top lower
//! layer of the container's overlay. Bounded in time, bytes and entries;
//! the `unpack` module says what each kind of file becomes.

mod unpack;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::mount::MsFlags;

use crate::container::mount::rootfs::ContainerSpec;
use crate::container::user_child::{self, Bounds};
use crate::error::{Context, Error, Result};
use crate::image::OverlayExtent;

pub use unpack::{Summary, MAX_DEPTH, MAX_ENTRIES};

/// Largest overlay unpacked by default, in MiB.
pub const DEFAULT_MAX_MIB: u64 = 1024;

/// How long unpacking may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The directory of the partition whose files lie over the image's.
const UPPER: &str = "/upper";

/// An overlay partition to use, and the file holding it (the same file
/// whose primary partition runs: the user's, opened as the user, or the
/// node's verified copy).
#[derive(Debug, Clone)]
pub struct OverlaySource {
    pub file: Arc<File>,
    pub extent: OverlayExtent,
    /// Largest unpacked size, in MiB (0: refuse overlays).
    pub max_mib: u64,
}

/// Mounts a tmpfs at `dir` (which must exist, inside the root-only
/// staging directory) for `spec.identity`, and unpacks the partition's
/// `/upper` into it as that user. Returns what was unpacked.
pub fn unpack_into(spec: &ContainerSpec, source: &OverlaySource, dir: &Path) -> Result<Summary> {
    let id = source.extent.id;
    if source.max_mib == 0 {
        return Err(Error::usage(format!(
            "the image has an overlay partition (object {id}), and this node uses none (overlay_max_mib = 0)"
        )));
    }
    let options = format!(
        "size={}m,nr_inodes={},mode=0700,uid={},gid={}",
        source.max_mib,
        MAX_ENTRIES + 16,
        spec.identity.uid,
        spec.identity.gid
    );
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| format!("mounting a tmpfs on {}", dir.display()))?;

    let what = format!("unpacking the image's overlay partition (object {id})");
    let bounds = Bounds {
        timeout: TIMEOUT,
        max_stdout: 4096,
    };
    let started = Instant::now();
    // Only the image file: nothing else of root's reaches the reader.
    let keep = [std::os::fd::AsRawFd::as_raw_fd(&*source.file)];
    let done = user_child::run(spec, dir, &what, bounds, &keep, || {
        let reader = PartitionReader {
            file: Arc::clone(&source.file),
            extent: source.extent,
        };
        let result = ext4_view::Ext4::load(Box::new(reader))
            .map_err(|e| format!("not a readable ext2/3/4 filesystem: {e}"))
            .and_then(|fs| unpack::tree(&fs, UPPER, Path::new(".")));
        match result {
            Ok(summary) => {
                println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                0
            }
            Err(why) => {
                eprintln!("{why}");
                1
            }
        }
    })?;
    if done.status != 0 {
        let why = done
            .last_error_line()
            .unwrap_or_else(|| format!("exit status {}", done.status));
        let why = if why.contains("No space left on device") {
            format!(
                "it holds more than the {} MiB this node unpacks (overlay_max_mib)",
                source.max_mib
            )
        } else {
            why
        };
        return Err(Error::image(format!("{what}: {why}")));
    }
    let mut summary: Summary = serde_json::from_slice(&done.stdout)
        .map_err(|e| Error::system(format!("{what}: unreadable summary: {e}")))?;
    summary.millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Reads the partition's bytes from the image file, never past its end.
struct PartitionReader {
    file: Arc<File>,
    extent: OverlayExtent,
}

impl ext4_view::Ext4Read for PartitionReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let end = start_byte.checked_add(dst.len() as u64);
        if end.is_none_or(|end| end > self.extent.size) {
            return Err(format!(
                "read of {} bytes at {start_byte} past the partition's end ({} bytes)",
                dst.len(),
                self.extent.size
            )
            .into());
        }
        self.file
            .read_exact_at(dst, self.extent.offset + start_byte)
            .map_err(|e| e.into())
    }
}
