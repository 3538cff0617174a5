//! SCIF apps: the `%app*` sections of an Apptainer definition file.
//!
//! `apptainer build` installs each app under `/scif/apps/NAME` (its `bin/`
//! and `lib/`, and `scif/` with the app's `runscript`, `env/*.sh`,
//! `labels.json`, `runscript.help`), and the image's own
//! `/.singularity.d/env/95-apps.sh` puts the app on PATH and
//! LD_LIBRARY_PATH and sources its environment when `SINGULARITY_APPNAME`
//! names it. So selecting an app is one variable for the environment
//! scripts, plus the app's runscript for `run`; the image does the rest.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where apps live in an image.
pub const APPS_DIR: &str = "/scif/apps";

/// A validated app name: one path component, so that `/scif/apps/NAME`
/// can never leave `/scif/apps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppName(String);

impl AppName {
    /// The longest app name accepted, in bytes (Apptainer's are short words).
    pub const MAX_LEN: usize = 64;

    /// What a name may hold, for error messages.
    pub const ALLOWED: &'static str = "letters, digits, '_', '-', '.'";

    /// Letters, digits, `_`, `-` and `.` (not first), at most
    /// [`AppName::MAX_LEN`] bytes.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    }

    /// A valid name, or a usage error naming `option`.
    pub fn parse(name: &str, option: &str) -> Result<AppName> {
        if Self::is_valid(name) {
            Ok(AppName(name.to_string()))
        } else {
            Err(Error::usage(format!(
                "{option} {name:?}: not an app name ({})",
                Self::ALLOWED
            )))
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/scif/apps/NAME`.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(APPS_DIR).join(&self.0)
    }

    /// `/scif/apps/NAME/scif/runscript`, what `run --app NAME` runs.
    pub fn runscript(&self) -> PathBuf {
        self.root().join("scif/runscript")
    }
}

impl std::fmt::Display for AppName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The apps of the container the calling process is in, sorted.
pub fn installed() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(APPS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// The line that says `app` is not in the container (with the apps that
/// are), for the user.
pub fn missing_line(app: &AppName) -> String {
    let apps = installed();
    if apps.is_empty() {
        format!("SCIF app {app}: the image has no SCIF apps")
    } else {
        format!(
            "SCIF app {app}: the image has no such app (its apps: {})",
            apps.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_one_component() {
        for good in ["hello", "my-app", "app_2", "v1.0"] {
            assert_eq!(AppName::parse(good, "--app").unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "x\0",
            &"a".repeat(65),
        ] {
            let e = AppName::parse(bad, "--app").unwrap_err();
            assert!(e.message().starts_with("--app "), "{bad:?}: {e}");
        }
        let app = AppName::parse("hello", "--app").unwrap();
        assert_eq!(
            app.runscript(),
            PathBuf::from("/scif/apps/hello/scif/runscript")
        );
    }
}
