//! `sifrun exec` end to end: real loop devices, mounts and namespaces.
//! Needs root; every test also checks that nothing leaked on the host.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Runs `body` between two host snapshots and asserts they match.
fn leak_checked(body: impl FnOnce(&Fixture)) {
    let fx = Fixture::new();
    let before = fx.snapshot();
    body(&fx);
    fx.assert_no_leaks(&before);
}

#[test]
fn echo_output() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["echo", "hello", "world"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "hello world\n");
    });
}

#[test]
fn exit_code_propagates() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7));
    });
}

#[test]
fn signal_death_is_128_plus_n() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["sh", "-c", "kill -TERM $$"]);
        assert_eq!(out.status.code(), Some(143));
    });
}

#[test]
fn missing_command_is_127() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["no-such-command"]);
        assert_eq!(out.status.code(), Some(127));
        assert_one_line_error(&out, "command not found in image: no-such-command");
    });
}

#[test]
fn non_executable_command_is_126() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["/opt/not-executable"]);
        assert_eq!(out.status.code(), Some(126));
        assert_one_line_error(&out, "not executable");
    });
}

#[test]
fn command_resolved_inside_container() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        // Only exists in the image; found via the container PATH.
        let out = fx.exec(&["--env", "PATH=/opt:/bin"], &["only-in-image.sh"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "only-in-image\n");
        let out = fx.exec(&[], &["/opt/only-in-image.sh"]);
        assert_eq!(stdout(&out), "only-in-image\n");
    });
}

#[test]
fn user_drop_no_new_privs_and_no_caps() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(
            &["--user", "nobody"],
            &["sh", "-c", "id -u; id -un; cat /proc/self/status"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("65534"));
        assert_eq!(lines.next(), Some("nobody"));
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
        assert!(text.contains("CapPrm:\t0000000000000000"), "{text}");
        // By UID too.
        let out = fx.exec(&["--user", "65534"], &["id", "-u"]);
        assert_eq!(stdout(&out), "65534\n");
    });
}

/// An admin running a user's image as root gives it no root powers: no
/// capability in any set (so no `nsenter` into the host, no raw devices,
/// no reading /etc/shadow), device nodes made in /dev do not work, and
/// root's home is read-only.
#[test]
fn root_runs_the_image_without_capabilities() {
    if skip_unless_root() {
        return;
    }
    let probe = Path::new("/root/sifrun-cap-probe");
    let _ = fs::remove_file(probe);
    // This test process has the host's root; its /proc entry is visible
    // in the container (same PID namespace).
    let script = format!(
        "id -u; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status; \
         mknod /dev/sifrun-sda b 8 0 2>/dev/null && echo MKNOD-OK; \
         touch /root/sifrun-cap-probe 2>/dev/null && echo HOME-WRITABLE; \
         cat /proc/{}/root/etc/shadow >/dev/null 2>&1 && echo HOST-READ; true",
        std::process::id()
    );
    leak_checked(|fx| {
        let out = fx.exec(&[], &["sh", "-c", &script]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.starts_with("0\n"), "{text}");
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert!(
                text.contains(&format!("{set}:\t0000000000000000")),
                "{text}"
            );
        }
        for escape in ["MKNOD-OK", "HOME-WRITABLE", "HOST-READ"] {
            assert!(!text.contains(escape), "{text}");
        }
    });
    assert!(!probe.exists());
}

#[test]
fn unknown_user_is_an_error() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&["--user", "no-such-user-xyz"], &["true"]);
        assert_one_line_error(&out, "unknown user: no-such-user-xyz");
    });
}

#[test]
fn root_is_read_only_unless_writable_tmpfs() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let image_before = fs::read(&fx.image).unwrap();
        let out = fx.exec(&[], &["touch", "/new-file"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{}",
            stderr(&out)
        );

        let out = fx.exec(
            &["--writable-tmpfs"],
            &[
                "sh",
                "-c",
                "touch /new-file && echo data > /opt/only-in-image.sh && cat /opt/only-in-image.sh",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "data\n");

        // Changes vanished with the container; the image is untouched.
        let out = fx.exec(
            &[],
            &["sh", "-c", "test -e /new-file || cat /opt/only-in-image.sh"],
        );
        assert_eq!(stdout(&out), "#!/bin/sh\necho only-in-image\n");
        assert_eq!(fs::read(&fx.image).unwrap(), image_before);
    });
}

#[test]
fn bind_rw_and_ro() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let data = fx.path("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("in.txt"), "from host\n").unwrap();
        let rw = format!("{}:/data", data.display());
        let out = fx.exec(
            &["--bind", &rw],
            &[
                "sh",
                "-c",
                "cat /data/in.txt && echo written > /data/out.txt",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "from host\n");
        assert_eq!(
            fs::read_to_string(data.join("out.txt")).unwrap(),
            "written\n"
        );

        let ro = format!("{}:/deep/ro/data:ro", data.display());
        let out = fx.exec(
            &["--bind", &ro],
            &[
                "sh",
                "-c",
                "cat /deep/ro/data/in.txt && touch /deep/ro/data/nope",
            ],
        );
        assert!(!out.status.success());
        assert_eq!(stdout(&out), "from host\n");
        assert!(!data.join("nope").exists());

        // A single file.
        let file = format!("{}:/etc/host-file:ro", data.join("in.txt").display());
        let out = fx.exec(&["--bind", &file], &["cat", "/etc/host-file"]);
        assert_eq!(stdout(&out), "from host\n");
    });
}

#[test]
fn binds_over_identity_files_never_let_root_write_host_files() {
    // Root writes the container's /etc/passwd and /etc/group. A bind onto
    // those paths (or onto /etc) must only shadow them, never become the
    // target of that write.
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let victim = fx.path("victim-passwd");
        fs::write(&victim, "original\n").unwrap();
        let etc = fx.path("victim-etc");
        fs::create_dir(&etc).unwrap();
        fs::write(etc.join("group"), "original\n").unwrap();
        let file_bind = format!("{}:/etc/passwd", victim.display());
        let dir_bind = format!("{}:/etc", etc.display());
        for bind in [&file_bind, &dir_bind] {
            let out = fx.exec(&["--user", "nobody", "--bind", bind], &["true"]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "original\n");
        assert_eq!(fs::read_to_string(etc.join("group")).unwrap(), "original\n");
        assert!(!etc.join("passwd").exists());
    });
}

#[test]
fn read_only_bind_has_no_writable_submounts() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        // /dev on the host has submounts (pts, shm, ...); bound read-only,
        // none of them may show up writable inside.
        let out = fx.exec(
            &["--bind", "/dev:/hostdev:ro"],
            &["sh", "-c", "grep ' /hostdev' /proc/self/mountinfo"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
        assert!(!lines.is_empty());
        // The bind is recursive (claim: binds never show what host mounts
        // hide), and every submount is read-only, nosuid and nodev too.
        for line in &lines {
            let opts = line.split(' ').nth(5).unwrap();
            assert!(opts.starts_with("ro"), "{lines:?}");
            assert!(
                opts.contains("nosuid") && opts.contains("nodev"),
                "{lines:?}"
            );
        }
    });
}

/// A bind of a host directory that something is mounted under shows what
/// is mounted there, never the files that mount hides on the host (as the
/// kernel rules for unprivileged users), and `:ro` holds for the submount.
#[test]
fn binds_never_show_what_host_mounts_hide() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let src = fx.path("src");
        let sub = src.join("sub");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("hidden"), "HIDDEN-CONTENT").unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&sub)
            .status()
            .unwrap();
        assert!(status.success());
        fs::write(sub.join("visible"), "VISIBLE-CONTENT").unwrap();
        let out = fx.exec(
            &["--bind", &format!("{}:/d:ro", src.display())],
            &[
                "sh",
                "-c",
                "cat /d/sub/visible; cat /d/sub/hidden 2>/dev/null; touch /d/sub/new 2>/dev/null && echo WRITABLE; true",
            ],
        );
        let _ = Command::new("umount").arg(&sub).status();
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("VISIBLE-CONTENT"), "{text}");
        assert!(!text.contains("HIDDEN-CONTENT"), "{text}");
        assert!(!text.contains("WRITABLE"), "{text}");
    });
}

#[test]
fn bind_missing_source_is_an_error() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let spec = format!("{}:/x", fx.path("missing").display());
        let out = fx.exec(&["--bind", &spec], &["true"]);
        assert_one_line_error(&out, "does not exist");
        let out = fx.exec(&["--bind", "/tmp:/x:bogus"], &["true"]);
        assert_one_line_error(&out, "invalid bind option");
    });
}

#[test]
fn environment_layers() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = sifrun_command()
            .args(["exec", "--env", "FOO=cli", "--env", "NEW=1"])
            .arg(&fx.image)
            .arg("env")
            .env("LD_PRELOAD", "/nonexistent.so")
            .env("LD_LIBRARY_PATH", "/host/lib")
            .env("HOST_VAR", "kept")
            .env("PATH", "/host/only")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let env = stdout(&out);
        let has = |l: &str| env.lines().any(|x| x == l);
        assert!(has("FOO=cli"), "{env}");
        assert!(has("IMG_VAR=from-image"), "{env}");
        assert!(has("NEW=1"), "{env}");
        assert!(has("HOST_VAR=kept"), "{env}");
        assert!(
            has("HOME=/root") && has("USER=root") && has("LOGNAME=root"),
            "{env}"
        );
        assert!(
            has("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "{env}"
        );
        // The host's loader variables never pass (the image's own
        // LD_LIBRARY_PATH, /.singularity.d/libs from the Apptainer scripts
        // sifrun build writes, does).
        assert!(
            !env.contains("LD_PRELOAD") && !env.contains("/host/lib"),
            "{env}"
        );
    });
}

#[test]
fn workdir_option_and_default() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&["--pwd", "/opt"], &["pwd"]);
        assert_eq!(stdout(&out), "/opt\n");
        let out = fx.exec(&["--pwd", "/does/not/exist"], &["pwd"]);
        assert_one_line_error(&out, "cannot enter workdir /does/not/exist");
        // Default: the current directory (bound from the host).
        let out = sifrun_command()
            .arg("exec")
            .arg(&fx.image)
            .arg("pwd")
            .current_dir(fx.dir.path())
            .output()
            .unwrap();
        assert_eq!(stdout(&out).trim(), fx.dir.path().to_str().unwrap());
    });
}

#[test]
fn mounts_are_nosuid_nodev() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&[], &["cat", "/proc/self/mountinfo"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let info = stdout(&out);
        for line in info.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (mount_point, opts) = (fields[4], fields[5]);
            assert!(opts.contains("nosuid"), "{line}");
            let is_dev = mount_point == "/dev"
                || mount_point.starts_with("/dev/") && mount_point != "/dev/shm";
            if !is_dev {
                assert!(opts.contains("nodev"), "{line}");
            }
            if mount_point == "/" {
                assert!(opts.split(',').any(|o| o == "ro"), "{line}");
            }
        }
        // The host's mounts are not visible.
        assert!(!info.contains(" /run/sifrun"), "{info}");
    });
}

#[test]
fn passwd_and_group_contain_user() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(&["--user", "nobody"], &["sh", "-c", "id; cat /etc/passwd"]);
        let text = stdout(&out);
        assert!(text.contains("uid=65534(nobody)"), "{text}");
        assert!(text.contains("root:x:0:0:root:/root:/bin/sh"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("nobody:x:65534:")),
            "{text}"
        );
    });
}

#[test]
fn minimal_dev() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = fx.exec(
            &[],
            &["sh", "-c", "ls /dev; echo x > /dev/null && test -c /dev/urandom && test -d /dev/pts && test -L /dev/fd"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let listing = stdout(&out);
        assert!(
            listing.contains("null") && listing.contains("shm"),
            "{listing}"
        );
        assert!(
            !listing.contains("vda") && !listing.contains("loop"),
            "{listing}"
        );
    });
}

#[test]
fn image_errors_are_one_line() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let missing = fx.path("missing.sif");
        let out = run_sifrun(&["exec", missing.to_str().unwrap(), "true"]);
        assert_one_line_error(&out, "image not found");
        assert_eq!(out.status.code(), Some(255));

        let junk = fx.path("junk.sif");
        fs::write(&junk, vec![0x42u8; 4096]).unwrap();
        let out = run_sifrun(&["exec", junk.to_str().unwrap(), "true"]);
        assert_one_line_error(&out, "not a valid SIF image");

        // Each image holds the objects given; its one error line names why
        // it does not run (the last: a "squashfs" partition that is not
        // one, so the mount fails in the child and the loop device must
        // still go away).
        let partition = |fs_type| {
            vec![
                sif::ObjectInput::new(sif::DataType::Partition, vec![0u8; 8192]).partition(
                    fs_type,
                    sif::PartType::PrimSys,
                    sif::Arch::host(),
                ),
            ]
        };
        let cases = [
            (
                "no-partition",
                vec![sif::ObjectInput::new(
                    sif::DataType::Generic,
                    b"hello".to_vec(),
                )],
                "no primary partition",
            ),
            (
                "ext3",
                partition(sif::FsType::Ext3),
                "unsupported filesystem type ext3",
            ),
            // Formats other tools make that sifrun does not run: named.
            (
                "oci",
                vec![
                    sif::ObjectInput::new(sif::DataType::OciBlob, b"{}".to_vec()),
                    sif::ObjectInput::new(sif::DataType::OciRootIndex, b"{}".to_vec()),
                ],
                "an OCI-SIF image",
            ),
            (
                "gocryptfs",
                partition(sif::FsType::GocryptfsSquashfs),
                "encrypted with gocryptfs",
            ),
            (
                "bogus-squashfs",
                partition(sif::FsType::Squashfs),
                "mounting squashfs",
            ),
        ];
        for (name, objects, needle) in cases {
            let image = fx.path(&format!("{name}.sif"));
            sif::create(&image, objects, &sif::CreateOptions::default()).unwrap();
            let out = run_sifrun(&["exec", image.to_str().unwrap(), "true"]);
            assert_one_line_error(&out, needle);
            assert_eq!(out.status.code(), Some(255), "{name}");
        }
    });
}

#[test]
fn not_root_takes_the_unprivileged_path() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sifrun(),
                "exec",
            ])
            .arg(&fx.image)
            .arg("true")
            .output();
        let Ok(out) = out else {
            eprintln!("skipped part: setpriv not available");
            return;
        };
        if out.status.code() == Some(127) || stderr(&out).contains("Permission denied") {
            eprintln!("skipped part: sifrun binary not reachable as nobody");
            return;
        }
        // Without root sifrun runs in a user namespace through FUSE
        // (tests/unprivileged.rs); where the host forbids that, it says
        // why in one line.
        if !out.status.success() {
            assert_one_line_error(&out, "");
        }
    });
}

/// Starts `sifrun exec IMAGE sleep 100` and returns (sifrun child, sleep pid).
fn start_sleep(fx: &Fixture) -> (std::process::Child, i32) {
    let child = sifrun_command()
        .arg("exec")
        .arg(&fx.image)
        .args(["sleep", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sleep = wait_for_child(child.id(), "sleep");
    (child, sleep)
}

#[test]
fn sigterm_of_command() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let (child, sleep) = start_sleep(fx);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleep), nix::sys::signal::SIGTERM)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(143));
    });
}

#[test]
fn sigkill_of_command() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let (child, sleep) = start_sleep(fx);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleep), nix::sys::signal::SIGKILL)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(137));
    });
}

#[test]
fn sigterm_to_sifrun_is_forwarded() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let (child, _sleep) = start_sleep(fx);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        // sifrun itself survived and reported the command's signal death.
        assert_eq!(out.status.code(), Some(143), "{:?}", out.status);
    });
}

#[test]
fn sigkill_of_sifrun_takes_the_command_along() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let (mut child, sleep) = start_sleep(fx);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9));
        // The parent-death signal kills the container command too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::metadata(format!("/proc/{sleep}")).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep survived sifrun"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
}

#[test]
fn parallel_runs_do_not_interfere() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        let children: Vec<_> = (0..6)
            .map(|i| {
                sifrun_command()
                    .arg("exec")
                    .arg(&fx.image)
                    .args(["sh", "-c", &format!("echo {i}")])
                    .output()
            })
            .collect();
        for (i, out) in children.into_iter().enumerate() {
            let out = out.unwrap();
            assert_eq!(stdout(&out), format!("{i}\n"), "{}", stderr(&out));
        }
    });
}

/// `sifrun exec --verify` as root while the owner of the image's directory
/// swaps a signed and an unsigned image in and out under its name (hard
/// link + rename, every millisecond): only verified bytes ever run.
#[test]
fn verify_runs_only_the_verified_bytes_while_the_file_is_swapped() {
    if skip_unless_root() {
        return;
    }
    let Some(corpus) = corpus() else { return };
    let key = corpus.join("keys/private.asc");
    let fx = Fixture::new();
    let swap = fx.path("swap");
    fs::create_dir(&swap).unwrap();
    for (name, marker) in [("good", "good-bytes"), ("evil", "evil-bytes")] {
        let root = fx.path(&format!("root-{name}"));
        make_rootfs(&root);
        fs::write(root.join("marker"), marker).unwrap();
        let sif = swap.join(format!("{name}.sif"));
        let out = run_sifrun(&["build", root.to_str().unwrap(), "-o", sif.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        // Owned by another user: the one who can change them.
        std::os::unix::fs::chown(&sif, Some(65534), Some(65534)).unwrap();
    }
    let good = swap.join("good.sif");
    let out = run_sifrun(&[
        "sign",
        "--key",
        key.to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let app = swap.join("app.sif");
    fs::copy(&good, &app).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, swap, app) = (stop.clone(), swap.clone(), app.clone());
        std::thread::spawn(move || {
            let tmp = swap.join("next.sif");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in ["evil.sif", "good.sif"] {
                    let _ = fs::remove_file(&tmp);
                    fs::hard_link(swap.join(name), &tmp).unwrap();
                    fs::rename(&tmp, &app).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        })
    };
    let mut outputs = String::new();
    for _ in 0..30 {
        let out = run_sifrun(&[
            "exec",
            "--verify",
            "--keyring",
            key.to_str().unwrap(),
            app.to_str().unwrap(),
            "cat",
            "/marker",
        ]);
        outputs.push_str(&stdout(&out));
        outputs.push('\n');
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        !outputs.contains("evil-bytes"),
        "unverified bytes ran:\n{outputs}"
    );
    assert!(outputs.contains("good-bytes"), "{outputs}");
}

/// `--cdi-dir` and `--device`: a CDI device's mount, variable and
/// createContainer hook, from a root-owned spec directory.
#[test]
fn cdi_device_edits_and_hook() {
    if skip_unless_root() {
        return;
    }
    leak_checked(|fx| {
        // Under /run: every directory above a spec must be root's and
        // closed to others, which /tmp is not.
        let dir = tempfile::Builder::new()
            .prefix("sifrun-exec-cdi")
            .tempdir_in("/run")
            .unwrap();
        let d = dir.path();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["cdi", "data", "bin"] {
            fs::create_dir(d.join(sub)).unwrap();
        }
        fs::write(d.join("data/x"), "device data\n").unwrap();
        let hook = d.join("bin/hook");
        fs::write(
            &hook,
            "#!/bin/sh\nroot=$(sed 's/.*\"bundle\":\"\\([^\"]*\\)\".*/\\1/' | xargs -I{} sed 's/.*\"path\":\"\\([^\"]*\\)\".*/\\1/' {}/config.json)\necho \"$1\" > \"$root/hooked\"\n",
        )
        .unwrap();
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(
            d.join("cdi/thing.yaml"),
            format!(
                "cdiVersion: 0.6.0\nkind: sifrun.test/thing\ndevices:\n- name: a\n  containerEdits:\n    env: [THING=a]\n    mounts:\n    - hostPath: {0}/data\n      containerPath: /opt/thing\n      options: [ro]\n    hooks:\n    - hookName: createContainer\n      path: {0}/bin/hook\n      args: [hook, from-the-hook]\n",
                d.display()
            ),
        )
        .unwrap();
        let cdi_dir = d.join("cdi");
        let cdi = cdi_dir.to_str().unwrap();
        let out = fx.exec(
            &[
                "--contain",
                "--cdi-dir",
                cdi,
                "--device",
                "sifrun.test/thing=a",
            ],
            &["sh", "-c", "cat /opt/thing/x /hooked; echo THING=$THING"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "device data\nfrom-the-hook\nTHING=a\n");
        let out = fx.exec(
            &["--cdi-dir", cdi, "--device", "sifrun.test/thing=b"],
            &["true"],
        );
        assert_one_line_error(
            &out,
            "no CDI device sifrun.test/thing=b in this node's specs",
        );
    });
}
