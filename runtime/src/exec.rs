//! `sifrun exec`: the whole run as one straight sequence.
//!
//! parent: open image → resolve user/env/binds → attach loop device → fork
//! child:  new mount namespace → mount image → build rootfs → pivot_root →
//!         drop privileges → chdir → resolve command in container PATH → exec
//! parent: forward signals, wait, propagate exit status.

use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid, Pid};

use crate::container::{self, Workdir};
use crate::env::{container_environment, parse_assignment, Environment};
use crate::error::{Context, Error, Result};
use crate::image::RunnableImage;
use crate::loop_device::LoopAttachment;
use crate::mount::rootfs::{BindMount, ContainerSpec};
use crate::process;
use crate::user::Identity;

/// Directory holding per-run staging directories on the host.
pub const STAGING_BASE: &str = "/run/sifrun";

/// Options of `sifrun exec`, already split from the command line.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Path of the SIF image.
    pub image: PathBuf,
    /// Command and its arguments (at least one element).
    pub command: Vec<String>,
    /// Target user (name or UID); default: the invoking user.
    pub user: Option<String>,
    /// `SRC[:DST[:ro]]` bind specifications.
    pub binds: Vec<String>,
    /// `NAME=VALUE` environment overrides.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub workdir: Option<PathBuf>,
    /// Keep the root filesystem writable (on a throw-away tmpfs).
    pub writable_tmpfs: bool,
}

/// Runs the command in the container and returns the exit status to use
/// (the command's, 128+N for a signal death).
pub fn run(opts: &ExecOptions) -> Result<i32> {
    require_root()?;
    if opts.command.is_empty() {
        return Err(Error::usage("no command given"));
    }

    let image = RunnableImage::open(&opts.image)?;
    let identity = match &opts.user {
        Some(user) => Identity::lookup(user)?,
        None => Identity::current()?,
    };
    let binds = opts
        .binds
        .iter()
        .map(|b| BindMount::parse(b))
        .collect::<Result<Vec<_>>>()?;
    let overrides = opts
        .env
        .iter()
        .map(|e| parse_assignment(e))
        .collect::<Result<Vec<_>>>()?;
    let env = container_environment(std::env::vars_os(), &image.env, &identity, &overrides);
    let cwd = std::env::current_dir().ok();

    let staging = StagingDir::create()?;
    let mut spec = ContainerSpec::new(staging.path().to_path_buf(), identity);
    spec.cwd.clone_from(&cwd);
    spec.binds = binds;
    spec.writable_tmpfs = opts.writable_tmpfs;

    let loop_dev =
        LoopAttachment::attach(&image.path, image.partition_offset, image.partition_size)?;
    let launch = Launch {
        spec: &spec,
        device: loop_dev.path(),
        command: &opts.command,
        env,
        workdir: Workdir {
            explicit: opts.workdir.clone(),
            preferred: cwd,
        },
        parent: getpid(),
    };
    match process::spawn(Box::new(move || launch.run())) {
        Ok(child) => {
            // The mount in the child's namespace now holds the device;
            // closing our fd lets autoclear detach it when that namespace dies.
            drop(loop_dev);
            drop(staging);
            child.wait()
        }
        Err(e) => {
            // The child is reaped, its namespace (and any mount) is gone.
            let _ = loop_dev.detach();
            Err(e)
        }
    }
}

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::usage(
            "sifrun exec must be run as root for now (unprivileged mode is not implemented yet)",
        ))
    }
}

/// What the child needs; everything was resolved in the parent so the
/// child only performs system calls.
struct Launch<'a> {
    spec: &'a ContainerSpec,
    device: &'a Path,
    command: &'a [String],
    env: Environment,
    workdir: Workdir,
    parent: Pid,
}

impl Launch<'_> {
    fn run(self) -> Result<Infallible> {
        die_with_parent(self.parent)?;
        container::create(self.spec, self.device)?;
        // Identity::drop_privileges keeps the parent-death signal across setuid.
        let identity = &self.spec.identity;
        Err(container::exec_command(
            identity,
            &self.workdir,
            self.command,
            self.env,
        ))
    }
}

/// If sifrun dies (even by SIGKILL) the container command goes with it, so
/// the mount namespace and the loop device cannot outlive the run.
fn die_with_parent(parent: Pid) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL)).context("setting parent-death signal")?;
    if getppid() != parent {
        return Err(Error::system("sifrun exited during container setup"));
    }
    Ok(())
}

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
