//! `sifrun slurm-setup` (the root helper the plugin starts in slurmstepd)
//! never outlives its parent or its own deadline, whatever it is blocked
//! on: a killed slurmstepd cannot leave a root process holding a cache
//! entry and the job in completing state.
//!
//! The helper is made to block for real: the test holds the exclusive lock
//! of the image's cache entry, which the helper then waits for (up to 30 s).

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{Flock, FlockArg};
use sifrun_runtime::image::RunnableImage;
use sifrun_runtime::node::image_cache::{CacheKey, ImageCache};

/// Holds the exclusive lock of `image`'s entry in the cache under `state`.
fn block_entry(state: &Path, image: &Path) -> Flock<File> {
    let cache = ImageCache::open(state).unwrap();
    let img = RunnableImage::open(image).unwrap();
    let key = CacheKey::for_partition(
        &File::open(image).unwrap(),
        img.partition_offset,
        img.partition_size,
        0,
    )
    .unwrap();
    let entry = cache.root().join(key.as_str());
    fs::DirBuilder::new().mode(0o700).create(&entry).unwrap();
    let lock = File::create(entry.join("lock")).unwrap();
    Flock::lock(lock, FlockArg::LockExclusiveNonblock).unwrap()
}

fn helper_args(state: &Path, image: &Path, timeout: u64) -> Vec<String> {
    [
        "slurm-setup",
        "--uid",
        "0",
        "--gid",
        "0",
        "--cache-idle-secs",
        "5",
        "--timeout-secs",
        &timeout.to_string(),
        "--state-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([state.display().to_string(), image.display().to_string()])
    .collect()
}

fn alive(pid: i32) -> bool {
    // A zombie waiting for init to reap it has ended.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_blocked_helper_dies_with_its_parent() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let state: PathBuf = fx.path("state");
    let _held = block_entry(&state, &fx.image);
    // The parent (standing in for slurmstepd) starts the helper, says its
    // PID, and is then killed with SIGKILL while the helper is blocked.
    let mut parent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" "$@" </dev/null >/dev/null 2>&1 & echo $!; exec sleep 60"#)
        .arg(sifrun())
        .args(helper_args(&state, &fx.image, 0))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let helper: i32 = line.trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(helper),
        "the helper should be blocked on the entry lock"
    );
    parent.kill().unwrap();
    parent.wait().unwrap();
    assert!(
        wait_gone(helper, Duration::from_secs(3)),
        "the helper outlived its parent"
    );
}

#[test]
fn a_blocked_helper_dies_at_its_own_deadline() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let state = fx.path("state");
    let _held = block_entry(&state, &fx.image);
    let start = Instant::now();
    let status = sifrun_command()
        .args(helper_args(&state, &fx.image, 1))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGALRM), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}: the 30 s lock wait was not cut short",
        start.elapsed()
    );
}
