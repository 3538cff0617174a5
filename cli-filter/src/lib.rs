//! `cli_filter/sifrun`: `--container=IMAGE.sif` reaches sifrun's SPANK
//! plugin without going through Slurm's own container code.
//!
//! Slurm owns `--container`; a step that has it set gets slurmstepd's OCI
//! container handling even when no `oci.conf` exists. That handling logs
//! `No oci.conf file` and, since Debian's 22.05.8 security update, leaves
//! slurmstepd running with the job's group, so `mpi/pmix` creates the
//! step's PMIx application directory with the job's group and the PMIx
//! server deletes it when the first rank on the node exits, under the ranks
//! still running (docs/admin-guide.md). Only a cli_filter plugin may change
//! the options of srun, sbatch and salloc before they reach Slurm; this one,
//! before submission:
//! - leaves every `--container` value that does not name a SIF image to
//!   Slurm (OCI bundles, other runtimes);
//! - for a SIF image, clears Slurm's `--container` and gives the value to
//!   sifrun's own `--sif-image` option as if it had been on the command
//!   line ([`rewrite`]): SPANK then forwards it to the steps (and from
//!   sbatch/salloc to the steps of the job) as it forwards any option.
//!
//! The plugin runs in the user's own srun/sbatch/salloc with the user's
//! rights: it decides nothing about privileges, it only routes an option.

pub mod rewrite;

#[cfg(not(test))]
mod ffi;

include!(concat!(env!("OUT_DIR"), "/built_for.rs"));
