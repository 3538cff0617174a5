//! What runs as root on a Slurm node, on behalf of every job: the helper
//! the SPANK plugin starts for each step ([`helper`]), the node-wide cache
//! of mounted images ([`image_cache`]), the containers kept for a job's
//! later steps ([`kept_containers`]), opening user-named paths with the
//! job user's permissions ([`credentials`]), the execution control list
//! ([`ecl`]), checks on the files root trusts ([`trusted`]), the job's
//! private directories under Slurm's namespace plugins ([`job_namespace`])
//! and ending a step's leftover processes ([`namespace_sweep`]).
//!
//! Everything here trusts nothing the job user controls: paths are opened
//! as the user, images are copied or pinned before they are judged, and
//! every configuration file must be root's.

pub mod credentials;
pub mod ecl;
pub mod helper;
pub mod image_cache;
pub mod job_namespace;
pub mod kept_containers;
pub mod namespace_sweep;
pub mod site_hooks;
pub mod trusted;
