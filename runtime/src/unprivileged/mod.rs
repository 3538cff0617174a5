//! What lets a user without root run a container (`sifrun exec` as a
//! normal user): a user namespace mapping only the caller's own IDs
//! ([`userns`]) and the image's SquashFS through a FUSE server started
//! outside the container ([`squashfuse`]). Nothing here needs or keeps a
//! privilege the caller did not already have.

pub mod squashfuse;
pub mod userns;
