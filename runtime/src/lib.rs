//! sifrun runtime: build, inspect and run SIF container images.
//!
//! The CLI (`sifrun`, src/main.rs) is a thin layer over this library. The
//! pieces are small modules with one job each so that the SPANK plugin can
//! reuse them to build one container per node and let every task join it:
//!
//! * [`image`]: the only user of the `sif` crate (open/validate, write, summarise)
//! * [`loop_device`]: read-only, autoclear loop device for one partition
//! * [`namespaces`]: private mount namespace, `pivot_root`, `setns`;
//!   [`namespace_sweep`]: ending what is left in a step's namespace at its end
//! * [`pidfd`]: handles on processes that a recycled PID cannot redirect
//! * [`userns`]: unprivileged user namespace (own IDs mapped) for `sifrun exec` without root
//! * [`fuse`]: the image's SquashFS through a FUSE server (squashfuse) when not root
//! * [`crypt`]: encrypted images (LUKS2): keys, the user-space decrypting
//!   FUSE file, the dm-crypt path
//! * [`mount::rootfs`]: [`mount::rootfs::ContainerSpec`] → container root (overlay,
//!   /proc, /sys, /dev, binds, passwd/group)
//! * [`user`]: target identity and privilege drop
//! * [`mod@env`]: container environment
//! * [`process`]: fork + error pipe, signal forwarding, exit status, exec
//! * [`pinned_image`]: the image `sifrun exec` runs, opened once (or privately copied)
//! * [`container`]: the two reusable halves: [`container::create`] (per node) and
//!   [`container::exec_command`] (per task)
//! * [`credentials`]: resolving user-named paths with the job user's permissions
//! * [`image_cache`]: node-wide cache of mounted images (shared by steps and jobs);
//!   [`cache_cmd`]: `sifrun cache`
//! * [`ecl`]: per-partition execution control lists; [`ecl_cmd`]: `sifrun ecl check`
//! * [`trusted`]: who may have written a file root acts on
//! * [`slurm_setup`]: `sifrun slurm-setup`, one Slurm step's container (used by the SPANK plugin)
//! * [`exec`]: `sifrun exec`/`shell`/`run` orchestration (privileged or unprivileged);
//!   [`target`]: command, shell or runscript; [`build`], [`inspect`]: the other subcommands
//! * [`sign`], [`verify`]: `sifrun sign` / `sifrun verify` over `sif::integrity`

pub mod build;
pub mod cache_cmd;
pub mod container;
pub mod credentials;
pub mod crypt;
pub mod ecl;
pub mod ecl_cmd;
pub mod env;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod gpu;
pub mod image;
pub mod image_cache;
pub mod inspect;
pub mod loop_device;
pub mod mount;
pub mod namespace_sweep;
pub mod namespaces;
pub mod pidfd;
pub mod pinned_image;
pub mod process;
pub mod sign;
pub mod slurm_setup;
pub mod target;
pub mod trusted;
pub mod user;
pub mod userns;
pub mod verify;

pub use error::{Error, ErrorKind, Result};
