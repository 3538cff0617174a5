//! One module per `sifrun` subcommand: each turns parsed arguments into
//! calls on the library and returns the text or status to report. Nothing
//! here is used by the SPANK plugin.

pub mod build;
pub mod cache;
pub mod cached_image;
pub mod catalogue;
pub mod ecl;
pub mod exec;
pub mod inspect;
pub mod manpages;
pub mod sign;
pub mod singularity_d;
pub mod target;
pub mod verify;
