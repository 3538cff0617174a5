//! Loop device attachment through the library: offset/size limit honoured,
//! autoclear on drop, explicit detach.

mod common;

use std::fs;
use std::io::Read;

use common::*;
use sifrun_runtime::container::loop_device::LoopAttachment;

#[test]
fn size_limit_offset_and_autoclear() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing.img");
    let mut data = vec![0u8; 64 * 1024];
    data[4096..8192].fill(0xab);
    fs::write(&file, &data).unwrap();
    let before = HostState::take(dir.path());

    let dev = LoopAttachment::attach(&file, 4096, 4096).unwrap();
    assert_eq!(dev.device_size().unwrap(), 4096);
    // The leak check does see an attached device.
    assert_ne!(HostState::take(dir.path()), before);
    let mut contents = Vec::new();
    fs::File::open(dev.path())
        .unwrap()
        .read_to_end(&mut contents)
        .unwrap();
    assert_eq!(
        contents,
        vec![0xab; 4096],
        "device must expose exactly the window"
    );
    // Read-only.
    assert!(
        fs::OpenOptions::new().write(true).open(dev.path()).is_err()
            || fs::write(dev.path(), b"x").is_err()
    );
    drop(dev);
    wait_until_equal(dir.path(), &before);

    let dev = LoopAttachment::attach(&file, 0, 8192).unwrap();
    dev.detach().unwrap();
    wait_until_equal(dir.path(), &before);
}

#[test]
fn empty_partition_is_refused() {
    if skip_unless_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backing.img");
    fs::write(&file, vec![0u8; 4096]).unwrap();
    let err = LoopAttachment::attach(&file, 0, 0).unwrap_err();
    assert!(err.message().contains("partition is empty"));
}

fn wait_until_equal(dir: &std::path::Path, before: &HostState) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while &HostState::take(dir) != before {
        assert!(std::time::Instant::now() < deadline, "loop device leaked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
