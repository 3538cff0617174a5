//! Building a container and running a command in it: the one path both
//! `sifrun exec` and the Slurm helper take, in two halves.
//!
//! 1. [`create`] (once per container, in a single-threaded process that
//!    runs as root or, for [`ImageSource::Fuse`], enters a user namespace):
//!    new mount namespace → the image → root filesystem → `pivot_root`.
//! 2. [`exec_command`] (in the process that becomes the command): drop
//!    privileges (switch to the user, or shed the user namespace's
//!    capabilities) → chdir → resolve the command with the container PATH →
//!    `execve`. Under Slurm the tasks instead join the helper's namespace
//!    (spank `task_init_privileged`) and Slurm itself drops privileges and
//!    executes.
//!
//! ```text
//! sifrun exec (root):     LoopAttachment::attach → fork → create(Device) → exec_command
//! sifrun exec (user):     fork → create(Fuse) (parent serves squashfuse) → exec_command
//! sifrun slurm-setup:     node cache mount → enter_namespaces → bind sources
//!                         opened as the job user → build(Mounted) → report;
//!                         tasks setns (encrypted: a decrypted loop device, Device)
//! ```

pub mod cdi;
pub mod env;
pub mod gpu;
pub mod hooks;
pub mod identity;
pub mod image_env;
pub mod loop_device;
pub mod mount;
pub mod namespaces;
pub mod overlay_partition;
pub mod staging;
pub mod user_child;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::unistd::chdir;

use crate::container::env::Environment;
use crate::container::identity::Identity;
use crate::container::mount::rootfs::{
    build_rootfs, mount_image, mount_image_fuse, mount_staging, ContainerSpec,
};
use crate::container::namespaces::unshare_mount_namespace;
use crate::container::overlay_partition::Summary as OverlaySummary;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::process;

/// Where a container's image comes from.
#[derive(Debug)]
pub enum ImageSource<'a> {
    /// A block device holding the SquashFS (a loop device over the image
    /// or over its decrypted file): mounted inside the new namespace, so
    /// the mount dies with it. Needs root.
    Device(&'a Path),
    /// The image already mounted read-only on the host (the node cache):
    /// the root is built over that directory. Needs root.
    Mounted(&'a Path),
    /// Without privileges: a new user namespace (the caller's own IDs
    /// mapped) and the image through a FUSE connection mounted here and
    /// handed over this socket to the caller, who starts the server (see
    /// [`crate::unprivileged::squashfuse`]). `spec.unprivileged` must be set.
    Fuse(UnixStream),
}

/// Builds the container described by `spec` over `image` and makes it the
/// root of the calling process, in a new private mount namespace:
/// [`enter_namespaces`], then [`build`].
///
/// On error the namespace may hold partial mounts; they disappear with the
/// process (exit it rather than continuing).
pub fn create(spec: &ContainerSpec, image: ImageSource<'_>) -> Result<BuildOutcome> {
    enter_namespaces(&image, &spec.identity)?;
    build(spec, image)
}

/// The first half of [`create`]: a new private mount namespace (for
/// [`ImageSource::Fuse`], inside a new user namespace mapping `identity`'s
/// IDs). A caller that resolves paths to bind (the Slurm helper, as the
/// job user) does so between the halves: the kernel refuses a bind whose
/// source lies in another mount namespace.
pub fn enter_namespaces(image: &ImageSource<'_>, identity: &Identity) -> Result<()> {
    match image {
        ImageSource::Device(_) | ImageSource::Mounted(_) => unshare_mount_namespace(),
        ImageSource::Fuse(_) => crate::unprivileged::userns::enter(identity.uid, identity.gid),
    }
}

/// The second half of [`create`], in the namespaces [`enter_namespaces`]
/// made: the image, its overlay partition unpacked (as the user), the root
/// filesystem, `pivot_root`. Returns what the overlay partition added
/// (for the log) and what the site's hooks left for the tasks.
pub fn build(spec: &ContainerSpec, image: ImageSource<'_>) -> Result<BuildOutcome> {
    let (image_dir, fuse) = match image {
        ImageSource::Device(device) => (mount_image(spec, device)?, false),
        ImageSource::Mounted(dir) => {
            mount_staging(spec)?;
            (dir.to_path_buf(), false)
        }
        ImageSource::Fuse(server_socket) => {
            let device = mount::fuse::open_device()?;
            let image_dir = mount_image_fuse(spec, &device)?;
            crate::unprivileged::squashfuse::send_device(&server_socket, &device)?;
            // Only the server may hold the device: if it dies, the
            // connection aborts and the container sees errors instead of
            // hanging.
            drop(device);
            drop(server_socket);
            (image_dir, true)
        }
    };
    let overlay = match &spec.overlay {
        Some(source) => {
            let layer = spec.staging_dir.join("overlay");
            std::fs::create_dir(&layer).with_context(|| format!("creating {}", layer.display()))?;
            let summary = overlay_partition::unpack_into(spec, source, &layer)?;
            Some((layer, summary))
        }
        None => None,
    };
    let rootfs = build_rootfs(spec, &image_dir, overlay.as_ref().map(|(l, _)| l.as_path()));
    let rootfs = if fuse {
        rootfs.map_err(server_gone)?
    } else {
        rootfs?
    };
    rootfs.enter()?;
    Ok(BuildOutcome {
        overlay: overlay.map(|(_, summary)| summary),
        hook_env: rootfs.hook_env,
    })
}

/// What [`build`] reports besides the container it entered.
#[derive(Debug, Default)]
pub struct BuildOutcome {
    /// What the overlay partition added, for the log.
    pub overlay: Option<OverlaySummary>,
    /// Variables the site's hooks left for the tasks.
    pub hook_env: Vec<(String, String)>,
}

/// A setup error caused by a dead FUSE server reads ENOTCONN; say so.
fn server_gone(e: Error) -> Error {
    if e.errno() == Some(nix::errno::Errno::ENOTCONN) {
        Error::system(format!(
            "the FUSE server serving the image exited during setup ({})",
            e.message()
        ))
    } else {
        e
    }
}

/// Where the command starts.
#[derive(Debug, Clone, Default)]
pub struct Workdir {
    /// Explicit directory (`--workdir`): must exist in the container.
    pub explicit: Option<PathBuf>,
    /// Preferred default (the caller's cwd); falls back to home, then `/`.
    pub preferred: Option<PathBuf>,
}

/// Drops privileges, enters the working directory and executes `command`
/// (resolved with `env`'s PATH *inside* the container) as
/// `spec.identity`. As root that is a switch to the identity; in an
/// unprivileged user namespace (`spec.unprivileged`, already running as
/// the identity) it drops the capabilities held over that namespace. Only
/// returns on failure; a missing command gives
/// [`ErrorKind::CommandNotFound`], a non-executable one
/// [`ErrorKind::CommandNotExecutable`].
pub fn exec_command(
    spec: &ContainerSpec,
    workdir: &Workdir,
    command: &[String],
    env: Environment,
) -> Error {
    let identity = &spec.identity;
    let drop = || {
        if spec.unprivileged {
            identity::drop_user_namespace_capabilities()
        } else {
            identity.drop_privileges()
        }
    };
    exec_after(drop, identity, workdir, command, env)
}

/// `drop` (the privilege step), then workdir, PATH resolution and exec.
fn exec_after(
    drop: impl FnOnce() -> Result<()>,
    identity: &Identity,
    workdir: &Workdir,
    command: &[String],
    mut env: Environment,
) -> Error {
    let result = (|| -> Result<Error> {
        let Some(program) = command.first() else {
            return Err(Error::usage("no command given"));
        };
        drop()?;
        let dir = enter_workdir(identity, workdir)?;
        env.set("PWD", dir.as_os_str());
        let path = env.get("PATH").map(|p| p.to_os_string());
        let resolved = process::resolve_command(program, path.as_deref())?;
        Ok(process::exec(&resolved, command, &env))
    })();
    match result {
        Ok(e) | Err(e) => e,
    }
}

/// Explicit workdir must exist; the default falls back cwd → home → /.
/// Runs after the privilege drop so permissions are those of the user.
fn enter_workdir(identity: &Identity, workdir: &Workdir) -> Result<PathBuf> {
    if let Some(dir) = &workdir.explicit {
        chdir(dir.as_path()).map_err(|e| {
            Error::new(
                ErrorKind::Usage,
                format!(
                    "cannot enter workdir {} in the container: {}",
                    dir.display(),
                    e.desc()
                ),
            )
        })?;
        return Ok(dir.clone());
    }
    let candidates = [workdir.preferred.as_deref(), Some(identity.home.as_path())];
    for dir in candidates.into_iter().flatten() {
        if chdir(dir).is_ok() {
            return Ok(dir.to_path_buf());
        }
    }
    chdir("/").context("chdir /")?;
    Ok(PathBuf::from("/"))
}
