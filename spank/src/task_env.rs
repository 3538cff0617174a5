//! The environment each task sees inside the container.
//!
//! The image's environment is applied over the job's, as pyxis users expect,
//! with three exceptions where the host must win: variables the user named
//! with `--container-env`, Slurm's and the process managers' wiring
//! (`SLURM_*`, `PMIX_*`, `PMI_*`: per-rank values that a per-node image must
//! never override), and loader variables from the host (`LD_PRELOAD`,
//! `LD_LIBRARY_PATH`) that point at host paths and are dropped unless named.

/// Prefixes whose host value always wins.
const HOST_OWNED_PREFIXES: &[&str] = &["SLURM_", "SLURMD_", "PMIX_", "PMI_", "SIFRUN_"];

/// Host loader variables that make no sense inside the image.
const HOST_LOADER_VARS: &[&str] = &["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"];

/// PATH used when neither the image nor `--container-env` provides one:
/// the same as `sifrun exec`'s.
pub use sifrun_runtime::env::DEFAULT_PATH;

/// One change to a task's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChange {
    Set(String, String),
    Unset(String),
}

/// Work out the changes to apply to a task whose job environment is read
/// through `job_env`.
pub fn task_env_changes(
    image_env: &[(String, String)],
    host_wins: &[String],
    job_env: &dyn Fn(&str) -> Option<String>,
) -> Vec<EnvChange> {
    let keep_host = |name: &str| {
        host_wins.iter().any(|n| n == name)
            || HOST_OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
    };
    let mut changes = Vec::new();
    for var in HOST_LOADER_VARS {
        let image_sets = image_env.iter().any(|(k, _)| k == var);
        if !keep_host(var) && !image_sets && job_env(var).is_some() {
            changes.push(EnvChange::Unset(var.to_string()));
        }
    }
    let mut image_has_path = false;
    for (name, value) in image_env {
        if name == "PATH" {
            image_has_path = true;
        }
        // Process-manager and Slurm wiring is per rank and comes from the
        // host only: an image value is never applied, even when the job has
        // none (a stale PMIX_* from the image breaks the client).
        if HOST_OWNED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if keep_host(name) && job_env(name).is_some() {
            continue;
        }
        changes.push(EnvChange::Set(name.clone(), value.clone()));
    }
    if !image_has_path && !keep_host("PATH") {
        changes.push(EnvChange::Set("PATH".into(), DEFAULT_PATH.into()));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str) -> Option<String> {
        match name {
            "PATH" => Some("/host/bin".into()),
            "LD_LIBRARY_PATH" => Some("/host/lib".into()),
            "PMIX_RANK" => Some("3".into()),
            "LANG" => Some("C.UTF-8".into()),
            _ => None,
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn image_wins_except_host_owned_and_named() {
        let image = pairs(&[
            ("PATH", "/opt/bin:/usr/bin"),
            ("PMIX_RANK", "0"),
            ("PMIX_MCA_psec", "munge"),
            ("LANG", "en_US"),
            ("APP_HOME", "/opt/app"),
        ]);
        let changes = task_env_changes(&image, &["LANG".to_string()], &job);
        assert_eq!(
            changes,
            vec![
                EnvChange::Unset("LD_LIBRARY_PATH".into()),
                EnvChange::Set("PATH".into(), "/opt/bin:/usr/bin".into()),
                EnvChange::Set("APP_HOME".into(), "/opt/app".into()),
            ]
        );
    }

    #[test]
    fn default_path_when_image_has_none_unless_host_path_requested() {
        let changes = task_env_changes(&[], &[], &job);
        assert!(changes.contains(&EnvChange::Set("PATH".into(), DEFAULT_PATH.into())));
        let changes = task_env_changes(&[], &["PATH".into(), "LD_LIBRARY_PATH".into()], &job);
        assert!(changes.is_empty(), "{changes:?}");
    }
}
