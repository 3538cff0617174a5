//! The environment each task sees inside the container.
//!
//! The image's environment is applied over the job's, as pyxis users expect,
//! with three exceptions where the host must win: variables the user named
//! with `--container-env`, Slurm's and the process managers' wiring
//! (`SLURM_*`, `PMIX_*`, `PMI_*`: per-rank values that a per-node image must
//! never override), and loader variables from the host (`LD_PRELOAD`,
//! `LD_LIBRARY_PATH`) that point at host paths, and its locale (`LANG`,
//! `LANGUAGE`, `LC_ALL`), which the image may lack: dropped unless named.
//! Slurm's per-task GPU selection (`CUDA_VISIBLE_DEVICES`, ...) is host-owned
//! too, and the interconnect libraries' settings (`UCX_*`, `FI_*`) from the
//! host win over the image's when the host sets them.

use crate::request::ContainerRequest;

/// Prefixes whose host value always wins.
const HOST_OWNED_PREFIXES: &[&str] = &["SLURM_", "SLURMD_", "PMIX_", "PMI_", "SIFRUN_"];

/// Exact names whose host value always wins: the GPUs Slurm gave this task
/// (with `--gpus-per-task` each task of the shared container has its own).
const HOST_OWNED_NAMES: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "GPU_DEVICE_ORDINAL",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
];

/// Prefixes whose host value wins when the host sets one (the site's
/// interconnect tuning); the image's applies otherwise.
const HOST_WINS_PREFIXES: &[&str] = &["UCX_", "FI_"];

/// Host variables dropped unless the image sets them or the user names
/// them with `--container-env`: the host's loader settings point at host
/// paths, and the host's locale may not exist in the image (pyxis drops
/// the same three locale variables; the image's own `LANG` still applies).
const HOST_ONLY_VARS: &[&str] = &[
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
];

/// PATH used when neither the image nor `--container-env` provides one:
/// the same as `sifrun exec`'s.
pub use sifrun_runtime::container::env::DEFAULT_PATH;

/// Slurm's, the process managers' and the GPU selection's variables: the
/// host's value always wins.
fn host_owned(name: &str) -> bool {
    HOST_OWNED_PREFIXES.iter().any(|p| name.starts_with(p)) || HOST_OWNED_NAMES.contains(&name)
}

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
            || host_owned(name)
            || HOST_WINS_PREFIXES.iter().any(|p| name.starts_with(p))
    };
    let mut changes = Vec::new();
    for var in HOST_ONLY_VARS {
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
        if host_owned(name) {
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

/// Every change to a task's environment: the image's
/// ([`task_env_changes`], with the variables the request keeps from the
/// host), then Apptainer's requests from the job ([`apptainer_changes`],
/// naming the request's image and SCIF app).
pub fn task_changes(
    image_env: &[(String, String)],
    request: Option<&ContainerRequest>,
    job_env: &dyn Fn(&str) -> Option<String>,
    job_vars: &[(String, String)],
) -> Vec<EnvChange> {
    let host_wins = request.map_or(&[][..], |r| &r.host_env);
    let mut changes = task_env_changes(image_env, host_wins, job_env);
    if let Some(request) = request {
        // PATH as the image's layer left it, for the PATH edits.
        let path_now = changes
            .iter()
            .rev()
            .find_map(|c| match c {
                EnvChange::Set(k, v) if k == "PATH" => Some(v.clone()),
                _ => None,
            })
            .or_else(|| job_env("PATH"))
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        changes.extend(apptainer_changes(
            job_vars,
            &request.image,
            request.app.as_deref(),
            &path_now,
        ));
    }
    changes
}

/// Apptainer's requests, applied after [`task_env_changes`]: the job's
/// `APPTAINERENV_X` (or `SINGULARITYENV_X`) sets `X` in each task, its
/// `..._PREPEND_PATH`, `..._APPEND_PATH` and `..._PATH` edit PATH (as it
/// stands after the image's), `APPTAINER_CONTAINER` and `APPTAINER_NAME`
/// (and the `SINGULARITY_` pair) name the image, `APPTAINER_APPNAME` the
/// SCIF app, and Apptainer's own
/// variables (`APPTAINER_*`, `SINGULARITY_*`, the requests themselves) do
/// not reach the task. What the host owns per task stays the host's.
pub fn apptainer_changes(
    job_vars: &[(String, String)],
    image: &std::path::Path,
    app: Option<&str>,
    path_now: &str,
) -> Vec<EnvChange> {
    use sifrun_runtime::container::env::{container_names, is_dropped, EnvPlan};
    let mut changes: Vec<EnvChange> = job_vars
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("LD_") && name != "PATH" && is_dropped(std::ffi::OsStr::new(name))
        })
        .map(|(name, _)| EnvChange::Unset(name.clone()))
        .collect();
    let pairs = job_vars.iter().map(|(n, v)| (n.into(), v.into()));
    let plan = EnvPlan::new(pairs, &[], &[]);
    for (name, value) in plan.requested {
        if !host_owned(&name) {
            changes.push(EnvChange::Set(name, value));
        }
    }
    if !plan.path.is_empty() {
        changes.push(EnvChange::Set("PATH".into(), plan.path.apply(path_now)));
    }
    for (name, value) in container_names(image, app) {
        changes.push(EnvChange::Set(name, value.to_string_lossy().into_owned()));
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
    fn the_hosts_locale_is_dropped_unless_named_or_set_by_the_image() {
        let job = |name: &str| match name {
            "LANG" | "LC_ALL" => Some("xx_YY.UTF-8".to_string()),
            _ => None,
        };
        let changes = task_env_changes(&[], &["PATH".into()], &job);
        assert_eq!(
            changes,
            vec![
                EnvChange::Unset("LANG".into()),
                EnvChange::Unset("LC_ALL".into())
            ]
        );
        // Named: the host's stays; set by the image: the image's applies.
        let changes = task_env_changes(
            &pairs(&[("LANG", "C.UTF-8")]),
            &["PATH".into(), "LC_ALL".into()],
            &job,
        );
        assert_eq!(
            changes,
            vec![EnvChange::Set("LANG".into(), "C.UTF-8".into())]
        );
    }

    #[test]
    fn gpu_selection_is_the_hosts_and_interconnect_settings_win_when_set() {
        let job = |name: &str| match name {
            "CUDA_VISIBLE_DEVICES" => Some("1".to_string()),
            "UCX_TLS" => Some("rc,sm".to_string()),
            _ => None,
        };
        let image = pairs(&[
            ("PATH", "/usr/bin"),
            ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
            ("ROCR_VISIBLE_DEVICES", "0"),
            ("UCX_TLS", "tcp"),
            ("FI_PROVIDER", "tcp"),
        ]);
        let changes = task_env_changes(&image, &[], &job);
        assert_eq!(
            changes,
            vec![
                EnvChange::Set("PATH".into(), "/usr/bin".into()),
                EnvChange::Set("FI_PROVIDER".into(), "tcp".into()),
            ]
        );
    }

    #[test]
    fn default_path_when_image_has_none_unless_host_path_requested() {
        let changes = task_env_changes(&[], &[], &job);
        assert!(changes.contains(&EnvChange::Set("PATH".into(), DEFAULT_PATH.into())));
        let changes = task_env_changes(
            &[],
            &["PATH".into(), "LD_LIBRARY_PATH".into(), "LANG".into()],
            &job,
        );
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn apptainer_requests_name_and_hide() {
        let job = pairs(&[
            ("APPTAINERENV_GREETING", "hi"),
            ("SINGULARITYENV_SLURM_PROCID", "9"),
            ("APPTAINERENV_PREPEND_PATH", "/pre"),
            ("APPTAINER_BIND", "/x"),
            ("LANG", "C"),
        ]);
        let changes = apptainer_changes(
            &job,
            std::path::Path::new("/imgs/a.sif"),
            Some("hello"),
            "/opt/bin",
        );
        assert!(changes.contains(&EnvChange::Unset("APPTAINERENV_GREETING".into())));
        assert!(changes.contains(&EnvChange::Unset("APPTAINER_BIND".into())));
        assert!(!changes.contains(&EnvChange::Unset("LANG".into())));
        assert!(changes.contains(&EnvChange::Set("GREETING".into(), "hi".into())));
        assert!(!changes
            .iter()
            .any(|c| matches!(c, EnvChange::Set(k, _) if k == "SLURM_PROCID")));
        assert!(changes.contains(&EnvChange::Set("PATH".into(), "/pre:/opt/bin".into())));
        assert!(changes.contains(&EnvChange::Set("APPTAINER_NAME".into(), "a.sif".into())));
        assert!(changes.contains(&EnvChange::Set(
            "SINGULARITY_CONTAINER".into(),
            "/imgs/a.sif".into()
        )));
        assert!(changes.contains(&EnvChange::Set("APPTAINER_APPNAME".into(), "hello".into())));
    }
}
