//! Work on image data done as the container's user, never as root: a
//! forked child that drops to the user exactly as the command will, in
//! its own process group, bounded in time and output.
//!
//! Two callers: the evaluation of an Apptainer image's environment scripts
//! (image code, [`super::image_env`]) and the unpacking of a SIF overlay
//! partition (hostile filesystem bytes, [`super::overlay_partition`]).
//! Whatever the body does, it does with the user's rights only; when it
//! ends, hangs or floods, its whole process group is killed.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::container::identity;
use crate::container::mount::rootfs::ContainerSpec;
use crate::error::{Error, Result};

/// How long the child may run and how much it may print on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub timeout: Duration,
    pub max_stdout: usize,
}

/// What the child left: its exit status (128+N for signal N), its whole
/// stdout, and the last 4 KiB of its stderr.
#[derive(Debug)]
pub struct Finished {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr_tail: Vec<u8>,
}

impl Finished {
    /// The last non-empty line of stderr, trimmed.
    pub fn last_error_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.stderr_tail)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    }
}

/// Largest stderr tail kept.
const STDERR_TAIL: usize = 4096;

/// Runs `body` in a child as `spec.identity` (`no_new_privs`, no
/// capabilities, not dumpable; for an unprivileged container, the user
/// namespace's capabilities shed), started in `workdir` (entered before
/// the drop, so it may be a directory only root can reach), with stdin on
/// /dev/null and stdout/stderr piped back, and no other descriptor of its
/// parent's but `keep` (what `body` reads: the child never execs, so
/// close-on-exec would not close the rest; root's descriptors, such as a
/// verification copy or the node cache's lock, must not reach code that
/// handles hostile bytes). `body` returns the exit status or execs.
/// `what` names the work in error messages ("the image's environment
/// scripts (...)").
///
/// Must be called from a single-threaded process (it forks).
pub fn run(
    spec: &ContainerSpec,
    workdir: &Path,
    what: &str,
    bounds: Bounds,
    keep: &[RawFd],
    body: impl FnOnce() -> i32,
) -> Result<Finished> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::system(format!("{what}: pipe: {e}")))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: the caller is single-threaded (documented above); the child
    // runs `child_main`, which execs or leaves with `_exit`.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => return Err(Error::system(format!("{what}: fork: {e}"))),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(out_r);
            drop(err_r);
            child_main(spec, workdir, out_w, err_w, keep, body)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
    };
    // Also from this side, so the group exists whichever runs first.
    let _ = nix::unistd::setpgid(child, child);
    drop(out_w);
    drop(err_w);
    let (stdout, stderr) = (std::fs::File::from(out_r), std::fs::File::from(err_r));
    let read = read_until_closed(stdout, stderr, what, bounds);
    // Done or out of bounds: nothing the child started may stay.
    let group = nix::unistd::Pid::from_raw(-child.as_raw());
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let status = crate::process::wait_child(child);
    let (stdout, stderr_tail) = read?;
    Ok(Finished {
        status: status?,
        stdout,
        stderr_tail,
    })
}

/// The child: its own process group, the parent-death signal, the
/// streams, the working directory, the privilege drop, then `body`.
/// Never returns.
fn child_main(
    spec: &ContainerSpec,
    workdir: &Path,
    out: OwnedFd,
    err: OwnedFd,
    keep: &[RawFd],
    body: impl FnOnce() -> i32,
) -> ! {
    let exit = |status: i32| -> ! {
        let _ = std::io::stdout().flush();
        // SAFETY: leaves the forked child at once, running nothing of the
        // parent's (atexit handlers, destructors).
        unsafe { libc::_exit(status) }
    };
    let fail = |what: &str| -> ! {
        eprintln!("{what}");
        exit(126)
    };
    let zero = nix::unistd::Pid::from_raw(0);
    if nix::unistd::setpgid(zero, zero).is_err() {
        fail("cannot start a process group");
    }
    // Ends with whoever waits for it (kept across the privilege drop).
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        fail("cannot set the parent-death signal");
    }
    let null = std::fs::File::open("/dev/null").map(OwnedFd::from);
    let streams = null
        .map_err(drop)
        .and_then(|null| nix::unistd::dup2(null.as_raw_fd(), 0).map_err(drop))
        .and_then(|_| nix::unistd::dup2(out.as_raw_fd(), 1).map_err(drop))
        .and_then(|_| nix::unistd::dup2(err.as_raw_fd(), 2).map_err(drop));
    if streams.is_err() {
        fail("cannot set up the child's streams");
    }
    // `out` and `err` live on as 1 and 2; the child never returns, so
    // their owners never close them again.
    close_all_but(keep);
    if nix::unistd::chdir(workdir).is_err() {
        fail(&format!("cannot enter {}", workdir.display()));
    }
    let dropped = if spec.unprivileged {
        identity::drop_user_namespace_capabilities()
    } else {
        spec.identity.drop_privileges()
    };
    if let Err(e) = dropped {
        fail(&e.message());
    }
    // The user's other processes may not trace this one, nor reach its
    // working directory through /proc/PID/cwd (an exec in `body` makes
    // it dumpable again, as any program the user runs).
    if nix::sys::prctl::set_dumpable(false).is_err() {
        fail("cannot make the child non-dumpable");
    }
    // A panic must never unwind out of the forked child into the code of
    // the parent it was copied from.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(status) => exit(status),
        Err(_) => fail("internal error (a panic; details above)"),
    }
}

/// Closes every descriptor above 2 but those in `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 3u32;
    for fd in keep {
        if fd > from {
            // SAFETY: closes descriptors of this (forked) process only.
            unsafe { libc::close_range(from, fd - 1, 0) };
        }
        from = fd + 1;
    }
    // SAFETY: as above.
    unsafe { libc::close_range(from, u32::MAX, 0) };
}

/// Reads both pipes to their end within the bounds; stdout whole (up to
/// `bounds.max_stdout`), stderr's last [`STDERR_TAIL`] bytes.
fn read_until_closed(
    mut stdout: impl Read + AsFd,
    mut stderr: impl Read + AsFd,
    what: &str,
    bounds: Bounds,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let deadline = Instant::now() + bounds.timeout;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut chunk = [0u8; 8192];
    while out_open || err_open {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::image(format!(
                "{what} did not finish within {} s",
                bounds.timeout.as_secs()
            )));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = Vec::new();
        if out_open {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::system(format!("{what}: reading its output: {e}"))),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut i = 0;
        if out_open {
            if ready[i] {
                match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) if out.len() + n > bounds.max_stdout => {
                        return Err(Error::image(format!(
                            "{what} printed more than {} KiB",
                            bounds.max_stdout >> 10
                        )))
                    }
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                }
            }
            i += 1;
        }
        if err_open && ready[i] {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    err.extend_from_slice(&chunk[..n]);
                    if err.len() > STDERR_TAIL {
                        err.drain(..err.len() - STDERR_TAIL);
                    }
                }
            }
        }
    }
    Ok((out, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::identity::Identity;

    /// Threat model open item 12, closed: the child never execs, so
    /// close-on-exec does not help; it must hold none of its parent's
    /// descriptors but those it is given.
    #[test]
    fn the_child_holds_only_the_descriptors_it_is_given() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (the child drops to nobody)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("root-only");
        let given = dir.path().join("given");
        std::fs::write(&secret, b"root's").unwrap();
        std::fs::write(&given, b"the body's").unwrap();
        let secret_file = std::fs::File::open(&secret).unwrap();
        let given_file = std::fs::File::open(&given).unwrap();
        let spec = ContainerSpec::new(dir.path().into(), Identity::lookup("nobody").unwrap());
        let bounds = Bounds {
            timeout: Duration::from_secs(10),
            max_stdout: 1 << 16,
        };
        let done = run(
            &spec,
            Path::new("/"),
            "test",
            bounds,
            &[given_file.as_raw_fd()],
            || {
                // What this process holds, by the inode of each open
                // descriptor (its /proc/self/fd is root's: not dumpable).
                // (Written to fd 1 itself: the test harness captures
                // `println!`.)
                for fd in 0..1024 {
                    if let Ok(st) = nix::sys::stat::fstat(fd) {
                        let line = format!("{fd} {}\n", st.st_ino);
                        let _ = nix::unistd::write(std::io::stdout(), line.as_bytes());
                    }
                }
                0
            },
        )
        .unwrap();
        drop(secret_file);
        let held = String::from_utf8_lossy(&done.stdout).into_owned();
        assert_eq!(done.status, 0, "{held}");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let inodes: Vec<&str> = held.lines().filter_map(|l| l.split(' ').nth(1)).collect();
        assert!(inodes.contains(&ino(&given).to_string().as_str()), "{held}");
        assert!(
            !inodes.contains(&ino(&secret).to_string().as_str()),
            "{held}"
        );
        // 0, 1, 2 and the given file.
        assert_eq!(held.lines().count(), 4, "{held}");
    }
}
