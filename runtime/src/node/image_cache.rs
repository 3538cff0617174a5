//! Node-local cache of mounted images, shared by every step and job on the
//! node.
//!
//! Attaching a loop device and mounting SquashFS is the costly part of a
//! container start, and it is the same work for every step that runs the
//! same image. So the first step mounts the image once, in the node's own
//! mount namespace, under `<state_dir>/images/<key>/mnt` (a root-only
//! directory), and each step's private namespace binds that mount as the
//! lower layer of its root.
//!
//! # Layout
//!
//! ```text
//! <state_dir>/images/            root 0700
//!   keeper.lock                  held by the single running keeper
//!   <key>/                       one entry per image
//!     lock                       flock: shared = in use, exclusive = (un)mounting
//!     mnt/                       the read-only, nosuid, nodev SquashFS mount
//!     last-used                  mtime = last time the entry was seen in use
//! ```
//!
//! # Reference counting without a daemon
//!
//! A step holds a *shared* `flock` on its entry's `lock` for as long as it
//! runs (the SPANK plugin keeps the descriptor in slurmstepd). The kernel
//! drops the lock when the holder exits, even by SIGKILL, so a crashed step
//! can never pin an entry. Mounting and unmounting happen under the
//! *exclusive* lock, which is only granted while no step uses the entry.
//!
//! # Idle unmount
//!
//! Whoever mounts an entry starts `sifrun cache keeper` (at most one per
//! node): it polls the entries, unmounts those unused for the idle time and
//! exits once nothing is mounted. Unmounting is lazy (`MNT_DETACH`): a
//! container that still runs (for instance a task orphaned by a killed
//! slurmstepd) keeps its own copy of the mount, and the autoclear loop
//! device goes away with the last of them.
//!
//! # The key: identity of the bytes, not of the path
//!
//! The key is a hash of the image file's device, inode, size, modification
//! and change times, plus the partition's offset and size. Every path to
//! the same unchanged file (hard links, symlinks, bind mounts, another
//! user's path) shares one mount; any write to the file changes its ctime
//! (which no user can set) and therefore the key, so a modified image is
//! never served from an older mount. It is deliberately *not* derived from
//! the image's contents as read by the plugin (header, descriptors): those
//! are chosen by whoever wrote the file, and a user could otherwise forge an
//! image that maps onto another user's cached, unreadable image. Each step
//! opens the file with the job user's credentials before it may use a key,
//! so sharing the mount never lets anyone read an image they cannot open.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{umount2, MntFlags};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Context, Error, Result};
use crate::node::kept_containers::KeptContainers;

/// Sub-directory of the state directory that holds the cache.
const CACHE_SUBDIR: &str = "images";
/// How long a step waits for another step (or the keeper) that holds an
/// entry's exclusive lock; mounting takes milliseconds, so this is generous.
const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(2);

/// Limits on the images mounted in one node's cache (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheLimits {
    /// Images mounted on the node.
    pub per_node: usize,
    /// Images first mounted for one user.
    pub per_user: usize,
}

/// Records that the entry at `entry` was first mounted for `uid` (see
/// [`ImageCache::make_room`]).
pub fn record_owner(entry: &Path, uid: u32) -> Result<()> {
    fs::write(entry.join(OWNER_FILE), uid.to_string())
        .with_context(|| format!("writing {}", entry.join(OWNER_FILE).display()))
}

fn read_owner(entry: &Path) -> Option<u32> {
    fs::read_to_string(entry.join(OWNER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

const OWNER_FILE: &str = "owner";

/// An entry's verified copy of a user-writable image, and whom it is
/// accounted to.
pub const COPY_FILE: &str = "image.sif";
pub const COPY_RECORD: &str = "copy.json";

/// Identity of one image file's bytes; names its cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(String);

impl CacheKey {
    /// Key for the partition `[offset, offset+size)` of the open `file`;
    /// `variant` separates differently trusted views of the same file (the
    /// live file vs a verified copy, see [`crate::node::ecl::enforce::ImageSource`]).
    pub fn for_partition(file: &File, offset: u64, size: u64, variant: u64) -> Result<Self> {
        let meta = file.metadata().context("reading image file metadata")?;
        Ok(CacheKey(file_identity_digest(
            &meta,
            &[offset, size, variant],
        )))
    }

    /// Key for the root-only verified copy of the open `file` (see
    /// [`crate::node::ecl::enforce::ImageSource::Copy`]), as of `now`.
    ///
    /// Stat identity proves "unchanged since" only once the file's change
    /// time is in the past by more than one timestamp tick: a write within
    /// the tick of the last one leaves the same times (Lustre keeps whole
    /// seconds; local filesystems a coarse kernel clock). A file changed
    /// within [`RACY_WINDOW`] of `now` therefore gets a key of its own that
    /// no other step can match (the step copies and verifies it for
    /// itself), as git treats a "racily clean" index entry. For any other
    /// file, a later write gets a later change time and a new key, and the
    /// caller checks the identity again after copying
    /// ([`same_file_identity`]) to catch a write during the copy.
    pub fn for_copy(file: &File, now: SystemTime, variant: u64) -> Result<Self> {
        let meta = file.metadata().context("reading image file metadata")?;
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                meta.ctime().max(0) as u64,
                meta.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        let racy = now
            .duration_since(changed)
            .map_or(true, |age| age < RACY_WINDOW);
        let mut extra = vec![variant];
        if racy {
            let nanos = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            extra.extend([u64::from(std::process::id()), nanos]);
        }
        Ok(CacheKey(file_identity_digest(&meta, &extra)))
    }

    /// The key as a directory name (32 hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How recent a change must be for the file's times not to prove it
/// unchanged (two ticks of the coarsest timestamps in use: one second).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Whether `a` and `b` describe the same, unchanged file.
pub fn same_file_identity(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    file_identity_digest(a, &[]) == file_identity_digest(b, &[])
}

/// What says a file's bytes are unchanged: device, inode, size,
/// modification and change times (any write changes the change time, which
/// no user can set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileIdentity([u64; 7]);

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &fs::Metadata) -> Self {
        FileIdentity([
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime() as u64,
            meta.mtime_nsec() as u64,
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ])
    }

    /// The identity of the file `st` (from `fstat`) describes.
    pub fn of_stat(st: &libc::stat) -> Self {
        FileIdentity([
            st.st_dev,
            st.st_ino,
            st.st_size as u64,
            st.st_mtime as u64,
            st.st_mtime_nsec as u64,
            st.st_ctime as u64,
            st.st_ctime_nsec as u64,
        ])
    }

    /// The seven numbers, to pass between processes.
    pub fn fields(&self) -> [u64; 7] {
        self.0
    }

    /// An identity from [`FileIdentity::fields`].
    pub fn from_fields(fields: [u64; 7]) -> Self {
        FileIdentity(fields)
    }
}

/// 32 hex digits naming the bytes of the file described by `meta` (see
/// [`FileIdentity`]) plus `extra` numbers.
pub fn file_identity_digest(meta: &fs::Metadata, extra: &[u64]) -> String {
    identity_digest(&FileIdentity::of(meta), extra)
}

/// [`file_identity_digest`] of an identity.
pub fn identity_digest(identity: &FileIdentity, extra: &[u64]) -> String {
    let mut hash = Sha256::new();
    for field in identity.0.iter().chain(extra) {
        hash.update(field.to_le_bytes());
    }
    sif::integrity::hex(&hash.finalize()[..16])
}

/// The cache directory of one node.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

/// A step's claim on a mounted entry: while it lives (or while the process
/// holding a shared lock on [`Lease::lock_path`] lives), the entry stays
/// mounted.
#[derive(Debug)]
pub struct Lease {
    _lock: Flock<File>,
    entry: PathBuf,
    /// True when this lease's caller mounted the image (a cold start).
    pub mounted_now: bool,
}

impl Lease {
    /// The entry's directory (root-only): files that belong to the mounted
    /// image, such as a verified copy, live here and go with it.
    pub fn entry_dir(&self) -> &Path {
        &self.entry
    }

    /// The mounted image (the SquashFS root).
    pub fn mount_dir(&self) -> PathBuf {
        self.entry.join("mnt")
    }

    /// The lock file another process locks (shared) to keep the entry alive
    /// after this lease is dropped.
    pub fn lock_path(&self) -> PathBuf {
        self.entry.join("lock")
    }
}

/// What [`ImageCache::sweep`] saw and did.
#[derive(Debug, Default, Serialize)]
pub struct SweepReport {
    /// Entries still mounted afterwards (in use or not idle long enough).
    pub mounted: usize,
    /// Entries unmounted by this sweep.
    pub unmounted: Vec<String>,
}

/// One entry as `sifrun cache list` shows it.
#[derive(Debug, Serialize)]
pub struct EntryStatus {
    pub key: String,
    pub mounted: bool,
    pub in_use: bool,
    /// Seconds since the entry was last seen in use.
    pub idle_secs: u64,
    /// Backing file of the loop device, as the kernel reports it.
    pub image: Option<String>,
}

impl ImageCache {
    /// The cache under `state_dir`, created (root-only) if missing.
    pub fn open(state_dir: &Path) -> Result<Self> {
        if !state_dir.is_absolute() {
            return Err(Error::usage("the state directory must be an absolute path"));
        }
        let root = state_dir.join(CACHE_SUBDIR);
        create_private_dir(state_dir)?;
        create_private_dir(&root)?;
        Ok(ImageCache { root })
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes room for one more mounted image, first mounted for `uid`:
    /// while the node or the user is at its limit, the least recently
    /// used entries nobody is using are unmounted (the user's own first
    /// for the user's limit). Refused with one line when every entry
    /// counted against a limit is in use: one user can neither pin the
    /// node's kernel memory with thousands of mounts nor push out images
    /// that other users' steps are running.
    pub fn make_room(&self, uid: u32, limits: &CacheLimits) -> Result<()> {
        let mut mounted: Vec<(PathBuf, Option<u32>, SystemTime)> = Vec::new();
        for entry in self.entry_dirs()? {
            if is_mounted(&entry).unwrap_or(false) {
                let used = fs::metadata(entry.join("last-used"))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                mounted.push((entry.clone(), read_owner(&entry), used));
            }
        }
        // Least recently used first.
        mounted.sort_by_key(|(_, _, used)| *used);
        let mine = |m: &[(PathBuf, Option<u32>, SystemTime)]| {
            m.iter().filter(|(_, owner, _)| *owner == Some(uid)).count()
        };
        while limits.per_user > 0 && mine(&mounted) >= limits.per_user {
            if !self.evict_one_idle(&mut mounted, Some(uid))? {
                return Err(Error::image(format!(
                    "you have {} images mounted on this node, all in use by running steps (limit {}, admin setting cache_max_images_per_user)",
                    mine(&mounted),
                    limits.per_user
                )));
            }
        }
        while limits.per_node > 0 && mounted.len() >= limits.per_node {
            if !self.evict_one_idle(&mut mounted, None)? {
                return Err(Error::image(format!(
                    "this node's image cache is full: {} images mounted, all in use by running steps (limit {}, admin setting cache_max_images)",
                    mounted.len(),
                    limits.per_node
                )));
            }
        }
        Ok(())
    }

    /// Unmounts the first entry of `mounted` (of `owner`, if given) that no
    /// step uses; false when there is none.
    fn evict_one_idle(
        &self,
        mounted: &mut Vec<(PathBuf, Option<u32>, SystemTime)>,
        owner: Option<u32>,
    ) -> Result<bool> {
        for i in 0..mounted.len() {
            if owner.is_some() && mounted[i].1 != owner {
                continue;
            }
            let entry = mounted[i].0.clone();
            let Some(exclusive) = try_lock_entry(&entry, FlockArg::LockExclusiveNonblock)? else {
                continue;
            };
            if is_mounted(&entry)? {
                evict(&entry)?;
            }
            drop(exclusive);
            mounted.remove(i);
            return Ok(true);
        }
        Ok(false)
    }

    /// Bytes held by the verified copies accounted to `uid` (see
    /// [`crate::node::ecl::copy::CopyRecord`]), in every entry on the node.
    pub fn copies_held_by(&self, uid: u32) -> u64 {
        self.entry_dirs()
            .unwrap_or_default()
            .iter()
            .filter(|e| e.join(COPY_FILE).exists())
            .filter_map(|e| fs::read(e.join(COPY_RECORD)).ok())
            .filter_map(|t| serde_json::from_slice::<crate::node::ecl::copy::CopyRecord>(&t).ok())
            .filter(|r| r.uid == uid)
            .map(|r| r.bytes)
            .sum()
    }

    /// Returns a lease on the mounted entry for `key`, mounting the image
    /// with `mount` (given the mount point) if no step has it mounted.
    ///
    /// Never blocks on a lock: a step holds its shared lock for its whole
    /// run, so waiting for the exclusive lock would wait for that step to
    /// end. Instead each round tries the shared lock (the image may have
    /// been mounted meanwhile), then the exclusive one, then sleeps.
    pub fn acquire(
        &self,
        key: &CacheKey,
        mount: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Lease> {
        let entry = self.root.join(key.as_str());
        let deadline = Instant::now() + LOCK_WAIT;
        let mut mount = Some(mount);
        let mut mounted_now = false;
        loop {
            if let Some(shared) = try_lock_entry(&entry, FlockArg::LockSharedNonblock)? {
                if is_mounted(&entry)? {
                    touch(&entry.join("last-used"));
                    return Ok(Lease {
                        _lock: shared,
                        entry,
                        mounted_now,
                    });
                }
            }
            if let Some(exclusive) = try_lock_entry(&entry, FlockArg::LockExclusiveNonblock)? {
                if !is_mounted(&entry)? {
                    let mount = mount
                        .take()
                        .ok_or_else(|| Error::system("image cache: mount vanished twice"))?;
                    let dir = entry.join("mnt");
                    create_private_dir(&dir)?;
                    mount(&dir)?;
                    mounted_now = true;
                }
                drop(exclusive);
                continue;
            }
            if Instant::now() >= deadline {
                return Err(Error::system(format!(
                    "timed out waiting for the image cache lock {}",
                    entry.join("lock").display()
                )));
            }
            std::thread::sleep(LOCK_POLL);
        }
    }

    /// Unmounts every entry that no step uses and that has been idle for at
    /// least `idle`; refreshes the idle clock of entries in use.
    pub fn sweep(&self, idle: Duration) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        for entry in self.entry_dirs()? {
            let lock = match open_lock(&entry) {
                Ok(file) => file,
                Err(_) => continue,
            };
            let exclusive = match Flock::lock(lock, FlockArg::LockExclusiveNonblock) {
                Ok(guard) => guard,
                Err((_, Errno::EWOULDBLOCK)) => {
                    // In use: the idle clock starts again from now.
                    touch(&entry.join("last-used"));
                    report.mounted += 1;
                    continue;
                }
                Err((_, e)) => {
                    return Err(Error::system(format!(
                        "locking {}: {e}",
                        entry.join("lock").display()
                    )))
                }
            };
            let mounted = is_mounted(&entry)?;
            if mounted && idle_for(&entry) < idle {
                report.mounted += 1;
                continue;
            }
            if mounted {
                report.unmounted.push(entry_key(&entry));
            }
            evict(&entry)?;
            drop(exclusive);
        }
        Ok(report)
    }

    /// The state of every entry, for `sifrun cache list`.
    pub fn list(&self) -> Result<Vec<EntryStatus>> {
        let mut out = Vec::new();
        for entry in self.entry_dirs()? {
            let in_use = match open_lock(&entry) {
                Ok(lock) => matches!(
                    Flock::lock(lock, FlockArg::LockExclusiveNonblock),
                    Err((_, Errno::EWOULDBLOCK))
                ),
                Err(_) => false,
            };
            out.push(EntryStatus {
                key: entry_key(&entry),
                mounted: is_mounted(&entry).unwrap_or(false),
                in_use,
                idle_secs: if in_use {
                    0
                } else {
                    idle_for(&entry).as_secs()
                },
                image: backing_file(&entry.join("mnt")),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Number of entries with a mounted image.
    pub fn mounted_count(&self) -> usize {
        self.entry_dirs()
            .map(|dirs| {
                dirs.iter()
                    .filter(|e| is_mounted(e).unwrap_or(false))
                    .count()
            })
            .unwrap_or(0)
    }

    fn entry_dirs(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        let listing =
            fs::read_dir(&self.root).with_context(|| format!("reading {}", self.root.display()))?;
        for item in listing.flatten() {
            let name = item.file_name();
            let is_key = name.len() == 32
                && name
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_key && item.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(item.path());
            }
        }
        Ok(dirs)
    }
}

/// Tries to take `how` (non-blocking) on `<entry>/lock`; `None` when
/// someone holds a conflicting lock. Also makes sure the locked file is
/// still the one at that path: a sweep may remove an idle entry between
/// our `open` and our `flock`.
fn try_lock_entry(entry: &Path, how: FlockArg) -> Result<Option<Flock<File>>> {
    let lock_path = entry.join("lock");
    loop {
        create_private_dir(entry)?;
        let file = open_lock(entry)?;
        match Flock::lock(file, how) {
            Ok(guard) => {
                let locked = guard
                    .metadata()
                    .with_context(|| format!("reading {}", lock_path.display()))?;
                match fs::metadata(&lock_path) {
                    Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                        return Ok(Some(guard))
                    }
                    // Replaced or removed under us: start again.
                    _ => continue,
                }
            }
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => {
                return Err(Error::system(format!(
                    "locking {}: {e}",
                    lock_path.display()
                )))
            }
        }
    }
}

/// An entry's key: its directory name.
fn entry_key(entry: &Path) -> String {
    entry
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn open_lock(entry: &Path) -> Result<File> {
    let path = entry.join("lock");
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// True when `<entry>/mnt` is a mount point (its device differs from the
/// entry directory's).
fn is_mounted(entry: &Path) -> Result<bool> {
    let mnt = entry.join("mnt");
    let parent = fs::metadata(entry).with_context(|| format!("reading {}", entry.display()))?;
    match fs::metadata(&mnt) {
        Ok(m) => Ok(m.dev() != parent.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", mnt.display())),
    }
}

pub(crate) fn idle_for(entry: &Path) -> Duration {
    let stamp = fs::metadata(entry.join("last-used"))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    SystemTime::now()
        .duration_since(stamp)
        .unwrap_or(Duration::ZERO)
}

/// Best effort: a missing stamp only makes the entry look idle sooner.
pub(crate) fn touch(path: &Path) {
    if let Ok(file) = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Unmounts the entry (if mounted) and removes it, with its exclusive
/// lock held. The loop device is then removed too once nothing holds it
/// any more: a free `/dev/loopN` node left behind by every image would
/// otherwise pile up on the node.
fn evict(entry: &Path) -> Result<()> {
    let mnt = entry.join("mnt");
    let loop_number = loop_number(&mnt);
    if is_mounted(entry)? {
        umount2(&mnt, MntFlags::MNT_DETACH)
            .with_context(|| format!("unmounting {}", mnt.display()))?;
    }
    remove_entry(entry);
    if let Some(n) = loop_number {
        crate::container::loop_device::remove_if_free(n);
    }
    Ok(())
}

/// The block major number of loop devices.
const LOOP_MAJOR: u32 = 7;

/// The number `n` of the loop device `/dev/loop<n>` whose file system is
/// mounted at `dir`, if one is.
fn loop_number(dir: &Path) -> Option<u32> {
    let dev = fs::metadata(dir).ok()?.dev();
    (libc::major(dev) == LOOP_MAJOR).then(|| libc::minor(dev))
}

/// Removes an unmounted entry (called with its exclusive lock held): the
/// mount point, its files (verified copy, verification records), then the
/// lock file last, so that [`try_lock_entry`]'s identity check catches
/// anyone who opened it meanwhile.
fn remove_entry(entry: &Path) {
    remove_copy(entry);
    let _ = fs::remove_dir(entry.join("mnt"));
    if let Ok(items) = fs::read_dir(entry) {
        for item in items.flatten() {
            let is_file = item.file_type().is_ok_and(|t| t.is_file());
            if is_file && item.file_name() != "lock" {
                let _ = fs::remove_file(item.path());
            }
        }
    }
    let _ = fs::remove_file(entry.join("lock"));
    let _ = fs::remove_dir(entry);
}

/// Removes the entry's verified copy: [`COPY_FILE`] in the entry, or the
/// file on the node's disk it links to (`copy_dir`; only root writes the
/// link, in this root-only directory) and the link.
pub fn remove_copy(entry: &Path) {
    let link = entry.join(COPY_FILE);
    if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
        if let Ok(target) = fs::read_link(&link) {
            let _ = fs::remove_file(target);
        }
    }
    let _ = fs::remove_file(&link);
    let _ = fs::remove_file(entry.join(COPY_RECORD));
}

/// Where the verified copy for the cache `entry` is written: in the entry
/// itself, or, with a `copy_dir` (node-local disk instead of the RAM of a
/// tmpfs `state_dir`), as `<copy_dir>/<key>.sif`, linked from the entry
/// **before** anything is written, so the entry's removal always finds it.
/// `copy_dir` serves one node cache: a copy there whose entry is gone (the
/// node crashed mid-step) is removed here.
pub fn prepare_copy_destination(entry: &Path, copy_dir: &Path) -> Result<PathBuf> {
    if copy_dir.as_os_str().is_empty() {
        return Ok(entry.join(COPY_FILE));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(copy_dir)
        .with_context(|| format!("creating copy_dir {}", copy_dir.display()))?;
    let meta = fs::symlink_metadata(copy_dir)
        .with_context(|| format!("reading copy_dir {}", copy_dir.display()))?;
    if !meta.file_type().is_dir() || !crate::node::trusted::root_owned_not_writable(&meta) {
        return Err(Error::usage(format!(
            "copy_dir {} must be a directory (not a symlink) owned by root and not writable by group or others",
            copy_dir.display()
        )));
    }
    let (Some(key), Some(entries)) = (entry.file_name(), entry.parent()) else {
        return Err(Error::system(format!(
            "{}: not a cache entry",
            entry.display()
        )));
    };
    if let Ok(items) = fs::read_dir(copy_dir) {
        for item in items.flatten() {
            let name = item.file_name();
            let orphan = Path::new(&name)
                .file_stem()
                .filter(|_| Path::new(&name).extension() == Some("sif".as_ref()))
                .is_some_and(|stem| !entries.join(stem).exists());
            if orphan {
                let _ = fs::remove_file(item.path());
            }
        }
    }
    let mut name = key.to_os_string();
    name.push(".sif");
    let dest = copy_dir.join(name);
    let _ = fs::remove_file(&dest);
    let link = entry.join(COPY_FILE);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&dest, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    Ok(dest)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
    }
}

/// The image file behind the mount at `dir`, from the loop device's sysfs
/// entry (diagnostics only).
fn backing_file(dir: &Path) -> Option<String> {
    let minor = loop_number(dir)?;
    let text = fs::read_to_string(format!("/sys/block/loop{minor}/loop/backing_file")).ok()?;
    Some(text.trim_end().to_string())
}

/// Starts `sifrun cache keeper` for the cache under `state_dir` (it exits
/// at once when one already runs), which unmounts entries idle for
/// `idle_secs`. It outlives the caller on purpose. Failing to start it
/// leaves mounts until the next start succeeds: said on stderr, not fatal.
pub fn start_keeper(state_dir: &Path, idle_secs: u64) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let status = std::process::Command::new(exe)
        .args(["cache", "keeper", "--detach", "--idle-secs"])
        .arg(idle_secs.to_string())
        .arg("--state-dir")
        .arg(state_dir)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if let Err(e) = status {
        eprintln!("sifrun: cannot start the image cache keeper: {e}");
    }
}

/// [`start_keeper`], unless a keeper runs already (a step that keeps its
/// container for the job's later steps, on an image mounted earlier, saves
/// starting one).
pub fn start_keeper_unless_running(state_dir: &Path, idle_secs: u64) {
    let lock_path = state_dir.join(CACHE_SUBDIR).join("keeper.lock");
    // Taken, the lock says no keeper runs; released at once for the one
    // we start.
    if try_keeper_lock(&lock_path).is_some() {
        start_keeper(state_dir, idle_secs);
    }
}

/// Runs the idle keeper until no entry is mounted and no container is kept
/// ([`KeptContainers`]): at most one per node (`keeper.lock`), polling
/// every `poll`, logging each unmount and removal to `log`.
pub fn run_keeper(
    cache: &ImageCache,
    kept: &KeptContainers,
    idle: Duration,
    poll: Duration,
    log: &mut impl Write,
) {
    let lock_path = cache.root().join("keeper.lock");
    let mut guard = match try_keeper_lock(&lock_path) {
        Some(guard) => guard,
        None => return, // another keeper is on duty
    };
    loop {
        let kept_left = match kept.sweep(idle) {
            Ok(report) => {
                for name in &report.removed {
                    let _ = writeln!(log, "sifrun cache keeper: removed kept container {name}");
                }
                report.kept
            }
            Err(e) => {
                let _ = writeln!(log, "sifrun cache keeper: {}", e.message());
                0
            }
        };
        match cache.sweep(idle) {
            Ok(report) => {
                for key in &report.unmounted {
                    let _ = writeln!(log, "sifrun cache keeper: unmounted idle image {key}");
                }
                if report.mounted == 0 && kept_left == 0 {
                    // Hand over before leaving: a step that mounted an entry
                    // (or kept a container) just now may have seen our lock
                    // and not started a keeper, so look once more after
                    // releasing it.
                    drop(guard);
                    if cache.mounted_count() == 0 && kept.count() == 0 {
                        return;
                    }
                    guard = match try_keeper_lock(&lock_path) {
                        Some(g) => g,
                        None => return,
                    };
                    continue;
                }
            }
            // The cache directory itself is gone (a node's state directory
            // torn down): nothing is left to keep, and polling would fail
            // forever.
            Err(_) if fs::symlink_metadata(cache.root()).is_err() => return,
            Err(e) => {
                let _ = writeln!(log, "sifrun cache keeper: {}", e.message());
            }
        }
        std::thread::sleep(poll);
    }
}

fn try_keeper_lock(path: &Path) -> Option<Flock<File>> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

/// Poll interval for an idle time: often enough to unmount within about a
/// quarter of the idle time, never busier than 4 times a second.
pub fn keeper_poll_interval(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_on_the_nodes_disk_go_with_their_entry_and_orphans_go() {
        let state = tempfile::tempdir().unwrap();
        let copies = tempfile::tempdir().unwrap();
        let entries = state.path().join("images");
        let entry = entries.join("k1");
        fs::create_dir_all(&entry).unwrap();
        if !nix::unistd::getuid().is_root() {
            // Not root: the directory is not root-owned, so it is refused.
            let e = prepare_copy_destination(&entry, copies.path()).unwrap_err();
            assert!(e.message().contains("owned by root"), "{}", e.message());
            return;
        }
        // A copy left by a crash: no entry of that key.
        fs::write(copies.path().join("gone.sif"), b"old").unwrap();
        let dest = prepare_copy_destination(&entry, copies.path()).unwrap();
        assert_eq!(dest, copies.path().join("k1.sif"));
        assert!(!copies.path().join("gone.sif").exists());
        // Linked before anything is written.
        assert_eq!(fs::read_link(entry.join(COPY_FILE)).unwrap(), dest);
        fs::write(&dest, b"copy").unwrap();
        fs::write(entry.join(COPY_RECORD), b"{}").unwrap();
        remove_entry(&entry);
        assert!(!dest.exists() && !entry.exists());
        // Without a copy_dir the copy is the entry's own file.
        fs::create_dir_all(&entry).unwrap();
        assert_eq!(
            prepare_copy_destination(&entry, Path::new("")).unwrap(),
            entry.join(COPY_FILE)
        );
        // A copy_dir others may write is refused.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(copies.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_copy_destination(&entry, copies.path()).is_err());
    }

    #[test]
    fn a_copy_key_is_shared_only_once_the_file_is_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.sif");
        fs::write(&path, b"bytes").unwrap();
        let file = File::open(&path).unwrap();
        let changed = file.metadata().unwrap().modified().unwrap();
        // Just written: a write within the same timestamp tick would leave
        // the same times, so no two steps may share the entry.
        let fresh = changed + Duration::from_millis(500);
        assert_ne!(
            CacheKey::for_copy(&file, fresh, 1).unwrap(),
            CacheKey::for_copy(&file, fresh + Duration::from_millis(1), 1).unwrap()
        );
        // Settled: every step opening the unchanged file shares one entry.
        let settled = changed + RACY_WINDOW + Duration::from_millis(1);
        assert_eq!(
            CacheKey::for_copy(&file, settled, 1).unwrap(),
            CacheKey::for_copy(&file, settled + Duration::from_secs(60), 1).unwrap()
        );
        // A copy and the live file never share an entry.
        assert_ne!(
            CacheKey::for_copy(&file, settled, 1).unwrap(),
            CacheKey::for_copy(&file, settled, 0).unwrap()
        );
    }
}
