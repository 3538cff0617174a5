//! The host directory a container's root is assembled under: empty on the
//! host, with the container's staging tmpfs mounted on it only inside the
//! container's private mount namespace.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::unistd::getpid;

use crate::error::{Context, Result};

/// Directory holding per-run staging directories on the host.
pub const STAGING_BASE: &str = "/run/sifrun";

/// An empty per-run directory under [`STAGING_BASE`]; the container's
/// staging tmpfs is mounted on it inside the private namespace, so the host
/// only ever sees an empty directory, removed again on drop.
#[derive(Debug)]
pub struct StagingDir {
    path: PathBuf,
}

impl StagingDir {
    /// Creates `/run/sifrun/<pid>-<n>` (mode 0700), unique within the host.
    pub fn create() -> Result<Self> {
        Self::create_in(Path::new(STAGING_BASE))
    }

    /// Creates `<base>/<pid>-<n>` (mode 0700); `base` is created if missing.
    pub fn create_in(base: &Path) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .with_context(|| format!("creating {}", base.display()))?;
        sweep_stale(base);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{}-{n}", getpid()));
        // A stale directory from a killed run with a recycled PID: reuse it if empty.
        let _ = fs::remove_dir(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(StagingDir { path })
    }

    /// Creates a fresh private (0700, randomly named) directory in the
    /// temporary directory, for unprivileged runs: `/run/sifrun` is root's.
    pub fn create_private() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".sifrun-")
            .tempdir()
            .context("creating a staging directory in the temporary directory")?;
        Ok(StagingDir { path: dir.keep() })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Removes empty staging directories of runs whose sifrun was SIGKILLed
/// before it could clean up (rmdir fails harmlessly on anything in use).
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.split('-').next());
        if let Some(pid) = pid.filter(|p| p.parse::<u32>().is_ok()) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.path);
    }
}
