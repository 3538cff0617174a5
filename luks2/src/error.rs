//! Errors: one line each, naming what is wrong with the container or key.

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong reading, unlocking or writing a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the underlying file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a LUKS2 container at all (no magic).
    #[error("not a LUKS2 container")]
    NotLuks,
    /// The header or its metadata is damaged or inconsistent.
    #[error("corrupt LUKS2 header: {0}")]
    Corrupt(String),
    /// Valid LUKS2 using a feature this implementation does not have.
    #[error("unsupported LUKS2 container: {0}")]
    Unsupported(String),
    /// No keyslot opens with this passphrase.
    #[error(
        "no LUKS2 keyslot opens with this key (wrong key or passphrase, or a damaged keyslot)"
    )]
    WrongPassphrase,
    /// The data area is shorter than the metadata says.
    #[error("LUKS2 data is truncated: {0}")]
    Truncated(String),
    /// A key-derivation or cipher parameter the crypto library rejected.
    #[error("LUKS2 crypto failure: {0}")]
    Crypto(String),
}

impl Error {
    pub(crate) fn corrupt(why: impl Into<String>) -> Self {
        Error::Corrupt(why.into())
    }
}
