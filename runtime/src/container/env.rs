//! The container command's environment.
//!
//! Precedence, lowest first: the host environment (minus loader variables
//! and PATH), the image's own environment object, the target user's
//! HOME/USER/LOGNAME, then `--env` options. PATH falls back to
//! [`DEFAULT_PATH`] when neither the image nor `--env` sets it.

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

/// True for host variables that must not reach the container.
pub fn is_dropped(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.starts_with(b"LD_") || DROPPED.iter().any(|d| d.as_bytes() == bytes)
}

/// Builds the container environment, see the module docs for the precedence.
pub fn container_environment(
    host: impl IntoIterator<Item = (OsString, OsString)>,
    image_env: &[(String, String)],
    user: &Identity,
    overrides: &[(String, String)],
) -> Environment {
    let mut env = Environment::default();
    for (name, value) in host {
        if !is_dropped(&name) {
            env.set(name, value);
        }
    }
    for (name, value) in image_env {
        env.set(name, value);
    }
    env.set("HOME", user.home.as_os_str());
    env.set("USER", &user.name);
    env.set("LOGNAME", &user.name);
    for (name, value) in overrides {
        env.set(name, value);
    }
    if env.get("PATH").is_none() {
        env.set("PATH", DEFAULT_PATH);
    }
    env
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
