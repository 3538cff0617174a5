//! Containers kept for the later steps of a job on one node.
//!
//! Building a step's container costs a few milliseconds per node (the
//! helper's mounts and its namespace), and at one task per node those are
//! most of what `srun --container` adds to a bare `srun`. The steps of one
//! job usually ask for the same container, so the first step's container
//! is kept for the job's later steps on the node: a *holder* process, a
//! fork of the helper that built it, stays in its mount namespace (doing
//! nothing, without capabilities) and keeps it alive, and a later step
//! whose request is the same joins that namespace instead of building
//! another.
//!
//! Why a process and not a bind mount of the namespace file (what Slurm's
//! `job_container/tmpfs` does): the kernel refuses such a bind unless the
//! namespace is newer than the one it is bound in, and from Linux 6.18 on
//! namespace IDs are handed out per CPU, so a container built on another
//! CPU than the one the node's namespace was made on may look older
//! (`EINVAL`; measured on this project's test machine).
//!
//! # When a step may use a kept container
//!
//! Only when everything the container was built from is the same (the
//! key, [`key`]): the job, the node, the whole request as the plugin
//! rendered it (user, groups, working directory, binds, GPUs, options) and
//! the identity of the image file's bytes (device, inode, size, times: the
//! node cache's rule, [`FileIdentity`]). The image is opened **as the job
//! user at every step** before the key is computed (by the helper when it
//! builds, by a forked child of slurmstepd when a later step joins:
//! `spank/src/kept.rs`), so
//! a user who can no longer read the image cannot run it, and any write to
//! the image (which changes its change time) gives a new key and a new
//! container. Containers are never kept where an execution control list
//! applies to the job's partition (its decision is made at every step; the
//! site's list file is part of the key, so a list switched on mid-job
//! decides from the next step on), for an encrypted image, a writable root
//! or an image with an overlay partition (what one step changes there must
//! not reach the next).
//!
//! # Layout
//!
//! ```text
//! <state_dir>/containers/          root 0700
//!   <job>-<digest>/                one kept container
//!     lock       flock: shared = a step runs in it, exclusive = removing
//!     record.json  the environment the tasks get (image and GPU variables)
//!                and the holder: PID, start time, namespace identity
//!     last-used  mtime = last time a step used it
//! ```
//!
//! A step joins `/proc/<holder>/ns/mnt` only after checking that it is the
//! recorded namespace and that the holder is still the recorded process
//! (its start time), so a recycled PID never leads anywhere else.
//!
//! # Lifetime
//!
//! The plugin's epilog removes a job's containers when the job ends on the
//! node ([`KeptContainers::forget_job`]); the cache keeper removes those
//! unused for the cache's idle time ([`KeptContainers::sweep`]), which
//! also catches the containers of a job whose epilog never ran. Removing
//! one ends every process in its namespace, the holder included; a holder
//! whose directory is gone ends itself. Removing one only costs a later
//! step the time to build it again.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::node::helper::protocol::SetupArgs;
use crate::node::image_cache::{identity_digest, idle_for, touch, FileIdentity};

/// Sub-directory of the state directory that holds the kept containers.
pub const KEPT_SUBDIR: &str = "containers";
/// At most this many containers kept per job and node (a job that changes
/// its image or options at every step gets no more).
pub const MAX_PER_JOB: usize = 8;
const RECORD_FILE: &str = "record.json";
const LOCK_FILE: &str = "lock";
const LAST_USED_FILE: &str = "last-used";
/// The holder's process name (`/proc/PID/comm`).
pub const HOLDER_NAME: &std::ffi::CStr = c"sifrun-holder";
/// How often a holder checks that its directory still exists.
const HOLDER_POLL: Duration = Duration::from_secs(10);
/// A named container (`--container-name`) holds what the job's steps
/// wrote in it: the keeper leaves it alone this long unused, not just the
/// cache's idle time (the job's epilog removes it at the job's end).
pub const NAMED_IDLE: Duration = Duration::from_secs(24 * 3600);

/// What a step in a kept container needs besides the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecord {
    /// The image's environment (its SIF environment and scripts).
    pub env: Vec<(String, String)>,
    /// `(variable, directory)` appended in each task (GPU driver files).
    pub env_append: Vec<(String, String)>,
    /// The process that keeps the namespace alive.
    pub holder: Holder,
    /// For a named container: the image it was built from, as the user
    /// named it (a later step must still be able to read it).
    #[serde(default)]
    pub named_image: Option<PathBuf>,
}

/// The holder of a kept container's namespace, as recorded when it
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat`, field 22).
    pub start_time: u64,
    /// Device and inode of its mount namespace.
    pub ns_dev: u64,
    pub ns_ino: u64,
}

/// The key of the container `opts` asks for over the image file `image`
/// (opened as the job user), when it may be kept for the job's later steps
/// on `node` ([`may_keep`]). The helper asks when it builds one, the
/// plugin when it looks for one. The site's list file is part of the key:
/// a container is only kept where no list applies to the job's partition
/// (the helper decides that), and an edited file decides afresh.
pub fn request_key(opts: &SetupArgs, node: &str, image: &FileIdentity) -> Option<String> {
    let job = opts.job_id.filter(|_| may_keep(opts))?;
    if let Some(name) = &opts.name {
        return Some(named_key(job, node, opts.uid, name));
    }
    let list = match &opts.ecl_config {
        Some(path) => Some(FileIdentity::of(&fs::metadata(path).ok()?)),
        None => None,
    };
    // The whole request, less what differs between identical steps.
    let mut request = opts.clone();
    request.timeout_secs = 0;
    // The job's Slurm variables, given to site hooks, differ between steps;
    // the hooks ran once, for the container's first step.
    request.hook_env.clear();
    let mut args = request.to_args();
    if let Some(list) = list {
        args.push(identity_digest(&list, &[]));
    }
    Some(key(job, node, &args, image))
}

/// Why no container `opts` asks for can be kept, as far as its options
/// tell; `None` when one may be. The same rules for a container kept
/// because the site keeps them and for one the user names (the helper
/// refuses a named one with this reason).
pub fn why_not_kept(opts: &SetupArgs) -> Option<&'static str> {
    if opts.job_id.is_none() {
        Some("needs a job")
    } else if opts.key_file.is_some() {
        Some("not with --container-key-file (each step decrypts its own view of the image)")
    } else if opts.cache_idle_secs == 0 {
        Some("needs the node's image cache (the site's cache_idle_secs is 0)")
    } else if !opts.unshare.is_empty() {
        // Its other namespaces would have to be kept and joined too.
        Some("not available with --container-unshare yet")
    } else if opts.has_image_binds() {
        // Images bound beside the main one are opened as the user and
        // decided at every step.
        Some("not available with images in --container-mounts yet (each step checks those afresh)")
    } else {
        None
    }
}

/// Whether the container `opts` asks for may be kept, as far as its
/// options tell (see [`request_key`], [`why_not_kept`]): asked for by name
/// (writable too: that is the point), or, where the site keeps
/// containers, one with a read-only root. The helper also keeps none where
/// a list applies to the job's partition (its decision is made at every
/// step) or, unless named, for an image with an overlay partition.
pub fn may_keep(opts: &SetupArgs) -> bool {
    why_not_kept(opts).is_none() && (opts.name.is_some() || (opts.keep && !opts.writable_tmpfs))
}

/// The key of a container built for `job` on `node` from `request` (the
/// helper's whole command line, without what varies between identical
/// steps) over the image file described by `image`: `<job>-<32 hex>`.
pub fn key(job: u32, node: &str, request: &[String], image: &FileIdentity) -> String {
    let mut hash = Sha256::new();
    hash.update(b"sifrun kept container v1\0");
    hash.update(node.as_bytes());
    hash.update([0]);
    for arg in request {
        hash.update(arg.as_bytes());
        hash.update([0]);
    }
    hash.update(identity_digest(image, &[]).as_bytes());
    format!("{job}-{}", sif::integrity::hex(&hash.finalize()[..16]))
}

/// The key of the container named `name` by `uid` in `job` on `node`
/// (`--container-name`): the name alone decides, not the request.
pub fn named_key(job: u32, node: &str, uid: u32, name: &str) -> String {
    key(
        job,
        node,
        &["--named".to_string(), uid.to_string(), name.to_string()],
        &FileIdentity::default(),
    )
}

/// A step's claim on a kept container: a shared lock on its `lock`,
/// which keeps the keeper and the epilog from removing it.
#[derive(Debug)]
pub struct KeptLease {
    _lock: Flock<File>,
    dir: PathBuf,
}

impl KeptLease {
    /// The container's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A container directory made for the step being built: locked, with no
/// record and no holder yet ([`Pending::finish`], called from inside the
/// built container, starts both). Holds the directory open, so that the
/// record can be written once this process has left the node's mount
/// namespace.
#[derive(Debug)]
pub struct Pending {
    lease: KeptLease,
    dir_fd: File,
}

impl Pending {
    /// Starts the holder in this process's mount namespace (the built
    /// container), writes the record and hands over the lease (the helper
    /// holds it until the plugin has its own).
    pub fn finish(
        self,
        env: Vec<(String, String)>,
        env_append: Vec<(String, String)>,
        named_image: Option<PathBuf>,
    ) -> Result<KeptLease> {
        let holder = start_holder(&self.dir_fd)?;
        let record = KeptRecord {
            env,
            env_append,
            holder,
            named_image,
        };
        let text = serde_json::to_vec(&record).map_err(|e| Error::system(e.to_string()))?;
        // Relative to the directory we hold open: the path is not
        // reachable from the container's namespace.
        let fd = nix::fcntl::openat(
            Some(self.dir_fd.as_raw_fd()),
            RECORD_FILE,
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| Error::system(format!("writing the kept container's record: {e}")))?;
        // SAFETY: `fd` was just opened here and is owned by nothing else.
        let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.write_all(&text)
            .context("writing the kept container's record")?;
        Ok(self.lease)
    }
}

/// What [`KeptContainers::sweep`] saw and did.
#[derive(Debug, Default, Serialize)]
pub struct KeptSweep {
    /// Containers still kept afterwards.
    pub kept: usize,
    /// Containers removed by this sweep.
    pub removed: Vec<String>,
}

/// The kept containers of one node.
#[derive(Debug, Clone)]
pub struct KeptContainers {
    root: PathBuf,
}

impl KeptContainers {
    /// The directory under `state_dir`, created (root-only) if missing.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let root = state_dir.join(KEPT_SUBDIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .with_context(|| format!("creating {}", root.display()))?;
        Ok(KeptContainers { root })
    }

    /// The directory a kept container with `key` lives in.
    pub fn dir_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Whether `dir` (a path from the helper's report) names a container
    /// directory of this node: the plugin opens files in it as root.
    pub fn owns(&self, dir: &Path) -> bool {
        dir.parent() == Some(self.root.as_path())
            && dir
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(valid_name)
    }

    /// A shared lease on the container at `dir` (one [`Self::owns`]), taken
    /// while another process holds one; `None` if it is being removed.
    pub fn lease(&self, dir: &Path) -> Result<Option<KeptLease>> {
        lock_existing(dir, FlockArg::LockSharedNonblock)
    }

    /// The kept container with `key`, leased, its record and its mount
    /// namespace; `None` when there is none ready (never kept, being
    /// removed, holder gone).
    pub fn find(&self, key: &str) -> Result<Option<(KeptLease, KeptRecord, File)>> {
        let dir = self.dir_of(key);
        let Some(lease) = lock_existing(&dir, FlockArg::LockSharedNonblock)? else {
            return Ok(None);
        };
        let Some(record) = read_record(&dir) else {
            return Ok(None);
        };
        let Ok(ns) = open_holder_ns(&record.holder) else {
            return Ok(None);
        };
        touch(&dir.join(LAST_USED_FILE));
        Ok(Some((lease, record, ns)))
    }

    /// Makes the directory for a container about to be built with `key`;
    /// `None` when it may not be kept (the job has [`MAX_PER_JOB`] already,
    /// or another step is keeping one with this key right now).
    pub fn prepare(&self, key: &str) -> Result<Option<Pending>> {
        let job = key.split('-').next().unwrap_or_default();
        if self.job_dirs(job)?.len() >= MAX_PER_JOB {
            return Ok(None);
        }
        let dir = self.dir_of(key);
        // Left over from a step that failed before its holder started, or
        // whose holder is gone, and unused: it goes.
        if let Some(stale) = lock_existing(&dir, FlockArg::LockExclusiveNonblock)? {
            if is_held(&dir) {
                return Ok(None);
            }
            remove(&dir);
            drop(stale);
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .with_context(|| format!("creating {}", dir.join(LOCK_FILE).display()))?;
        let Some(lease) = lock_existing(&dir, FlockArg::LockSharedNonblock)? else {
            return Ok(None);
        };
        touch(&dir.join(LAST_USED_FILE));
        let dir_fd = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        Ok(Some(Pending { lease, dir_fd }))
    }

    /// Removes every kept container no step uses and unused for `idle`
    /// (or without its holder); refreshes the idle clock of those in use.
    pub fn sweep(&self, idle: Duration) -> Result<KeptSweep> {
        let mut report = KeptSweep::default();
        for dir in self.job_dirs("")? {
            let Some(exclusive) = lock_existing(&dir, FlockArg::LockExclusiveNonblock)? else {
                if dir.exists() {
                    touch(&dir.join(LAST_USED_FILE));
                    report.kept += 1;
                }
                continue;
            };
            let limit = match read_record(&dir) {
                Some(record) if record.named_image.is_some() => idle.max(NAMED_IDLE),
                _ => idle,
            };
            if is_held(&dir) && idle_for(&dir) < limit {
                report.kept += 1;
                continue;
            }
            remove(&dir);
            drop(exclusive);
            report.removed.push(name_of(&dir));
        }
        Ok(report)
    }

    /// Removes the containers of `job` that no step uses (the job has
    /// ended on this node); returns how many. One still in use (a step
    /// that has not quite ended) is left to the keeper.
    pub fn forget_job(&self, job: u32) -> Result<usize> {
        let mut removed = 0;
        for dir in self.job_dirs(&job.to_string())? {
            if let Some(exclusive) = lock_existing(&dir, FlockArg::LockExclusiveNonblock)? {
                remove(&dir);
                drop(exclusive);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether `job` has any container kept on this node (a look at this
    /// directory only: the cheap test before anything else).
    pub fn has_job(&self, job: u32) -> bool {
        self.job_dirs(&job.to_string())
            .is_ok_and(|dirs| !dirs.is_empty())
    }

    /// Number of kept containers.
    pub fn count(&self) -> usize {
        self.job_dirs("").map_or(0, |d| d.len())
    }

    /// The container directories of `job` (all of them for "").
    fn job_dirs(&self, job: &str) -> Result<Vec<PathBuf>> {
        let listing = match fs::read_dir(&self.root) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.root.display())),
        };
        let mut dirs = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name();
            let Some(name) = name.to_str().filter(|n| valid_name(n)) else {
                continue;
            };
            let of_job = job.is_empty() || name.split('-').next() == Some(job);
            if of_job && item.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(item.path());
            }
        }
        Ok(dirs)
    }
}

/// The mount namespace of the kept container at `dir`, to join: its
/// holder's, once checked against the record.
pub fn open_pinned(dir: &Path) -> Result<File> {
    let record = read_record(dir).ok_or_else(|| {
        Error::system(format!("{}: no record of a kept container", dir.display()))
    })?;
    open_holder_ns(&record.holder)
}

fn read_record(dir: &Path) -> Option<KeptRecord> {
    let text = fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// `/proc/<pid>/ns/mnt` of `holder`, if it is still the recorded process
/// in the recorded namespace. The start time is checked after the open:
/// the process was alive then, so the namespace we hold is its own.
fn open_holder_ns(holder: &Holder) -> Result<File> {
    let gone = || {
        Error::system(format!(
            "the holder of a kept container (PID {}) is gone",
            holder.pid
        ))
    };
    if holder.pid <= 1 {
        return Err(gone());
    }
    let ns = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/{}/ns/mnt", holder.pid))
        .map_err(|_| gone())?;
    let meta = ns.metadata().map_err(|_| gone())?;
    let same_ns = (meta.dev(), meta.ino()) == (holder.ns_dev, holder.ns_ino);
    if !same_ns || start_time(holder.pid) != Some(holder.start_time) {
        return Err(gone());
    }
    Ok(ns)
}

/// Field 22 of `/proc/<pid>/stat` (counted after the command name, which
/// may hold spaces and parentheses).
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Forks the holder: it stays in this process's mount namespace until its
/// container directory (`dir_fd`) is removed or it is killed. Returns what
/// the record says of it.
fn start_holder(dir_fd: &File) -> Result<Holder> {
    let ns = fs::metadata("/proc/self/ns/mnt").context("reading the container's namespace")?;
    // SAFETY: the helper is single-threaded here, and the child only makes
    // system calls before it sleeps for good.
    match unsafe { nix::unistd::fork() }.context("starting the kept container's holder")? {
        nix::unistd::ForkResult::Child => hold(dir_fd.as_raw_fd()),
        nix::unistd::ForkResult::Parent { child } => {
            let pid = child.as_raw();
            let start_time = start_time(pid)
                .ok_or_else(|| Error::system("the kept container's holder exited at once"))?;
            Ok(Holder {
                pid,
                start_time,
                ns_dev: ns.dev(),
                ns_ino: ns.ino(),
            })
        }
    }
}

/// The holder's life: a session of its own, no parent to die with, no
/// deadline, no capabilities, none of the helper's descriptors (the plugin
/// waits for the helper's pipes to close, and the cache entry's lock must
/// not stay held); then nothing, until its directory is removed.
fn hold(dir_fd: i32) -> ! {
    // Its command line is the helper's (a fork): the name says what it is
    // in `ps -o comm`, `pgrep`, `top`.
    let _ = nix::sys::prctl::set_name(HOLDER_NAME);
    let _ = nix::unistd::setsid();
    let _ = nix::sys::prctl::set_pdeathsig(None);
    nix::unistd::alarm::cancel();
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    // Everything from 3 up but the directory.
    if dir_fd > 3 {
        // SAFETY: closes descriptors of this process only.
        unsafe { libc::close_range(3, (dir_fd - 1) as u32, 0) };
    }
    // SAFETY: as above.
    unsafe { libc::close_range((dir_fd.max(2) + 1) as u32, u32::MAX, 0) };
    for set in [
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
        caps::CapSet::Inheritable,
        caps::CapSet::Ambient,
    ] {
        let _ = caps::clear(None, set);
    }
    loop {
        std::thread::sleep(HOLDER_POLL);
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat fills `st`, which is read only when it succeeded.
        let removed = unsafe { libc::fstat(dir_fd, st.as_mut_ptr()) } != 0
            || unsafe { st.assume_init() }.st_nlink == 0;
        if removed {
            // SAFETY: ends this process at once.
            unsafe { libc::_exit(0) };
        }
    }
}

/// `<job>-<32 hex>`.
fn valid_name(name: &str) -> bool {
    let Some((job, digest)) = name.split_once('-') else {
        return false;
    };
    !job.is_empty()
        && job.bytes().all(|b| b.is_ascii_digit())
        && digest.len() == 32
        && digest.bytes().all(|b| b.is_ascii_hexdigit())
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// True when the container at `dir` has its holder.
fn is_held(dir: &Path) -> bool {
    open_pinned(dir).is_ok()
}

/// Takes `how` on the existing `<dir>/lock` (never creating it); `None`
/// when there is no such directory, someone holds a conflicting lock, or
/// the directory was removed and made again meanwhile.
fn lock_existing(dir: &Path, how: FlockArg) -> Result<Option<KeptLease>> {
    let path = dir.join(LOCK_FILE);
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let lock = match Flock::lock(file, how) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(Error::system(format!("locking {}: {e}", path.display()))),
    };
    let locked = lock
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    match fs::metadata(&path) {
        Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => Ok(Some(KeptLease {
            _lock: lock,
            dir: dir.to_path_buf(),
        })),
        _ => Ok(None),
    }
}

/// Removes a container directory (its exclusive lock held, so no step
/// runs in it): every process in its namespace is ended, the holder and
/// whatever the job's steps left running there (a task that escaped
/// Slurm's process tracking, which the plugin ends at the step's end in a
/// container that is not kept), and the namespace goes with them.
fn remove(dir: &Path) {
    if let Ok(ns) = open_pinned(dir) {
        crate::node::namespace_sweep::end_members(&ns);
    }
    for file in [RECORD_FILE, LAST_USED_FILE] {
        let _ = fs::remove_file(dir.join(file));
    }
    // The lock last: whoever opened it meanwhile sees it gone and backs off.
    let _ = fs::remove_file(dir.join(LOCK_FILE));
    let _ = fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &Path) -> FileIdentity {
        FileIdentity::of(&fs::metadata(path).unwrap())
    }

    #[test]
    fn a_named_container_is_keyed_by_its_name_and_may_be_writable() {
        let mut opts = SetupArgs::new("/img/a.sif".into(), 1000, 1000);
        opts.job_id = Some(7);
        opts.name = Some("env".into());
        opts.writable_tmpfs = true;
        opts.keep = false;
        // Kept by name whatever the site's keep_containers, writable too.
        assert!(may_keep(&opts));
        let image = FileIdentity::default();
        let base = request_key(&opts, "node1", &image).unwrap();
        assert_eq!(base, named_key(7, "node1", 1000, "env"));
        // The rest of the request does not matter; job, node, user and
        // name do.
        let mut other = opts.clone();
        other.binds = vec!["/data".into()];
        other.image = "/img/b.sif".into();
        assert_eq!(request_key(&other, "node1", &image).unwrap(), base);
        assert!(base.starts_with("7-") && valid_name(&base));
        for k in [
            named_key(8, "node1", 1000, "env"),
            named_key(7, "node2", 1000, "env"),
            named_key(7, "node1", 1001, "env"),
            named_key(7, "node1", 1000, "env2"),
        ] {
            assert_ne!(k, base);
        }
        // Not where the step's namespaces or decryption would have to
        // outlive it.
        for change in [
            |o: &mut SetupArgs| o.unshare = vec!["net".into()],
            |o: &mut SetupArgs| o.key_file = Some("/k".into()),
            |o: &mut SetupArgs| o.cache_idle_secs = 0,
            |o: &mut SetupArgs| o.binds = vec!["/d/data.sif:/data".into()],
        ] {
            let mut o = opts.clone();
            change(&mut o);
            assert!(!may_keep(&o));
            // The helper refuses a named one with the reason.
            assert!(why_not_kept(&o).is_some());
        }
    }

    #[test]
    fn the_key_changes_with_job_node_request_and_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.sif");
        fs::write(&image, b"one").unwrap();
        let request = vec!["--uid=1000".to_string(), "/img.sif".to_string()];
        let base = key(7, "node1", &request, &meta(&image));
        assert!(base.starts_with("7-") && valid_name(&base), "{base}");
        assert_eq!(base, key(7, "node1", &request, &meta(&image)));
        assert_ne!(base, key(8, "node1", &request, &meta(&image)));
        assert_ne!(base, key(7, "node2", &request, &meta(&image)));
        let other = vec!["--uid=1001".to_string(), "/img.sif".to_string()];
        assert_ne!(base, key(7, "node1", &other, &meta(&image)));
        // Arguments are separated: ["ab", "c"] is not ["a", "bc"].
        let split = |a: &str, b: &str| key(7, "n", &[a.into(), b.into()], &meta(&image));
        assert_ne!(split("ab", "c"), split("a", "bc"));
        std::thread::sleep(Duration::from_millis(10));
        fs::write(&image, b"two").unwrap();
        assert_ne!(base, key(7, "node1", &request, &meta(&image)));
    }

    #[test]
    fn names_are_checked_before_root_opens_anything() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptContainers::open(dir.path()).unwrap();
        let good = kept.dir_of("12-0123456789abcdef0123456789abcdef");
        assert!(kept.owns(&good));
        for bad in [
            kept.dir_of("12-0123"),
            kept.dir_of("x-0123456789abcdef0123456789abcdef"),
            kept.dir_of("-0123456789abcdef0123456789abcdef"),
            dir.path().join("12-0123456789abcdef0123456789abcdef"),
            good.join("ns"),
            PathBuf::from("/etc"),
        ] {
            assert!(!kept.owns(&bad), "{}", bad.display());
        }
    }

    #[test]
    fn an_unpinned_container_is_not_found_and_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptContainers::open(dir.path()).unwrap();
        let key = "3-0123456789abcdef0123456789abcdef";
        let pending = kept.prepare(key).unwrap().expect("a new directory");
        // While it is being built, no other step can keep one with the key.
        assert!(kept.prepare(key).unwrap().is_none());
        drop(pending);
        // No holder: not usable.
        assert!(kept.find(key).unwrap().is_none());
        let lease = kept
            .lease(&kept.dir_of(key))
            .unwrap()
            .expect("not being removed");
        // In use: kept by a sweep.
        assert_eq!(kept.sweep(Duration::ZERO).unwrap().kept, 1);
        drop(lease);
        let swept = kept.sweep(Duration::ZERO).unwrap();
        assert_eq!((swept.kept, swept.removed.len()), (0, 1));
        assert!(!kept.dir_of(key).exists());
        assert_eq!(kept.count(), 0);
        assert!(
            kept.prepare(key).unwrap().is_some(),
            "a new one may be kept"
        );
    }

    #[test]
    fn a_holder_is_checked_by_namespace_and_start_time() {
        let own = start_time(std::process::id() as i32).unwrap();
        assert!(own > 0);
        assert_eq!(start_time(0), None);
        let ns = fs::metadata("/proc/self/ns/mnt").unwrap();
        let me = Holder {
            pid: std::process::id() as i32,
            start_time: own,
            ns_dev: ns.dev(),
            ns_ino: ns.ino(),
        };
        assert!(open_holder_ns(&me).is_ok());
        for stale in [
            Holder {
                start_time: own + 1,
                ..me
            },
            Holder {
                ns_ino: ns.ino() + 1,
                ..me
            },
            Holder { pid: 1, ..me },
            Holder::default(),
        ] {
            assert!(open_holder_ns(&stale).is_err(), "{stale:?}");
        }
    }

    #[test]
    fn a_job_keeps_at_most_max_per_job_containers() {
        let dir = tempfile::tempdir().unwrap();
        let kept = KeptContainers::open(dir.path()).unwrap();
        let mut held = Vec::new();
        for i in 0..MAX_PER_JOB {
            let key = format!("5-{i:032x}");
            held.push(kept.prepare(&key).unwrap().expect("below the limit"));
        }
        assert!(kept.prepare(&format!("5-{:032x}", 99)).unwrap().is_none());
        assert!(kept.prepare(&format!("6-{:032x}", 99)).unwrap().is_some());
        // In use: the epilog leaves it to the keeper.
        assert_eq!(kept.forget_job(5).unwrap(), 0);
        drop(held);
        // The job's epilog removes what no step uses, and only the job's.
        assert!(kept.has_job(5) && !kept.has_job(55));
        assert_eq!(kept.forget_job(5).unwrap(), MAX_PER_JOB);
        assert_eq!(kept.count(), 1);
        assert!(!kept.has_job(5) && kept.has_job(6));
    }
}
