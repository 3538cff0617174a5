//! Signing and verifying SIF images, interoperable with sylabs/sif v2
//! `pkg/integrity` (and so with Apptainer and SingularityCE).
//!
//! A signature covers one object group: a JSON document with digests of the
//! header (launch script, magic, version, image id), of each object's
//! descriptor (without offset, group and modification time) and of each
//! object's data, clear-signed with OpenPGP or wrapped in a DSSE envelope.
//! [`verify`] checks every group and returns a [`Report`] whose verdict is a
//! typed [`VerifyError`] naming what failed.
//!
//! ```no_run
//! use sif::integrity::{self, Keyring, SigningKey, SignOptions, VerifyOptions};
//! let mut key = SigningKey::from_bytes(&std::fs::read("private.asc")?, None)?;
//! integrity::sign("image.sif".as_ref(), &mut key, &SignOptions::default())?;
//! let keyring = Keyring::from_bytes(&std::fs::read("public.asc")?)?;
//! let mut img = sif::Image::open("image.sif")?;
//! let report = integrity::verify(&mut img, &VerifyOptions { keyring, ..Default::default() });
//! report.verdict?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clearsign;
mod digest;
mod dsse;
mod error;
mod legacy;
mod metadata;
mod pgp;
mod select;
mod sign;
mod verify;

pub use digest::{hex, Digest, DigestAlg};
pub use dsse::{PemError, PemPublicKey, PAYLOAD_TYPE as DSSE_PAYLOAD_TYPE};
pub use error::VerifyError;
pub use metadata::{
    descriptor_integrity_bytes, header_integrity_bytes, ImageMetadata, MetadataError,
    ObjectMetadata,
};
pub use pgp::{KeyError, Keyring, SigningKey};
pub use select::{Format, MAX_SIGNATURE_SIZE};
pub use sign::{group_metadata, sign, SignError, SignOptions, SignTarget};
pub use verify::{verify, GroupReport, Report, SignatureReport, VerifyOptions};

/// Decodes a clear-signed message, returning its text (each line ending in
/// `\n`) or `None` when it is not one. Useful to look at what was signed.
pub fn clearsigned_text(data: &[u8]) -> Option<Vec<u8>> {
    clearsign::decode(data).map(|c| c.text)
}
