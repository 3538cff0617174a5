//! The site's hooks: the admin's programs that add what an image cannot
//! know to its containers (the host's MPI and libfabric for the node's
//! network, NCCL plugins, variables), like enroot's `hooks.d`, Sarus' OCI
//! hooks or podman-hpc's modules.
//!
//! A hook named `mpi` is the file `mpi.sh` in the admin's hook directory
//! (`/etc/sifrun/hooks.d`): root's, executable, not writable by group or
//! others, in a directory of the same kind. Which hooks run is the admin's
//! choice (for every container, or for a partition's jobs) or the user's
//! among those the admin allows (`--container-hooks=mpi,nccl`).
//!
//! Each runs as root twice per container:
//! * `SIFRUN_HOOK_POINT=setup`, once the root is built and before any task
//!   joins, in the container's mount namespace with the root at
//!   `SIFRUN_ROOTFS` (see [`crate::container::hooks`]);
//! * `SIFRUN_HOOK_POINT=step-end`, on the host, when the step that built
//!   the container ends (its tasks are gone).
//!
//! Besides, each gets `SIFRUN_HOOK` (its name), `SIFRUN_IMAGE`,
//! `SIFRUN_UID`, `SIFRUN_GID`, `SIFRUN_JOB_ID`, `SIFRUN_GPUS`, the settings
//! `SIFRUN_STATE_DIR`, `SIFRUN_WRITABLE` and `SIFRUN_CDI_DEVICES` (at setup)
//! and the job's `SLURM_*` variables. Those, and the image's files, are the job's: a hook
//! must treat them as untrusted data.

use crate::container::hooks::{self, Protocol, RootHook};
use crate::error::{Error, Result};
use crate::node::trusted;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where hooks are unless the admin says otherwise.
pub const DEFAULT_DIR: &str = "/etc/sifrun/hooks.d";

/// Hook names: lower-case letters, digits, `-`, `_`, starting with a
/// letter or digit; at most 64.
pub fn is_hook_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
}

/// The file of hook `name` in `dir`, checked.
pub fn hook_file(dir: &Path, name: &str) -> Result<PathBuf> {
    if !is_hook_name(name) {
        return Err(Error::usage(format!("{name:?} is not a hook name")));
    }
    trusted::check_config_dir(dir)
        .map_err(|why| Error::usage(format!("hook directory {}: {why}", dir.display())))?;
    let file = dir.join(format!("{name}.sh"));
    trusted::check_config_file(&file)
        .map_err(|why| Error::usage(format!("site hook {name} ({}): {why}", file.display())))?;
    let mode = std::fs::metadata(&file)
        .map_err(|e| Error::system(format!("{}: {e}", file.display())))?
        .permissions()
        .mode();
    if mode & 0o100 == 0 {
        return Err(Error::usage(format!(
            "site hook {name} ({}): not executable",
            file.display()
        )));
    }
    Ok(file)
}

/// The hooks to run at setup: `names` from `dir`, each with `env` (the
/// caller's `NAME=VALUE` entries) and `timeout`.
pub fn setup_hooks(
    dir: &Path,
    names: &[String],
    env: &[String],
    timeout: Duration,
) -> Result<Vec<RootHook>> {
    names
        .iter()
        .map(|name| {
            let file = hook_file(dir, name)?;
            Ok(RootHook {
                label: format!("site hook {name}"),
                args: vec![file.display().to_string()],
                path: file,
                env: with_point(env, name, "setup"),
                timeout,
                protocol: Protocol::Site,
            })
        })
        .collect()
}

/// Runs `names` from `dir` at the step's end, each with `env` and
/// `timeout`, their output in a private directory under `state_dir`
/// (removed after); every hook runs, and the failures are returned, one
/// line each (the step is over: they are only reported).
pub fn run_step_end(
    dir: &Path,
    names: &[String],
    env: &[String],
    timeout: Duration,
    state_dir: &Path,
) -> Vec<String> {
    let scratch = match tempfile::Builder::new()
        .prefix(".step-end-hooks-")
        .tempdir_in(state_dir)
    {
        Ok(s) => s,
        Err(e) => {
            return vec![format!(
                "step-end hooks: a directory in {}: {e}",
                state_dir.display()
            )]
        }
    };
    let scratch = scratch.path();
    let mut failures = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let run = hook_file(dir, name).and_then(|file| {
            let hook = RootHook {
                label: format!("site hook {name} (step end)"),
                args: vec![file.display().to_string()],
                path: file,
                env: Vec::new(),
                timeout,
                protocol: Protocol::Site,
            };
            hooks::run_one(
                &hook,
                &with_point(env, name, "step-end"),
                b"",
                &scratch.join(format!("step-end-{i}")),
                None,
            )
        });
        if let Err(e) = run {
            failures.push(e.message());
        }
    }
    failures
}

fn with_point(env: &[String], name: &str, point: &str) -> Vec<String> {
    let mut env = env.to_vec();
    env.push(format!("SIFRUN_HOOK={name}"));
    env.push(format!("SIFRUN_HOOK_POINT={point}"));
    env
}

/// The hooks of `partition` in `PARTITION=NAME,...` entries.
pub fn for_partition(entries: &[String], partition: &str) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(p, _)| *p == partition)
        .flat_map(|(_, names)| names.split(',').filter(|n| !n.is_empty()))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook_dir() -> tempfile::TempDir {
        // Under /run: the directories above a hook directory must be
        // root's and closed to others, which /tmp is not.
        let dir = tempfile::Builder::new()
            .prefix("sifrun-hooks-test")
            .tempdir_in("/run")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn write_hook(dir: &Path, name: &str, body: &str, mode: u32) {
        let file = dir.join(format!("{name}.sh"));
        std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn names_and_untrusted_files() {
        if !nix::unistd::geteuid().is_root() {
            return eprintln!("skipped: needs root (hooks must be root's)");
        }
        assert!(is_hook_name("mpi") && is_hook_name("50-nccl_v2"));
        for bad in ["", "../x", "Mpi", "-x", "a/b", "a.sh"] {
            assert!(!is_hook_name(bad), "{bad}");
        }
        let dir = hook_dir();
        write_hook(dir.path(), "good", "true", 0o755);
        write_hook(dir.path(), "open", "true", 0o777);
        write_hook(dir.path(), "plain", "true", 0o644);
        assert!(hook_file(dir.path(), "good").is_ok());
        let e = hook_file(dir.path(), "open").unwrap_err().message();
        assert!(e.contains("not writable by group or others"), "{e}");
        let e = hook_file(dir.path(), "plain").unwrap_err().message();
        assert!(e.contains("not executable"), "{e}");
        let e = hook_file(dir.path(), "absent").unwrap_err().message();
        assert!(e.starts_with("site hook absent ("), "{e}");
        std::os::unix::fs::symlink(dir.path().join("good.sh"), dir.path().join("link.sh")).unwrap();
        assert!(hook_file(dir.path(), "link").is_err());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = hook_file(dir.path(), "good").unwrap_err().message();
        assert!(e.contains("hook directory"), "{e}");
    }

    #[test]
    fn step_end_runs_every_hook_and_reports_failures() {
        if !nix::unistd::geteuid().is_root() {
            return eprintln!("skipped: needs root (hooks must be root's)");
        }
        let dir = hook_dir();
        let out = tempfile::tempdir().unwrap();
        let log = out.path().join("log");
        write_hook(
            dir.path(),
            "a",
            &format!(
                "echo \"$SIFRUN_HOOK $SIFRUN_HOOK_POINT $X\" >> {}; exit 4",
                log.display()
            ),
            0o755,
        );
        write_hook(
            dir.path(),
            "b",
            &format!(
                "echo \"$SIFRUN_HOOK $SIFRUN_HOOK_POINT\" >> {}",
                log.display()
            ),
            0o755,
        );
        let failures = run_step_end(
            dir.path(),
            &["a".into(), "b".into()],
            &["X=y".into()],
            Duration::from_secs(10),
            out.path(),
        );
        assert_eq!(failures, ["site hook a (step end) failed (exit 4)"]);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a step-end y\nb step-end\n"
        );
    }

    #[test]
    fn partition_entries() {
        let e = [
            "gpu=nccl,mpi".to_string(),
            "cpu=mpi".into(),
            "gpu=extra".into(),
        ];
        assert_eq!(for_partition(&e, "gpu"), ["nccl", "mpi", "extra"]);
        assert!(for_partition(&e, "debug").is_empty());
    }
}
