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
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::container::env::{is_valid_name, DEFAULT_PATH};
use crate::container::identity;
use crate::container::mount::rootfs::ContainerSpec;
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
/// exported variables on the original stdout.
const SCRIPT: &str = r#"exec 3>&1 1>&2
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
export -p >&3
"#;

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
/// from a single-threaded process. The scripts run in a child that first
/// drops to `spec.identity` exactly as the command will (`no_new_privs`,
/// no capabilities), so image code never runs with more rights than the
/// command; they start from an environment holding only `PATH` (the
/// default), `HOME`, `USER` and `LOGNAME`, and must finish within
/// [`TIMEOUT`]. A failing script is one error line.
///
/// With `app`, the scripts see `SINGULARITY_APPNAME` (and
/// `APPTAINER_APPNAME`) naming it, as under Apptainer, so the image's
/// `95-apps.sh` adds the app's environment; an app the image lacks is a
/// usage error naming the apps it has.
pub fn evaluate(spec: &ContainerSpec, app: Option<&AppName>) -> Result<Vec<(String, String)>> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| Error::system(format!("evaluating the image's environment: pipe: {e}")))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // SAFETY: the caller is single-threaded (documented above); the child
    // runs `child_main`, which execs or leaves with `_exit`.
    let child = match unsafe { nix::unistd::fork() } {
        Err(e) => {
            return Err(Error::system(format!(
                "evaluating the image's environment: fork: {e}"
            )))
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(out_r);
            drop(err_r);
            child_main(spec, app, out_w, err_w)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
    };
    // Also from this side, so the group exists whichever runs first.
    let _ = nix::unistd::setpgid(child, child);
    drop(out_w);
    drop(err_w);
    let (stdout, stderr) = (std::fs::File::from(out_r), std::fs::File::from(err_r));
    let read = read_until_closed(stdout, stderr, Instant::now() + TIMEOUT);
    // Done or out of time: nothing the scripts started may stay.
    let group = nix::unistd::Pid::from_raw(-child.as_raw());
    let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    let status = crate::process::wait_child(child);
    let (out, err) = read?;
    let status = status?;
    if status != 0 {
        let last_line = String::from_utf8_lossy(&err)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string());
        if status == APP_REFUSED && app.is_some() {
            if let Some(line) = last_line.as_ref().filter(|l| l.starts_with("SCIF app ")) {
                return Err(Error::usage(line.clone()));
            }
        }
        let last = last_line.map(|l| format!(": {l}")).unwrap_or_default();
        return Err(Error::image(format!(
            "the image's environment scripts ({ENV_DIR}) failed (exit status {status}){last}"
        )));
    }
    Ok(parse_export_p(&String::from_utf8_lossy(&out))
        .into_iter()
        .filter(|(name, _)| !SHELL_OWNED.contains(&name.as_str()) && !name.starts_with("__"))
        .collect())
}

/// The evaluating child: its own process group, standard streams on the
/// pipes, the privilege drop, then the image's `/bin/sh` over the scripts
/// or, in an image without one, [`subset`]. Never returns.
fn child_main(spec: &ContainerSpec, app: Option<&AppName>, out: OwnedFd, err: OwnedFd) -> ! {
    let exit_with = |status: i32, what: &str| -> ! {
        eprintln!("{what}");
        // SAFETY: leaves the forked child at once, running nothing of the
        // parent's (atexit handlers, destructors).
        unsafe { libc::_exit(status) }
    };
    let fail = |what: &str| -> ! { exit_with(126, what) };
    let zero = nix::unistd::Pid::from_raw(0);
    if nix::unistd::setpgid(zero, zero).is_err() {
        fail("cannot start a process group");
    }
    // Ends with whoever waits for it (kept across the privilege drop).
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        fail("cannot set the parent-death signal");
    }
    let null = std::fs::File::open("/dev/null").map(OwnedFd::from);
    let streams = null
        .map_err(drop)
        .and_then(|null| nix::unistd::dup2(null.as_raw_fd(), 0).map_err(drop))
        .and_then(|_| nix::unistd::dup2(out.as_raw_fd(), 1).map_err(drop))
        .and_then(|_| nix::unistd::dup2(err.as_raw_fd(), 2).map_err(drop));
    if streams.is_err() || nix::unistd::chdir("/").is_err() {
        fail("cannot set up the evaluation's streams");
    }
    let dropped = if spec.unprivileged {
        identity::drop_user_namespace_capabilities()
    } else {
        spec.identity.drop_privileges()
    };
    if let Err(e) = dropped {
        fail(&e.message());
    }
    // Looked up as the user, like everything the scripts see.
    if let Some(app) = app {
        if !app.root().is_dir() {
            exit_with(APP_REFUSED, &scif::missing_line(app));
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
        exit_with(
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
            CString::new(SCRIPT).unwrap_or_default(),
        ];
        let e = nix::unistd::execve(c"/bin/sh", &argv, &envp).unwrap_err();
        fail(&format!("executing /bin/sh: {}", e.desc()));
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
            let _ = std::io::stdout().flush();
            // SAFETY: as in `fail`.
            unsafe { libc::_exit(0) }
        }
        Err(why) => fail(&format!("the image has no /bin/sh and {why}")),
    }
}

/// Reads both pipes to their end by `deadline`; stdout whole (up to
/// [`MAX_OUTPUT`]), stderr's last 4 KiB (for the error line).
fn read_until_closed(
    mut stdout: impl Read + AsFd,
    mut stderr: impl Read + AsFd,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (mut out_open, mut err_open) = (true, true);
    let mut chunk = [0u8; 8192];
    while out_open || err_open {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::image(format!(
                "the image's environment scripts ({ENV_DIR}) did not finish within {} s",
                TIMEOUT.as_secs()
            )));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = Vec::new();
        if out_open {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
        }
        if err_open {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::system(format!("reading the shell's output: {e}"))),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut i = 0;
        if out_open {
            if ready[i] {
                match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) if out.len() + n > MAX_OUTPUT => {
                        return Err(Error::image(format!(
                            "the image's environment scripts ({ENV_DIR}) export more than {} KiB",
                            MAX_OUTPUT >> 10
                        )))
                    }
                    Ok(n) => out.extend_from_slice(&chunk[..n]),
                }
            }
            i += 1;
        }
        if err_open && ready[i] {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    err.extend_from_slice(&chunk[..n]);
                    if err.len() > 4096 {
                        err.drain(..err.len() - 4096);
                    }
                }
            }
        }
    }
    Ok((out, err))
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
