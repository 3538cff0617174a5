//! Programs run as root while a container is set up: the hooks of the CDI
//! devices a step uses, and the site's own hooks (see
//! [`crate::node::site_hooks`]). Both are named only by root-owned files
//! (the admin's); the job chooses at most which of the allowed ones run.
//!
//! They run once the container's root is complete (image, binds, devices)
//! and before it is made read-only, in the container's mount namespace,
//! so what they mount or create there is the container's and goes with it.
//! Each runs with a clean environment, its output to the slurmd log, and
//! a time limit, after which its whole process group is killed; a hook
//! that fails or overruns fails the step in one line.
//!
//! * A CDI hook gets what OCI runtimes give a `createContainer` hook: the
//!   container's state on its standard input (`bundle`, `pid`), where the
//!   bundle's `config.json` gives the root's path.
//! * A site hook gets the root's path in `SIFRUN_ROOTFS` and may write
//!   `NAME=VALUE` lines to the file named by `SIFRUN_ENV_FILE` (every task
//!   gets those variables) and `HOST_PATH:CONTAINER_PATH[:ro]` lines to the
//!   file named by `SIFRUN_MOUNTS_FILE`: sifrun binds those after the
//!   hooks, resolving each container path inside the root and never
//!   creating a mount point in a host directory, as for any bind. A hook
//!   that only adds host files should declare them so instead of writing
//!   through `SIFRUN_ROOTFS`, where the image's symlinks are the image
//!   author's.

use crate::container::mount::rootfs::BindMount;
use crate::container::mount::{mount_setattr, MountAttr, MOUNT_ATTR_RDONLY};
use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `PATH` a hook starts with.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest variable or mounts file a site hook may leave.
const MAX_HOOK_FILE: u64 = 64 << 10;
/// Output of a hook kept for the log.
const MAX_OUTPUT: u64 = 16 << 10;

/// How a hook learns about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// OCI: the state on standard input.
    Oci,
    /// sifrun's: `SIFRUN_ROOTFS` and `SIFRUN_ENV_FILE`.
    Site,
}

/// One program to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootHook {
    /// For messages: `CDI hook /usr/bin/x (nvidia.com/gpu)`, `site hook mpi`.
    pub label: String,
    pub path: PathBuf,
    /// The whole argument vector, `argv[0]` first.
    pub args: Vec<String>,
    /// `NAME=VALUE` entries, besides [`HOOK_PATH`] and the protocol's own.
    pub env: Vec<String>,
    pub timeout: Duration,
    pub protocol: Protocol,
}

/// What the site's hooks left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HookResults {
    /// Variables for the tasks, in order.
    pub env: Vec<(String, String)>,
    /// Binds to make in the root (`SIFRUN_MOUNTS_FILE`), in order.
    pub binds: Vec<BindMount>,
}

/// Runs `hooks` in order for the container whose root is `root`, with
/// `scratch` (an empty root-only directory outside the root) for their
/// files.
pub fn run_all(hooks: &[RootHook], root: &Path, scratch: &Path) -> Result<HookResults> {
    let mut results = HookResults::default();
    if hooks.is_empty() {
        return Ok(results);
    }
    std::fs::create_dir_all(scratch)
        .map_err(|e| Error::system(format!("creating {}: {e}", scratch.display())))?;
    for (i, hook) in hooks.iter().enumerate() {
        let mut env = hook.env.clone();
        let mut stdin = Vec::new();
        let env_file = scratch.join(format!("env-{i}"));
        let mounts_file = scratch.join(format!("mounts-{i}"));
        match hook.protocol {
            Protocol::Oci => stdin = oci_state(root, scratch)?,
            Protocol::Site => {
                for file in [&env_file, &mounts_file] {
                    std::fs::write(file, b"")
                        .map_err(|e| Error::system(format!("creating {}: {e}", file.display())))?;
                }
                env.push(format!("SIFRUN_ROOTFS={}", root.display()));
                env.push(format!("SIFRUN_ENV_FILE={}", env_file.display()));
                env.push(format!("SIFRUN_MOUNTS_FILE={}", mounts_file.display()));
            }
        }
        // Temporary files go with the scratch files, where a confined hook
        // may write.
        env.push(format!("TMPDIR={}", scratch.display()));
        run_one(
            hook,
            &env,
            &stdin,
            &scratch.join(format!("output-{i}")),
            Some(&[root, scratch]),
        )?;
        if hook.protocol == Protocol::Site {
            results
                .env
                .extend(read_env_file(&env_file).map_err(|why| {
                    Error::usage(format!("{}: its variables: {why}", hook.label))
                })?);
            results.binds.extend(
                read_mounts_file(&mounts_file)
                    .map_err(|why| Error::usage(format!("{}: its mounts: {why}", hook.label)))?,
            );
        }
    }
    Ok(results)
}

/// `HOST_PATH:CONTAINER_PATH[:ro]` lines (blank lines and `#` comments
/// skipped); each host path must exist.
fn read_mounts_file(path: &Path) -> std::result::Result<Vec<BindMount>, String> {
    let mut binds = Vec::new();
    for line in read_small_file(path)?.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let bind =
            BindMount::parse(line.trim()).map_err(|e| format!("{line:?}: {}", e.message()))?;
        if bind.destination == Path::new("/") {
            return Err(format!("{line:?}: not over the container's /"));
        }
        binds.push(bind);
    }
    Ok(binds)
}

/// Runs `hook` with `env`, `stdin` on its standard input and its output
/// in `output`; an error if it fails or outlives its limit. With
/// `writable`, the hook runs where only the mounts holding those paths can
/// be written (see `confine_writes`).
pub fn run_one(
    hook: &RootHook,
    env: &[String],
    stdin: &[u8],
    output: &Path,
    writable: Option<&[&Path]>,
) -> Result<()> {
    let out = std::fs::File::create(output)
        .map_err(|e| Error::system(format!("creating {}: {e}", output.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::system(format!("{}: {e}", output.display())))?;
    let mut command = Command::new(&hook.path);
    command
        .arg0(hook.args.first().map(String::as_str).unwrap_or("hook"))
        .args(hook.args.iter().skip(1))
        .env_clear()
        .env("PATH", HOOK_PATH)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        // Its own group: a timeout kills what it started too.
        .process_group(0);
    for kv in env {
        if let Some((k, v)) = kv.split_once('=') {
            command.env(k, v);
        }
    }
    if let Some(paths) = writable.filter(|_| confinement_available()) {
        // mount_setattr takes mount points: those holding the paths.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::system(format!("reading /proc/self/mountinfo: {e}")))?;
        let paths: Vec<std::ffi::CString> = paths
            .iter()
            .map(|p| {
                let point = mount_point_of(&mounts, p)
                    .ok_or_else(|| Error::system(format!("no mount holds {}", p.display())))?;
                std::ffi::CString::new(point.into_os_string().into_encoded_bytes())
                    .map_err(|_| Error::system("a mount point holds a NUL byte"))
            })
            .collect::<Result<_>>()?;
        // SAFETY: the closure runs in the forked child before exec and
        // only makes system calls on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || confine_writes(&paths));
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::usage(format!("{}: cannot start: {e}", hook.label)))?;
    if let Some(mut input) = child.stdin.take() {
        // A hook that does not read its input must not block us.
        let _ = input.write_all(stdin);
    }
    let deadline = Instant::now() + hook.timeout;
    let status = crate::process::wait_until(&mut child, deadline, Duration::from_millis(5))
        .map_err(|e| Error::system(format!("{}: waiting: {e}", hook.label)))?;
    let last_line = || {
        let text = read_capped(output, MAX_OUTPUT);
        if !text.trim().is_empty() {
            // The whole output to the slurmd log; the last line to the user.
            eprintln!("{} said:\n{}", hook.label, text.trim_end());
        }
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default()
    };
    match status {
        None => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            Err(Error::usage(format!(
                "{} did not finish within {} s{}",
                hook.label,
                hook.timeout.as_secs(),
                last_line()
            )))
        }
        Some(s) if s.success() => {
            last_line();
            Ok(())
        }
        Some(s) => Err(Error::usage(format!(
            "{} failed ({}){}",
            hook.label,
            match s.code() {
                Some(code) => format!("exit {code}"),
                None => "killed by a signal".to_string(),
            },
            last_line()
        ))),
    }
}

/// The mount point (of `mountinfo`, this process's) that holds `path`:
/// the longest one above its real path.
fn mount_point_of(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|point| real.starts_with(point))
        .max_by_key(|point| point.as_os_str().len())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether this kernel has `mount_setattr(2)` (Linux 5.12) and we are
/// root: hooks are confined only then. Said once in the log otherwise.
fn confinement_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return false;
        }
        let none = MountAttr {
            attr_set: 0,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // An invalid flag: EINVAL where the call exists, ENOSYS where not.
        let r = mount_setattr(c"/", -1, &none);
        let exists =
            !(r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS));
        if !exists {
            eprintln!("hooks run unconfined: this kernel has no mount_setattr (Linux 5.12)");
        }
        exists
    })
}

/// In the hook's child, before it runs: a mount namespace of its own (a
/// copy of the container's) where every mount is read-only except those
/// holding `writable` (the container's root, the hooks' scratch files).
/// A hook that follows an image's symlink out of the root then meets a
/// read-only host, never writes on it; what it mounts stays its own (the
/// binds it needs are declared in `SIFRUN_MOUNTS_FILE`).
fn confine_writes(writable: &[std::ffi::CString]) -> std::io::Result<()> {
    let check = |r: libc::c_long| {
        if r == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain system calls on valid C strings.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }.into())?;
    check(
        // SAFETY: a plain system call on a valid C string and null pointers
        // the call takes for "none".
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        }
        .into(),
    )?;
    let read_only = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    check(mount_setattr(c"/", libc::AT_RECURSIVE, &read_only))?;
    let writable_again = MountAttr {
        attr_set: 0,
        attr_clr: MOUNT_ATTR_RDONLY,
        propagation: 0,
        userns_fd: 0,
    };
    for path in writable {
        check(mount_setattr(path, 0, &writable_again))?;
    }
    Ok(())
}

/// The OCI state a `createContainer` hook reads, with a bundle whose
/// `config.json` names the root (written once into `scratch`).
fn oci_state(root: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let bundle = scratch.join("bundle");
    if !bundle.exists() {
        std::fs::create_dir(&bundle)
            .map_err(|e| Error::system(format!("creating {}: {e}", bundle.display())))?;
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": { "path": root, "readonly": false },
            "process": { "cwd": "/", "args": [] },
            "mounts": [],
        });
        std::fs::write(bundle.join("config.json"), config.to_string())
            .map_err(|e| Error::system(format!("writing {}/config.json: {e}", bundle.display())))?;
    }
    let state = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": format!("sifrun-{}", std::process::id()),
        "status": "creating",
        "pid": std::process::id(),
        "bundle": bundle,
    });
    Ok(state.to_string().into_bytes())
}

/// A file a hook wrote, as long as it is still a small regular file.
fn read_small_file(path: &Path) -> std::result::Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("the file is no longer a regular file".into());
    }
    if meta.len() > MAX_HOOK_FILE {
        return Err(format!("more than {} KiB", MAX_HOOK_FILE >> 10));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// `NAME=VALUE` lines (blank lines and `#` comments skipped).
fn read_env_file(path: &Path) -> std::result::Result<Vec<(String, String)>, String> {
    let text = read_small_file(path)?;
    let mut vars = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if crate::container::env::is_valid_name(k) => {
                vars.push((k.to_string(), v.to_string()))
            }
            _ => return Err(format!("line {line:?} is not NAME=VALUE")),
        }
    }
    Ok(vars)
}

fn read_capped(path: &Path, max: u64) -> String {
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(max).read_to_string(&mut text);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(label: &str, script: &str, timeout: Duration, protocol: Protocol) -> RootHook {
        RootHook {
            label: label.to_string(),
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["GIVEN=yes".into()],
            timeout,
            protocol,
        }
    }

    #[test]
    fn site_hooks_see_the_root_and_leave_variables_in_order() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let hooks = [
            sh(
                "site hook a",
                r##"touch "$SIFRUN_ROOTFS/from-a"; echo "A=$GIVEN" >> "$SIFRUN_ENV_FILE"; echo "# note" >> "$SIFRUN_ENV_FILE""##,
                Duration::from_secs(10),
                Protocol::Site,
            ),
            sh(
                "site hook b",
                r#"test -e "$SIFRUN_ROOTFS/from-a" && echo "B=$PATH" > "$SIFRUN_ENV_FILE""#,
                Duration::from_secs(10),
                Protocol::Site,
            ),
        ];
        let results = run_all(&hooks, root.path(), &scratch.path().join("s")).unwrap();
        assert_eq!(
            results.env,
            [("A".into(), "yes".into()), ("B".into(), HOOK_PATH.into())]
        );
    }

    #[test]
    fn cdi_hooks_get_the_oci_state_and_a_bundle_naming_the_root() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let script = r#"state=$(cat); bundle=$(echo "$state" | sed 's/.*"bundle":"\([^"]*\)".*/\1/'); grep -q "\"path\":\"$SIFRUN_EXPECT\"" "$bundle/config.json" && touch "$SIFRUN_EXPECT/hooked""#;
        let mut hook = sh("CDI hook", script, Duration::from_secs(10), Protocol::Oci);
        hook.env
            .push(format!("SIFRUN_EXPECT={}", root.path().display()));
        run_all(&[hook], root.path(), scratch.path()).unwrap();
        assert!(root.path().join("hooked").exists());
    }

    #[test]
    fn a_failing_or_hanging_hook_is_one_line_and_leaves_nothing_running() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let failing = sh(
            "site hook bad",
            "echo starting; echo 'no MPI found' >&2; exit 3",
            Duration::from_secs(10),
            Protocol::Site,
        );
        let e = run_all(&[failing], root.path(), scratch.path()).unwrap_err();
        assert_eq!(e.message(), "site hook bad failed (exit 3): no MPI found");

        let marker = root.path().join("pid");
        let hanging = sh(
            "site hook slow",
            &format!("sleep 600 & echo $! > {}; wait", marker.display()),
            Duration::from_millis(300),
            Protocol::Site,
        );
        let started = Instant::now();
        let e = run_all(&[hanging], root.path(), scratch.path()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            e.message()
                .starts_with("site hook slow did not finish within 0 s"),
            "{}",
            e.message()
        );
        // The sleep it started was killed with it (its process group).
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z");
        assert!(!alive, "the hook's child {pid} is still running");
    }

    #[test]
    fn a_site_hooks_variable_file_must_hold_only_assignments() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let bad = sh(
            "site hook junk",
            r#"echo "not an assignment" > "$SIFRUN_ENV_FILE""#,
            Duration::from_secs(10),
            Protocol::Site,
        );
        let e = run_all(&[bad], root.path(), scratch.path()).unwrap_err();
        assert!(
            e.message().contains("site hook junk: its variables: line"),
            "{}",
            e.message()
        );
        let swapped = sh(
            "site hook link",
            r#"rm "$SIFRUN_ENV_FILE"; ln -s /etc/shadow "$SIFRUN_ENV_FILE""#,
            Duration::from_secs(10),
            Protocol::Site,
        );
        let e = run_all(&[swapped], root.path(), scratch.path()).unwrap_err();
        assert!(
            e.message().contains("no longer a regular file"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn site_hooks_declare_binds_that_sifrun_makes() {
        let root = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let hook = sh(
            "site hook mpi",
            r#"printf '/usr/lib:/opt/host-lib:ro\n# comment\n/etc/hostname:/etc/host-name\n' > "$SIFRUN_MOUNTS_FILE""#,
            Duration::from_secs(10),
            Protocol::Site,
        );
        let results = run_all(&[hook], root.path(), scratch.path()).unwrap();
        assert_eq!(results.binds.len(), 2);
        assert_eq!(results.binds[0].destination, PathBuf::from("/opt/host-lib"));
        assert!(results.binds[0].read_only && !results.binds[1].read_only);
        for (body, words) in [
            ("/no/such/file:/x", "does not exist"),
            ("/usr:/", "not over the container's /"),
            ("/usr:relative", "absolute"),
        ] {
            let hook = sh(
                "site hook bad",
                &format!("echo '{body}' > \"$SIFRUN_MOUNTS_FILE\""),
                Duration::from_secs(10),
                Protocol::Site,
            );
            let e = run_all(&[hook], root.path(), scratch.path()).unwrap_err();
            assert!(
                e.message().starts_with("site hook bad: its mounts: ")
                    && e.message().contains(words),
                "{} (wanted {words})",
                e.message()
            );
        }
    }

    #[test]
    fn the_mount_holding_a_path_is_the_longest_mount_point_above_it() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 0:5 / /run rw - tmpfs tmpfs rw\n\
                    31 30 0:6 / /run/a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(
            unescape_mountinfo("/run/a\\040b"),
            PathBuf::from("/run/a b")
        );
        assert_eq!(mount_point_of(info, Path::new("/run")), Some("/run".into()));
        assert_eq!(mount_point_of(info, Path::new("/usr")), Some("/".into()));
        assert_eq!(mount_point_of(info, Path::new("/nonexistent")), None);
    }
}
