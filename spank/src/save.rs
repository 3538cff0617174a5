//! `--container-save=PATH`: once a step's last task on its first node has
//! ended, the container's root filesystem (the image with what the step
//! wrote over it, without the binds and the host's mounts) becomes a new
//! SIF image at PATH, built **as the job user** (so it lands only where
//! the user may write, and holds only what the user may read).
//!
//! How root hands the user the container's root without giving anything
//! else: a child of slurmstepd enters the container's mount namespace and
//! takes a detached copy of its root mount alone (`open_tree` without
//! `AT_RECURSIVE`: the overlay, none of the binds on it), returns to the
//! node's namespace, makes a private mount namespace of its own, mounts
//! that copy there read-only, nosuid, nodev, then becomes the job user and
//! runs `sifrun build` on it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::helper::JobUser;

/// How long a save may take (it reads and compresses the whole root).
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where the copy of the container's root is mounted in the child's own
/// mount namespace (a tmpfs over the state directory hides the rest of it
/// there, and lets the user reach the mount point).
const MOUNT_POINT: &str = "root";

/// Saves the container whose mount namespace is `mount_ns` to `dest` as
/// `user`, with `sifrun` (the helper binary); `state_dir` is the plugin's.
/// The error is the line for the user.
pub fn save_container(
    mount_ns: &File,
    user: &JobUser,
    sifrun: &Path,
    state_dir: &Path,
    dest: &Path,
) -> Result<(), String> {
    if dest.starts_with(state_dir) {
        return Err(format!(
            "{} is inside the node's state directory",
            dest.display()
        ));
    }
    // Everything the child needs, made before the fork: it is a copy of a
    // multi-threaded process and only makes system calls until it execs.
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string());
    let argv: Vec<CString> = [
        sifrun.as_os_str().as_bytes(),
        b"build",
        b"--force",
        b"--output",
        dest.as_os_str().as_bytes(),
        state_dir.join(MOUNT_POINT).as_os_str().as_bytes(),
    ]
    .iter()
    .map(|a| CString::new(*a).map_err(|e| e.to_string()))
    .collect::<Result<_, _>>()?;
    let child = Child {
        state: c(state_dir)?,
        target: c(&state_dir.join(MOUNT_POINT))?,
        exe: c(sifrun)?,
        argv,
        envp: vec![CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").unwrap_or_default()],
        uid: user.uid,
        gid: user.gid,
        groups: user.groups.clone(),
    };
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: the child only makes system calls on data prepared above,
    // then execs or `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        drop(err_r);
        let why = child.prepare_and_exec(mount_ns, &err_w);
        let line = format!("{why}\n");
        // SAFETY: a write of a live buffer to our own stderr.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        // SAFETY: ends this forked child at once.
        unsafe { libc::_exit(1) }
    }
    drop(err_w);
    wait_for(pid, err_r)
}

/// What the forked child needs, made before the fork (after it, in a copy
/// of a multi-threaded process, the child only makes system calls).
struct Child {
    state: CString,
    target: CString,
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl Child {
    /// In the forked child: the copy of the container's root, mounted
    /// where the user can read it, then `sifrun build` as the user.
    /// Returns only on failure, with the reason. Its stderr is `err` (the
    /// build's errors go there too).
    fn prepare_and_exec(&self, mount_ns: &File, err: &OwnedFd) -> String {
        let fail = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
        // SAFETY: dup2 on descriptors this process owns.
        if unsafe { libc::dup2(err.as_raw_fd(), 2) } < 0 {
            return fail("redirecting stderr");
        }
        let Ok(node_ns) = File::open("/proc/self/ns/mnt") else {
            return fail("opening the node's mount namespace");
        };
        if nix::sched::setns(mount_ns, nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
            return fail("entering the container");
        }
        // OPEN_TREE_CLONE without AT_RECURSIVE: the root mount alone.
        const OPEN_TREE_CLONE: libc::c_uint = 1;
        // SAFETY: a NUL-terminated path; the kernel returns a new descriptor.
        let tree = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                c"/".as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
            )
        };
        if tree < 0 {
            return fail("copying the container's root");
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
        if nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNS).is_err() {
            return fail("returning to the node's namespace");
        }
        if sifrun_runtime::container::namespaces::unshare_mount_namespace().is_err() {
            return fail("making a private mount namespace");
        }
        use nix::mount::{mount, MsFlags};
        if mount(
            Some("tmpfs"),
            self.state.as_c_str(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=1m"),
        )
        .is_err()
        {
            return fail("mounting a tmpfs for the copy");
        }
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o755);
        if nix::unistd::mkdir(self.target.as_c_str(), mode).is_err() {
            return fail("making the mount point");
        }
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
        // SAFETY: NUL-terminated paths and a descriptor we own.
        let moved = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                self.target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if moved != 0 {
            return fail("mounting the copy");
        }
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        let target = self.target.as_c_str();
        if mount(None::<&str>, target, None::<&str>, flags, None::<&str>).is_err() {
            return fail("making the copy read-only");
        }
        if let Err(errno) = crate::as_user::become_user_for_good(self.uid, self.gid, &self.groups) {
            return format!(
                "becoming the job user: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        if nix::sys::prctl::set_no_new_privs().is_err() {
            return fail("no_new_privs");
        }
        if nix::unistd::chdir("/").is_err() {
            return fail("chdir /");
        }
        let e = nix::unistd::execve(&self.exe, &self.argv, &self.envp).unwrap_err();
        format!("starting {}: {}", self.exe.to_string_lossy(), e.desc())
    }
}

/// Waits for the saving child (up to [`SAVE_TIMEOUT`]); its last stderr
/// line is the error.
fn wait_for(pid: i32, err: OwnedFd) -> Result<(), String> {
    let child = nix::unistd::Pid::from_raw(pid);
    // The pipe closes when the build ends (or the child dies).
    let mut output = Vec::new();
    let deadline = Instant::now() + SAVE_TIMEOUT;
    let mut file = File::from(err);
    let mut chunk = [0u8; 4096];
    loop {
        if !sifrun_runtime::process::wait_readable(&file, deadline) {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            return Err(format!(
                "the save did not finish within {} s",
                SAVE_TIMEOUT.as_secs()
            ));
        }
        match file.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                output.extend_from_slice(&chunk[..n]);
                // Only the end matters: keep the last 64 KiB.
                if output.len() > 1 << 16 {
                    output.drain(..output.len() - (1 << 16));
                }
            }
        }
    }
    match nix::sys::wait::waitpid(child, None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        other => {
            let text = String::from_utf8_lossy(&output);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .trim_start_matches("sifrun: error: ")
                .to_string();
            Err(if last.is_empty() {
                format!("the build ended with {other:?}")
            } else {
                last
            })
        }
    }
}
