//! The container command's environment, as Apptainer composes it.
//!
//! Precedence, lowest first ([`EnvPlan::build`]):
//! 1. the host environment, without loader variables, PATH, and
//!    Apptainer's own `APPTAINER_*`/`SINGULARITY_*` and
//!    `APPTAINERENV_*`/`SINGULARITYENV_*` variables;
//! 2. the image's: its SIF environment object, then what its
//!    `/.singularity.d/env` scripts export ([`super::image_env`]);
//! 3. the target user's HOME, USER and LOGNAME;
//! 4. `APPTAINERENV_X` (or `SINGULARITYENV_X`) from the host sets `X`;
//!    `..._PREPEND_PATH`, `..._APPEND_PATH` and `..._PATH` edit PATH;
//! 5. `APPTAINER_CONTAINER`, `APPTAINER_NAME` (and the `SINGULARITY_`
//!    pair) name the image, `APPTAINER_APPNAME` the SCIF app;
//! 6. `--env` options;
//! 7. directories the run adds to search paths (the GPU driver's
//!    libraries on LD_LIBRARY_PATH).
//!
//! PATH falls back to [`DEFAULT_PATH`] when nothing sets it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::container::identity::Identity;
use crate::error::{Error, Result};

/// PATH used when neither the image nor `--env` provides one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host variables never passed into the container. The loader variables
/// would make the host's libraries (built for another libc) load into
/// container binaries; the list follows glibc's "unsecure envvars". PATH is
/// dropped because host paths are meaningless inside the image.
const DROPPED: &[&str] = &[
    "PATH",
    "GCONV_PATH",
    "GETCONF_DIR",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "LOCPATH",
    "MALLOC_TRACE",
    "NIS_PATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
];

/// An ordered environment where a later `set` replaces an earlier value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(OsString, OsString)>,
}

impl Environment {
    /// Sets `name` to `value`, replacing a previous value.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) {
        let name = name.into();
        let value = value.into();
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// Appends `dir` to the colon-separated list in `name` (or sets it).
    pub fn append_path(&mut self, name: &str, dir: &str) {
        let value = match self.get(name) {
            Some(v) if !v.is_empty() => {
                let mut joined = v.to_os_string();
                joined.push(":");
                joined.push(dir);
                joined
            }
            _ => OsString::from(dir),
        };
        self.set(name, value);
    }

    /// Value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// All variables in insertion order.
    pub fn vars(&self) -> &[(OsString, OsString)] {
        &self.vars
    }

    /// `NAME=VALUE` strings for `execve`.
    pub fn to_envp(&self) -> Vec<std::ffi::CString> {
        self.vars
            .iter()
            .filter_map(|(n, v)| {
                let mut bytes = n.as_bytes().to_vec();
                bytes.push(b'=');
                bytes.extend_from_slice(v.as_bytes());
                std::ffi::CString::new(bytes).ok()
            })
            .collect()
    }
}

/// What `--cleanenv` still passes (as Apptainer).
const ALWAYS_PASSED: &[&str] = &[
    "TERM",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
];

/// Prefixes of Apptainer's own variables: its settings (never passed in)
/// and requests to set a variable in the container.
const APPTAINER_PREFIXES: &[&str] = &["APPTAINER_", "SINGULARITY_"];
/// `APPTAINERENV_X=v` sets `X=v` in the container; the first prefix wins
/// when both name the same variable.
const REQUEST_PREFIXES: &[&str] = &["APPTAINERENV_", "SINGULARITYENV_"];

/// True for host variables that must not reach the container.
pub fn is_dropped(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.starts_with(b"LD_")
        || DROPPED.iter().any(|d| d.as_bytes() == bytes)
        || APPTAINER_PREFIXES
            .iter()
            .chain(REQUEST_PREFIXES)
            .any(|p| bytes.starts_with(p.as_bytes()))
}

/// The layers of the command's environment, kept apart until
/// [`EnvPlan::build`] so that the image's scripts, evaluated inside the
/// container only, can be put in their place.
#[derive(Debug, Clone, Default)]
pub struct EnvPlan {
    /// Host variables that may pass ([`is_dropped`] ones removed).
    pub host: Vec<(OsString, OsString)>,
    /// The image's variables, lowest first.
    pub image: Vec<(String, String)>,
    /// `APPTAINERENV_X` requests, as `X` and its value.
    pub requested: Vec<(String, String)>,
    /// `APPTAINERENV_PATH`, `..._PREPEND_PATH`, `..._APPEND_PATH`.
    pub path: PathRequest,
    /// The image's path, for `APPTAINER_CONTAINER` and `APPTAINER_NAME`.
    pub container: Option<std::path::PathBuf>,
    /// The SCIF app run, for `APPTAINER_APPNAME`.
    pub app: Option<String>,
    /// `--env` values.
    pub overrides: Vec<(String, String)>,
    /// `(NAME, DIR)`: DIR appended to the search path NAME, last.
    pub append: Vec<(String, String)>,
}

/// What the caller asked of PATH through `APPTAINERENV_*PATH`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRequest {
    /// Replaces PATH (after the image's scripts).
    pub replace: Option<String>,
    /// Put before PATH.
    pub prepend: Option<String>,
    /// Put after PATH.
    pub append: Option<String>,
}

impl PathRequest {
    /// True when nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.replace.is_none() && self.prepend.is_none() && self.append.is_none()
    }

    /// `path` (as the image left it) with the request applied.
    pub fn apply(&self, path: &str) -> String {
        if let Some(r) = &self.replace {
            return r.clone();
        }
        let mut path = path.to_string();
        if let Some(p) = &self.prepend {
            path = format!("{p}:{path}");
        }
        if let Some(a) = &self.append {
            path = format!("{path}:{a}");
        }
        path
    }
}

/// `APPTAINER_CONTAINER` and `APPTAINER_NAME` (and the `SINGULARITY_` pair)
/// for the image at `image`: its path and its file name; and
/// `APPTAINER_APPNAME`, the SCIF app run (empty without one, as Apptainer
/// sets it), with `SINGULARITY_APPNAME` when there is one.
pub fn container_names(image: &std::path::Path, app: Option<&str>) -> Vec<(String, OsString)> {
    let name = image.file_name().unwrap_or(image.as_os_str());
    let mut names: Vec<(String, OsString)> = APPTAINER_PREFIXES
        .iter()
        .flat_map(|prefix| {
            [
                (
                    format!("{prefix}CONTAINER"),
                    image.as_os_str().to_os_string(),
                ),
                (format!("{prefix}NAME"), name.to_os_string()),
            ]
        })
        .collect();
    names.push(("APPTAINER_APPNAME".into(), app.unwrap_or_default().into()));
    if let Some(app) = app {
        names.push(("SINGULARITY_APPNAME".into(), app.into()));
    }
    names
}

impl EnvPlan {
    /// The plan for `host` (the caller's environment), the image's own
    /// variables and the `--env` values.
    pub fn new(
        host: impl IntoIterator<Item = (OsString, OsString)>,
        image_env: &[(String, String)],
        overrides: &[(String, String)],
    ) -> Self {
        let host: Vec<(OsString, OsString)> = host.into_iter().collect();
        let mut plan = EnvPlan {
            image: image_env.to_vec(),
            overrides: overrides.to_vec(),
            ..EnvPlan::default()
        };
        for prefix in REQUEST_PREFIXES {
            for (name, value) in &host {
                let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
                    continue;
                };
                let Some(key) = name.strip_prefix(prefix) else {
                    continue;
                };
                let slot = match key {
                    "PATH" => &mut plan.path.replace,
                    "PREPEND_PATH" => &mut plan.path.prepend,
                    "APPEND_PATH" => &mut plan.path.append,
                    // Apptainer refuses these too: HOME is the user's.
                    "HOME" | "" => continue,
                    key if !is_valid_name(key) => continue,
                    key => {
                        if !plan.requested.iter().any(|(k, _)| k == key) {
                            plan.requested.push((key.to_string(), value.to_string()));
                        }
                        continue;
                    }
                };
                slot.get_or_insert_with(|| value.to_string());
            }
        }
        plan.host = host.into_iter().filter(|(n, _)| !is_dropped(n)).collect();
        plan
    }

    /// `--cleanenv`: no host variable but those Apptainer always passes
    /// (TERM and the proxy settings), and `LANG=C`.
    pub fn keep_only_always_passed(&mut self) {
        self.host
            .retain(|(name, _)| name.to_str().is_some_and(|n| ALWAYS_PASSED.contains(&n)));
        self.host.push(("LANG".into(), "C".into()));
    }

    /// The environment for `user`, layer over layer (module docs).
    pub fn build(&self, user: &Identity) -> Environment {
        let mut env = Environment::default();
        for (name, value) in &self.host {
            env.set(name.clone(), value.clone());
        }
        for (name, value) in &self.image {
            env.set(name, value);
        }
        env.set("HOME", user.home.as_os_str());
        env.set("USER", &user.name);
        env.set("LOGNAME", &user.name);
        for (name, value) in &self.requested {
            env.set(name, value);
        }
        if env.get("PATH").is_none() {
            env.set("PATH", DEFAULT_PATH);
        }
        // PATH is the image's, a request's or the default here (the
        // host's never passes): text.
        let path = env.get("PATH").unwrap_or_default().to_string_lossy();
        let path = self.path.apply(&path);
        env.set("PATH", path);
        if let Some(image) = &self.container {
            for (name, value) in container_names(image, self.app.as_deref()) {
                env.set(name, value);
            }
        }
        for (name, value) in &self.overrides {
            env.set(name, value);
        }
        for (name, dir) in &self.append {
            env.append_path(name, dir);
        }
        env
    }
}

/// Builds the container environment without the image's scripts and
/// without naming the image ([`EnvPlan`] for the whole).
pub fn container_environment(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    image_env: &[(String, String)],
    user: &Identity,
    overrides: &[(String, String)],
) -> Environment {
    EnvPlan::new(host, image_env, overrides).build(user)
}

/// Parses a `NAME=VALUE` option value.
pub fn parse_assignment(text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((name, value)) if is_valid_name(name) => Ok((name.to_string(), value.to_string())),
        _ => Err(Error::usage(format!(
            "invalid environment assignment '{text}' (expected NAME=VALUE)"
        ))),
    }
}

/// Parses the image's environment object (SIF data type 0x4002): one
/// `NAME=VALUE` per line. Empty lines, `#` comments and an `export ` prefix
/// are tolerated; other malformed lines are skipped rather than failing the
/// run, since the object is informational metadata written by other tools.
pub fn parse_env_object(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.strip_prefix("export ").unwrap_or(l))
        .filter_map(|l| parse_assignment(l).ok())
        .collect()
}

/// Renders variables as an environment object (inverse of [`parse_env_object`]).
pub fn render_env_object(vars: &[(String, String)]) -> Vec<u8> {
    let mut out = String::new();
    for (name, value) in vars {
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    out.into_bytes()
}

/// A portable environment variable name: a letter or `_`, then letters,
/// digits or `_`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Identity {
        Identity {
            name: "u".into(),
            uid: 5,
            gid: 5,
            gecos: String::new(),
            home: "/home/u".into(),
            shell: "/bin/sh".into(),
            groups: vec![],
        }
    }

    #[test]
    fn precedence_and_filtering() {
        let host = vec![
            ("LD_PRELOAD".into(), "/evil.so".into()),
            ("LD_LIBRARY_PATH".into(), "/x".into()),
            ("PATH".into(), "/host/bin".into()),
            ("FOO".into(), "host".into()),
            ("BAR".into(), "host".into()),
            ("HOME".into(), "/root".into()),
        ];
        let image = vec![("FOO".to_string(), "image".to_string())];
        let over = vec![("BAR".to_string(), "cli".to_string())];
        let env = container_environment(host, &image, &user(), &over);
        assert_eq!(env.get("LD_PRELOAD"), None);
        assert_eq!(env.get("LD_LIBRARY_PATH"), None);
        assert_eq!(env.get("PATH").unwrap(), DEFAULT_PATH);
        assert_eq!(env.get("FOO").unwrap(), "image");
        assert_eq!(env.get("BAR").unwrap(), "cli");
        assert_eq!(env.get("HOME").unwrap(), "/home/u");
        assert_eq!(env.get("USER").unwrap(), "u");
    }

    fn host(v: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        v.iter().map(|(a, b)| (a.into(), b.into())).collect()
    }

    #[test]
    fn apptainer_requests_and_names() {
        let host = host(&[
            ("APPTAINERENV_FOO", "requested"),
            ("SINGULARITYENV_FOO", "legacy loses"),
            ("SINGULARITYENV_BAR", "legacy"),
            ("APPTAINERENV_PREPEND_PATH", "/pre"),
            ("APPTAINERENV_APPEND_PATH", "/post"),
            ("APPTAINERENV_HOME", "/nope"),
            ("APPTAINER_BIND", "/x"),
            ("SINGULARITY_CACHEDIR", "/y"),
            ("KEEP", "host"),
        ]);
        let image = vec![
            ("FOO".to_string(), "image".to_string()),
            ("PATH".to_string(), "/opt/bin:/usr/bin".to_string()),
        ];
        let over = vec![("BAR".to_string(), "cli".to_string())];
        let mut plan = EnvPlan::new(host, &image, &over);
        plan.container = Some("/imgs/app.sif".into());
        plan.append = vec![("LD_LIBRARY_PATH".into(), "/.sifrun/gpu/lib".into())];
        let env = plan.build(&user());
        assert_eq!(env.get("FOO").unwrap(), "requested");
        assert_eq!(env.get("BAR").unwrap(), "cli");
        assert_eq!(env.get("PATH").unwrap(), "/pre:/opt/bin:/usr/bin:/post");
        assert_eq!(env.get("HOME").unwrap(), "/home/u");
        assert_eq!(env.get("KEEP").unwrap(), "host");
        assert_eq!(env.get("APPTAINER_CONTAINER").unwrap(), "/imgs/app.sif");
        assert_eq!(env.get("SINGULARITY_NAME").unwrap(), "app.sif");
        assert_eq!(env.get("APPTAINER_APPNAME").unwrap(), "");
        assert_eq!(env.get("SINGULARITY_APPNAME"), None);
        assert_eq!(env.get("LD_LIBRARY_PATH").unwrap(), "/.sifrun/gpu/lib");
        plan.app = Some("hello".into());
        let env = plan.build(&user());
        assert_eq!(env.get("APPTAINER_APPNAME").unwrap(), "hello");
        assert_eq!(env.get("SINGULARITY_APPNAME").unwrap(), "hello");
        for gone in [
            "APPTAINER_BIND",
            "SINGULARITY_CACHEDIR",
            "APPTAINERENV_FOO",
            "SINGULARITYENV_BAR",
        ] {
            assert_eq!(env.get(gone), None, "{gone}");
        }
        let mut replace = EnvPlan::new(host_path_request(), &image, &[]);
        replace.container = None;
        assert_eq!(replace.build(&user()).get("PATH").unwrap(), "/only");
    }

    fn host_path_request() -> Vec<(OsString, OsString)> {
        host(&[
            ("SINGULARITYENV_PATH", "/only"),
            ("APPTAINERENV_PREPEND_PATH", "/pre"),
        ])
    }

    #[test]
    fn image_path_wins_over_default() {
        let image = vec![("PATH".to_string(), "/opt/bin".to_string())];
        let env = container_environment(Vec::new(), &image, &user(), &[]);
        assert_eq!(env.get("PATH").unwrap(), "/opt/bin");
    }

    #[test]
    fn parses_assignments() {
        assert_eq!(
            parse_assignment("A=b=c").unwrap(),
            ("A".to_string(), "b=c".to_string())
        );
        assert!(parse_assignment("=x").is_err());
        assert!(parse_assignment("1A=x").is_err());
        assert!(parse_assignment("novalue").is_err());
        let parsed = parse_env_object(b"# c\nexport A=1\n\nB=two words\nbad line\n");
        assert_eq!(
            parsed,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two words".to_string())
            ]
        );
        assert_eq!(render_env_object(&parsed), b"A=1\nB=two words\n");
    }
}
