//! Execution control lists: which signers' images may run, per Slurm
//! partition. Enforced by `sifrun slurm-setup` (root) before anything of
//! the image is mounted; `sifrun ecl check` gives the same decision offline.
//!
//! * [`config`]: the site file (per-partition lists in Apptainer's
//!   `ecl.toml` schema, keyrings), validated, from root-owned files only
//! * [`mod@decide`]: the decision from verified signer facts
//! * [`enforce`]: which bytes to trust (the file or a root-owned copy),
//!   verification, the per-node record of it
//! * [`partition`]: the job's partition, from slurmctld (never from the job)
//! * [`catalogue`]: images staged and verified once for every node, and
//!   when a node may trust what was recorded about them

pub mod catalogue;
pub mod config;
pub mod copy;
pub mod decide;
pub mod enforce;
pub mod partition;

pub use config::{EclConfig, PartitionPolicy};
pub use decide::{decide, Decision, SigStatus, SignatureFact, SignerFacts};
