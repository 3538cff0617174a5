//! A hostile LUKS2 header within the `luks2` crate's cost limits still
//! asks for seconds of CPU and gigabytes of memory. Unlocking derives the
//! key in a child process with memory, CPU and wall-clock limits that dies
//! with its parent (runtime::crypt::unlock): these tests make headers that
//! cost more than small limits allow and check each limit ends the child
//! with one clear error, and that killing `sifrun exec` mid-derivation
//! ends the derivation too. Threat model claim 46.

mod common;

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use sifrun_runtime::crypt::unlock::{open_limited, Limits, CHILD_NAME};
use sifrun_runtime::Error;

const PASSPHRASE: &[u8] = b"hostile-but-valid";

/// A LUKS2 container (1 MiB of data) whose keyslot asks for `kdf`.
fn container(path: &Path, kdf: luks2::Kdf) {
    let data = vec![0x5au8; 1 << 20];
    let mut out = fs::File::create(path).unwrap();
    let opts = luks2::FormatOptions {
        kdf,
        ..luks2::FormatOptions::default()
    };
    luks2::format(&mut data.as_slice(), PASSPHRASE, &opts, &mut out).unwrap();
}

fn open(path: &Path, limits: &Limits) -> Result<luks2::Volume, Error> {
    let file = fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len();
    let src = luks2::Source::new(file, 0, len);
    open_limited(src, PASSPHRASE, limits, Path::new("hostile.luks"), |e| {
        Error::image(format!("hostile.luks: {e}"))
    })
}

/// A PBKDF2 cost of about four seconds of one core on this machine,
/// whatever its speed: measured by formatting a container with a small
/// count first (a fixed count that took seconds on one machine took under
/// one on a faster one, and the limits below were never reached).
fn costly_pbkdf2() -> luks2::Kdf {
    const PROBE: u32 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.luks");
    let started = Instant::now();
    container(&probe, luks2::Kdf::Pbkdf2 { iterations: PROBE });
    let per_iteration = started.elapsed().as_secs_f64() / f64::from(PROBE);
    // At most the luks2 crate's own limit (16 million).
    let iterations = (4.0 / per_iteration.max(1e-9)).clamp(4e6, 16e6) as u32;
    luks2::Kdf::Pbkdf2 { iterations }
}

/// 64 MiB, one pass: quick, but more memory than the small limit below.
const MEMORY_HUNGRY_ARGON2: luks2::Kdf = luks2::Kdf::Argon2id {
    time: 1,
    memory_kib: 64 * 1024,
    parallel: 1,
};

#[test]
fn within_the_limits_the_child_returns_a_working_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.luks");
    container(&path, MEMORY_HUNGRY_ARGON2);
    let volume = open(&path, &Limits::DEFAULT).expect("unlocks under the default limits");
    let mut buf = [0u8; 4096];
    assert_eq!(volume.read_at(&mut buf, 0).unwrap(), 4096);
    assert!(buf.iter().all(|&b| b == 0x5a), "the key decrypts the data");

    let wrong = fs::File::open(&path).unwrap();
    let len = wrong.metadata().unwrap().len();
    let err = open_limited(
        luks2::Source::new(wrong, 0, len),
        b"not it",
        &Limits::DEFAULT,
        Path::new("hostile.luks"),
        |e| Error::image(format!("hostile.luks: {e}")),
    )
    .unwrap_err();
    assert!(
        err.message().contains("no LUKS2 keyslot opens"),
        "the child's own error comes back as it was: {}",
        err.message()
    );
}

#[test]
fn more_memory_than_the_limit_ends_the_derivation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hungry.luks");
    container(&path, MEMORY_HUNGRY_ARGON2);
    let limits = Limits {
        memory_bytes: 16 << 20,
        ..Limits::DEFAULT
    };
    let err = open(&path, &limits).unwrap_err();
    assert!(
        err.message()
            .contains("unlocking needs more than 16 MiB of memory"),
        "{}",
        err.message()
    );
    assert_eq!(err.message().lines().count(), 1);
}

#[test]
fn more_cpu_than_the_limit_ends_the_derivation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.luks");
    container(&path, costly_pbkdf2());
    let limits = Limits {
        cpu_secs: 1,
        wall: Duration::from_secs(60),
        ..Limits::DEFAULT
    };
    let started = Instant::now();
    let err = open(&path, &limits).unwrap_err();
    assert!(
        err.message().contains("more than 1 s of CPU"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_derivation_past_the_deadline_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.luks");
    container(&path, costly_pbkdf2());
    let limits = Limits {
        wall: Duration::from_secs(1),
        ..Limits::DEFAULT
    };
    let started = Instant::now();
    let err = open(&path, &limits).unwrap_err();
    assert!(
        err.message().contains("took longer than 1 s"),
        "{}",
        err.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "killed at the deadline, not at the end: {:?}",
        started.elapsed()
    );
}

/// Root runs `sifrun exec` on a SIF whose encrypted partition has a costly
/// header: the derivation runs as `nobody` without capabilities, and
/// killing sifrun (as a timeout or `scancel` does) ends it at once.
#[test]
fn the_derivation_runs_unprivileged_and_dies_with_sifrun() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let luks = dir.path().join("slow.luks");
    container(&luks, costly_pbkdf2());
    let image = dir.path().join("slow.sif");
    sif::create(
        &image,
        vec![
            sif::ObjectInput::new(sif::DataType::Partition, luks.as_path()).partition(
                sif::FsType::EncryptedSquashfs,
                sif::PartType::PrimSys,
                sif::Arch::host(),
            ),
        ],
        &sif::CreateOptions::default(),
    )
    .unwrap();
    let pass = dir.path().join("pass");
    fs::write(&pass, PASSPHRASE).unwrap();
    let mut sifrun_exec = sifrun_command()
        .args(["exec", "--passphrase-file"])
        .arg(&pass)
        .arg(&image)
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let name = CHILD_NAME.to_str().unwrap();
    let child = wait_for_child(sifrun_exec.id(), name);
    let status = fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("Groups:"), "", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");

    sifrun_exec.kill().unwrap();
    sifrun_exec.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Path::new(&format!("/proc/{child}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the derivation outlived sifrun by 2 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
