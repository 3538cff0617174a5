//! Verification outcomes other than success, one per kind of failure a user
//! or an admin must tell apart.

/// Why an image did not verify. Each message is one line that starts with the
/// verdict's name (see [`VerifyError::kind`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The image could not be read.
    #[error("unreadable image: {0}")]
    Image(String),
    /// No object group exists, so there is nothing a signature could cover.
    #[error("unsigned: the image has no object groups to verify")]
    NoGroups,
    /// A data object is outside every group, so no signature can cover it.
    #[error("unsigned: object {id} is not in any object group, so no signature covers it")]
    Ungrouped {
        /// Object id.
        id: u32,
    },
    /// A group has no signature of the kind being verified.
    #[error("unsigned: object group {group} has no signature{}", if *.legacy_only { " (only legacy signatures; they are checked only when legacy verification is asked for)" } else { "" })]
    Unsigned {
        /// Group id.
        group: u32,
        /// The group does carry legacy signatures.
        legacy_only: bool,
    },
    /// Legacy verification: an object that must be covered is not.
    #[error("unsigned: object {id} has no legacy signature")]
    UnsignedObject {
        /// Object id.
        id: u32,
    },
    /// No key given could have made the signature.
    #[error("signed by unknown key: signature object {signature} was made by {} which is not among the given keys", .signer.as_deref().unwrap_or("a key"))]
    UnknownKey {
        /// Signature object id.
        signature: u32,
        /// Issuer fingerprint (OpenPGP) or envelope key ids (DSSE).
        signer: Option<String>,
    },
    /// The key is known but may not sign (expired, revoked, not
    /// signing-capable).
    #[error(
        "signed by unusable key: signature object {signature} was made by {fingerprint}: {reason}"
    )]
    KeyNotUsable {
        /// Signature object id.
        signature: u32,
        /// Certificate fingerprint.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// The signature does not verify with the key that should have made it:
    /// the signed document or the signature itself was altered.
    #[error("bad signature: signature object {signature} does not verify with key {fingerprint}: {reason}")]
    BadSignature {
        /// Signature object id.
        signature: u32,
        /// Certificate fingerprint.
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// The descriptor names a different signer than the one that signed.
    #[error("fingerprint mismatch: signature object {signature} names {} in its descriptor but was made by {signer}", .descriptor.as_deref().unwrap_or("no key"))]
    FingerprintMismatch {
        /// Signature object id.
        signature: u32,
        /// Fingerprint recorded in the descriptor (hex), if any.
        descriptor: Option<String>,
        /// Primary fingerprint of the certificate that signed (hex).
        signer: String,
    },
    /// No key material of the kind the signature needs was given.
    #[error("signed by unknown key: signature object {signature} is {format} but no {} was given", if *.format == "dsse" { "PEM public key" } else { "OpenPGP keyring" })]
    NoKeyMaterial {
        /// Signature object id.
        signature: u32,
        /// Signature format name.
        format: &'static str,
    },
    /// The signature object cannot be decoded.
    #[error("malformed signature: signature object {signature}: {reason}")]
    Malformed {
        /// Signature object id.
        signature: u32,
        /// Why.
        reason: String,
    },
    /// Launch script, magic, version or image id changed after signing.
    #[error("tampered header: the global header does not match signature object {signature}")]
    HeaderTampered {
        /// Signature object id.
        signature: u32,
    },
    /// An object's descriptor changed after signing.
    #[error("tampered descriptor: the descriptor of object {id} does not match signature object {signature}")]
    DescriptorTampered {
        /// Object id.
        id: u32,
        /// Signature object id.
        signature: u32,
    },
    /// An object's data changed after signing.
    #[error(
        "tampered object: the data of object {id} does not match signature object {signature}"
    )]
    ObjectTampered {
        /// Object id.
        id: u32,
        /// Signature object id.
        signature: u32,
    },
    /// Legacy group signature: the concatenated group data changed.
    #[error("tampered object: the data of object group {group} does not match legacy signature object {signature}")]
    GroupDataTampered {
        /// Group id.
        group: u32,
        /// Signature object id.
        signature: u32,
    },
    /// An object is in the group but not in the signed document.
    #[error("object added after signing: object {id} in group {group} is not covered by signature object {signature}")]
    ObjectAdded {
        /// Object id.
        id: u32,
        /// Group id.
        group: u32,
        /// Signature object id.
        signature: u32,
    },
    /// A signature is linked to a group that no longer has any object.
    #[error("object removed after signing: signature object {signature} is linked to object group {group}, which no longer has any object")]
    GroupRemoved {
        /// Group id.
        group: u32,
        /// Signature object id.
        signature: u32,
    },
    /// The signed document lists an object that is no longer in the group.
    #[error("object removed after signing: signature object {signature} covers object {id}, which is not in group {group}")]
    ObjectRemoved {
        /// Object id.
        id: u32,
        /// Group id.
        group: u32,
        /// Signature object id.
        signature: u32,
    },
}

impl VerifyError {
    /// Stable short name of the verdict (for JSON output and scripts).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image(_) => "unreadable-image",
            Self::NoGroups
            | Self::Ungrouped { .. }
            | Self::Unsigned { .. }
            | Self::UnsignedObject { .. } => "unsigned",
            Self::UnknownKey { .. } | Self::NoKeyMaterial { .. } => "unknown-key",
            Self::KeyNotUsable { .. } => "unusable-key",
            Self::BadSignature { .. } => "bad-signature",
            Self::FingerprintMismatch { .. } => "fingerprint-mismatch",
            Self::Malformed { .. } => "malformed-signature",
            Self::HeaderTampered { .. } => "tampered-header",
            Self::DescriptorTampered { .. } => "tampered-descriptor",
            Self::ObjectTampered { .. } | Self::GroupDataTampered { .. } => "tampered-object",
            Self::ObjectAdded { .. } => "object-added",
            Self::ObjectRemoved { .. } | Self::GroupRemoved { .. } => "object-removed",
        }
    }
}
