//! OpenPGP keys and signatures over clear-signed text, through sequoia.
//!
//! Only the cryptographic part lives here: which key may make or check a
//! signature, and whether it does. Envelope parsing is in [`super::clearsign`].

use std::time::{Duration, SystemTime};

use sequoia_openpgp as openpgp;

use openpgp::cert::prelude::*;
use openpgp::crypto::{KeyPair, Password};
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::Signature;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::MarshalInto;
use openpgp::types::{HashAlgorithm, SignatureType};
use openpgp::{Cert, Packet};

/// Hash algorithms accepted in signatures: those of RFC 4880 that NIST still
/// recommends, the same set sylabs/sif accepts.
const ACCEPTED_HASHES: [HashAlgorithm; 4] = [
    HashAlgorithm::SHA224,
    HashAlgorithm::SHA256,
    HashAlgorithm::SHA384,
    HashAlgorithm::SHA512,
];

/// Allowance for clocks of signer and verifier disagreeing.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Errors loading keys or making signatures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The bytes are not an OpenPGP certificate or key ring.
    #[error("cannot parse OpenPGP key material: {0}")]
    Parse(String),
    /// The key file holds no certificate.
    #[error("no OpenPGP certificate found")]
    Empty,
    /// A signing key was asked for but the file holds only public keys.
    #[error("{0} has no usable secret signing key")]
    NoSigningKey(String),
    /// The secret key is passphrase-protected and no passphrase was given.
    #[error("the secret key {0} is protected by a passphrase")]
    PassphraseNeeded(String),
    /// The passphrase does not decrypt the secret key.
    #[error("wrong passphrase for secret key {0}")]
    BadPassphrase(String),
    /// Creating the signature failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Public OpenPGP certificates that signatures are checked against.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    certs: Vec<Cert>,
}

impl Keyring {
    /// An empty key ring (every signature will be from an unknown key).
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one or more certificates, armored or binary. Secret key
    /// material, if any, is dropped.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let mut certs = Vec::new();
        for c in CertParser::from_bytes(bytes).map_err(|e| KeyError::Parse(e.to_string()))? {
            certs.push(
                c.map_err(|e| KeyError::Parse(e.to_string()))?
                    .strip_secret_key_material(),
            );
        }
        if certs.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { certs })
    }

    /// Adds every certificate of `other`.
    pub fn extend(&mut self, other: Keyring) {
        self.certs.extend(other.certs);
    }

    /// Number of certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// True when there are no certificates.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// Primary-key fingerprints (upper-case hex) of the certificates.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| c.fingerprint().to_hex())
            .collect()
    }
}

/// Why an OpenPGP signature did not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgpFailure {
    /// The signature packet is not something that can be checked.
    Malformed(String),
    /// No certificate in the key ring holds the issuing key.
    UnknownKey {
        /// Issuer fingerprint or key id named by the signature (hex).
        issuer: Option<String>,
    },
    /// The issuing key is known but may not sign now (expired, revoked,
    /// not signing-capable, rejected by policy).
    KeyNotUsable {
        /// Primary fingerprint of the certificate (hex).
        fingerprint: String,
        /// Why.
        reason: String,
    },
    /// The key is known and usable but the signature does not verify.
    BadSignature {
        /// Primary fingerprint of the certificate (hex).
        fingerprint: String,
        /// Why.
        reason: String,
    },
}

/// Checks a signature packet over `signed` (already canonicalised as
/// OpenPGP text: CRLF line ends, no final line end) against `keyring`.
/// On success returns the signing certificate's primary-key fingerprint.
pub(crate) fn verify_text(
    keyring: &Keyring,
    signed: &[u8],
    sig: &Signature,
) -> Result<Vec<u8>, PgpFailure> {
    if !matches!(sig.typ(), SignatureType::Text | SignatureType::Binary) {
        return Err(PgpFailure::Malformed(format!(
            "signature type {} is not a document signature",
            sig.typ()
        )));
    }
    if !ACCEPTED_HASHES.contains(&sig.hash_algo()) {
        return Err(PgpFailure::Malformed(format!(
            "hash algorithm {} is not accepted",
            sig.hash_algo()
        )));
    }
    let issuers = sig.get_issuers();
    if issuers.is_empty() {
        return Err(PgpFailure::Malformed("signature names no issuer".into()));
    }
    let policy = StandardPolicy::new();
    let mut failure = None;
    for cert in &keyring.certs {
        for ka in cert.keys().key_handles(issuers.iter()) {
            let fingerprint = cert.fingerprint().to_hex();
            // Checked as of now, as the reference library does: a key that
            // has since expired or been revoked no longer vouches for images.
            let usable = ka
                .clone()
                .with_policy(&policy, None)
                .map_err(|e| e.to_string())
                .and_then(|vka| {
                    vka.alive().map_err(|e| e.to_string())?;
                    use openpgp::types::RevocationStatus::Revoked;
                    if let Revoked(_) = vka.valid_cert().revocation_status() {
                        return Err("certificate is revoked".to_string());
                    }
                    if let Revoked(_) = vka.revocation_status() {
                        return Err("key is revoked".to_string());
                    }
                    if !vka.for_signing() {
                        return Err("key is not signing-capable".to_string());
                    }
                    Ok(())
                });
            if let Err(reason) = usable {
                failure.get_or_insert(PgpFailure::KeyNotUsable {
                    fingerprint,
                    reason: first_line(&reason),
                });
                continue;
            }
            if let Err(e) = sig.signature_alive(None, CLOCK_SKEW) {
                return Err(PgpFailure::BadSignature {
                    fingerprint,
                    reason: first_line(&e.to_string()),
                });
            }
            match sig.verify_message(ka.key(), signed) {
                Ok(()) => return Ok(cert.fingerprint().as_bytes().to_vec()),
                Err(e) => {
                    failure = Some(PgpFailure::BadSignature {
                        fingerprint,
                        reason: first_line(&e.to_string()),
                    })
                }
            }
        }
    }
    Err(failure.unwrap_or_else(|| PgpFailure::UnknownKey {
        issuer: sig
            .issuer_fingerprints()
            .next()
            .map(|f| f.to_hex())
            .or_else(|| issuers.first().map(|h| h.to_hex())),
    }))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Parses exactly one signature packet from `bytes`.
///
/// Signatures made by Singularity < 3.6 (legacy images) carry MPIs with
/// leading zero bits, which sequoia rejects and Go accepts; when parsing
/// fails such a packet is re-encoded with minimal MPIs and parsed again.
/// MPIs are outside the signed data, so this changes nothing that is
/// verified.
pub(crate) fn parse_signature(bytes: &[u8]) -> Result<Signature, String> {
    match parse_one(bytes) {
        Ok(sig) => Ok(sig),
        Err(e) => match canonical_mpis(bytes) {
            Some(fixed) => parse_one(&fixed).map_err(|_| e),
            None => Err(e),
        },
    }
}

fn parse_one(bytes: &[u8]) -> Result<Signature, String> {
    let pile = openpgp::PacketPile::from_bytes(bytes).map_err(|e| first_line(&e.to_string()))?;
    let mut packets = pile.into_children();
    match (packets.next(), packets.next()) {
        (Some(Packet::Signature(sig)), None) => Ok(sig),
        (Some(Packet::Signature(_)), Some(_)) => Err("more than one packet".into()),
        (Some(Packet::Unknown(u)), _) => Err(format!(
            "cannot parse {}: {}",
            u.tag(),
            first_line(&u.error().to_string())
        )),
        (Some(p), _) => Err(format!("expected a signature packet, found {}", p.tag())),
        (None, _) => Err("no packet".into()),
    }
}

/// Re-encodes a single v4 signature packet with minimal MPIs; `None` if
/// `bytes` is not exactly one such packet.
fn canonical_mpis(bytes: &[u8]) -> Option<Vec<u8>> {
    let (&b0, rest) = bytes.split_first()?;
    if b0 & 0x80 == 0 {
        return None;
    }
    let (tag, len, rest) = if b0 & 0x40 != 0 {
        let (&l0, r) = rest.split_first()?;
        match l0 {
            0..=191 => (b0 & 0x3f, usize::from(l0), r),
            192..=223 => {
                let (&l1, r) = r.split_first()?;
                (
                    b0 & 0x3f,
                    ((usize::from(l0) - 192) << 8) + usize::from(l1) + 192,
                    r,
                )
            }
            255 => {
                let l = u32::from_be_bytes(r.get(..4)?.try_into().ok()?);
                (b0 & 0x3f, usize::try_from(l).ok()?, &r[4..])
            }
            _ => return None, // partial lengths never occur in signatures
        }
    } else {
        let tag = (b0 >> 2) & 0x0f;
        match b0 & 3 {
            0 => (tag, usize::from(*rest.first()?), &rest[1..]),
            1 => (
                tag,
                usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
                &rest[2..],
            ),
            2 => {
                let l = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
                (tag, usize::try_from(l).ok()?, &rest[4..])
            }
            _ => (tag, rest.len(), rest),
        }
    };
    if tag != 2 || len != rest.len() || rest.first() != Some(&4) {
        return None;
    }
    let body = rest;
    // version, type, pk algo, hash algo, then two subpacket areas.
    let mut pos = 4;
    for _ in 0..2 {
        let n = usize::from(u16::from_be_bytes(body.get(pos..pos + 2)?.try_into().ok()?));
        pos = pos.checked_add(2 + n)?;
    }
    pos = pos.checked_add(2)?; // hash prefix
    let mut out = body.get(..pos)?.to_vec();
    let mut mpis = body.get(pos..)?;
    while !mpis.is_empty() {
        let bits = usize::from(u16::from_be_bytes(mpis.get(..2)?.try_into().ok()?));
        let n = bits.div_ceil(8);
        let value = mpis.get(2..2 + n)?;
        mpis = &mpis[2 + n..];
        let start = value.iter().position(|&b| b != 0).unwrap_or(value.len());
        let value = &value[start..];
        let bits = value.first().map_or(0, |&b| {
            (value.len() - 1) * 8 + (8 - b.leading_zeros() as usize)
        });
        out.extend_from_slice(&u16::try_from(bits).ok()?.to_be_bytes());
        out.extend_from_slice(value);
    }
    let len = u32::try_from(out.len()).ok()?;
    let mut packet = vec![0xc2, 0xff];
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&out);
    Some(packet)
}

/// A secret OpenPGP key ready to sign, with the certificate it belongs to.
pub struct SigningKey {
    fingerprint: Vec<u8>,
    keypair: KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("fingerprint", &super::digest::hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// True when the first usable secret signing key in `bytes` is
    /// passphrase-protected (so a caller knows to ask for one).
    pub fn needs_passphrase(bytes: &[u8]) -> Result<bool, KeyError> {
        let cert = Cert::from_bytes(bytes).map_err(|e| KeyError::Parse(e.to_string()))?;
        let policy = StandardPolicy::new();
        let key = pick_signing_key(&cert, &policy, SystemTime::now())?;
        Ok(!key.has_unencrypted_secret())
    }

    /// Loads the certificate in `bytes` (armored or binary transferable
    /// secret key) and unlocks its signing key. The primary key is preferred,
    /// as the reference implementation signs with it; a signing subkey is
    /// used when the primary key cannot sign.
    pub fn from_bytes(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<Self, KeyError> {
        Self::from_bytes_at(bytes, passphrase, SystemTime::now())
    }

    /// [`SigningKey::from_bytes`] with the key's validity (expiry,
    /// revocation) evaluated at `time` instead of now, e.g. to sign with a
    /// fixed signature time.
    pub fn from_bytes_at(
        bytes: &[u8],
        passphrase: Option<&[u8]>,
        time: SystemTime,
    ) -> Result<Self, KeyError> {
        let cert = Cert::from_bytes(bytes).map_err(|e| KeyError::Parse(e.to_string()))?;
        let policy = StandardPolicy::new();
        let key = pick_signing_key(&cert, &policy, time)?;
        let name = cert.fingerprint().to_hex();
        let key = if key.has_unencrypted_secret() {
            key
        } else {
            let pass = passphrase.ok_or_else(|| KeyError::PassphraseNeeded(name.clone()))?;
            key.decrypt_secret(&Password::from(pass))
                .map_err(|_| KeyError::BadPassphrase(name.clone()))?
        };
        let keypair = key
            .into_keypair()
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Ok(Self {
            fingerprint: cert.fingerprint().as_bytes().to_vec(),
            keypair,
        })
    }

    /// Primary-key fingerprint of the certificate (20 bytes for v4 keys).
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }

    /// A binary OpenPGP text signature (SHA-256) over `text`, which must be
    /// canonical (no line ends, as for the one-line metadata document).
    pub(crate) fn sign_text(&mut self, text: &[u8], time: SystemTime) -> Result<Vec<u8>, KeyError> {
        let sig = SignatureBuilder::new(SignatureType::Text)
            .set_hash_algo(HashAlgorithm::SHA256)
            .set_signature_creation_time(time)
            .and_then(|b| b.sign_message(&mut self.keypair, text))
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        Packet::from(sig)
            .to_vec()
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

type SecretKey =
    openpgp::packet::Key<openpgp::packet::key::SecretParts, openpgp::packet::key::UnspecifiedRole>;

fn pick_signing_key(
    cert: &Cert,
    policy: &StandardPolicy,
    time: SystemTime,
) -> Result<SecretKey, KeyError> {
    let name = cert.fingerprint().to_hex();
    let vc = cert
        .with_policy(policy, time)
        .map_err(|e| KeyError::NoSigningKey(format!("{name} ({})", first_line(&e.to_string()))))?;
    let mut keys: Vec<_> = vc
        .keys()
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .secret()
        .collect();
    // Primary first.
    keys.sort_by_key(|k| !k.primary());
    let ka = keys
        .into_iter()
        .next()
        .ok_or(KeyError::NoSigningKey(name))?;
    Ok(ka.key().clone().role_into_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_mpis_refuses_garbage() {
        for b in [
            &b""[..],
            b"\x00",
            b"\xc2",
            b"\x88\x05\x04",
            b"\xc2\x03\x04\x00\x01",
        ] {
            assert!(canonical_mpis(b).is_none());
            assert!(parse_signature(b).is_err());
        }
    }
}
