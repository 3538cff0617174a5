//! Mount namespace handling: create a private one, switch its root, join an
//! existing one (what SPANK tasks do to enter a per-node container).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};

use crate::error::{Context, Result};

/// Moves the calling process into a new mount namespace whose mounts do not
/// propagate back to the host.
///
/// `/` is made recursively *slave*: host mount events (automounted home
/// directories, ...) still reach the container, but nothing mounted in the
/// container ever shows up on the host.
pub fn unshare_mount_namespace() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWNS).context("creating a mount namespace")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making / a slave mount")?;
    Ok(())
}

/// Makes `new_root` the root of the current mount namespace and detaches the
/// old root, so no host path stays reachable except through explicit binds.
///
/// Uses the `pivot_root(".", ".")` idiom: it needs no `put_old` directory
/// inside the (possibly read-only) new root.
pub fn enter_root(new_root: &Path) -> Result<()> {
    chdir(new_root).with_context(|| format!("entering {}", new_root.display()))?;
    pivot_root(".", ".").context("pivot_root")?;
    // The old root is now stacked on top of "/"; detach it lazily (it is busy
    // by definition: every process had it as root a moment ago).
    umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
    chdir("/").context("chdir /")?;
    Ok(())
}

/// Opens a handle on the mount namespace of process `pid`. The handle pins
/// the namespace: it stays alive while the fd is open, even if every process
/// has left it.
pub fn open_mount_namespace(pid: u32) -> Result<File> {
    let path = format!("/proc/{pid}/ns/mnt");
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// Moves the calling process into the mount namespace `ns` (from
/// [`open_mount_namespace`]). The kernel sets root and cwd to the
/// namespace's root, i.e. the container root when the namespace was set up
/// with [`enter_root`].
///
/// Needs CAP_SYS_ADMIN and CAP_SYS_CHROOT: in SPANK this must run while the
/// task is still privileged (`slurm_spank_task_init_privileged`), because the
/// namespace belongs to the initial user namespace. Must be called from a
/// single-threaded process.
pub fn join_mount_namespace(ns: impl AsFd) -> Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNS).context("joining the container mount namespace")?;
    chdir("/").context("chdir /")?;
    Ok(())
}
