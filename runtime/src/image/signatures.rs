//! Checking an image's signatures against the keys a user or admin named:
//! loading OpenPGP keyrings and PEM public keys, and the one-line verdict.
//! The checking itself is `sif::integrity`; `sifrun verify` and
//! `sifrun exec --verify` both come through here.

use std::path::{Path, PathBuf};

use sif::integrity::{self, Keyring, PemPublicKey, Report, VerifyOptions};

use crate::error::{Error, Result};

/// The keys to verify against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// OpenPGP public keyrings (armored or binary).
    pub keyrings: Vec<PathBuf>,
    /// PEM public keys for DSSE signatures.
    pub pem_keys: Vec<PathBuf>,
}

impl Keys {
    /// True when no key is named.
    pub fn is_empty(&self) -> bool {
        self.keyrings.is_empty() && self.pem_keys.is_empty()
    }

    /// Loads every key. A key that fails to load is a usage error:
    /// verifying without it could give a misleading verdict.
    pub fn load(&self, legacy: bool) -> Result<VerifyOptions> {
        let mut opts = VerifyOptions {
            legacy,
            ..VerifyOptions::default()
        };
        for p in &self.keyrings {
            let bytes = std::fs::read(p)
                .map_err(|e| Error::usage(format!("cannot read keyring {}: {e}", p.display())))?;
            let kr = Keyring::from_bytes(&bytes)
                .map_err(|e| Error::usage(format!("keyring {}: {e}", p.display())))?;
            opts.keyring.extend(kr);
        }
        for p in &self.pem_keys {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::usage(format!("cannot read key {}: {e}", p.display())))?;
            opts.pem_keys.push(
                PemPublicKey::from_pem(&text)
                    .map_err(|e| Error::usage(format!("key {}: {e}", p.display())))?,
            );
        }
        Ok(opts)
    }
}

/// Verifies the signatures of the image at `path`: the report says which
/// groups are signed, by whom, and the verdict.
pub fn verify(path: &Path, opts: &VerifyOptions) -> Result<Report> {
    let mut img =
        sif::Image::open(path).map_err(|e| Error::image(format!("{}: {e}", path.display())))?;
    Ok(integrity::verify(&mut img, opts))
}

/// `verified: …` or `not verified: <verdict>` on one line.
pub fn verdict_line(image: &Path, report: &Report) -> String {
    match &report.verdict {
        Ok(()) => format!(
            "verified: {} (signed by {})\n",
            image.display(),
            report.signers().join(", ")
        ),
        Err(e) => format!("not verified: {}: {e}\n", image.display()),
    }
}
