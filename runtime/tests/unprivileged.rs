//! Unprivileged `sifrun exec` / `shell` / `run`: user namespace + FUSE.
//!
//! CI runs the test suite as root, so these tests build their fixture
//! images as root and run the sifrun binary as an ordinary user through
//! `runuser` (the user `sifrun-test`, created when missing). As root they
//! also make sure `/dev/fuse` has the kernel's default mode 0666 (some
//! container hosts create it 0600, which forbids FUSE to ordinary users).
//! After every run they check that no FUSE server for the image is left
//! and that nothing got mounted on the host.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

const TEST_USER: &str = "sifrun-test";

/// Host preparation, once per test binary; `None` (after saying why) when
/// the tests cannot run here.
fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Option<Host>> = OnceLock::new();
    HOST.get_or_init(Host::prepare).as_ref()
}

struct Host {
    uid: u32,
    /// The sifrun binary, at a path the test user can execute.
    sifrun: PathBuf,
}

impl Host {
    fn prepare() -> Option<Host> {
        if skip_unless_root() {
            return None;
        }
        if !Path::new("/dev/fuse").exists() {
            eprintln!("skipped: no /dev/fuse on this host");
            return None;
        }
        let mode = fs::metadata("/dev/fuse").unwrap().permissions().mode();
        if mode & 0o666 != 0o666 {
            fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        }
        if !user_exists() {
            let out = Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh", TEST_USER])
                .output()
                .expect("useradd");
            assert!(out.status.success(), "useradd: {}", stderr(&out));
        }
        let uid = nix::unistd::User::from_name(TEST_USER)
            .unwrap()
            .expect("test user")
            .uid
            .as_raw();
        Some(Host {
            uid,
            sifrun: reachable_binary(),
        })
    }
}

fn user_exists() -> bool {
    nix::unistd::User::from_name(TEST_USER)
        .ok()
        .flatten()
        .is_some()
}

/// The binary under test, copied somewhere world-readable when the test
/// user cannot reach the build directory.
fn reachable_binary() -> PathBuf {
    let ok = Command::new("runuser")
        .args(["-u", TEST_USER, "--", "test", "-x", sifrun()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return PathBuf::from(sifrun());
    }
    let dir = std::env::temp_dir().join(format!("sifrun-unpriv-bin-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("sifrun");
    fs::copy(sifrun(), &copy).unwrap();
    copy
}

/// `runuser -u sifrun-test -- [env VARS] sifrun ARGS`, run from `cwd`.
fn as_user(host: &Host, cwd: &Path, vars: &[&str], args: &[&str]) -> Output {
    as_user_cmd(host, cwd, vars, args)
        .stdin(Stdio::null())
        .output()
        .expect("runuser")
}

fn as_user_cmd(host: &Host, cwd: &Path, vars: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", TEST_USER, "--", "env"])
        .args(vars)
        .arg(&host.sifrun)
        .args(args)
        .current_dir(cwd);
    cmd
}

/// `sifrun exec [opts] IMAGE cmd...` as the test user, from the fixture dir.
fn user_exec(host: &Host, fx: &Fixture, opts: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["exec"];
    args.extend_from_slice(opts);
    args.push(fx.image.to_str().unwrap());
    args.extend_from_slice(cmd);
    as_user(host, fx.dir.path(), &[], &args)
}

/// FUSE server processes serving `image`.
fn servers_for(image: &Path) -> Vec<i32> {
    // The server is handed the image as sifrun's open descriptor
    // (`/proc/<pid>/fd/<n>`), so it is recognised by the file it has open.
    use std::os::unix::fs::MetadataExt;
    let want = fs::metadata(image).map(|m| (m.dev(), m.ino())).ok();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let is_server = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| String::from_utf8_lossy(a).contains("squashfuse"));
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let has_image = fds.flatten().any(|fd| {
            fs::metadata(fd.path())
                .map(|m| Some((m.dev(), m.ino())) == want)
                .unwrap_or(false)
        });
        if is_server && has_image {
            pids.push(pid);
        }
    }
    pids
}

/// Host mount table lines of FUSE mounts.
fn host_fuse_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .map(str::to_string)
        .collect()
}

/// Waits until no server for `image` is left (the kernel aborts the FUSE
/// connection when the container's mount namespace goes).
fn assert_no_server_left(image: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers_for(image).is_empty() {
        assert!(
            Instant::now() < deadline,
            "FUSE server left running: {:?}",
            servers_for(image)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fixture the test user can read, run between leak checks.
fn checked(body: impl FnOnce(&Host, &Fixture)) {
    let Some(host) = host() else { return };
    let fx = Fixture::new();
    let fuse_before = host_fuse_mounts();
    let before = fx.snapshot();
    body(host, &fx);
    assert_no_server_left(&fx.image);
    fx.assert_no_leaks(&before);
    assert_eq!(host_fuse_mounts(), fuse_before, "a FUSE mount leaked");
}

#[test]
fn exec_runs_as_the_user_in_a_user_namespace() {
    checked(|host, fx| {
        let out = user_exec(host, fx, &[], &["sh", "-c", "echo hello; id -u; id -un"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), format!("hello\n{}\n{TEST_USER}\n", host.uid));
        // The image's environment object and the image's own files.
        let out = user_exec(
            host,
            fx,
            &[],
            &["sh", "-c", "echo $IMG_VAR; /opt/only-in-image.sh"],
        );
        assert_eq!(
            stdout(&out),
            "from-image\nonly-in-image\n",
            "{}",
            stderr(&out)
        );
    });
}

#[test]
fn exit_statuses_and_signals() {
    checked(|host, fx| {
        let out = user_exec(host, fx, &[], &["sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7));
        let out = user_exec(host, fx, &[], &["sh", "-c", "kill -TERM $$"]);
        assert_eq!(out.status.code(), Some(143));
        let out = user_exec(host, fx, &[], &["sh", "-c", "kill -KILL $$"]);
        assert_eq!(out.status.code(), Some(137));
        let out = user_exec(host, fx, &[], &["no-such-command"]);
        assert_eq!(out.status.code(), Some(127));
        assert_one_line_error(&out, "command not found in image: no-such-command");
        let out = user_exec(host, fx, &[], &["/opt/not-executable"]);
        assert_eq!(out.status.code(), Some(126));
        assert_one_line_error(&out, "not executable");
    });
}

#[test]
fn binds_read_write_and_read_only() {
    checked(|host, fx| {
        let data = fx.path("data");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("in"), "from-host\n").unwrap();
        nix::unistd::chown(&data, Some(host.uid.into()), None).unwrap();
        let rw = format!("{}:/data", data.display());
        let ro = format!("{}:/ro:ro", data.display());
        let out = user_exec(
            host,
            fx,
            &["--bind", &rw, "--bind", &ro],
            &[
                "sh",
                "-c",
                "cat /ro/in; echo out > /data/out; touch /ro/x 2>/dev/null || echo ro-refused",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "from-host\nro-refused\n");
        assert_eq!(fs::read_to_string(data.join("out")).unwrap(), "out\n");
    });
}

#[test]
fn writable_tmpfs_is_private_and_discarded() {
    checked(|host, fx| {
        let out = user_exec(host, fx, &[], &["touch", "/newfile"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("Read-only file system"),
            "{}",
            stderr(&out)
        );
        let out = user_exec(
            host,
            fx,
            &["--writable-tmpfs"],
            &["sh", "-c", "echo x > /newfile && cat /newfile"],
        );
        assert_eq!(stdout(&out), "x\n", "{}", stderr(&out));
        let out = user_exec(host, fx, &["--writable-tmpfs"], &["test", "-e", "/newfile"]);
        assert_eq!(out.status.code(), Some(1), "a write survived the run");
    });
}

#[test]
fn shell_through_a_pty() {
    checked(|host, fx| {
        // script(1) gives the shell a pty; the commands come on its stdin.
        let inner = format!(
            "env SHELL=/bin/no-such-shell {} shell {}",
            host.sifrun.display(),
            fx.image.display()
        );
        let mut child = Command::new("runuser")
            .args(["-u", TEST_USER, "--", "script", "-qec", &inner, "/dev/null"])
            .current_dir(fx.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        use std::io::Write;
        child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"test -t 0 && echo on-a-tty; echo sum=$((6*7)); exit 5\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = stdout(&out);
        assert!(text.contains("on-a-tty"), "{text:?} {}", stderr(&out));
        assert!(text.contains("sum=42"), "{text:?}");
        assert_eq!(out.status.code(), Some(5), "{text:?}");
    });
}

#[test]
fn run_uses_the_runscript_or_says_there_is_none() {
    checked(|host, fx| {
        let out = as_user(
            host,
            fx.dir.path(),
            &[],
            &["run", fx.image.to_str().unwrap()],
        );
        assert_one_line_error(&out, "the image has no runscript");

        // Apptainer's location inside the image.
        let rootfs = fx.path("rootfs");
        fs::create_dir_all(rootfs.join(".singularity.d")).unwrap();
        let script = rootfs.join(".singularity.d/runscript");
        fs::write(&script, "#!/bin/sh\necho runscript \"$@\"\nexit 4\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let with_script = fx.path("with-runscript.sif");
        build(&rootfs, &with_script, &[]);
        let out = as_user(
            host,
            fx.dir.path(),
            &[],
            &["run", with_script.to_str().unwrap(), "a", "-b"],
        );
        assert_eq!(stdout(&out), "runscript a -b\n", "{}", stderr(&out));
        assert_eq!(out.status.code(), Some(4));

        // The %runscript section of the stored definition file.
        fs::remove_file(&script).unwrap();
        let def = fx.path("app.def");
        fs::write(
            &def,
            "Bootstrap: scratch\n%runscript\n  echo from-deffile \"$@\"\n%labels\n  x y\n",
        )
        .unwrap();
        let with_def = fx.path("with-deffile.sif");
        build(&rootfs, &with_def, &["--deffile", def.to_str().unwrap()]);
        let out = as_user(
            host,
            fx.dir.path(),
            &[],
            &["run", with_def.to_str().unwrap(), "z"],
        );
        assert_eq!(stdout(&out), "from-deffile z\n", "{}", stderr(&out));
        assert_no_server_left(&with_script);
        assert_no_server_left(&with_def);
    });
}

fn build(rootfs: &Path, image: &Path, extra: &[&str]) {
    let mut args = vec![
        "build",
        rootfs.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = run_sifrun(&args);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn killed_command_or_sifrun_leaves_no_fuse_server() {
    checked(|host, fx| {
        for kill_sifrun in [false, true] {
            let mut child = as_user_cmd(
                host,
                fx.dir.path(),
                &[],
                &["exec", fx.image.to_str().unwrap(), "sleep", "100"],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
            // runuser → env(exec'd into sifrun) → sleep
            let sifrun_pid = wait_for_sifrun(child.id());
            let sleep = wait_for_child(sifrun_pid as u32, "sleep");
            assert_eq!(servers_for(&fx.image).len(), 1, "one server while running");
            let victim = if kill_sifrun { sifrun_pid } else { sleep };
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(victim),
                nix::sys::signal::SIGKILL,
            )
            .unwrap();
            let status = child.wait().unwrap();
            if !kill_sifrun {
                assert_eq!(status.code(), Some(137));
            }
            assert_no_server_left(&fx.image);
        }
    });
}

/// The sifrun process under `runuser` (pid `runuser_pid`).
fn wait_for_sifrun(runuser_pid: u32) -> i32 {
    wait_for_child(runuser_pid, "sifrun")
}

#[test]
fn same_output_privileged_and_unprivileged() {
    checked(|host, fx| {
        let script = "id; pwd; ls / /dev; cat /etc/passwd /etc/group /opt/only-in-image.sh; \
                      echo $HOME $USER $PATH $IMG_VAR; touch /x 2>/dev/null; echo rootw=$?";
        let unprivileged = user_exec(host, fx, &[], &["sh", "-c", script]);
        assert!(unprivileged.status.success(), "{}", stderr(&unprivileged));
        let privileged = sifrun_command()
            .args(["exec", "--user", TEST_USER])
            .arg(&fx.image)
            .args(["sh", "-c", script])
            .current_dir(fx.dir.path())
            .env("HOME", "/root")
            .output()
            .unwrap();
        assert!(privileged.status.success(), "{}", stderr(&privileged));
        assert_eq!(stdout(&unprivileged), stdout(&privileged));
    });
}

#[test]
fn verify_before_running() {
    checked(|host, fx| {
        let out = user_exec(host, fx, &["--verify"], &["true"]);
        assert_one_line_error(&out, "--verify needs keys");
        let Some(corpus) = corpus() else { return };
        let key = corpus.join("keys/private.asc");
        let key = key.to_str().unwrap();
        // Unsigned: refused, through the flag and through the environment.
        let out = user_exec(host, fx, &["--verify", "--keyring", key], &["true"]);
        assert_one_line_error(&out, "refusing to run: not verified");
        let vars = [
            "SIFRUN_VERIFY=1".to_string(),
            format!("SIFRUN_KEYRING={key}"),
        ];
        let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
        let args = ["exec", fx.image.to_str().unwrap(), "true"];
        let out = as_user(host, fx.dir.path(), &vars, &args);
        assert_one_line_error(&out, "refusing to run: not verified");
        // Signed: runs.
        let out = run_sifrun(&["sign", "--key", key, fx.image.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = as_user(host, fx.dir.path(), &vars, &args);
        assert!(out.status.success(), "{}", stderr(&out));
    });
}

#[test]
fn missing_squashfuse_is_one_clear_line() {
    checked(|host, fx| {
        let args = ["exec", fx.image.to_str().unwrap(), "true"];
        let out = as_user(host, fx.dir.path(), &["PATH=/nonexistent"], &args);
        assert_one_line_error(&out, "squashfuse is not installed");
        let out = as_user(
            host,
            fx.dir.path(),
            &["SIFRUN_SQUASHFUSE=/nonexistent/squashfuse_ll"],
            &args,
        );
        assert_one_line_error(&out, "squashfuse is not installed");
        assert_eq!(out.status.code(), Some(255));
    });
}

/// A FUSE server that dies before serving: the container's setup reads
/// ENOTCONN from the aborted connection, and the error says what happened
/// (recognised by its errno, not by the text of the message).
#[test]
fn a_server_that_dies_during_setup_is_named() {
    checked(|host, fx| {
        let server = fx.dir.path().join("dying-server");
        fs::write(&server, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).unwrap();
        let var = format!("SIFRUN_SQUASHFUSE={}", server.display());
        let args = ["exec", fx.image.to_str().unwrap(), "true"];
        let out = as_user(host, fx.dir.path(), &[var.as_str()], &args);
        assert_one_line_error(
            &out,
            "the FUSE server serving the image exited during setup",
        );
        assert_eq!(out.status.code(), Some(255));
    });
}

#[test]
fn user_option_needs_root() {
    checked(|host, fx| {
        let out = user_exec(host, fx, &["--user", "root"], &["true"]);
        assert_one_line_error(&out, "--user root needs root");
        let out = user_exec(host, fx, &["--user", TEST_USER], &["true"]);
        assert!(out.status.success(), "{}", stderr(&out));
    });
}
