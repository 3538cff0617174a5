//! The user-space decryption path: a FUSE file system with one read-only
//! file, `image`, whose bytes are the decrypted SquashFS. Each read
//! decrypts just the sectors it covers, so plaintext exists only in this
//! process's buffers and in the kernel's page cache, never on a disk.
//!
//! The server is a thread of sifrun (the `fuser` crate's session loop) on a
//! `/dev/fuse` connection sifrun mounted itself. It ends on its own when
//! the kernel destroys the connection: after the mount is detached and the
//! last open file on it (the loop device's backing file) is closed.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request, SessionACL,
};

use crate::container::mount::fuse::{self, FuseMount};
use crate::error::{Context, Error, Result};
use crate::pidfd::PidFd;

/// The one file's name.
pub const FILE_NAME: &str = "image";
const ROOT_INO: u64 = 1;
const FILE_INO: u64 = 2;
/// Attributes never change: cache them for long.
const TTL: Duration = Duration::from_secs(3600);

/// The file system.
struct DecryptedFile {
    volume: luks2::Volume,
    uid: u32,
    gid: u32,
}

impl DecryptedFile {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = match ino {
            ROOT_INO => (FileType::Directory, 0o500, 0, 2),
            FILE_INO => (FileType::RegularFile, 0o400, self.volume.size(), 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for DecryptedFile {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE_INO) {
            Some(a) if parent == ROOT_INO && name == FILE_NAME => reply.entry(&TTL, &a, 0),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != FILE_INO {
            reply.error(libc::EISDIR);
        } else if flags & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(libc::EROFS);
        } else {
            // Keep the page cache across opens: the content never changes.
            reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE);
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO || offset < 0 {
            return reply.error(libc::EINVAL);
        }
        let mut buf = zeroize::Zeroizing::new(vec![0u8; size as usize]);
        match self.volume.read_at(&mut buf, offset as u64) {
            Ok(n) => reply.data(&buf[..n]),
            // A truncated or unreadable image is an I/O error to the reader
            // (the SquashFS driver reports it), never a crash of the server.
            Err(_) => reply.error(libc::EIO),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT_INO {
            return reply.error(libc::ENOTDIR);
        }
        let entries = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The decrypting file system's mount: with `allow_other`, any process
/// may reach it and the kernel checks the file's mode (0400, owner `uid`)
/// as for any file (`default_permissions`).
fn fuse_mount(uid: u32, gid: u32, allow_other: bool) -> FuseMount<'static> {
    FuseMount {
        name: "sifrun-luks",
        uid,
        gid,
        allow_other,
        what: "the decrypting FUSE file system",
    }
}

/// Starts serving `volume` on an already mounted connection.
pub fn serve(device: OwnedFd, volume: luks2::Volume, uid: u32, gid: u32) -> Result<()> {
    let fs = DecryptedFile { volume, uid, gid };
    // The kernel already restricts the mount to `uid` (no allow_other);
    // requests reaching us are allowed ones.
    fuser::Session::from_fd(fs, device, SessionACL::All)
        .spawn()
        .context("starting the decrypting FUSE server")?;
    Ok(())
}

/// Mounts `volume` on a fresh directory under `base` and serves it; the
/// caller opens `<dir>/image` and then calls [`Mounted::detach`].
pub fn mount_and_serve(volume: luks2::Volume, base: &Path) -> Result<Mounted> {
    let (mounted, device, uid, gid) = mount_fresh(base, false)?;
    serve(OwnedFd::from(device), volume, uid, gid)?;
    Ok(mounted)
}

/// Opens `/dev/fuse` and mounts the connection, owned by our effective
/// IDs, on a fresh directory under `base` (`allow_other` as asked).
fn mount_fresh(base: &Path, allow_other: bool) -> Result<(Mounted, File, u32, u32)> {
    let dir = tempfile::Builder::new()
        .prefix(".luks-")
        .tempdir_in(base)
        .with_context(|| format!("creating a mount point in {}", base.display()))?
        .keep();
    let device = fuse::open_device()?;
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    if let Err(e) = fuse_mount(uid, gid, allow_other).mount(&device, &dir) {
        let _ = std::fs::remove_dir(&dir);
        return Err(e);
    }
    Ok((Mounted { dir }, device, uid, gid))
}

/// Name of the forked server process (`comm`, as `ps` and `pgrep` show it).
pub const SERVER_NAME: &std::ffi::CStr = c"crypt-serve";

/// Like [`mount_and_serve`], but the server is a forked child process,
/// named [`SERVER_NAME`], that outlives the caller (the Slurm helper exits
/// long before the step ends) but not `step`, the process the container is
/// for (slurmstepd): the server exits when `step` does, even if something
/// still holds the decrypted file. It stays in the caller's session and
/// process group (the step's), has its standard streams on `/dev/null`
/// (the plugin waits for the helper's streams to close) and holds nothing
/// but the `/dev/fuse` connection, the encrypted image and `step`'s pidfd:
/// no reference to the mount, to the decrypted file or to any mount
/// namespace. So once the mount is detached and the loop device over the
/// file lets it go, the kernel destroys the connection, the child's next
/// read fails with ENODEV and it exits, wiping the key.
///
/// Must be called from a single-threaded process (it forks), before the
/// caller leaves the host's mount namespace: a server inside the step's
/// namespace would keep that namespace, and so its own mount, alive.
pub fn mount_and_fork_server(volume: luks2::Volume, base: &Path, step: PidFd) -> Result<Mounted> {
    // allow_other: without it the kernel lets in only processes whose
    // real, effective and saved IDs all equal uid/gid, which a helper
    // started by slurmstepd need not have (its real or saved group can
    // differ). The file is 0400 and owned by root, its directory is 0500
    // in the 0700 state directory, and the mount is detached as soon as
    // the loop device holds the file: only root ever reaches it.
    let (mounted, device, uid, gid) = mount_fresh(base, true)?;
    // SAFETY: the caller is single-threaded; the child only runs the
    // server loop and leaves with _exit.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(Error::system(format!(
            "starting the decrypting FUSE server: {}",
            e.desc()
        ))),
        Ok(nix::unistd::ForkResult::Child) => {
            // The parent owns the mount: never detach it from here.
            std::mem::forget(mounted);
            serve_in_child(device, volume, uid, gid, step)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            // Only the child keeps the connection and the key.
            drop(device);
            drop(volume);
            drop(step);
            Ok(mounted)
        }
    }
}

fn serve_in_child(device: File, volume: luks2::Volume, uid: u32, gid: u32, step: PidFd) -> ! {
    let _ = nix::sys::prctl::set_name(SERVER_NAME);
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
    // The helper's working directory must not stay busy.
    let _ = nix::unistd::chdir("/");
    // Serving needs no privilege: the FUSE connection and the image are
    // open. Not dumpable, so that no other process running as `nobody` can
    // read the volume key from its memory. A failure to shed root ends the
    // server before it serves.
    if crate::container::identity::drop_to_nobody().is_err() {
        // SAFETY: leaving the forked child at once.
        unsafe { libc::_exit(1) }
    }
    // The step's end is the server's end (a process that escaped the step
    // may still hold the decrypted file). Threads are fine here: the
    // process forked from a single-threaded one.
    let watcher = std::thread::Builder::new()
        .name("step-watch".into())
        .spawn(move || {
            step.wait_exit();
            // SAFETY: ending the whole server at once; the kernel aborts the
            // FUSE connection and frees the memory holding the key.
            unsafe { libc::_exit(0) }
        });
    if watcher.is_err() {
        // SAFETY: leaving the forked child at once.
        unsafe { libc::_exit(1) }
    }
    let fs = DecryptedFile { volume, uid, gid };
    let mut session = fuser::Session::from_fd(fs, OwnedFd::from(device), SessionACL::All);
    let code = i32::from(session.run().is_err());
    // Dropping the session drops the volume, which wipes the key.
    drop(session);
    // SAFETY: leaving the forked child without running the parent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

/// A mounted decrypting file system; detached (lazily unmounted) on drop,
/// so the mount is visible only while the caller opens its file.
#[derive(Debug)]
pub struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    /// Path of the decrypted file.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Unmounts now (open files keep working) and removes the directory.
    pub fn detach(self) {
        drop(self)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.dir);
    }
}
