//! The environment an Apptainer or SingularityCE image defines for itself.
//!
//! Those tools never write the SIF environment object; an image keeps its
//! environment as shell scripts inside its root, `/.singularity.d/env/*.sh`
//! (`10-docker2singularity.sh`: the Docker `ENV` lines; `90-environment.sh`:
//! the definition file's `%environment`; `99-base.sh`: LD_LIBRARY_PATH...),
//! sourced in name order at run time, where they may use `$PATH`,
//! `${VAR:-default}` and conditionals. So they are evaluated, not read:
//! [`evaluate`] runs the image's own `/bin/sh` over them, as the user who
//! will run the command, inside the finished container, bounded in time,
//! and returns every variable they leave exported.
//!
//! Apptainer clears the host environment before sourcing (only `HOME` and
//! `PWD` survive), so the result does not depend on the caller's
//! environment: under Slurm one evaluation per node serves every task.
//! What sifrun does with the result, and where it differs from Apptainer:
//! docs/apptainer.md.

use std::ffi::CString;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::container::env::{is_valid_name, DEFAULT_PATH};
use crate::container::mount::rootfs::ContainerSpec;
use crate::container::user_child::{self, Bounds};
use crate::error::{Error, Result};

pub mod scif;
mod subset;

use scif::AppName;

/// Where the scripts live in an image.
pub const ENV_DIR: &str = "/.singularity.d/env";

/// How long the scripts may take before the run fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The most output (`export -p`) read back: an image environment is a few
/// KiB; a script printing without end must not make us buffer it.
const MAX_OUTPUT: usize = 1 << 20;

/// Sources the scripts the way Apptainer's action script does (name
/// order; after the Docker file, the default PATH entries it lacks are
/// appended), with the scripts' own output sent to stderr, then prints the
/// exported variables on the original stdout (fd 3: see [`script`]).
const SOURCE_SCRIPTS: &str = r#"exec 3>&1 1>&2
__sifrun_fixpath() {
    for __d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
        case ":$PATH:" in *":$__d:"*) ;; *) PATH="${PATH:+$PATH:}$__d" ;; esac
    done
    export PATH
}
for __f in /.singularity.d/env/*.sh; do
    [ -f "$__f" ] || continue
    case "$__f" in
    */90-environment.sh) [ -n "${PATH+x}" ] || __sifrun_fixpath; . "$__f" ;;
    */10-docker2singularity.sh|*/10-docker.sh) . "$__f"; __sifrun_fixpath ;;
    *) . "$__f" ;;
    esac
done
unset __f __d
"#;

/// [`SOURCE_SCRIPTS`], then the exported variables printed on fd 3: by the
/// shell itself, or (`entrypoint`) by a command the image's entrypoint is
/// given to run once it has done its work.
fn script(entrypoint: bool) -> String {
    if entrypoint {
        // No quotes or `$` in the command: Apptainer's runscript passes
        // its arguments through `eval` inside double quotes.
        format!(
            "{SOURCE_SCRIPTS}exec {RUNSCRIPT} /bin/sh -c 'export -p >&3; echo {ENTRYPOINT_DONE} >&3'\n"
        )
    } else {
        format!("{SOURCE_SCRIPTS}export -p >&3\n")
    }
}

/// Where Apptainer keeps an image's runscript. For an image built from an
/// OCI (Docker) image it runs the image's ENTRYPOINT (and CMD) with its
/// arguments, and the ENTRYPOINT of a well-behaved image ends with
/// `exec "$@"`.
pub const RUNSCRIPT: &str = "/.singularity.d/runscript";

/// What marks a runscript Apptainer wrote for an OCI image.
const OCI_MARK: &str = "OCI_ENTRYPOINT=";

/// How long an entrypoint may take (`--container-entrypoint`): they set up
/// the environment, sometimes a few files, and then run their arguments.
pub const ENTRYPOINT_TIMEOUT: Duration = Duration::from_secs(60);

/// The last line our command prints once the entrypoint ran it: without
/// it, the entrypoint ended on its own and never ran its arguments.
const ENTRYPOINT_DONE: &str = "__sifrun_entrypoint_ran_its_arguments";

/// Exit status of the evaluating child when `--container-entrypoint` cannot
/// be honoured; its last stderr line says why.
const ENTRYPOINT_REFUSED: i32 = 4;

/// Exit status of the evaluating child when the app asked for cannot be
/// used (not in the image, or no shell to source it with); its last
/// stderr line then says why, starting with `SCIF app `.
const APP_REFUSED: i32 = 3;

/// Variables that belong to the shell or the run, never to the image.
const SHELL_OWNED: &[&str] = &[
    "PWD", "OLDPWD", "SHLVL", "_", "HOME", "UID", "EUID", "GID", "PPID", "IFS", "OPTIND",
];

/// True when the container (the calling process's root) has Apptainer
/// environment scripts. Called inside the container.
pub fn has_scripts() -> bool {
    Path::new(ENV_DIR).is_dir()
}

/// Evaluates the image's environment scripts and returns the variables
/// they export, in the order the shell lists them.
///
/// Must be called inside the finished container (after `pivot_root`),
/// from a single-threaded process. The scripts run in a
/// [`user_child`] that drops to `spec.identity` exactly as the command
/// will (`no_new_privs`, no capabilities), so image code never runs with
/// more rights than the command; they start from an environment holding
/// only `PATH` (the default), `HOME`, `USER` and `LOGNAME`, and must
/// finish within [`TIMEOUT`]. A failing script is one error line.
///
/// With `app`, the scripts see `SINGULARITY_APPNAME` (and
/// `APPTAINER_APPNAME`) naming it, as under Apptainer, so the image's
/// `95-apps.sh` adds the app's environment; an app the image lacks is a
/// usage error naming the apps it has.
///
/// With `entrypoint` (`--container-entrypoint`, pyxis' semantics), the
/// image's OCI entrypoint then runs, through Apptainer's runscript, as the
/// same user in the same child, given a command that prints the
/// environment it was started with: what the entrypoint exported is what
/// the tasks get. It runs once per container (not per task) and its output
/// is not shown; it has [`ENTRYPOINT_TIMEOUT`]. Images whose runscript is
/// not Apptainer's OCI one are refused: a hand-written runscript is the
/// application itself, not something to run before it.
pub fn evaluate(
    spec: &ContainerSpec,
    app: Option<&AppName>,
    entrypoint: bool,
) -> Result<Vec<(String, String)>> {
    let what = if entrypoint {
        format!("the image's entrypoint ({RUNSCRIPT})")
    } else {
        format!("the image's environment scripts ({ENV_DIR})")
    };
    let bounds = Bounds {
        timeout: if entrypoint {
            ENTRYPOINT_TIMEOUT
        } else {
            TIMEOUT
        },
        max_stdout: MAX_OUTPUT,
    };
    let done = user_child::run(spec, Path::new("/"), &what, bounds, &[], || {
        evaluate_as_user(spec, app, entrypoint)
    })?;
    if done.status != 0 {
        let last_line = done.last_error_line();
        if done.status == APP_REFUSED && app.is_some() {
            if let Some(line) = last_line.as_ref().filter(|l| l.starts_with("SCIF app ")) {
                return Err(Error::usage(line.clone()));
            }
        }
        if done.status == ENTRYPOINT_REFUSED && entrypoint {
            if let Some(line) = last_line
                .as_ref()
                .filter(|l| l.starts_with("--container-entrypoint"))
            {
                return Err(Error::usage(line.clone()));
            }
        }
        let last = last_line.map(|l| format!(": {l}")).unwrap_or_default();
        return Err(Error::image(format!(
            "{what} failed (exit status {}){last}",
            done.status
        )));
    }
    let text = String::from_utf8_lossy(&done.stdout);
    if entrypoint && text.lines().last() != Some(ENTRYPOINT_DONE) {
        return Err(Error::image(format!(
            "--container-entrypoint: the image's entrypoint ended without running the command it was given (an entrypoint for this option must end with exec \"$@\"){}",
            done.last_error_line()
                .map(|l| format!("; its last line: {l}"))
                .unwrap_or_default()
        )));
    }
    Ok(parse_export_p(&text)
        .into_iter()
        .filter(|(name, _)| !SHELL_OWNED.contains(&name.as_str()) && !name.starts_with("__"))
        .collect())
}

/// In the [`user_child`], already the user: the app check, then the
/// image's `/bin/sh` over the scripts or, in an image without one,
/// [`subset`]. Returns the exit status (or execs).
fn evaluate_as_user(spec: &ContainerSpec, app: Option<&AppName>, entrypoint: bool) -> i32 {
    let refuse = |status: i32, why: &str| {
        eprintln!("{why}");
        status
    };
    if entrypoint {
        if let Err(why) = check_oci_runscript() {
            return refuse(
                ENTRYPOINT_REFUSED,
                &format!("--container-entrypoint: {why}"),
            );
        }
    }
    if let Some(app) = app {
        if !app.root().is_dir() {
            return refuse(APP_REFUSED, &scif::missing_line(app));
        }
    }
    let mut base = vec![
        ("PATH".to_string(), DEFAULT_PATH.to_string()),
        ("HOME".to_string(), spec.identity.home.display().to_string()),
        ("USER".to_string(), spec.identity.name.clone()),
        ("LOGNAME".to_string(), spec.identity.name.clone()),
    ];
    if let Some(app) = app {
        for name in ["SINGULARITY_APPNAME", "APPTAINER_APPNAME"] {
            base.push((name.to_string(), app.to_string()));
        }
    }
    let has_shell = Path::new("/bin/sh").exists();
    if let (Some(app), false) = (app, has_shell) {
        return refuse(
            APP_REFUSED,
            &format!("SCIF app {app}: the image has no /bin/sh, which its apps need"),
        );
    }
    if has_shell {
        let envp: Vec<CString> = base
            .iter()
            .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
            .collect();
        let argv = [
            c"sh".to_owned(),
            c"-c".to_owned(),
            CString::new(script(entrypoint)).unwrap_or_default(),
        ];
        let e = nix::unistd::execve(c"/bin/sh", &argv, &envp).unwrap_err();
        return refuse(126, &format!("executing /bin/sh: {}", e.desc()));
    }
    match subset::evaluate_dir(Path::new(ENV_DIR), &base) {
        Ok(vars) => {
            let mut text = String::new();
            for (name, value) in vars {
                text.push_str(&format!(
                    "export {name}='{}'\n",
                    value.replace('\'', "'\\''")
                ));
            }
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        Err(why) => refuse(126, &format!("the image has no /bin/sh and {why}")),
    }
}

/// Inside the container, as the user: the image has Apptainer's runscript
/// for an OCI image (and a shell to run it with).
fn check_oci_runscript() -> std::result::Result<(), String> {
    use std::io::Read;
    let file = std::fs::File::open(RUNSCRIPT)
        .map_err(|e| format!("the image has no runscript ({RUNSCRIPT}: {e})"))?;
    let mut text = String::new();
    let _ = file.take(MAX_OUTPUT as u64).read_to_string(&mut text);
    if !text.lines().any(|l| l.trim_start().starts_with(OCI_MARK)) {
        return Err(format!(
            "{RUNSCRIPT} is not an OCI entrypoint (the image was not built from a container image): run it as the command instead (srun --container=IMAGE {RUNSCRIPT} ARGS)"
        ));
    }
    if !Path::new("/bin/sh").exists() {
        return Err("the image has no /bin/sh to run its runscript with".into());
    }
    Ok(())
}

/// Parses what a POSIX shell's `export -p` prints: one `export NAME=WORD`
/// (dash, busybox: `'single-quoted'`; bash in POSIX mode: `"double-quoted"`;
/// bash otherwise: `declare -x NAME="..."`) per variable, a value may span
/// lines inside its quotes. Variables exported without a value are left out.
pub fn parse_export_p(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\n']);
        if rest.is_empty() {
            break;
        }
        let line_start = rest;
        rest = rest
            .strip_prefix("export ")
            .or_else(|| rest.strip_prefix("declare -x "))
            .or_else(|| rest.strip_prefix("declare -rx "))
            .unwrap_or(rest);
        let name_end = name_len(rest);
        let name = &rest[..name_end];
        rest = &rest[name_end..];
        let Some(after_eq) = rest.strip_prefix('=') else {
            // No value (`export NAME`), or a line we do not understand:
            // skip to the next line.
            rest = skip_line(rest);
            if rest.len() == line_start.len() {
                rest = skip_line(&rest[1.min(rest.len())..]);
            }
            continue;
        };
        let (value, after) = shell_word(after_eq);
        rest = after;
        if is_valid_name(name) {
            vars.push((name.to_string(), value));
        }
    }
    vars
}

/// Length of the variable-name characters (`_`, letters, digits) that
/// start `s`.
fn name_len(s: &str) -> usize {
    s.find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(s.len())
}

fn skip_line(s: &str) -> &str {
    match s.find('\n') {
        Some(i) => &s[i + 1..],
        None => "",
    }
}

/// One shell word (quotes removed) up to an unquoted blank or newline.
fn shell_word(s: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => return (value, &s[i..]),
            '\'' => {
                for (_, c) in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    value.push(c);
                }
            }
            '"' => {
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.peek() {
                            Some(&(_, n @ ('$' | '`' | '"' | '\\' | '\n'))) => {
                                chars.next();
                                if n != '\n' {
                                    value.push(n);
                                }
                            }
                            _ => value.push('\\'),
                        },
                        c => value.push(c),
                    }
                }
            }
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    value.push(n);
                }
            }
            '$' if s[i..].starts_with("$'") => {
                // bash's ANSI-C quoting ($'a\nb'): the common escapes.
                chars.next();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\'' => break,
                        '\\' => match chars.next().map(|(_, n)| n) {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some('r') => value.push('\r'),
                            Some(n) => value.push(n),
                            None => {}
                        },
                        c => value.push(c),
                    }
                }
            }
            c => value.push(c),
        }
    }
    (value, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn dash_and_busybox_single_quotes() {
        let text = "export A='plain'\nexport B='it'\"'\"'s'\nexport C='two\nlines'\nexport D\nexport E=''\n";
        assert_eq!(
            parse_export_p(text),
            vars(&[
                ("A", "plain"),
                ("B", "it's"),
                ("C", "two\nlines"),
                ("E", "")
            ])
        );
        assert_eq!(
            parse_export_p("export B='it'\\''s'\n"),
            vars(&[("B", "it's")])
        );
    }

    #[test]
    fn bash_double_quotes_and_declare() {
        let text = "declare -x A=\"a \\\"q\\\" \\$x \\\\ b\"\nexport B=\"/opt/bin:/usr/bin\"\ndeclare -x C\ndeclare -x D=$'x\\ny'\n";
        assert_eq!(
            parse_export_p(text),
            vars(&[
                ("A", "a \"q\" $x \\ b"),
                ("B", "/opt/bin:/usr/bin"),
                ("D", "x\ny")
            ])
        );
    }

    #[test]
    fn hostile_output_gives_no_panic_and_no_bad_names() {
        for text in [
            "export",
            "export =x\n",
            "export 1A=x\nexport B=ok\n",
            "garbage line\nexport B=ok\n",
            "export A='unterminated",
            "export A=\"unterminated\\",
            "\u{0}\u{1}export",
        ] {
            for (name, _) in parse_export_p(text) {
                assert!(is_valid_name(&name), "{text:?} gave {name:?}");
            }
        }
        assert_eq!(
            parse_export_p("garbage line\nexport B=ok\n"),
            vars(&[("B", "ok")])
        );
    }
}
