//! The step-end sweep (runtime::namespace_sweep): every process in a
//! container's mount namespace is ended, including one that escaped its
//! parent with `setsid -f` (what `proctrack/linuxproc` loses track of),
//! and nothing outside it is touched. Needs root (`unshare -m`).

mod common;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sifrun_runtime::node::namespace_sweep::{end_members, Swept};

fn in_namespace(ns: &File) -> Vec<i32> {
    let meta = ns.metadata().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|m| (m.dev(), m.ino()) == (meta.dev(), meta.ino()))
        })
        .collect()
}

#[test]
fn every_process_in_the_namespace_ends_and_nothing_else() {
    if skip_unless_root() {
        return;
    }
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    let mut task = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("setsid -f sleep 300 </dev/null >/dev/null 2>&1; exec sleep 300")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ns = loop {
        let ns = File::open(format!("/proc/{}/ns/mnt", task.id())).unwrap();
        let own = File::open("/proc/self/ns/mnt").unwrap().metadata().unwrap();
        let meta = ns.metadata().unwrap();
        if meta.ino() != own.ino() && in_namespace(&ns).len() == 2 {
            break ns;
        }
        assert!(
            Instant::now() < deadline,
            "the escaped process never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let swept = end_members(&ns);
    assert_eq!(
        swept,
        Swept {
            killed: 2,
            remaining: false
        }
    );
    task.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !in_namespace(&ns).is_empty() {
        assert!(Instant::now() < deadline, "{:?} left", in_namespace(&ns));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process outside the namespace was killed"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn the_callers_own_namespace_is_never_swept() {
    let own = File::open("/proc/self/ns/mnt").unwrap();
    assert_eq!(end_members(&own), Swept::default());
}
