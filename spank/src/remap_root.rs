//! `--container-remap-root`: the job user appears as root inside the
//! container, through a user namespace made once per step, owned by the
//! job user, mapping that user (alone) to 0. Each task joins it last, as
//! the job user (`task_init`).
//!
//! Why not let each task make its own (`unshare(CLONE_NEWUSER)` and write
//! its maps, as `sifrun exec` does): Slurm's change to the job user leaves
//! the task not dumpable until it execs, so its `/proc` files belong to
//! root and it cannot write its own maps; making it dumpable would let the
//! user's other processes trace the task while it still holds a copy of
//! slurmstepd's memory. So a child of slurmstepd that has become the job
//! user creates the namespace, root writes its maps (root may map any
//! ID), and the plugin keeps a descriptor of it; a task joins with
//! `setns`, which the kernel allows a process whose effective UID owns the
//! namespace.
//!
//! What "root" inside may do: everything its capabilities allow over the
//! namespaces this user namespace owns, and it owns none (the container's
//! mount namespace belongs to the host's). So nothing the user could not
//! do before: files are still checked as the user, `no_new_privs` stays.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use sifrun_runtime::process::wait_readable;

/// How long the child may take to make the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A user namespace owned by `uid`, in which `uid`/`gid` are 0, kept by
/// the returned descriptor.
pub fn user_namespace(uid: u32, gid: u32) -> Result<File, String> {
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string());
    let (ready_r, ready_w) = pipe()?;
    let (hold_r, hold_w) = pipe()?;
    // SAFETY: the child only makes async-signal-safe system calls on data
    // prepared above, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        drop(ready_r);
        drop(hold_w);
        child(uid, gid, &ready_w, &hold_r)
    }
    drop(ready_w);
    drop(hold_r);
    let result = finish(pid, uid, gid, &ready_r);
    // The child ends when its pipe closes; killed anyway, then reaped.
    drop(hold_w);
    let child = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// In the parent, once the child said its namespace exists: the maps,
/// written by root, and a descriptor of the namespace. The child is not
/// reaped yet, so its PID cannot name another process.
fn finish(pid: i32, uid: u32, gid: u32, ready: &OwnedFd) -> Result<File, String> {
    if !wait_readable(ready, Instant::now() + READY_TIMEOUT) {
        return Err("the user namespace was not made in time".into());
    }
    let mut byte = [0u8; 1];
    match nix::unistd::read(ready.as_raw_fd(), &mut byte) {
        Ok(1) if byte[0] == 0 => {}
        Ok(1) => {
            return Err(format!(
                "making the user namespace failed: {}",
                std::io::Error::from_raw_os_error(i32::from(byte[0]))
            ))
        }
        _ => return Err("the user namespace was not made".into()),
    }
    let proc = format!("/proc/{pid}");
    let write = |file: &str, text: String| {
        std::fs::write(format!("{proc}/{file}"), text)
            .map_err(|e| format!("writing {file} of the user namespace: {e}"))
    };
    // As an unprivileged writer would have to: "root" inside cannot give
    // itself the user's other groups back once they are dropped.
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))?;
    File::open(format!("{proc}/ns/user")).map_err(|e| format!("opening the user namespace: {e}"))
}

/// The child: the job user (raw system calls: it is a copy of a
/// multi-threaded process), then a new user namespace, then it says so and
/// waits for its parent to be done.
fn child(uid: u32, gid: u32, ready: &OwnedFd, hold: &OwnedFd) -> ! {
    let status = become_user_in_new_namespace(uid, gid).err().unwrap_or(0);
    let report = [u8::try_from(status).unwrap_or(u8::MAX)];
    // SAFETY: a one-byte write from a live buffer to our own descriptor.
    unsafe { libc::write(ready.as_raw_fd(), report.as_ptr().cast(), 1) };
    let mut buf = [0u8; 1];
    // SAFETY: a one-byte read into a live buffer from our own descriptor;
    // it returns when the parent closes its end (or kills us).
    unsafe { libc::read(hold.as_raw_fd(), buf.as_mut_ptr().cast(), 1) };
    // SAFETY: ends this forked child without running the parent's atexit
    // handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// No groups, the user's IDs, then a new user namespace (owned by them):
/// the errno of the first call that failed.
fn become_user_in_new_namespace(uid: u32, gid: u32) -> Result<(), i32> {
    crate::as_user::become_user_for_good(uid, gid, &[])?;
    // SAFETY: a raw system call on a plain value, changing this process only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// In a task, as the job user: joins the step's namespace.
pub fn join(userns: &File) -> Result<(), String> {
    nix::sched::setns(userns, nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("joining the user namespace: {}", e.desc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_root_in_the_namespace_and_no_one_else() {
        if !nix::unistd::getuid().is_root() {
            return;
        }
        let ns = user_namespace(65534, 65534).unwrap();
        // A child joins it as the user, as a task does.
        let joined = in_child_as(65534, || {
            join(&ns).is_ok()
                && nix::unistd::getuid().as_raw() == 0
                && std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
                    m.split_whitespace().collect::<Vec<_>>() == ["0", "65534", "1"]
                })
                // Root inside, but not over the host: a root-only file
                // stays closed.
                && std::fs::read("/proc/1/environ").is_err()
        });
        assert!(joined, "the owner could not join as root");
        // Another user may not join it.
        assert!(
            in_child_as(65533, || join(&ns).is_err()),
            "another user joined"
        );
    }

    /// Runs `check` in a forked child that has become `id` (user and
    /// group, no other groups): its verdict.
    fn in_child_as(id: u32, check: impl FnOnce() -> bool) -> bool {
        // SAFETY: the test process forks; the child only checks and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = become_user(id) && check();
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
                    == nix::sys::wait::WaitStatus::Exited(child, 0)
            }
        }
    }

    fn become_user(id: u32) -> bool {
        nix::unistd::setgroups(&[]).is_ok()
            && nix::unistd::setresgid(id.into(), id.into(), id.into()).is_ok()
            && nix::unistd::setresuid(id.into(), id.into(), id.into()).is_ok()
    }
}
