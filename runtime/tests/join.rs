//! The SPANK shape through the library: one holder process builds the
//! container once, a separate "task" process joins its mount namespace and
//! runs a command as an unprivileged user. Kept as the only test in this
//! binary because it forks from the test process.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult};

use common::*;
use sifrun_runtime::container::{self, Workdir};
use sifrun_runtime::env::container_environment;
use sifrun_runtime::exec::StagingDir;
use sifrun_runtime::image::RunnableImage;
use sifrun_runtime::loop_device::LoopAttachment;
use sifrun_runtime::mount::rootfs::ContainerSpec;
use sifrun_runtime::namespaces::{join_mount_namespace, open_mount_namespace};
use sifrun_runtime::user::Identity;

#[test]
fn holder_builds_once_tasks_join() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();

    let image = RunnableImage::open(&fx.image).unwrap();
    let identity = Identity::lookup("nobody").unwrap();
    let staging = StagingDir::create().unwrap();
    let spec = ContainerSpec::new(staging.path().to_path_buf(), identity.clone());
    let dev =
        LoopAttachment::attach(&image.path, image.partition_offset, image.partition_size).unwrap();

    let (ready_r, ready_w) = pipe().unwrap();
    // SAFETY: the child only makes system calls and exits.
    let holder = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(ready_r);
            let code = match container::create(&spec, dev.path()) {
                Ok(()) => {
                    let _ = File::from(ready_w).write_all(b"ok");
                    loop {
                        nix::unistd::pause();
                    }
                }
                Err(e) => {
                    eprintln!("holder: {e}");
                    1
                }
            };
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let mut ready = String::new();
    File::from(ready_r).read_to_string(&mut ready).unwrap();
    assert_eq!(ready, "ok", "holder failed to build the container");
    drop(dev); // the holder's mount keeps the device now
    let ns = open_mount_namespace(holder.as_raw()).unwrap();

    let env = container_environment(Vec::new(), &image.env, &identity, &[]);
    let mut outputs = Vec::new();
    for task in 0..2 {
        let (out_r, out_w) = pipe().unwrap();
        // SAFETY: as above.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                drop(out_r);
                unsafe { libc::dup2(out_w.as_raw_fd(), 1) };
                if let Err(e) = join_mount_namespace(&ns) {
                    eprintln!("task: {e}");
                    unsafe { libc::_exit(1) };
                }
                let cmd: Vec<String> = vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo task{task} $(id -u) $IMG_VAR; /opt/only-in-image.sh"),
                ];
                let e = container::exec_command(&identity, &Workdir::default(), &cmd, env.clone());
                eprintln!("task: {e}");
                unsafe { libc::_exit(e.exit_code()) };
            }
            ForkResult::Parent { child } => {
                drop(out_w);
                let mut out = String::new();
                File::from(out_r).read_to_string(&mut out).unwrap();
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
                outputs.push(out);
            }
        }
    }
    assert_eq!(outputs[0], "task0 65534 from-image\nonly-in-image\n");
    assert_eq!(outputs[1], "task1 65534 from-image\nonly-in-image\n");

    kill(holder, Signal::SIGKILL).unwrap();
    waitpid(holder, None).unwrap();
    drop(ns); // last reference to the namespace: mounts and loop device go
    drop(staging);
    fx.assert_no_leaks(&before);
}
