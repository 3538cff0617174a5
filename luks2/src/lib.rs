//! LUKS2 containers in user space.
//!
//! Encrypted SIF images keep their SquashFS inside a LUKS2 container (the
//! on-disk format of `cryptsetup`). The kernel can open such a container
//! only with device-mapper (dm-crypt) and root; this crate does the same in
//! user space so that sifrun can build encrypted images anywhere and run
//! them where dm-crypt is missing:
//!
//! * [`mod@format`] writes a container: binary headers, JSON metadata, one
//!   keyslot (PBKDF2-SHA256 or Argon2id, anti-forensic split), AES-XTS data;
//! * [`Volume`] opens one, unlocks a keyslot with a passphrase (checking
//!   the volume-key digest) and decrypts data sectors on demand.
//!
//! Only what LUKS2 images in practice use is supported: the `aes-xts-plain64`
//! cipher (for keyslots and data), `luks1` anti-forensic splitting, PBKDF2
//! digests. Anything else is refused with [`Error::Unsupported`]. Every
//! parser here reads hostile bytes: it returns errors, never panics, and
//! bounds every size and cost it takes from the header.
//!
//! The cryptography itself is RustCrypto's (aes, xts-mode, pbkdf2, argon2,
//! sha2); this crate only lays the bytes out as the format requires.

// LUKS2 headers are hostile input: no unsafe code here at all.
#![forbid(unsafe_code)]

mod af;
mod error;
pub mod format;
mod header;
mod kdf;
mod metadata;
mod sector;
mod volume;

pub use error::{Error, Result};
pub use format::{format, FormatOptions};
pub use kdf::Kdf;
pub use volume::{Source, Volume};

/// Bytes per sector of the data segment sifrun writes (and of keyslot areas).
pub const SECTOR_SIZE: usize = 512;

/// The only cipher specification supported (keyslots and data).
pub const CIPHER: &str = "aes-xts-plain64";
