//! Overlay partitions (`apptainer overlay create`: ext3) are user-written
//! filesystem images. sifrun never mounts one: an unprivileged child
//! unpacks its `/upper` onto a private tmpfs laid over the image. These
//! tests hand it hostile partitions (made with `mkfs.ext3 -d`, then
//! corrupted) and check that what runs is harmless, that bad bytes give
//! one error line and never a panic, and that nothing is left on the host.
//! Needs root (privileged exec; device nodes in the source tree).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// An ext3 image of `mib` MiB holding `tree` (the layout Apptainer
/// writes: the files under `upper/`, and an empty `work/`).
fn ext3_image(fx: &Fixture, name: &str, tree: &Path, mib: u64) -> Vec<u8> {
    let image = fx.path(&format!("{name}.ext3"));
    let out = Command::new("mkfs.ext3")
        .args(["-q", "-F", "-b", "1024", "-d"])
        .arg(tree)
        .arg(&image)
        .arg(format!("{mib}M"))
        .output()
        .expect("mkfs.ext3 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(&image).unwrap()
}

/// The fixture's image with `partition` added as its overlay partition.
fn with_overlay(fx: &Fixture, name: &str, partition: Vec<u8>) -> String {
    let image = fx.path(&format!("{name}.sif"));
    fs::copy(&fx.image, &image).unwrap();
    let overlay = sif::ObjectInput::new(sif::DataType::Partition, partition)
        .group(1)
        .partition(sif::FsType::Ext3, sif::PartType::Overlay, sif::Arch::Amd64);
    sif::add_object(&image, overlay, &Default::default()).unwrap();
    image.to_str().unwrap().to_string()
}

/// `upper/` with what a hostile user would put there.
fn hostile_tree(fx: &Fixture) -> std::path::PathBuf {
    let tree = fx.path("hostile-tree");
    let upper = tree.join("upper");
    fs::create_dir_all(upper.join("opt/data")).unwrap();
    fs::create_dir_all(tree.join("work")).unwrap();
    fs::write(upper.join("opt/data/plain.txt"), "from the overlay\n").unwrap();
    let suid = upper.join("opt/data/suid-root");
    fs::copy("/bin/busybox", &suid).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", upper.join("opt/data/shadow-link")).unwrap();
    let node = |name: &str, kind: nix::sys::stat::SFlag, dev: u64| {
        nix::sys::stat::mknod(
            &upper.join(name),
            kind,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            dev,
        )
        .unwrap();
    };
    node(
        "opt/data/mem",
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::makedev(1, 1),
    );
    node(
        "opt/data/loop0",
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::makedev(7, 0),
    );
    nix::unistd::mkfifo(
        &upper.join("opt/data/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    // Hides a file of the image, as a deleted file does.
    node("opt/only-in-image.sh", nix::sys::stat::SFlag::S_IFCHR, 0);
    tree
}

#[test]
fn hostile_entries_become_harmless_files() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let tree = hostile_tree(&fx);
    let image = with_overlay(&fx, "hostile", ext3_image(&fx, "hostile", &tree, 8));
    let before = fx.snapshot();
    let out = run_sifrun(&[
        "exec",
        "--user",
        "nobody",
        &image,
        "sh",
        "-c",
        "cd /opt/data; cat plain.txt; stat -c '%n %a %u %F' suid-root; readlink shadow-link;
         ls -a; test -e /opt/only-in-image.sh || echo whiteout-hides-image-file; cat /opt/not-executable",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "from the overlay");
    // Setuid cleared; unpacked as the user who runs the command.
    assert_eq!(lines[1], "suid-root 755 65534 regular file");
    assert_eq!(lines[2], "/etc/shadow");
    // The character device became a whiteout (absent), the block device
    // was left out: no device node of the user's reaches the container.
    let names: Vec<&str> = text
        .lines()
        .skip(3)
        .take_while(|l| !l.starts_with("whiteout"))
        .collect();
    assert_eq!(
        names,
        [".", "..", "fifo", "plain.txt", "shadow-link", "suid-root"]
    );
    assert!(text.contains("whiteout-hides-image-file\ndata\n"), "{text}");
    fx.assert_no_leaks(&before);
}

#[test]
fn corrupt_partitions_fail_in_one_line_and_never_panic() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let tree = hostile_tree(&fx);
    let clean = ext3_image(&fx, "corrupt", &tree, 8);
    let before = fx.snapshot();
    // Garbage over the superblock, the group descriptors, the bitmaps,
    // the inode table and the first directory and data blocks.
    let mut seed: u64 = 0x5eed;
    let mut failures = 0;
    for round in 0..48u64 {
        let mut bytes = clean.clone();
        let at = 1024 + (round * 977 % 60) * 1024 + (round * 131) % 1024;
        for b in bytes.iter_mut().skip(at as usize).take(64) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (seed >> 33) as u8;
        }
        let image = with_overlay(&fx, &format!("corrupt-{round}"), bytes);
        let out = run_sifrun(&["exec", &image, "true"]);
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "round {round}: {err}");
        if !out.status.success() {
            failures += 1;
            assert_one_line_error(&out, "overlay partition");
        }
        fs::remove_file(&image).unwrap();
    }
    assert!(
        failures > 0,
        "no corruption was noticed: the test hit nothing"
    );
    fx.assert_no_leaks(&before);
}

#[test]
fn limits_and_layout_are_one_line_errors() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();

    // Bigger than the node unpacks.
    let big = fx.path("big-tree");
    fs::create_dir_all(big.join("upper")).unwrap();
    fs::write(big.join("upper/big"), vec![1u8; 24 << 20]).unwrap();
    let image = with_overlay(&fx, "big", ext3_image(&fx, "big", &big, 32));
    let out = sifrun_command()
        .args(["exec", &image, "true"])
        .env("SIFRUN_OVERLAY_MAX_MIB", "16")
        .output()
        .unwrap();
    assert_one_line_error(&out, "holds more than the 16 MiB");

    // An ext3 image without Apptainer's upper/ directory.
    let flat = fx.path("flat-tree");
    fs::create_dir_all(&flat).unwrap();
    fs::write(flat.join("file"), "x").unwrap();
    let image = with_overlay(&fx, "flat", ext3_image(&fx, "flat", &flat, 4));
    assert_one_line_error(
        &run_sifrun(&["exec", &image, "true"]),
        "has no /upper directory",
    );

    // Not a filesystem at all.
    let image = with_overlay(&fx, "junk", vec![0x5a; 256 << 10]);
    assert_one_line_error(
        &run_sifrun(&["exec", &image, "true"]),
        "not a readable ext2/3/4 filesystem",
    );
    fx.assert_no_leaks(&before);
}
