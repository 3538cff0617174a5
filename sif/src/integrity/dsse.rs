//! DSSE envelopes (Dead Simple Signing Envelope) signed with PEM keys, as
//! sylabs/sif ≥ 2.9 writes them when signing with a non-OpenPGP key, e.g.
//! `apptainer sign --key key.pem`. Verification only.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde::Deserialize;

use super::digest::{hex, DigestAlg};
use crate::types::HashType;

/// The payload type of a SIF metadata envelope.
pub const PAYLOAD_TYPE: &str = "application/vnd.sylabs.sif-metadata+json";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload_type: String,
    payload: String,
    #[serde(default)]
    signatures: Option<Vec<RawSignature>>,
}

#[derive(Deserialize)]
struct RawSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

/// A parsed envelope.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Decoded payload (the metadata document).
    pub payload: Vec<u8>,
    /// `(keyid, signature bytes)` pairs; the key id is informational only.
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// True when `data` is JSON carrying the SIF metadata payload type: the
/// reference library's rule for picking the DSSE decoder.
pub fn is_envelope(data: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        payload_type: String,
    }
    // Like Go's json.Decoder, accept trailing bytes after the first value.
    let mut de = serde_json::Deserializer::from_slice(data).into_iter::<Probe>();
    matches!(de.next(), Some(Ok(p)) if p.payload_type == PAYLOAD_TYPE)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// Parses an envelope; `Err` says why it is malformed.
pub fn parse(data: &[u8]) -> Result<Envelope, String> {
    let mut de = serde_json::Deserializer::from_slice(data).into_iter::<RawEnvelope>();
    let raw = match de.next() {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(format!("envelope is not valid JSON: {e}")),
        None => return Err("empty envelope".into()),
    };
    if raw.payload_type != PAYLOAD_TYPE {
        return Err(format!("unexpected payload type {:?}", raw.payload_type));
    }
    let payload = b64(&raw.payload).ok_or("payload is not base64")?;
    let mut signatures = Vec::new();
    for s in raw.signatures.unwrap_or_default() {
        let sig = b64(&s.sig).ok_or("signature is not base64")?;
        signatures.push((s.keyid, sig));
    }
    if signatures.is_empty() {
        return Err("envelope has no signatures".into());
    }
    Ok(Envelope {
        payload,
        signatures,
    })
}

/// DSSE pre-authentication encoding: the bytes actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

#[derive(Clone)]
enum Key {
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// A PEM public key that DSSE signatures are checked against.
#[derive(Clone)]
pub struct PemPublicKey {
    key: Key,
    id: String,
}

impl std::fmt::Debug for PemPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// Why a PEM key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load PEM public key: {0}")]
pub struct PemError(String);

impl PemPublicKey {
    /// Loads a `PUBLIC KEY` (SubjectPublicKeyInfo: Ed25519, RSA, ECDSA P-256
    /// or P-384) or `RSA PUBLIC KEY` (PKCS#1) PEM block.
    pub fn from_pem(text: &str) -> Result<Self, PemError> {
        let (label, der) = pem_block(text).ok_or_else(|| PemError("no PEM block".into()))?;
        let key = match label.as_str() {
            "PUBLIC KEY" => spki_key(&der)?,
            "RSA PUBLIC KEY" => {
                use rsa::pkcs1::DecodeRsaPublicKey;
                Key::Rsa(Box::new(
                    rsa::RsaPublicKey::from_pkcs1_der(&der).map_err(|e| PemError(e.to_string()))?,
                ))
            }
            other => return Err(PemError(format!("unsupported PEM block {other:?}"))),
        };
        let kind = match key {
            Key::Ed25519(_) => "ed25519",
            Key::Rsa(_) => "rsa",
            Key::P256(_) => "ecdsa-p256",
            Key::P384(_) => "ecdsa-p384",
        };
        let id = format!(
            "{kind} SHA256:{}",
            STANDARD_NO_PAD.encode(DigestAlg::Sha256.digest(&der))
        );
        Ok(Self { key, id })
    }

    /// Key type and SHA-256 of its encoding, e.g. `ed25519 SHA256:…`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks `sig` over `message` (the PAE). `hash` is the descriptor's
    /// hash type, used by RSA and ECDSA; Ed25519 signs the message itself.
    pub fn verify(&self, hash: HashType, message: &[u8], sig: &[u8]) -> bool {
        let alg = match hash {
            HashType::Sha384 => DigestAlg::Sha384,
            HashType::Sha512 => DigestAlg::Sha512,
            _ => DigestAlg::Sha256,
        };
        match &self.key {
            Key::Ed25519(k) => {
                use ed25519_dalek::Verifier;
                // Plain (RFC 8032) verification, as Go's crypto/ed25519 does.
                ed25519_dalek::Signature::from_slice(sig)
                    .is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            Key::Rsa(k) => {
                let digest = alg.digest(message);
                let scheme = match alg {
                    DigestAlg::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    DigestAlg::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                    _ => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                };
                k.verify(scheme, &digest, sig).is_ok()
            }
            Key::P256(k) => {
                use p256::ecdsa::signature::hazmat::PrehashVerifier;
                p256::ecdsa::Signature::from_der(sig)
                    .is_ok_and(|s| k.verify_prehash(&alg.digest(message), &s).is_ok())
            }
            Key::P384(k) => {
                use p384::ecdsa::signature::hazmat::PrehashVerifier;
                p384::ecdsa::Signature::from_der(sig)
                    .is_ok_and(|s| k.verify_prehash(&alg.digest(message), &s).is_ok())
            }
        }
    }
}

fn spki_key(der: &[u8]) -> Result<Key, PemError> {
    use p256::pkcs8::DecodePublicKey;
    if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
        return Ok(Key::Ed25519(k));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
        return Ok(Key::Rsa(Box::new(k)));
    }
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
        return Ok(Key::P256(k));
    }
    if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
        return Ok(Key::P384(k));
    }
    Err(PemError(format!(
        "unsupported public key type (SubjectPublicKeyInfo sha256 {})",
        hex(&DigestAlg::Sha256.digest(der))
    )))
}

/// The label and decoded body of the first PEM block in `text`.
fn pem_block(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: String = body[..end]
        .lines()
        .filter(|l| !l.contains(':'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    Some((label.to_string(), STANDARD.decode(b64).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_layout() {
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }

    #[test]
    fn envelope_detection_and_parsing() {
        let env = format!(
            r#"{{"payloadType":"{PAYLOAD_TYPE}","payload":"e30=","signatures":[{{"keyid":"k","sig":"AAEC"}}]}}"#
        );
        assert!(is_envelope(env.as_bytes()));
        let e = parse(env.as_bytes()).unwrap();
        assert_eq!(e.payload, b"{}");
        assert_eq!(e.signatures, vec![("k".to_string(), vec![0, 1, 2])]);
        assert!(!is_envelope(b"-----BEGIN PGP SIGNED MESSAGE-----"));
        assert!(!is_envelope(br#"{"payloadType":"other"}"#));
        for bad in [
            &br#"{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"!!","signatures":[]}"#[..],
            br#"{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"e30=","signatures":[]}"#,
            br#"{"payloadType":"application/vnd.sylabs.sif-metadata+json","payload":"e30=","signatures":[{"sig":"!"}]}"#,
            b"{",
        ] {
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn bad_pem_is_an_error() {
        for t in [
            "",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(PemPublicKey::from_pem(t).is_err(), "{t:?}");
        }
    }
}
