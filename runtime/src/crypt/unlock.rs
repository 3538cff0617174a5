//! Unlocking a LUKS2 container whose header is hostile input.
//!
//! The key derivation a header asks for is bounded by the `luks2` crate
//! (cost per derivation, keyslots tried), but within those bounds one
//! unlock may still cost gigabytes of memory and many seconds of CPU, and
//! sifrun often unlocks as root (the Slurm helper, an admin's `sifrun
//! exec`). So the costly half, [`luks2::Volume::find_key`] (parsing the
//! header and every derivation), runs in a forked child process that:
//!
//! * holds nothing but the container's file and the passphrase, and sheds
//!   root first (`nobody`, no capabilities, not dumpable) when started as
//!   root, `no_new_privs` always;
//! * runs under [`Limits`]: an address-space limit (`RLIMIT_AS`), a CPU
//!   time limit (`RLIMIT_CPU`) and a wall-clock deadline after which the
//!   parent kills it;
//! * dies with its parent (`PR_SET_PDEATHSIG`), so killing the helper or
//!   the CLI ends the derivation too;
//! * sends back one `Reply`: the volume key, or the one-line error.
//!
//! The parent then opens the volume with that key ([`luks2::Volume::with_key`],
//! no derivation). Limits are documented in docs/encryption.md.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What one unlock may cost the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory the derivation may allocate beyond what the process already
    /// maps when it forks.
    pub memory_bytes: u64,
    /// CPU seconds (the derivation is single-threaded).
    pub cpu_secs: u64,
    /// Wall-clock time before the child is killed.
    pub wall: Duration,
}

impl Limits {
    /// The limits of every unlock: the largest Argon2 memory cost a header
    /// may ask for (4 GiB, cryptsetup's own maximum) plus room for the
    /// rest, and one minute. Real images need far less: cryptsetup's
    /// defaults are about 2 s and at most 1 GiB per keyslot, and images
    /// sifrun builds cost well under a second.
    pub const DEFAULT: Limits = Limits {
        memory_bytes: (4 << 30) + (256 << 20),
        cpu_secs: 60,
        wall: Duration::from_secs(60),
    };
}

/// Name of the child process (`comm`, as `ps` and `pgrep` show it).
pub const CHILD_NAME: &std::ffi::CStr = c"sifrun-unlock";

/// Most bytes a reply may have: a key is 64, an error one line.
const MAX_REPLY: u64 = 64 * 1024;

/// The one message the child sends its parent through the pipe, written
/// and read by the same code.
enum Reply {
    /// The volume key.
    Key(Zeroizing<Vec<u8>>),
    /// Why unlocking failed, one line naming the image.
    Failed(String),
}

impl Reply {
    const KEY: u8 = b'K';
    const FAILED: u8 = b'E';

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        match self {
            Reply::Key(key) => {
                out.push(Self::KEY);
                out.extend_from_slice(key);
            }
            Reply::Failed(why) => {
                out.push(Self::FAILED);
                out.extend_from_slice(why.as_bytes());
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Reply> {
        let (&tag, rest) = bytes.split_first()?;
        match tag {
            Self::KEY => Some(Reply::Key(Zeroizing::new(rest.to_vec()))),
            Self::FAILED => Some(Reply::Failed(String::from_utf8_lossy(rest).into_owned())),
            _ => None,
        }
    }
}

/// Opens the LUKS2 container of `src` with `passphrase`, deriving the key
/// in a child process under `limits`. `image` names the image in errors;
/// `describe` turns a `luks2` error into the caller's one-line message.
///
/// Forks: the child only computes and leaves with `_exit`; glibc keeps
/// `malloc` usable in a forked child of a multi-threaded process (test
/// harnesses call this from threads).
pub fn open_limited(
    src: luks2::Source,
    passphrase: &[u8],
    limits: &Limits,
    image: &Path,
    describe: impl Fn(luks2::Error) -> Error,
) -> Result<luks2::Volume> {
    let key = find_key_in_child(&src, passphrase, limits, image, &describe)?;
    luks2::Volume::with_key(src, &key).map_err(describe)
}

fn find_key_in_child(
    src: &luks2::Source,
    passphrase: &[u8],
    limits: &Limits,
    image: &Path,
    describe: &dyn Fn(luks2::Error) -> Error,
) -> Result<Zeroizing<Vec<u8>>> {
    let mapped = mapped_bytes();
    let parent = nix::unistd::getpid();
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::system(format!("unlocking: pipe: {}", e.desc())).at(image))?;
    // SAFETY: the child runs only `child_main`, which computes, writes to
    // the pipe and leaves with `_exit`, never returning into the caller.
    match unsafe { fork() } {
        Err(e) => Err(Error::system(format!(
            "unlocking: cannot start the key derivation: {}",
            e.desc()
        ))
        .at(image)),
        Ok(ForkResult::Child) => {
            drop(reader);
            let budget = mapped.saturating_add(limits.memory_bytes);
            child_main(
                src,
                passphrase,
                writer,
                parent,
                budget,
                limits.cpu_secs,
                describe,
            )
        }
        Ok(ForkResult::Parent { child }) => {
            drop(writer);
            let reply = read_reply(reader, limits.wall);
            let outcome = finish(child, reply.is_ok());
            match (reply, outcome) {
                (Ok(Some(Reply::Key(key))), _) => Ok(key),
                (Ok(Some(Reply::Failed(why))), _) => Err(Error::image(why)),
                (Err(TimedOut), _) => Err(too_slow(image, limits)),
                (Ok(None), status) => Err(died(image, limits, status)),
            }
        }
    }
}

/// The parent's deadline passed before the child answered.
struct TimedOut;

/// Reads the child's reply until it closes the pipe, for at most `wall`.
/// `None`: the child died without a whole reply.
fn read_reply(reader: OwnedFd, wall: Duration) -> std::result::Result<Option<Reply>, TimedOut> {
    let deadline = Instant::now() + wall;
    let mut bytes = Zeroizing::new(Vec::new());
    let mut file = File::from(reader);
    loop {
        if !crate::process::wait_readable(&file, deadline) {
            return if Instant::now() >= deadline {
                Err(TimedOut)
            } else {
                Ok(None)
            };
        }
        let mut chunk = Zeroizing::new([0u8; 4096]);
        match file.read(&mut chunk[..]) {
            Ok(0) => return Ok(Reply::decode(&bytes)),
            Ok(n) if (bytes.len() + n) as u64 <= MAX_REPLY => bytes.extend_from_slice(&chunk[..n]),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Reaps the child: at once if it answered, else after killing it.
fn finish(child: Pid, answered: bool) -> Option<WaitStatus> {
    if !answered {
        let _ = kill(child, Signal::SIGKILL);
    }
    loop {
        match waitpid(child, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(status) => return Some(status),
            Err(_) => return None,
        }
    }
}

fn too_slow(image: &Path, limits: &Limits) -> Error {
    Error::image(format!(
        "unlocking took longer than {} s, the limit for LUKS2 key derivation (the header asks for too costly a key derivation)",
        limits.wall.as_secs()
    ))
    .at(image)
}

fn died(image: &Path, limits: &Limits, status: Option<WaitStatus>) -> Error {
    let error = match status {
        Some(WaitStatus::Signaled(_, Signal::SIGXCPU | Signal::SIGKILL, _)) => Error::image(format!(
            "unlocking used more than {} s of CPU, the limit for LUKS2 key derivation (the header asks for too costly a key derivation)",
            limits.cpu_secs
        )),
        // Rust aborts when an allocation fails, which under RLIMIT_AS is
        // the derivation asking for more memory than the limit.
        Some(WaitStatus::Signaled(_, Signal::SIGABRT | Signal::SIGSEGV, _)) => Error::image(format!(
            "unlocking needs more than {} MiB of memory, the limit for LUKS2 key derivation (the header asks for too costly a key derivation)",
            limits.memory_bytes >> 20
        )),
        other => Error::system(format!(
            "the key derivation process ended without an answer ({other:?})"
        )),
    };
    error.at(image)
}

/// Virtual memory the process maps now (`VmSize`), which the child
/// inherits and its address-space limit must leave room for.
fn mapped_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// The forked child: limits, identity, derivation, reply, `_exit`.
fn child_main(
    src: &luks2::Source,
    passphrase: &[u8],
    writer: OwnedFd,
    parent: Pid,
    address_space: u64,
    cpu_secs: u64,
    describe: &dyn Fn(luks2::Error) -> Error,
) -> ! {
    let reply = match confine(parent, address_space, cpu_secs) {
        Ok(()) => match luks2::Volume::find_key(src, passphrase) {
            Ok(key) => Reply::Key(key),
            Err(e) => Reply::Failed(describe(e).message().to_string()),
        },
        Err(e) => Reply::Failed(e.message().to_string()),
    };
    let mut out = File::from(writer);
    let code = i32::from(out.write_all(&reply.encode()).is_err());
    drop(reply);
    // SAFETY: leaving the forked child without running the parent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

/// Everything the child does before touching the header.
fn confine(parent: Pid, address_space: u64, cpu_secs: u64) -> Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    // Nothing on the terminal: the parent words every failure (an
    // allocation failure would otherwise print Rust's own message).
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), libc::STDERR_FILENO);
    }
    if nix::unistd::geteuid().is_root() {
        crate::container::identity::drop_to_nobody()?;
    } else {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Error::system(format!("key derivation: no_new_privs: {e}")))?;
    }
    // Armed after the identity change, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| Error::system(format!("key derivation: parent-death signal: {e}")))?;
    // The parent may have died before the signal was armed.
    if nix::unistd::getppid() != parent {
        // SAFETY: leaving the forked child at once.
        unsafe { libc::_exit(1) }
    }
    setrlimit(Resource::RLIMIT_AS, address_space, address_space)
        .map_err(|e| Error::system(format!("key derivation: memory limit: {e}")))?;
    setrlimit(Resource::RLIMIT_CPU, cpu_secs, cpu_secs)
        .map_err(|e| Error::system(format!("key derivation: CPU limit: {e}")))?;
    // Named last: a process with this name is confined.
    nix::sys::prctl::set_name(CHILD_NAME)
        .map_err(|e| Error::system(format!("key derivation: naming the process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_garbage_is_refused() {
        let key = Reply::Key(Zeroizing::new(vec![7u8; 64])).encode();
        assert!(matches!(Reply::decode(&key), Some(Reply::Key(k)) if *k == vec![7u8; 64]));
        let failed = Reply::Failed("img.sif: wrong key".into()).encode();
        assert!(
            matches!(Reply::decode(&failed), Some(Reply::Failed(w)) if w == "img.sif: wrong key")
        );
        assert!(Reply::decode(b"").is_none());
        assert!(Reply::decode(b"Xjunk").is_none());
    }
}
