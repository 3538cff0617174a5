//! `sifrun exec` as root through the node's image cache: later runs of an
//! image reuse one kept mount (and loop device) instead of mounting afresh,
//! a changed file never runs from an older mount, and the keeper unmounts
//! the image once it is idle. Needs root.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// `sifrun exec IMAGE cmd...` with the cache under `state` (idle 2 s).
fn exec_cached(state: &Path, image: &Path, cmd: &[&str]) -> Output {
    std::process::Command::new(sifrun())
        .env("SIFRUN_STATE_DIR", state)
        .env("SIFRUN_CACHE_IDLE_SECS", "2")
        .arg("exec")
        .arg(image)
        .args(cmd)
        .output()
        .expect("running sifrun")
}

/// SquashFS mounts under `state` in this (the host's) mount namespace.
fn cached_mounts(state: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter(|l| l.contains(" squashfs ") && l.contains(state.to_str().unwrap()))
        .count()
}

/// Loop devices backed by `file`.
fn loops_of(file: &Path) -> usize {
    let out = std::process::Command::new("losetup")
        .args(["-n", "-O", "NAME", "-j"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn runs_share_one_kept_mount_until_it_is_idle() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let state = fx.path("state");

    let first = exec_cached(&state, &fx.image, &["sh", "-c", "echo $IMG_VAR"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first).trim(), "from-image");
    assert_eq!(cached_mounts(&state), 1, "the mount stays after the run");
    assert_eq!(loops_of(&fx.image), 1);

    let second = exec_cached(&state, &fx.image, &["cat", "/etc/passwd"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(cached_mounts(&state), 1, "the second run reuses the mount");
    assert_eq!(loops_of(&fx.image), 1, "and attaches no loop device");

    // The keeper unmounts it 2 s after the last run (it polls).
    let deadline = Instant::now() + Duration::from_secs(20);
    while cached_mounts(&state) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cached_mounts(&state),
        0,
        "the keeper unmounts an idle image"
    );
    fx.assert_no_leaks(&before);
}

#[test]
fn a_changed_image_never_runs_from_the_older_mount() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let state = fx.path("state");
    let image = fx.path("changing.sif");

    std::fs::copy(&fx.image, &image).unwrap();
    let out = exec_cached(&state, &image, &["sh", "-c", "echo $IMG_VAR"]);
    assert_eq!(stdout(&out).trim(), "from-image", "{}", stderr(&out));

    // Rewritten in place (same path, same inode): another environment.
    let rebuilt = run_sifrun(&[
        "build",
        "--force",
        fx.rootfs.to_str().unwrap(),
        "-o",
        fx.path("other.sif").to_str().unwrap(),
        "--env",
        "IMG_VAR=changed",
    ]);
    assert!(rebuilt.status.success(), "{}", stderr(&rebuilt));
    std::fs::write(&image, std::fs::read(fx.path("other.sif")).unwrap()).unwrap();
    let out = exec_cached(&state, &image, &["sh", "-c", "echo $IMG_VAR"]);
    assert_eq!(stdout(&out).trim(), "changed", "{}", stderr(&out));

    let clean = run_sifrun(&["cache", "clean", "--state-dir", state.to_str().unwrap()]);
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert_eq!(cached_mounts(&state), 0);
    fx.assert_no_leaks(&before);
}

#[test]
fn no_cache_when_the_idle_time_is_zero() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let state = fx.path("state");
    let out = std::process::Command::new(sifrun())
        .env("SIFRUN_STATE_DIR", &state)
        .env("SIFRUN_CACHE_IDLE_SECS", "0")
        .arg("exec")
        .arg(&fx.image)
        .arg("true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cached_mounts(&state), 0);
    fx.assert_no_leaks(&before);

    let bad = std::process::Command::new(sifrun())
        .env("SIFRUN_CACHE_IDLE_SECS", "soon")
        .arg("exec")
        .arg(&fx.image)
        .arg("true")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("SIFRUN_CACHE_IDLE_SECS"),
        "{}",
        stderr(&bad)
    );
}
