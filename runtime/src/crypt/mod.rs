//! Encrypted images: the primary partition is a LUKS2 container holding
//! the SquashFS (SIF file system type "Encrypted squashFS", as Apptainer
//! writes it). See docs/encryption.md.
//!
//! * [`key`]: where the LUKS passphrase comes from (a PEM RSA key that
//!   unwraps the image's own random key, a passphrase file, or a prompt)
//!   and the PEM `MESSAGE` wrapping of that random key;
//! * [`fuse_file`]: the user-space path: the decrypted SquashFS as one
//!   read-only file on a FUSE mount, decrypted sector by sector on read;
//! * [`dmcrypt`]: the kernel path (`cryptsetup open`) where device-mapper
//!   exists;
//! * [`unlock`]: key derivation from a hostile header, in a child process
//!   with memory and time limits.
//!
//! The LUKS2 format itself is the `luks2` crate.

pub mod dmcrypt;
pub mod fuse_file;
pub mod key;
pub mod unlock;

use std::fs::File;

use crate::error::{Error, Result};
use crate::image::RunnableImage;

pub use key::KeySource;

/// Unlocks the image's LUKS2 container with `passphrase`, with one-line
/// errors naming the image; the key derivation runs under
/// [`unlock::Limits::DEFAULT`].
pub fn open_volume(image: &RunnableImage, passphrase: &[u8]) -> Result<luks2::Volume> {
    open_volume_limited(image, passphrase, &unlock::Limits::DEFAULT)
}

/// [`open_volume`] under other limits (tests use small ones).
pub fn open_volume_limited(
    image: &RunnableImage,
    passphrase: &[u8],
    limits: &unlock::Limits,
) -> Result<luks2::Volume> {
    let path = image.path.as_path();
    let file = File::open(path).map_err(|e| Error::image(format!("cannot read: {e}")).at(path))?;
    let src = luks2::Source::new(file, image.partition_offset, image.partition_size);
    let describe = |e: luks2::Error| match e {
        luks2::Error::Io(io) => Error::image(format!("cannot read: {io}")).at(path),
        luks2::Error::NotLuks => {
            Error::image("encrypted partition holds no LUKS2 container").at(path)
        }
        other => Error::image(other.to_string()).at(path),
    };
    unlock::open_limited(src, passphrase, limits, path, describe)
}
