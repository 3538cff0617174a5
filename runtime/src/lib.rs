//! sifrun runtime: the building blocks of running a SIF image in a
//! container, grouped by who runs them. The `sifrun` binary (src/main.rs,
//! src/cli.rs, src/commands/) and the SPANK plugin (spank/) are thin
//! layers over this library.
//!
//! * [`image`]: the SIF file as the runtime sees it (opened and validated
//!   through the `sif` crate, written, summarised; [`image::pinned`]: the
//!   image `sifrun exec` runs, opened once)
//! * [`container`]: building a container root and running a command in it:
//!   [`container::create`] (mount namespace, image, root filesystem,
//!   `pivot_root`) and [`container::exec_command`] (privilege drop, exec);
//!   the parts: [`container::mount`], [`container::namespaces`],
//!   [`container::loop_device`], [`container::gpu`],
//!   [`container::identity`] (who the command runs as, and the privilege
//!   drop), [`mod@container::env`], [`container::staging`]
//! * [`node`]: what runs as root on a Slurm node, for every job:
//!   [`node::helper`] (`sifrun slurm-setup`, one step's container, and its
//!   [`node::helper::protocol`] with the plugin), [`node::image_cache`],
//!   [`node::credentials`] (user-named paths opened with the job user's
//!   permissions), [`node::ecl`] (where the execution control list
//!   decides), [`node::trusted`], [`node::namespace_sweep`]
//! * [`unprivileged`]: what lets a user without root run a container: a
//!   user namespace ([`unprivileged::userns`]) and the image through a
//!   FUSE server ([`unprivileged::squashfuse`])
//! * [`crypt`]: encrypted images (LUKS2): keys, the key derivation
//!   sandbox, the user-space decrypting FUSE file, the dm-crypt path
//! * [`process`], [`pidfd`], [`error`], [`phases`]: shared by all of the above
//!
//! SIF bytes are parsed only in the `sif` crate; this library never reads
//! an image's bytes itself.

pub mod container;
pub mod crypt;
pub mod error;
pub mod image;
pub mod node;
pub mod phases;
pub mod pidfd;
pub mod process;
pub mod unprivileged;

pub use error::{Error, ErrorKind, Result};
