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
//!   namespace that mounts it) and mounts it itself ([`crate::container::mount::fuse::FuseMount`]), so the
//!   mount is ready at once and its errors are sifrun's own one-line errors;
//! * it hands the device to sifrun over a socket ([`send_device`]);
//! * sifrun, still in the host's namespaces, starts the server on that
//!   descriptor ([`Server::start`]). Living outside the container's mount
//!   namespace is what lets the server end on its own: it holds no
//!   reference to that namespace, so when the container's last process
//!   exits the namespace and the mount go, the kernel aborts the FUSE
//!   connection and the server's next read fails with ENODEV.

use std::ffi::OsString;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{Context, Error, Result};

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
                let keep_open = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty());
                nix::fcntl::fcntl(fd, keep_open)?;
                nix::unistd::setsid()?;
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
