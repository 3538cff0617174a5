//! `sifrun exec|run|shell` as root: the image from the node's cache of
//! mounted images ([`sifrun_runtime::node::image_cache`]), the one Slurm steps use.
//!
//! A fresh SquashFS mount per run makes the kernel drop the image's
//! decompressed pages with the mount: every run of a short container
//! decompresses again what the last one read (python's standard library,
//! say). In the cache the mount stays for `SIFRUN_CACHE_IDLE_SECS` (default
//! 300) after the last run that used it, so later runs start warm, as Slurm
//! steps do. The rules are the cache's: the key is the file's identity
//! (device, inode, size, times) and the partition's place, so a changed
//! file is never served from an older mount; the mount is read-only,
//! nosuid, nodev; a shared lock held for the run keeps it mounted; the
//! keeper unmounts it when idle.
//!
//! Not cached: encrypted images (a decrypted mount is never shared), private
//! copies made for verification (their identity is new every run), and
//! runs with `SIFRUN_CACHE_IDLE_SECS=0`.

use std::fs::File;
use std::path::{Path, PathBuf};

use sifrun_runtime::container::mount::mount_squashfs_partition;
use sifrun_runtime::container::staging::STAGING_BASE;
use sifrun_runtime::error::{Error, Result};
use sifrun_runtime::image::RunnableImage;
use sifrun_runtime::node::ecl::enforce::ImageSource;
use sifrun_runtime::node::helper::protocol::{DEFAULT_CACHE_IDLE_SECS, DEFAULT_CACHE_MAX_IMAGES};
use sifrun_runtime::node::image_cache::{
    record_owner, start_keeper, CacheKey, CacheLimits, ImageCache, Lease,
};

/// Seconds a cached image stays mounted after its last run; 0: no cache.
pub const CACHE_IDLE_ENV: &str = "SIFRUN_CACHE_IDLE_SECS";
/// The node's state directory, as `state_dir` in sifrun.toml (default
/// `/run/sifrun`): the cache lives in its `images/`.
pub const STATE_DIR_ENV: &str = "SIFRUN_STATE_DIR";

/// `SIFRUN_STATE_DIR`, or `/run/sifrun`.
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STAGING_BASE))
}

/// `SIFRUN_CACHE_IDLE_SECS` (default 300).
pub fn idle_secs() -> Result<u64> {
    match std::env::var(CACHE_IDLE_ENV) {
        Err(_) => Ok(DEFAULT_CACHE_IDLE_SECS),
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::usage(format!(
                "{CACHE_IDLE_ENV}={v:?}: expected a number of seconds (0: no cache)"
            ))
        }),
    }
}

/// The image's partition mounted in the cache under `state_dir` (mounted
/// now if no run or step has it), and the lease that keeps it mounted
/// while it is held. `file` is `image` opened.
pub fn acquire(
    state_dir: &Path,
    file: &File,
    image: &RunnableImage,
    idle_secs: u64,
) -> Result<Lease> {
    let cache = ImageCache::open(state_dir)?;
    // Same key as a Slurm step's for the same file without an execution
    // control list: both share one mount.
    let key = CacheKey::for_partition(
        file,
        image.partition_offset,
        image.partition_size,
        ImageSource::File.tag(),
    )?;
    let lease = cache.acquire(&key, |dir| {
        let entry = dir.parent().unwrap_or(dir);
        cache.make_room(
            0,
            &CacheLimits {
                per_node: DEFAULT_CACHE_MAX_IMAGES,
                per_user: 0,
            },
        )?;
        mount_squashfs_partition(
            &image.path,
            image.partition_offset,
            image.partition_size,
            dir,
        )?;
        record_owner(entry, 0)
    })?;
    if lease.mounted_now {
        start_keeper(state_dir, idle_secs);
    }
    Ok(lease)
}
