//! Process file descriptors (`pidfd_open`, Linux 5.3): a handle on one
//! process that a recycled PID can never redirect. Signals sent through it
//! reach that process or nobody, and it becomes readable when the process
//! exits, which lets a helper tie its own life to another process's.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A handle on one process.
#[derive(Debug)]
pub struct PidFd(OwnedFd);

impl PidFd {
    /// Opens a handle on process `pid` (close-on-exec).
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Ok(PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// A handle on the parent process, checked to still be the parent once
    /// it is open (had it died just before, the PID read would name its
    /// successor, or a stranger once recycled).
    pub fn parent() -> io::Result<PidFd> {
        let parent = nix::unistd::getppid();
        let pidfd = PidFd::open(parent.as_raw())?;
        if nix::unistd::getppid() != parent {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the parent process has exited",
            ));
        }
        Ok(pidfd)
    }

    /// Sends `signal` to the process (ESRCH once it has exited).
    pub fn send_signal(&self, signal: nix::sys::signal::Signal) -> io::Result<()> {
        // SAFETY: a valid pidfd, a valid signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Blocks until the process has exited.
    pub fn wait_exit(&self) {
        loop {
            let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(nix::errno::Errno::EINTR) => continue,
                // Readable: it exited. An error: the handle is unusable,
                // which must not keep anyone waiting forever either.
                _ => return,
            }
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_pidfd_sees_its_process_exit_and_signals_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id() as i32).unwrap();
        let started = Instant::now();
        pidfd
            .send_signal(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        pidfd.wait_exit();
        assert!(started.elapsed() < Duration::from_secs(5));
        child.wait().unwrap();
        assert_eq!(
            pidfd
                .send_signal(nix::sys::signal::Signal::SIGKILL)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ESRCH)
        );
    }
}
