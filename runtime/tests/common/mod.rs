//! Shared helpers for the integration tests: a busybox image fixture,
//! running the `sifrun` binary, and the host leak check.
//!
//! Tests that need root print "skipped: needs root" and return otherwise
//! (CI runs them as root). Every test works in its own temporary directory,
//! and the leak check only looks at loop devices backed by files in that
//! directory and at mounts mentioning it, so tests can run in parallel.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Applets linked into the test image.
const APPLETS: &[&str] = &[
    "sh", "echo", "id", "cat", "ls", "env", "sleep", "true", "false", "pwd", "touch", "kill",
    "grep", "mkdir", "rm", "test", "stat",
];

/// Path of the sifrun binary under test.
pub fn sifrun() -> &'static str {
    env!("CARGO_BIN_EXE_sifrun")
}

/// True (after printing the skip notice) when the test cannot run.
pub fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        false
    } else {
        eprintln!("skipped: needs root");
        true
    }
}

/// A temporary directory with a busybox root filesystem and an image built from it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub image: PathBuf,
}

impl Fixture {
    /// Builds `image.sif` with an image environment of `IMG_VAR=from-image`
    /// and `FOO=image`.
    pub fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("sifrun-test-")
            .tempdir()
            .expect("tempdir");
        // Other users (the --user test) must be able to traverse it.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = dir.path().join("rootfs");
        make_rootfs(&rootfs);
        let image = dir.path().join("image.sif");
        let out = run_sifrun(&[
            "build",
            rootfs.to_str().unwrap(),
            "-o",
            image.to_str().unwrap(),
            "--env",
            "IMG_VAR=from-image",
            "--env",
            "FOO=image",
        ]);
        assert!(out.status.success(), "build failed: {}", stderr(&out));
        Fixture { dir, rootfs, image }
    }

    /// Path inside the fixture directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `sifrun exec [opts] IMAGE cmd...`
    pub fn exec(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["exec"];
        args.extend_from_slice(opts);
        args.push(self.image.to_str().unwrap());
        args.extend_from_slice(cmd);
        run_sifrun(&args)
    }

    /// Snapshot of host state that a run must not change.
    pub fn snapshot(&self) -> HostState {
        HostState::take(self.dir.path())
    }

    /// Asserts the host state returns to `before` (waiting briefly: the
    /// kernel's autoclear may lag the process exit a little).
    pub fn assert_no_leaks(&self, before: &HostState) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.snapshot();
            if &now == before {
                return;
            }
            if Instant::now() > deadline {
                panic!("host state leaked:\nbefore: {before:#?}\nafter: {now:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Creates a busybox root filesystem at `root`.
pub fn make_rootfs(root: &Path) {
    for d in ["bin", "etc", "opt", "tmp", "usr/bin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static at /bin/busybox");
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("opt/only-in-image.sh"),
        "#!/bin/sh\necho only-in-image\n",
    )
    .unwrap();
    fs::set_permissions(
        root.join("opt/only-in-image.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(root.join("opt/not-executable"), "data\n").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

/// Runs the sifrun binary.
/// `sifrun` without the node's image cache (`SIFRUN_CACHE_IDLE_SECS=0`):
/// each run mounts and unmounts its own image, so the leak checks mean
/// what they say. runtime/tests/exec_cache.rs tests the cache.
pub fn sifrun_command() -> Command {
    let mut command = Command::new(sifrun());
    command.env("SIFRUN_CACHE_IDLE_SECS", "0");
    command
}

pub fn run_sifrun(args: &[&str]) -> Output {
    sifrun_command()
        .args(args)
        .output()
        .expect("running sifrun")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed run printed exactly one `sifrun: error:` line containing `needle`.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err:?}");
    assert!(
        lines[0].starts_with("sifrun: error: ") && lines[0].contains(needle),
        "unexpected error line: {err:?} (wanted {needle:?})"
    );
}

/// Loop devices backed by files under a directory plus mount table lines
/// mentioning that directory (or sifrun's staging area / squashfs mounts
/// coming from such loop devices).
#[derive(Debug, PartialEq, Eq)]
pub struct HostState {
    loops: Vec<String>,
    mounts: Vec<String>,
}

impl HostState {
    pub fn take(dir: &Path) -> HostState {
        let dir = dir.to_string_lossy().into_owned();
        let mut loops = Vec::new();
        let mut loop_names = Vec::new();
        if let Ok(entries) = fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("loop") {
                    continue;
                }
                let backing = e.path().join("loop/backing_file");
                if let Ok(b) = fs::read_to_string(backing) {
                    if b.trim().starts_with(&dir) {
                        loops.push(format!("{name} {}", b.trim()));
                        loop_names.push(format!("/dev/{name} "));
                    }
                }
            }
        }
        loops.sort();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter(|l| {
                l.contains(&dir)
                    || l.contains("/run/sifrun/")
                    || loop_names.iter().any(|n| l.contains(n.as_str()))
            })
            .map(str::to_string)
            .collect();
        mounts.sort();
        HostState { loops, mounts }
    }
}

/// Finds a process whose parent is `ppid` and whose command name is `comm`.
pub fn find_child(ppid: u32, comm: &str) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let parent = stat[close + 2..]
            .split(' ')
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == comm && parent == Some(ppid) {
            return Some(pid);
        }
    }
    None
}

/// Polls `find_child` for up to 20 s.
pub fn wait_for_child(ppid: u32, comm: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(pid) = find_child(ppid, comm) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{comm} never started under {ppid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reference corpus (sylabs/sif `test/`), from Debian's
/// golang-github-sylabs-sif-dev.
pub const CORPUS: &str = "/usr/share/gocode/src/github.com/sylabs/sif/test";
/// Primary fingerprint of the corpus key `test/keys/private.asc`.
pub const CORPUS_FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

/// The corpus directory (images/ and keys/), or `None` after saying why.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("SIF_CORPUS_DIR")
        .map(|d| PathBuf::from(d).join(".."))
        .unwrap_or_else(|| PathBuf::from(CORPUS));
    if dir.join("keys/private.asc").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: sylabs/sif corpus not found (install golang-github-sylabs-sif-dev)");
        None
    }
}
