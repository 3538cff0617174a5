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

/// Namespaces besides the mount namespace a container may have of its own
/// (`--container-unshare`, as pyxis names them). Without them the tasks
/// share the node's network, System V IPC and host name, as tasks without
/// a container do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unshared {
    /// A network namespace with only a loopback interface (up).
    Net,
    /// Its own System V IPC objects and POSIX message queues.
    Ipc,
    /// Its own host name (starting as the node's).
    Uts,
}

impl Unshared {
    pub const ALL: [Unshared; 3] = [Unshared::Net, Unshared::Ipc, Unshared::Uts];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|u| u.name() == name)
    }

    /// The option's word, also the namespace's name under `/proc/PID/ns`.
    pub fn name(self) -> &'static str {
        match self {
            Unshared::Net => "net",
            Unshared::Ipc => "ipc",
            Unshared::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            Unshared::Net => CloneFlags::CLONE_NEWNET,
            Unshared::Ipc => CloneFlags::CLONE_NEWIPC,
            Unshared::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// Moves the calling process into new namespaces of the kinds `which`; a
/// new network namespace gets its loopback interface up.
pub fn unshare_others(which: &[Unshared]) -> Result<()> {
    for kind in which {
        unshare(kind.flag()).with_context(|| format!("creating a {} namespace", kind.name()))?;
        if *kind == Unshared::Net {
            loopback_up().context("bringing up the loopback interface")?;
        }
    }
    Ok(())
}

/// Opens a handle on process `pid`'s namespace of kind `kind` (it pins the
/// namespace, as [`open_mount_namespace`] does).
pub fn open_namespace(pid: u32, kind: Unshared) -> Result<File> {
    let path = format!("/proc/{pid}/ns/{}", kind.name());
    File::open(&path).with_context(|| format!("opening {path}"))
}

/// Moves the calling process into the namespace `ns` of kind `kind` (from
/// [`open_namespace`]); needs CAP_SYS_ADMIN, like [`join_mount_namespace`].
pub fn join_namespace(ns: impl AsFd, kind: Unshared) -> Result<()> {
    setns(ns, kind.flag())
        .with_context(|| format!("joining the container's {} namespace", kind.name()))
}

/// `ip link set lo up`, in the calling process's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface in `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reading the union member SIOCGIFFLAGS just wrote.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
