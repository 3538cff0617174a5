//! What a task inside a sifrun container needs to reach Slurm's PMIx (or
//! PMI2) server on the host.
//!
//! Slurm's `mpi/pmix` plugin starts a PMIx server in slurmstepd and tells
//! each task where to find it through `PMIX_*` variables. Those name host
//! paths and a TCP loopback port, so a task in a container needs:
//!
//! * the server's rendezvous directory, `SlurmdSpoolDir/pmix.<job>.<step>`
//!   (`PMIX_SERVER_TMPDIR`, with the shared-memory dstore under it), and the
//!   client directory `<TmpFS>/spmix_appdir_<uid>_<job>.<step>` at the
//!   **same paths** ([`binds`]); the container keeps the host network, so
//!   the loopback URI works as is;
//! * every `PMIX_*` variable from the host, never the image's (the SPANK
//!   plugin's environment rules), plus the mappings that clients of other
//!   PMIx versions read ([`compat_env`]).
//!
//! PMI2 needs nothing: `PMI_FD` is an inherited descriptor and survives
//! `setns`, and `PMI_*` variables are host-owned like `PMIX_*`.
//!
//! The directories do not exist yet when the per-node container is built
//! (Slurm creates them just before it forks the tasks), so the containing
//! directories are bound: a bind mount is a live view, so the step's
//! directories appear inside as soon as Slurm creates them.

#![forbid(unsafe_code)]

pub mod env;
pub mod slurm_conf;

pub use env::compat_env;
pub use slurm_conf::SlurmPaths;

/// A directory to bind into the container at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmixBind {
    pub path: std::path::PathBuf,
    pub read_only: bool,
}

/// True when the step uses PMIx (`--mpi=pmix`, `pmix_v4`, or an
/// `MpiDefault` that srun exported as `SLURM_MPI_TYPE`).
pub fn uses_pmix(mpi_type: Option<&str>) -> bool {
    mpi_type.is_some_and(|t| t.starts_with("pmix"))
}

/// The host directories a PMIx step's tasks need: the node's slurmd spool
/// directory (holds `pmix.<job>.<step>`), the TmpFS directory (holds the
/// client directories) when it is not `/tmp` (sifrun binds `/tmp` anyway),
/// and munge's socket directory so that a container PMIx with the munge
/// security component can authenticate (read-only).
///
/// These are node directories the job user can already see outside the
/// container, mounted nosuid and nodev with their own permissions; the
/// paths come from the admin's slurm.conf, never from the job.
pub fn binds(paths: &SlurmPaths) -> Vec<PmixBind> {
    let mut out = vec![PmixBind {
        path: paths.spool_dir.clone(),
        read_only: false,
    }];
    if paths.tmp_fs != std::path::Path::new("/tmp") {
        out.push(PmixBind {
            path: paths.tmp_fs.clone(),
            read_only: false,
        });
    }
    let munge = std::path::PathBuf::from("/run/munge");
    if munge.is_dir() {
        out.push(PmixBind {
            path: munge,
            read_only: true,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn pmix_types() {
        assert!(uses_pmix(Some("pmix")));
        assert!(uses_pmix(Some("pmix_v4")));
        assert!(!uses_pmix(Some("pmi2")));
        assert!(!uses_pmix(Some("none")));
        assert!(!uses_pmix(None));
    }

    #[test]
    fn spool_always_tmpfs_only_when_not_tmp() {
        let paths = SlurmPaths {
            spool_dir: PathBuf::from("/var/spool/slurmd"),
            tmp_fs: PathBuf::from("/tmp"),
        };
        let b = binds(&paths);
        assert_eq!(b[0].path, PathBuf::from("/var/spool/slurmd"));
        assert!(!b.iter().any(|b| b.path == Path::new("/tmp")));
        let paths = SlurmPaths {
            tmp_fs: PathBuf::from("/local/scratch"),
            ..paths
        };
        assert!(binds(&paths)
            .iter()
            .any(|b| b.path == Path::new("/local/scratch") && !b.read_only));
    }
}
