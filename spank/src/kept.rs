//! Joining a container an earlier step of the job kept, without starting
//! the helper (see `sifrun_runtime::node::kept_containers`).
//!
//! Starting `sifrun slurm-setup` costs a step about 1.5 ms per node (fork,
//! exec, its start-up), most of what a kept container leaves of the
//! overhead. What the helper would check before joining one needs no
//! helper: the image opened as the job user (a forked child of slurmstepd
//! that takes the user's file permissions, opens the file the way the
//! helper does, and reports what it found), the key, the kept container's
//! lock and holder.
//! When anything is missing or different, the step goes the usual way
//! through the helper, which builds (and keeps) a container.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sifrun_runtime::node::credentials::open_no_magiclinks_c;
use sifrun_runtime::node::image_cache::FileIdentity;
use sifrun_runtime::node::kept_containers::{self, KeptContainers, KeptLease, KeptRecord};
use sifrun_runtime::phases::Phases;
use sifrun_runtime::pidfd::PidFd;
use sifrun_runtime::process::wait_readable;

use crate::config::Config;
use crate::helper::{setup_request, Container, JobUser};
use crate::request::{ContainerRequest, NameMode};

/// The kept container this step asks for, joined; `None` when there is
/// none to join (the caller starts the helper).
pub fn join(
    req: &ContainerRequest,
    user: &JobUser,
    config: &Config,
    node: &str,
    phases: &mut Phases,
) -> Option<Container> {
    let args = setup_request(req, user, config);
    // Checked before the image is opened: most steps that cannot use a
    // kept container are told so by their options alone.
    if !kept_containers::may_keep(&args) {
        return None;
    }
    // A job's first step, or one on a partition with a list (where none
    // is kept), costs no more than this look at a directory.
    let kept = KeptContainers::open(&config.state_dir).ok()?;
    if !kept.has_job(user.job_id) {
        return None;
    }
    let identity = identity_as_user(&req.image, user, config.setup_timeout()).ok()?;
    phases.mark("image checked as the user");
    let key = kept_containers::request_key(&args, node, &identity)?;
    let (lease, record, mount_ns) = kept.find(&key).ok()??;
    phases.mark("kept container found");
    Some(joined(lease, record, mount_ns))
}

/// A step's view of the kept container it joins.
fn joined(lease: KeptLease, record: KeptRecord, mount_ns: std::fs::File) -> Container {
    Container {
        mount_ns,
        other_ns: Vec::new(),
        user_ns: None,
        image_env: record.env,
        cache_lease: None,
        extra_cache_leases: Vec::new(),
        env_append: record.env_append,
        kept_lease: Some(lease),
        reused: true,
        site_hooks: Vec::new(),
    }
}

/// The container named by `--container-name` in this job on this node,
/// joined (`Some`), or `None` when the helper is to make it. Errors are the
/// step's one line: no such container when one must exist (`:exec`, or no
/// image given to make it), one exists with `:create`, it was made from
/// another image than the one given, or the job user can no longer read
/// its image (checked at every step, as for every container).
pub fn join_named(
    req: &ContainerRequest,
    user: &JobUser,
    config: &Config,
    node: &str,
    phases: &mut Phases,
) -> Result<Option<Container>, String> {
    let Some(name) = &req.name else {
        return Ok(None);
    };
    let said = |why: String| format!("--container-name={}: {why}", name.name);
    let key = kept_containers::named_key(user.job_id, node, user.uid, &name.name);
    let kept =
        KeptContainers::open(&config.state_dir).map_err(|e| said(e.message().to_string()))?;
    let no_image = req.image.as_os_str().is_empty();
    let (lease, record, mount_ns) = match (kept.find(&key).ok().flatten(), name.mode) {
        (None, NameMode::Exec) => {
            return Err(said("no such container in this job on this node".into()))
        }
        (None, _) if no_image => return Err(said(
            "no such container in this job on this node yet: give --container=IMAGE.sif to make it"
                .into(),
        )),
        (None, _) => return Ok(None),
        (Some(_), NameMode::Create) => {
            return Err(said(
                "a container of that name exists in this job on this node already".into(),
            ))
        }
        (Some(found), _) => found,
    };
    let image = record.named_image.clone().unwrap_or_default();
    if !no_image && req.image != image {
        return Err(said(format!(
            "it was made from {}, not {}",
            image.display(),
            req.image.display()
        )));
    }
    identity_as_user(&image, user, config.setup_timeout())
        .map_err(|e| format!("{}: {e}", image.display()))?;
    phases.mark("named container found");
    Ok(Some(joined(lease, record, mount_ns)))
}

fn zeroed_stat() -> libc::stat {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The identity of the regular file at `path`, opened as the job user the
/// way the helper opens the image (read-only, not blocking, never through
/// a `/proc` magic link), by a forked child of slurmstepd: the credentials
/// change in the child alone, and a path that hangs (a dead NFS server)
/// costs at most `timeout`, after which the child is killed.
pub fn identity_as_user(
    path: &Path,
    user: &JobUser,
    timeout: Duration,
) -> Result<FileIdentity, String> {
    // Everything the child needs, made before the fork: after it, in a
    // copy of a multi-threaded process, the child only makes system calls.
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: the child below only makes async-signal-safe system calls
    // on data prepared above, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        drop(read_end);
        child_open_and_report(&c_path, user.uid, user.gid, &user.groups, &write_end)
    }
    drop(write_end);
    let pidfd = PidFd::open(pid);
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; REPORT_LEN];
    let got = if wait_readable(&read_end, deadline) {
        nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&read_end), &mut buf).unwrap_or(0)
    } else {
        0
    };
    let child = nix::unistd::Pid::from_raw(pid);
    if got != REPORT_LEN {
        // Stuck (a dead file server) or gone: killed, and reaped if it
        // goes at once; one in uninterruptible sleep is left to
        // slurmstepd, which reaps any child, rather than waited for.
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
        if let Ok(fd) = &pidfd {
            wait_readable(fd, Instant::now() + Duration::from_millis(100));
        }
        let _ = nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        return Err("the image could not be checked in time".into());
    }
    // Reaped here, at once: slurmstepd must not find it while it waits
    // for its tasks (a child that is not a task costs a step 100 ms
    // there). It has written its report and is exiting.
    if let Ok(fd) = &pidfd {
        wait_readable(fd, Instant::now() + Duration::from_secs(1));
    }
    let _ = nix::sys::wait::waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    decode(&buf)
}

/// errno (4 bytes, 0 when found) then the seven numbers of a
/// [`FileIdentity`]-to-be (dev, ino, size, mtime, mtime_nsec, ctime,
/// ctime_nsec), native byte order.
const REPORT_LEN: usize = 4 + 7 * 8;

fn decode(buf: &[u8; REPORT_LEN]) -> Result<FileIdentity, String> {
    let errno = i32::from_ne_bytes(buf[..4].try_into().unwrap_or_default());
    if errno != 0 {
        return Err(sifrun_runtime::node::credentials::reason(
            &std::io::Error::from_raw_os_error(errno),
        ));
    }
    let mut fields = [0u64; 7];
    for (i, f) in fields.iter_mut().enumerate() {
        let at = 4 + i * 8;
        *f = u64::from_ne_bytes(buf[at..at + 8].try_into().unwrap_or_default());
    }
    Ok(FileIdentity::from_fields(fields))
}

/// In the forked child: become the job user, open and check the file,
/// write the report, exit. Only in a freshly forked child; never returns.
fn child_open_and_report(
    path: &CString,
    uid: u32,
    gid: u32,
    groups: &[libc::gid_t],
    out: &std::os::fd::OwnedFd,
) -> ! {
    let mut report = [0u8; REPORT_LEN];
    let found = become_user(uid, gid, groups)
        .and_then(|()| open_image(path))
        .and_then(regular_file_stat);
    let errno = match found {
        Ok(st) => {
            let fields = FileIdentity::of_stat(&st).fields();
            for (i, f) in fields.iter().enumerate() {
                report[4 + i * 8..12 + i * 8].copy_from_slice(&f.to_ne_bytes());
            }
            0
        }
        Err(errno) => errno,
    };
    report[..4].copy_from_slice(&errno.to_ne_bytes());
    let _ = nix::unistd::write(out, &report);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(0) }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Takes the job user's groups and filesystem IDs, which decide what
/// files it may open, with raw system calls (the C library's wrappers
/// would try to change every thread of the process this child was copied
/// from). Its real and effective IDs stay root's: the user's own processes
/// can neither trace nor signal it, so they cannot make it report another
/// file. Taking a non-root filesystem UID drops the capabilities that
/// bypass file permissions, so its opens are checked as the user's.
fn become_user(uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<(), i32> {
    // SAFETY: a valid pointer and length; changes this process only.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
        return Err(last_errno());
    }
    if !set_fs_id(libc::SYS_setfsgid, gid) || !set_fs_id(libc::SYS_setfsuid, uid) {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// `setfsgid` or `setfsuid` (`call`) to `id`; true when it took. Both
/// answer with the previous ID, not an error: asking again with an invalid
/// ID (which changes nothing) tells.
fn set_fs_id(call: libc::c_long, id: u32) -> bool {
    // SAFETY: changes this process's filesystem ID only.
    unsafe { libc::syscall(call, id) };
    // SAFETY: as above; an invalid ID changes nothing.
    let now = unsafe { libc::syscall(call, u32::MAX) };
    now == libc::c_long::from(id)
}

/// As the helper opens an image: read-only, not blocking, no controlling
/// terminal, never through a `/proc` magic link.
fn open_image(path: &CString) -> Result<std::fs::File, i32> {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    open_no_magiclinks_c(path, flags).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

fn regular_file_stat(file: std::fs::File) -> Result<libc::stat, i32> {
    let mut st = zeroed_stat();
    // SAFETY: fstat fills `st`, which we own.
    if unsafe { libc::fstat(std::os::fd::AsRawFd::as_raw_fd(&file), &mut st) } != 0 {
        return Err(last_errno());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(libc::ENXIO);
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, gid: u32) -> JobUser {
        JobUser {
            uid,
            gid,
            groups: vec![gid],
            cwd: None,
            job_id: 1,
            restart_count: 0,
            system_binds: Vec::new(),
            root_binds: Vec::new(),
            gpus: Vec::new(),
            job_namespace: None,
            slurm_env: Vec::new(),
        }
    }

    fn current_user() -> JobUser {
        user(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    }

    #[test]
    fn the_identity_is_the_files_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img.sif");
        std::fs::write(&file, b"image").unwrap();
        let got = identity_as_user(&file, &current_user(), Duration::from_secs(5)).unwrap();
        assert_eq!(got, FileIdentity::of(&std::fs::metadata(&file).unwrap()));
    }

    #[test]
    fn what_the_helper_refuses_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = current_user();
        let timeout = Duration::from_secs(5);
        assert!(identity_as_user(&dir.path().join("missing"), &me, timeout).is_err());
        // A directory, a FIFO (never waited on), a /proc magic link.
        assert!(identity_as_user(dir.path(), &me, timeout).is_err());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(identity_as_user(&fifo, &me, timeout).is_err());
        let file = dir.path().join("img.sif");
        std::fs::write(&file, b"image").unwrap();
        let held = std::fs::File::open(&file).unwrap();
        let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
        assert!(identity_as_user(Path::new(&magic), &me, timeout).is_err());
    }

    #[test]
    fn a_file_the_user_cannot_read_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (to become another user)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret.sif");
        std::fs::write(&file, b"image").unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let nobody = user(65534, 65534);
        let err = identity_as_user(&file, &nobody, Duration::from_secs(5)).unwrap_err();
        assert!(err.contains("ermission denied"), "{err}");
        // Root itself still can: the child changed its own credentials only.
        assert!(identity_as_user(&file, &current_user(), Duration::from_secs(5)).is_ok());
    }

    /// The child opens as the user but stays root to the rest of the
    /// system (real and effective IDs): the user's processes cannot trace
    /// it and make it report another file.
    #[test]
    fn the_check_takes_only_the_users_filesystem_ids() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // SAFETY: the test's child only makes system calls, then exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = become_user(65534, 65534, &[65534]).is_ok()
                    && nix::unistd::getuid().is_root()
                    && nix::unistd::geteuid().is_root();
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
