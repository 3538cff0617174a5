//! Process plumbing: fork a child that reports setup/exec failures over a
//! close-on-exec pipe, forward signals to it, wait and map its exit status,
//! and resolve + exec the command inside the container.

use std::convert::Infallible;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::container::env::Environment;
use crate::error::{Context, Error, ErrorKind, Result, EXIT_RUNTIME_FAILURE};

/// Signals sifrun relays to the container command instead of dying from them.
pub const FORWARDED_SIGNALS: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// PID signals are forwarded to; 0 = none (handler does nothing).
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A forked child that has successfully `execve`d its command.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
}

/// Work done in the child: it never returns on success (it execs).
pub type ChildMain<'a> = dyn FnOnce() -> Result<Infallible> + 'a;

/// Work done in the parent right after the fork, while the child sets up
/// (e.g. starting a FUSE server the child's mounts need). Its error kills
/// the child.
pub type ParentHook<'a> = dyn FnOnce(Pid) -> Result<()> + 'a;

/// Forks; the child runs `child_main` and, if that fails, reports the error
/// to the parent over the pipe and exits with 255.
///
/// Returns once the child has exec'd (the close-on-exec pipe hit EOF) or
/// failed (the error it sent, after reaping it). While waiting, the
/// [`FORWARDED_SIGNALS`] are relayed to the child; they are blocked around
/// `fork` so that none can be lost or kill sifrun in between.
///
/// Must be called from a single-threaded process (it forks and then
/// allocates in the child).
pub fn spawn(child_main: Box<ChildMain<'_>>) -> Result<Child> {
    spawn_with(child_main, Box::new(|_| Ok(())))
}

/// [`spawn`], running `parent_hook` in the parent while the child sets up
/// (signals are already being forwarded to the child then).
pub fn spawn_with(
    child_main: Box<ChildMain<'_>>,
    parent_hook: Box<ParentHook<'_>>,
) -> Result<Child> {
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("creating the status pipe")?;
    let mut forwarded = SigSet::empty();
    for s in FORWARDED_SIGNALS {
        forwarded.add(*s);
    }
    let mut old_mask = SigSet::empty();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old_mask))
        .context("blocking signals")?;

    // SAFETY: sifrun is single threaded at this point; the child only runs
    // our own code before exec.
    match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            drop(read_end);
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            let err = match child_main() {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let mut pipe = File::from(write_end);
            let _ = pipe.write_all(&err.encode());
            // SAFETY: _exit skips atexit handlers and destructors that belong to the parent.
            unsafe { libc::_exit(EXIT_RUNTIME_FAILURE) }
        }
        ForkResult::Parent { child } => {
            drop(write_end);
            // Whatever the child's closure captured (e.g. its end of a
            // socket) must not stay open here: the hook may wait for EOF.
            drop(child_main);
            FORWARD_TO.store(child.as_raw(), Ordering::SeqCst);
            let installed = install_forwarding();
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            let installed = installed.and_then(|()| parent_hook(child));
            let report = match installed {
                Ok(()) => read_report(read_end),
                Err(_) => Ok(Vec::new()),
            };
            if let Err(e) = installed {
                let _ = signal::kill(child, Signal::SIGKILL);
                let _ = wait_child(child);
                return Err(e);
            }
            match report {
                Ok(bytes) if bytes.is_empty() => Ok(Child { pid: child }),
                Ok(bytes) => {
                    let _ = wait_child(child);
                    Err(Error::decode(&bytes))
                }
                Err(e) => {
                    let _ = signal::kill(child, Signal::SIGKILL);
                    let _ = wait_child(child);
                    Err(e)
                }
            }
        }
    }
}

/// Waits for a helper program (`std::process::Child`) to exit, polling
/// every `poll` until `deadline`: `Ok(None)` when it is still running then
/// (the caller decides whether to kill it or leave it).
pub fn wait_until(
    child: &mut std::process::Child,
    deadline: std::time::Instant,
    poll: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(poll);
    }
}

/// Waits until `fd` is readable (data, end of file, or an error a read
/// will report) or `deadline` passes; false at the deadline or when
/// polling fails. Interrupted polls are restarted.
pub fn wait_readable(fd: &impl std::os::fd::AsFd, deadline: std::time::Instant) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// Relays the [`FORWARDED_SIGNALS`] to `pid` until [`stop_forwarding`]
/// (used while `sifrun build` waits for mksquashfs, so an interrupted build
/// still cleans up its temporary files).
pub fn forward_signals_to(pid: i32) -> Result<()> {
    FORWARD_TO.store(pid, Ordering::SeqCst);
    install_forwarding()
}

/// Stops relaying signals and restores their default action.
pub fn stop_forwarding() {
    FORWARD_TO.store(0, Ordering::SeqCst);
    for s in FORWARDED_SIGNALS {
        // SAFETY: restoring the default disposition is always sound.
        let _ = unsafe { signal::signal(*s, SigHandler::SigDfl) };
    }
}

fn install_forwarding() -> Result<()> {
    // SA_RESTART: the parent's blocking read/waitpid continue after a forward.
    let action = SigAction::new(
        SigHandler::Handler(forward_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for s in FORWARDED_SIGNALS {
        // SAFETY: the handler only calls kill() on an atomic PID.
        unsafe { signal::sigaction(*s, &action) }.context("installing signal handlers")?;
    }
    Ok(())
}

fn read_report(read_end: OwnedFd) -> Result<Vec<u8>> {
    let mut pipe = File::from(read_end);
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes)
        .context("reading the container status")?;
    Ok(bytes)
}

impl Child {
    /// PID of the container command.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Waits for the command and returns the exit status to propagate:
    /// its exit code, or 128+N when it was killed by signal N.
    pub fn wait(self) -> Result<i32> {
        let status = wait_child(self.pid);
        FORWARD_TO.store(0, Ordering::SeqCst);
        status
    }
}

/// Waits for child `pid` and returns its exit code, or 128+N when signal N
/// killed it.
pub fn wait_child(pid: Pid) -> Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("waiting for the container command"),
        }
    }
}

/// Finds `command` using `path` (the container's PATH), like `execvp`, but
/// with errors sifrun can report: not found → [`ErrorKind::CommandNotFound`],
/// found but not executable → [`ErrorKind::CommandNotExecutable`].
/// Must run after entering the container so the search sees the image.
pub fn resolve_command(command: &str, path: Option<&OsStr>) -> Result<PathBuf> {
    if command.is_empty() {
        return Err(Error::new(
            ErrorKind::CommandNotFound,
            "command not found in image: ''",
        ));
    }
    if command.contains('/') {
        let p = PathBuf::from(command);
        return match p.metadata() {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p),
            Ok(_) => Err(not_executable(command, "permission denied")),
            Err(_) => Err(not_found(command)),
        };
    }
    let mut found_non_executable = false;
    let path = path.map(|p| p.as_bytes()).unwrap_or(b"");
    for dir in path.split(|b| *b == b':') {
        // An empty PATH element means the current directory (POSIX).
        let dir = if dir.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(dir))
        };
        let candidate = dir.join(command);
        match candidate.metadata() {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok() {
                    return Ok(candidate);
                }
                found_non_executable = true;
            }
            Ok(m) if m.is_file() => found_non_executable = true,
            _ => {}
        }
    }
    if found_non_executable {
        Err(not_executable(command, "permission denied"))
    } else {
        Err(not_found(command))
    }
}

fn not_found(command: &str) -> Error {
    Error::new(
        ErrorKind::CommandNotFound,
        format!("command not found in image: {command}"),
    )
}

fn not_executable(command: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::CommandNotExecutable,
        format!("command not executable: {command}: {why}"),
    )
}

/// Replaces the process with `program` (already resolved), `args` (`argv[0]`
/// first) and `env`. Only returns on failure.
pub fn exec(program: &Path, args: &[String], env: &Environment) -> Error {
    let Ok(cprogram) = CString::new(program.as_os_str().as_bytes()) else {
        return Error::usage("command contains a NUL byte");
    };
    let mut cargs = Vec::with_capacity(args.len());
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(c) => cargs.push(c),
            Err(_) => return Error::usage("argument contains a NUL byte"),
        }
    }
    let envp = env.to_envp();
    // Rust ignores SIGPIPE at startup and ignored signals survive execve;
    // the command must get the default behaviour.
    // SAFETY: setting a signal disposition to default is always sound.
    let _ = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let err = nix::unistd::execve(&cprogram, &cargs, &envp).unwrap_err();
    let name = args.first().map(String::as_str).unwrap_or("");
    match err {
        Errno::ENOENT => not_found(name),
        Errno::EACCES | Errno::ENOEXEC | Errno::EPERM | Errno::EISDIR => {
            not_executable(name, err.desc())
        }
        other => Error::system(format!("executing {name}: {}", other.desc())),
    }
}

/// Moves this process to the root cgroup (cgroup v2), so that Slurm's
/// cleanup of the step that started it does not kill it: for the root
/// processes that outlive a step on purpose (the cache keeper, the holder
/// of a kept container). Without cgroup v2 (or with `proctrack/linuxproc`)
/// a new session is enough. Best effort.
pub fn leave_job_cgroup() {
    let procs = Path::new("/sys/fs/cgroup/cgroup.procs");
    if procs.exists() {
        let _ = std::fs::write(procs, "0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_uses_given_path() {
        let p = resolve_command("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin"))).unwrap();
        assert!(p.ends_with("sh"));
        let e = resolve_command("definitely-not-here", Some(OsStr::new("/bin"))).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        assert_eq!(
            e.message(),
            "command not found in image: definitely-not-here"
        );
        let e = resolve_command("/etc/passwd", None).unwrap_err();
        assert_eq!(e.exit_code(), 126);
    }
}
