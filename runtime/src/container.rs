//! The two halves of running something in a container, as library calls the
//! SPANK plugin can reuse:
//!
//! 1. [`create`] (once per node, in a root process that stays alive as the
//!    namespace holder, or in `sifrun exec`'s child): new mount namespace →
//!    image mount → root filesystem → `pivot_root`.
//! 2. [`exec_command`] (per task, after [`crate::namespaces::join_mount_namespace`]
//!    or directly after [`create`]): drop privileges → chdir → resolve the
//!    command with the container PATH → `execve`.
//!
//! ```text
//! holder (root):  LoopAttachment::attach → fork → create(&spec, dev) → pause
//! each task:      ns = open_mount_namespace(holder_pid); join_mount_namespace(ns)
//!                 (while still privileged) → exec_command(...)
//! ```
//!
//! Unprivileged `sifrun exec` uses [`create_unprivileged`] and
//! [`exec_command_in_user_namespace`]: same root, the image through FUSE.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::unistd::chdir;

use crate::env::Environment;
use crate::error::{Context, Error, ErrorKind, Result};
use crate::mount::rootfs::{build_rootfs, mount_image, mount_image_fuse, ContainerSpec};
use crate::namespaces::unshare_mount_namespace;
use crate::process;
use crate::user::Identity;

/// Builds the container described by `spec` from the SquashFS on `device`
/// (normally a [`crate::loop_device::LoopAttachment`] path) and makes it the
/// root of the calling process, in a new private mount namespace.
///
/// Runs as root. On error the namespace may hold partial mounts; they
/// disappear with the process (exit it rather than continuing).
pub fn create(spec: &ContainerSpec, device: &Path) -> Result<()> {
    unshare_mount_namespace()?;
    let image_dir = mount_image(spec, device)?;
    let rootfs = build_rootfs(spec, &image_dir)?;
    rootfs.enter()
}

/// Builds the container described by `spec` without privileges: a new user
/// namespace (the caller's own IDs mapped) and mount namespace, the image
/// through a FUSE connection mounted here and handed to sifrun over
/// `server_socket` (sifrun starts the server, see [`crate::fuse`]), then
/// the same root as [`create`]. `spec.unprivileged` must be set.
pub fn create_unprivileged(spec: &ContainerSpec, server_socket: UnixStream) -> Result<()> {
    crate::userns::enter(spec.identity.uid, spec.identity.gid)?;
    let device = crate::fuse::open_device()?;
    let image_dir = mount_image_fuse(spec, &device)?;
    crate::fuse::send_device(&server_socket, &device)?;
    // Only the server may hold the device: if it dies, the connection
    // aborts and the container sees errors instead of hanging.
    drop(device);
    drop(server_socket);
    let rootfs = build_rootfs(spec, &image_dir).map_err(server_gone)?;
    rootfs.enter()
}

/// A setup error caused by a dead FUSE server reads ENOTCONN; say so.
fn server_gone(e: Error) -> Error {
    if e.message().contains("Transport endpoint is not connected")
        || e.message().contains("ENOTCONN")
    {
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

/// Drops to `identity`, enters the working directory and executes
/// `command` (resolved with `env`'s PATH *inside* the container). Only
/// returns on failure; a missing command gives
/// [`ErrorKind::CommandNotFound`], a non-executable one
/// [`ErrorKind::CommandNotExecutable`].
pub fn exec_command(
    identity: &Identity,
    workdir: &Workdir,
    command: &[String],
    env: Environment,
) -> Error {
    exec_after(
        || identity.drop_privileges(),
        identity,
        workdir,
        command,
        env,
    )
}

/// [`exec_command`] for a process in an unprivileged user namespace (from
/// [`create_unprivileged`]): it already runs as `identity`, so instead of
/// switching users it drops its namespace capabilities.
pub fn exec_command_in_user_namespace(
    identity: &Identity,
    workdir: &Workdir,
    command: &[String],
    env: Environment,
) -> Error {
    exec_after(
        crate::user::drop_user_namespace_capabilities,
        identity,
        workdir,
        command,
        env,
    )
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
