//! What runs in the container: a command (`sifrun exec`), an interactive
//! shell (`sifrun shell`) or the image's runscript (`sifrun run`).
//!
//! Whether the image has a shell or a runscript is only known once its
//! files are visible, so [`Target::argv`] runs inside the container root,
//! just before the command is resolved and executed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sifrun_runtime::container::image_env::scif::AppName;
use sifrun_runtime::error::{Error, ErrorKind, Result};

/// Where Apptainer and Singularity images keep their runscript (written at
/// build time from the definition file's `%runscript` section).
pub const RUNSCRIPT: &str = "/.singularity.d/runscript";

/// Shell used when `$SHELL` is not in the image.
pub const DEFAULT_SHELL: &str = "/bin/sh";

/// What to run in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A command and its arguments, resolved with the container PATH.
    Command(Vec<String>),
    /// An interactive shell: `preferred` (the caller's `$SHELL`) if the image
    /// has it, else [`DEFAULT_SHELL`].
    Shell {
        /// Absolute path of the preferred shell.
        preferred: Option<PathBuf>,
    },
    /// The image's runscript with these arguments.
    Runscript {
        /// Arguments passed to the runscript.
        args: Vec<String>,
        /// The `%runscript` section of the image's definition file, run with
        /// `/bin/sh` when the image has no [`RUNSCRIPT`] file.
        deffile_script: Option<String>,
    },
}

impl Default for Target {
    fn default() -> Self {
        Target::Command(Vec::new())
    }
}

impl Target {
    /// The argument vector to execute. Must run inside the container root.
    /// With a SCIF `app`, a runscript target is the app's runscript.
    pub fn argv(&self, app: Option<&AppName>) -> Result<Vec<String>> {
        if let (Target::Runscript { args, .. }, Some(app)) = (self, app) {
            return app_runscript(app, args);
        }
        match self {
            Target::Command(cmd) if cmd.is_empty() => Err(Error::usage("no command given")),
            Target::Command(cmd) => Ok(cmd.clone()),
            Target::Shell { preferred } => {
                let shell = preferred
                    .as_deref()
                    .filter(|p| p.is_absolute() && is_executable(p))
                    .unwrap_or(Path::new(DEFAULT_SHELL));
                Ok(vec![shell.display().to_string()])
            }
            Target::Runscript {
                args,
                deffile_script,
            } => {
                let mut argv = if Path::new(RUNSCRIPT).exists() {
                    vec![RUNSCRIPT.to_string()]
                } else if let Some(script) = deffile_script {
                    // `sh -c SCRIPT runscript ARGS...`: the script sees ARGS as "$@".
                    vec![
                        DEFAULT_SHELL.to_string(),
                        "-c".to_string(),
                        script.clone(),
                        "runscript".to_string(),
                    ]
                } else {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        format!(
                            "the image has no runscript ({RUNSCRIPT} or a %runscript section in its definition file); use sifrun exec IMAGE COMMAND"
                        ),
                    ));
                };
                argv.extend(args.iter().cloned());
                Ok(argv)
            }
        }
    }
}

/// `run --app NAME ARGS`: the app's runscript with ARGS (Apptainer's
/// `run` action does the same).
fn app_runscript(app: &AppName, args: &[String]) -> Result<Vec<String>> {
    let runscript = app.runscript();
    if !is_executable(&runscript) {
        return Err(Error::usage(format!(
            "--app {app}: the app has no runscript ({}); use sifrun exec --app {app} IMAGE COMMAND",
            runscript.display()
        )));
    }
    let mut argv = vec![runscript.display().to_string()];
    argv.extend(args.iter().cloned());
    Ok(argv)
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The body of the `%runscript` section of a definition file, if it has a
/// non-empty one. A section runs until the next line starting with `%`.
pub fn deffile_runscript(deffile: &[u8]) -> Option<String> {
    deffile_section(deffile, "%runscript")
}

/// The body of section `name` (`%runscript`, `%environment`, `%help`...)
/// of a definition file, up to the next section; `None` when absent or
/// empty.
pub fn deffile_section(deffile: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(deffile);
    let mut body: Option<Vec<&str>> = None;
    for line in text.lines() {
        let header = line.trim_end();
        if header.starts_with('%') {
            if body.is_some() {
                break;
            }
            if header.split_whitespace().next() == Some(name) {
                body = Some(Vec::new());
            }
            continue;
        }
        if let Some(lines) = body.as_mut() {
            lines.push(line);
        }
    }
    let script = body?.join("\n");
    if script.trim().is_empty() {
        None
    } else {
        Some(script.trim_matches('\n').to_string() + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runscript_section_is_extracted() {
        let def = b"Bootstrap: docker\nFrom: alpine\n\n%post\n  apk add x\n%runscript\n  echo hello \"$@\"\n  exit 3\n\n%labels\n  a b\n";
        assert_eq!(
            deffile_runscript(def).unwrap(),
            "  echo hello \"$@\"\n  exit 3\n"
        );
        assert_eq!(deffile_runscript(b"%post\n echo\n"), None);
        assert_eq!(deffile_runscript(b"%runscript\n\n%post\nx\n"), None);
    }

    #[test]
    fn empty_command_is_a_usage_error() {
        assert_eq!(
            Target::Command(Vec::new())
                .argv(None)
                .unwrap_err()
                .message(),
            "no command given"
        );
    }

    #[test]
    fn shell_falls_back_when_preferred_is_missing() {
        let t = Target::Shell {
            preferred: Some("/no/such/shell".into()),
        };
        assert_eq!(t.argv(None).unwrap(), vec![DEFAULT_SHELL.to_string()]);
    }
}
