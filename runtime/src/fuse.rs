//! The image's SquashFS partition through FUSE, for unprivileged runs.
//!
//! The kernel's SquashFS driver needs a block device (a loop device) and
//! root. Without root, a FUSE server reads the partition straight out of the
//! SIF file at its offset; Debian's `squashfuse_ll` (package squashfuse) is
//! the server (see docs/unprivileged.md for the measurement behind the choice).
//!
//! Who does what, and why:
//!
//! * the container process, already inside its user namespace, opens
//!   `/dev/fuse` (the kernel only accepts a FUSE device opened in the user
//!   namespace that mounts it) and mounts it itself ([`mount`]), so the
//!   mount is ready at once and its errors are sifrun's own one-line errors;
//! * it hands the device to sifrun over a socket ([`send_device`]);
//! * sifrun, still in the host's namespaces, starts the server on that
//!   descriptor ([`Server::start`]). Living outside the container's mount
//!   namespace is what lets the server end on its own: it holds no
//!   reference to that namespace, so when the container's last process
//!   exits the namespace and the mount go, the kernel aborts the FUSE
//!   connection and the server's next read fails with ENODEV.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{Context, Error, Result};

/// The FUSE device.
pub const FUSE_DEVICE: &str = "/dev/fuse";

/// Servers tried in order: the low-level one is much faster on metadata
/// (see docs/unprivileged.md); both come with Debian's squashfuse package.
const SERVERS: &[&str] = &["squashfuse_ll", "squashfuse"];

/// Environment variable naming the server program explicitly (tests, sites
/// that install it outside PATH).
pub const SERVER_ENV: &str = "SIFRUN_SQUASHFUSE";

/// How long sifrun waits, after the command exits, for the server to notice
/// the unmount and exit, so that a normal run leaves no process behind. A
/// container that left background processes keeps its server longer.
const SERVER_EXIT_GRACE: Duration = Duration::from_secs(2);

/// Finds the FUSE server program: `$SIFRUN_SQUASHFUSE`, else the first of
/// `squashfuse_ll`, `squashfuse` in PATH.
pub fn find_server() -> Result<PathBuf> {
    if let Some(explicit) = std::env::var_os(SERVER_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(&explicit);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(not_installed(&format!(
                "{SERVER_ENV}={} is not an executable file",
                path.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    for name in SERVERS {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(not_installed(
        "neither squashfuse_ll nor squashfuse is in PATH",
    ))
}

fn not_installed(why: &str) -> Error {
    Error::system(format!(
        "squashfuse is not installed ({why}); unprivileged sifrun serves the image through it (Debian/Ubuntu: apt-get install squashfuse), or run as root"
    ))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks, before anything is forked, that `/dev/fuse` exists and that the
/// caller may open it: the two most common reasons FUSE cannot work.
pub fn check_device() -> Result<()> {
    open_device().map(drop)
}

/// Opens `/dev/fuse` read-write (close-on-exec) with one-line errors for a
/// missing or forbidden device.
pub fn open_device() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
        .map_err(|e| match e.raw_os_error().map(Errno::from_raw) {
            Some(Errno::ENOENT) | Some(Errno::ENODEV) | Some(Errno::ENXIO) => Error::system(format!(
                "{FUSE_DEVICE} is missing: load the fuse kernel module (modprobe fuse) or, in a container, pass the device in; unprivileged sifrun needs FUSE"
            )),
            Some(Errno::EACCES) | Some(Errno::EPERM) => Error::system(format!(
                "FUSE is not permitted: {FUSE_DEVICE} cannot be opened by this user ({}); it is normally mode 0666, ask the administrator or run as root",
                device_mode()
            )),
            _ => Error::system(format!("opening {FUSE_DEVICE}: {e}")),
        })
}

/// `mode 0600, owner 0:0` for the error message.
fn device_mode() -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(FUSE_DEVICE) {
        Ok(m) => format!(
            "mode {:04o}, owner {}:{}",
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        ),
        Err(e) => e.to_string(),
    }
}

/// Mounts the FUSE connection behind `device` on `target`: read-only,
/// nosuid, nodev, owned by `uid`/`gid` (the only IDs allowed to use it).
pub fn mount(device: &File, target: &Path, uid: u32, gid: u32) -> Result<()> {
    let data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        device.as_raw_fd()
    );
    nix::mount::mount(
        Some("sifrun"),
        target,
        Some("fuse.squashfuse"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| match e {
        Errno::EPERM | Errno::EACCES => Error::system(format!(
            "FUSE is not permitted in an unprivileged user namespace on this host (mounting fuse on {}: {}); the kernel needs FUSE mounts in user namespaces (Linux >= 4.18)",
            target.display(),
            e.desc()
        )),
        Errno::ENODEV => Error::system(
            "FUSE is not available: the kernel has no fuse filesystem (modprobe fuse)",
        ),
        other => Error::system(format!(
            "mounting fuse on {}: {}",
            target.display(),
            other.desc()
        )),
    })
}

/// Sends `device` over `socket` (SCM_RIGHTS).
pub fn send_device(socket: &UnixStream, device: &File) -> Result<()> {
    let fds = [device.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"F")];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .context("handing the FUSE device to sifrun")?;
    Ok(())
}

/// Receives the device [`send_device`] sent. An empty read means the
/// container process failed before sending (its error follows on the
/// status pipe).
pub fn receive_device(socket: &UnixStream) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other.context("receiving the FUSE device")?,
        }
    };
    for cmsg in msg.cmsgs().context("receiving the FUSE device")? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// A running FUSE server process.
#[derive(Debug)]
pub struct Server {
    child: std::process::Child,
}

impl Server {
    /// Starts `program` serving the SquashFS at `offset` in `image` on the
    /// FUSE connection `device` (passed as `/dev/fd/N`, which libfuse takes
    /// as an already mounted connection).
    ///
    /// The server gets its own session: a Ctrl-C meant for the container
    /// command must not take the container's filesystem away.
    pub fn start(program: &Path, image: &Path, offset: u64, device: OwnedFd) -> Result<Server> {
        let fd = device.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.arg("-f")
            .arg("-o")
            .arg(format!("offset={offset}"))
            .arg(image)
            .arg(format!("/dev/fd/{fd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The descriptor was received close-on-exec; the server needs it.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 || libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the FUSE server {}", program.display()))?;
        drop(device);
        Ok(Server { child })
    }

    /// Waits briefly for the server to exit (it does once the container's
    /// mount namespace is gone); leaves it running, detached, otherwise.
    pub fn wait_for_exit(mut self) {
        let deadline = Instant::now() + SERVER_EXIT_GRACE;
        let _ = crate::process::wait_until(&mut self.child, deadline, Duration::from_millis(2));
    }

    /// Ends the server now (setup failed: nothing will use the mount).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_passes_over_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = File::open("/dev/null").unwrap();
        send_device(&a, &file).unwrap();
        let fd = receive_device(&b).unwrap().expect("a descriptor");
        assert_ne!(fd.as_raw_fd(), file.as_raw_fd());
        drop(a);
        assert!(receive_device(&b).unwrap().is_none());
    }

    #[test]
    fn explicit_server_must_be_executable() {
        // SAFETY (test): no other test reads this variable.
        std::env::set_var(SERVER_ENV, "/nonexistent/squashfuse");
        let e = find_server().unwrap_err();
        std::env::remove_var(SERVER_ENV);
        assert!(e.message().starts_with("squashfuse is not installed"));
        assert!(!e.message().contains('\n'));
    }
}
