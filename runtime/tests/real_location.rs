//! The ECL's `dirpath` rule needs the directory an image really sits in.
//! A user with a mount namespace of their own can bind their directory over
//! a trusted one and hand root `/proc/<pid>/root/<trusted dir>/img.sif`:
//! the kernel then names the opened file by the trusted path. These tests
//! build exactly that (a real second mount namespace) and check that the
//! name alone is never taken as the location.

mod common;

use std::fs::{self, File};
use std::process::{Command, Stdio};

use common::*;
use sifrun_runtime::node::credentials::{open_no_magiclinks, real_parent_dir};

#[test]
fn a_file_in_another_namespace_bind_is_not_in_the_directory_it_is_named_by() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("trusted");
    let theirs = dir.path().join("theirs");
    fs::create_dir_all(&trusted).unwrap();
    fs::create_dir_all(&theirs).unwrap();
    fs::write(trusted.join("img.sif"), b"trusted").unwrap();
    fs::write(theirs.join("img.sif"), b"theirs").unwrap();

    // An honest open: the file is where its name says.
    let honest = File::open(trusted.join("img.sif")).unwrap();
    assert_eq!(real_parent_dir(&honest).as_deref(), Some(trusted.as_path()));

    // The attacker's namespace: their directory bound over the trusted one.
    let mut ns = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" "$1" && echo ready && exec sleep 30"#)
        .arg(&theirs)
        .arg(&trusted)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ns.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let via_proc = format!("/proc/{}/root{}/img.sif", ns.id(), trusted.display());
    let forged = File::open(&via_proc).unwrap();
    assert_eq!(fs::read(&via_proc).unwrap(), b"theirs");
    // The kernel names it by the trusted path ...
    let name = fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&forged)
    ))
    .unwrap();
    assert_eq!(name, trusted.join("img.sif"));
    // ... but it is not the file in the trusted directory.
    assert_eq!(real_parent_dir(&forged), None);
    // And a user-named path through /proc/PID/root is refused outright.
    let e = open_no_magiclinks(std::path::Path::new(&via_proc), libc::O_RDONLY).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    ns.kill().unwrap();
    ns.wait().unwrap();
}

#[test]
fn a_deleted_or_replaced_file_has_no_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.sif");
    fs::write(&path, b"old").unwrap();
    let old = File::open(&path).unwrap();
    fs::write(dir.path().join("new"), b"new").unwrap();
    fs::rename(dir.path().join("new"), &path).unwrap();
    assert_eq!(real_parent_dir(&old), None);
    let new = File::open(&path).unwrap();
    assert_eq!(real_parent_dir(&new).as_deref(), Some(dir.path()));
    fs::remove_file(&path).unwrap();
    assert_eq!(real_parent_dir(&new), None);
}
