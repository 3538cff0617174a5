//! Images laid out as Apptainer builds them: the environment lives in
//! `/.singularity.d/env/*.sh` inside the SquashFS, not in a SIF object.
//! `sifrun exec` evaluates those scripts as the user who runs the command,
//! bounded in time, and composes the environment by Apptainer's rules
//! (docs/apptainer.md). Needs root (the scripts' run as another user is
//! part of what is checked).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// What Apptainer writes for a Docker image (`ENV` lines), for a
/// definition file's `%environment`, and its own `99-base.sh`.
const DOCKER_ENV: &str = "#!/bin/sh\nexport PATH=\"/opt/app/bin:/usr/local/bin:/usr/bin\"\nexport LD_LIBRARY_PATH=\"/opt/app/lib\"\nexport MYVAR=\"docker value\"\n";
const DEF_ENV: &str = "#!/bin/sh\nexport GREETING=\"hello ${MYVAR:-none}\"\nif [ -n \"$HOME\" ]; then export HAS_HOME=yes; fi\necho noise on stdout\nexport EVAL_UID=$(id -u)\nexport EVAL_CAPS=$(grep CapEff /proc/self/status | tr -d ' \\t')\n";
const BASE_ENV: &str = "#!/bin/sh\nif [ -z \"${LD_LIBRARY_PATH:-}\" ]; then\n    LD_LIBRARY_PATH=\"/.singularity.d/libs\"\nelse\n    LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH:/.singularity.d/libs\"\nfi\nexport LD_LIBRARY_PATH\n";

/// A busybox image with Apptainer's env scripts, plus `extra` scripts.
fn apptainer_image(fx: &Fixture, name: &str, extra: &[(&str, &str)]) -> String {
    let root = fx.path(&format!("{name}-root"));
    make_rootfs(&root);
    let env = root.join(".singularity.d/env");
    fs::create_dir_all(&env).unwrap();
    fs::create_dir_all(root.join("opt/app/bin")).unwrap();
    let scripts = [
        ("10-docker2singularity.sh", DOCKER_ENV),
        ("90-environment.sh", DEF_ENV),
        ("99-base.sh", BASE_ENV),
    ];
    for (file, text) in scripts.iter().chain(extra) {
        fs::write(env.join(file), text).unwrap();
    }
    let prog = root.join("opt/app/bin/myprog");
    fs::write(&prog, "#!/bin/sh\necho \"myprog: $GREETING\"\n").unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    build_image(fx, &root, name)
}

fn exec_env(image: &str, opts: &[&str], vars: &[(&str, &str)]) -> Output {
    sifrun_command()
        .arg("exec")
        .args(opts)
        .arg(image)
        .arg("env")
        .env("PATH", "/host/bin:/usr/bin:/bin")
        .env("LD_LIBRARY_PATH", "/host/lib")
        .env("MYVAR", "host value")
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

fn value<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn the_image_scripts_define_the_environment() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let image = apptainer_image(&fx, "app", &[]);

    let out = run_sifrun(&["exec", &image, "myprog"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "myprog: hello docker value\n",
        "found on the image's PATH"
    );

    let out = exec_env(&image, &[], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    // Image over host; the Docker PATH completed with the default entries.
    assert_eq!(value(&env, "MYVAR"), Some("docker value"));
    assert_eq!(
        value(&env, "PATH"),
        Some("/opt/app/bin:/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin:/sbin:/bin")
    );
    assert_eq!(
        value(&env, "LD_LIBRARY_PATH"),
        Some("/opt/app/lib:/.singularity.d/libs")
    );
    assert_eq!(value(&env, "GREETING"), Some("hello docker value"));
    assert_eq!(value(&env, "HAS_HOME"), Some("yes"));
    assert_eq!(value(&env, "APPTAINER_CONTAINER"), Some(image.as_str()));
    assert_eq!(value(&env, "APPTAINER_NAME"), Some("app.sif"));
    // The scripts' own output does not end up in the environment or on
    // the command's stdout.
    assert!(!env.contains("noise on stdout"));
    fx.assert_no_leaks(&before);
}

#[test]
fn apptainerenv_and_env_options_win_over_the_image() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let image = apptainer_image(&fx, "app", &[]);
    let out = exec_env(
        &image,
        &["--env", "GREETING=from --env"],
        &[
            ("APPTAINERENV_MYVAR", "requested"),
            ("SINGULARITYENV_MYVAR", "legacy, loses"),
            ("APPTAINERENV_GREETING", "overridden by --env"),
            ("APPTAINERENV_PREPEND_PATH", "/first"),
            ("SINGULARITYENV_APPEND_PATH", "/last"),
            ("APPTAINER_BIND", "/not-passed"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    assert_eq!(value(&env, "MYVAR"), Some("requested"));
    assert_eq!(value(&env, "GREETING"), Some("from --env"));
    assert!(value(&env, "PATH")
        .unwrap()
        .starts_with("/first:/opt/app/bin:"));
    assert!(value(&env, "PATH").unwrap().ends_with(":/last"));
    for gone in [
        "APPTAINER_BIND",
        "APPTAINERENV_MYVAR",
        "SINGULARITYENV_APPEND_PATH",
    ] {
        assert_eq!(value(&env, gone), None, "{gone} passed in");
    }
}

#[test]
fn the_scripts_run_as_the_user_without_privileges() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let image = apptainer_image(&fx, "app", &[]);
    let out = exec_env(&image, &["--user", "nobody"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    assert_eq!(value(&env, "EVAL_UID"), Some("65534"));
    // Root too is run without any capability (as the command is).
    let out = exec_env(&image, &[], &[]);
    let env = stdout(&out);
    assert_eq!(value(&env, "EVAL_UID"), Some("0"));
    assert_eq!(value(&env, "EVAL_CAPS"), Some("CapEff:0000000000000000"));
}

#[test]
fn a_failing_or_hanging_script_is_one_clear_line() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let failing = apptainer_image(
        &fx,
        "failing",
        &[("50-broken.sh", "echo 'something is wrong' >&2\nexit 3\n")],
    );
    let out = run_sifrun(&["exec", &failing, "true"]);
    assert_one_line_error(&out, "environment scripts (/.singularity.d/env) failed");
    assert!(
        stderr(&out).contains("something is wrong"),
        "{}",
        stderr(&out)
    );

    let hanging = apptainer_image(&fx, "hanging", &[("50-hang.sh", "sleep 600\n")]);
    let started = Instant::now();
    let out = run_sifrun(&["exec", &hanging, "true"]);
    assert_one_line_error(&out, "did not finish within 10 s");
    assert!(started.elapsed() < Duration::from_secs(30));
    fx.assert_no_leaks(&before);
}

#[test]
fn host_name_resolution_files_and_var_tmp_are_bound() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let image = apptainer_image(&fx, "app", &[]);
    let marker = Path::new("/var/tmp").join(format!("sifrun-test-{}", std::process::id()));
    fs::write(&marker, "x").unwrap();
    let out = run_sifrun(&[
        "exec",
        &image,
        "sh",
        "-c",
        &format!("cat /etc/hosts; cat {}", marker.display()),
    ]);
    fs::remove_file(&marker).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts = fs::read_to_string("/etc/hosts").unwrap();
    assert_eq!(stdout(&out), format!("{hosts}x"));
}

#[test]
fn apptainer_flags_mean_what_they_mean_in_apptainer() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let image = apptainer_image(&fx, "app", &[]);
    let env_file = fx.path("vars.env");
    fs::write(&env_file, "# comment\nexport FROM_FILE=file\nBOTH=file\n").unwrap();
    let data = fx.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "bound").unwrap();
    let home = fx.path("home");
    fs::create_dir_all(&home).unwrap();

    // -e/--cleanenv: no host variable but TERM and the proxies; LANG=C.
    let out = sifrun_command()
        .args(["exec", "-e", &image, "env"])
        .env("KEEP_OUT", "host")
        .env("TERM", "xterm")
        .env("http_proxy", "http://proxy:3128")
        .output()
        .unwrap();
    let env = stdout(&out);
    assert_eq!(value(&env, "KEEP_OUT"), None, "{env}");
    assert_eq!(value(&env, "TERM"), Some("xterm"));
    assert_eq!(value(&env, "http_proxy"), Some("http://proxy:3128"));
    assert_eq!(value(&env, "LANG"), Some("C"));
    assert_eq!(
        value(&env, "MYVAR"),
        Some("docker value"),
        "the image's still apply"
    );

    // --env-file below --env; -B binds; --pwd; -H.
    let b = format!("{}:/data", data.display());
    let h = format!("{}:/home/me", home.display());
    let out = run_sifrun(&[
        "exec",
        "--env-file",
        env_file.to_str().unwrap(),
        "--env",
        "BOTH=cli",
        "-B",
        &b,
        "--pwd",
        "/data",
        "-H",
        &h,
        &image,
        "sh",
        "-c",
        "echo $FROM_FILE $BOTH $(cat f) $(pwd) $HOME; grep -c ' /home/me ' /proc/self/mountinfo",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "file cli bound /data /home/me\n1\n");

    // -c/--contain: empty private /tmp and /var/tmp, no home, no cwd.
    let marker = fx.path("marker");
    fs::write(&marker, "x").unwrap();
    let out = sifrun_command()
        .args([
            "exec",
            "-c",
            &image,
            "sh",
            "-c",
            "ls -A /tmp /var/tmp | wc -w; touch /tmp/w && echo writable; pwd",
        ])
        .current_dir(fx.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "2\nwritable\n/\n",
        "only the two headers, no host files"
    );

    // What a SIF image cannot do here is one clear line.
    assert_one_line_error(&run_sifrun(&["exec", "-w", &image, "true"]), "--writable");
    assert_one_line_error(
        &run_sifrun(&["exec", "--app", "x", &image, "true"]),
        "SCIF apps",
    );
    fx.assert_no_leaks(&before);
}

/// `NAME.sif` in the fixture, built from `root`; its path.
fn build_image(fx: &Fixture, root: &Path, name: &str) -> String {
    let image = fx.path(&format!("{name}.sif"));
    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "build: {}", stderr(&out));
    image.to_str().unwrap().to_string()
}

/// An image without `/bin/sh` (distroless): only a static busybox as
/// `/opt/app/bin/env`, and the scripts Apptainer writes for it.
fn shell_less_image(fx: &Fixture, name: &str, environment: &str) -> String {
    let root = fx.path(&format!("{name}-root"));
    fs::create_dir_all(root.join("opt/app/bin")).unwrap();
    fs::create_dir_all(root.join(".singularity.d/env")).unwrap();
    fs::copy("/bin/busybox", root.join("opt/app/bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("opt/app/bin/env")).unwrap();
    let env = root.join(".singularity.d/env");
    fs::write(
        env.join("10-docker2singularity.sh"),
        "#!/bin/sh\nexport PATH=\"/opt/app/bin\"\nexport GREETING=\"${GREETING:-\"hello \\\\\\\"static\\\\\\\" world\"}\"\n",
    )
    .unwrap();
    fs::write(env.join("90-environment.sh"), environment).unwrap();
    fs::write(env.join("99-base.sh"), BASE_ENV).unwrap();
    build_image(fx, &root, name)
}

#[test]
fn an_image_without_a_shell_still_gets_its_environment() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let before = fx.snapshot();
    let image = shell_less_image(
        &fx,
        "nosh",
        "#!/bin/sh\n# %environment\nexport MODE=static\n",
    );
    let out = run_sifrun(&["exec", &image, "env"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    assert_eq!(
        value(&env, "PATH"),
        Some("/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    assert_eq!(value(&env, "GREETING"), Some("hello \\\"static\\\" world"));
    assert_eq!(value(&env, "MODE"), Some("static"));
    assert_eq!(value(&env, "LD_LIBRARY_PATH"), Some("/.singularity.d/libs"));

    // What needs a shell is named, not guessed.
    let image = shell_less_image(&fx, "nosh-if", "if [ -n \"$X\" ]; then export A=1; fi\n");
    let out = run_sifrun(&["exec", &image, "env"]);
    assert_one_line_error(&out, "90-environment.sh needs one (line 1");
    fx.assert_no_leaks(&before);
}
