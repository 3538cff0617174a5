//! The LUKS passphrase of an encrypted image, and where it comes from.
//!
//! Two schemes, as Apptainer has them:
//!
//! * passphrase: what the user types (or keeps in a file) is the LUKS
//!   passphrase; the image stores nothing about it;
//! * PEM: `build` draws a random 64-byte passphrase, encrypts it to the
//!   RSA public key with RSA-OAEP (SHA-256, no label) and stores the result
//!   as a crypto-message object (format PEM, type RSA-OAEP) linked to the
//!   partition: DER OCTET STRING in a PEM block labelled `MESSAGE`. Running
//!   needs the RSA private key to decrypt it. Keys are PKCS#1 PEM as
//!   Apptainer uses (PKCS#8/SPKI accepted too); encrypted PEM is refused.
//!
//! Passphrases are kept in [`Zeroizing`] buffers so they are wiped on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use der::{Decode, Encode};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Length of the random passphrase of PEM-encrypted images.
pub const RANDOM_PASSPHRASE_LEN: usize = 64;
/// PEM label of the wrapped key.
pub const MESSAGE_LABEL: &str = "MESSAGE";
/// Largest key or passphrase file read (a sanity bound).
const MAX_KEY_FILE: u64 = 1 << 20;

/// Where the key of an encrypted image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// RSA key in PEM: public to build, private to run.
    Pem(PathBuf),
    /// File holding the passphrase (one trailing newline is not part of it).
    PassphraseFile(PathBuf),
    /// Ask on the terminal.
    Prompt,
}

/// What `build` needs: the LUKS passphrase and, for PEM, the object to
/// store in the image.
pub struct BuildKey {
    /// LUKS passphrase.
    pub passphrase: Zeroizing<Vec<u8>>,
    /// PEM `MESSAGE` holding the RSA-OAEP-wrapped passphrase.
    pub wrapped: Option<Vec<u8>>,
}

impl KeySource {
    /// The passphrase for a new image (prompting twice when asked to).
    pub fn for_build(&self) -> Result<BuildKey> {
        match self {
            KeySource::Pem(path) => {
                let public = load_public_key(path)?;
                let mut passphrase = Zeroizing::new(vec![0u8; RANDOM_PASSPHRASE_LEN]);
                getrandom::getrandom(&mut passphrase)
                    .map_err(|e| Error::system(format!("random numbers: {e}")))?;
                let wrapped = wrap(&public, &passphrase)?;
                Ok(BuildKey {
                    passphrase,
                    wrapped: Some(wrapped),
                })
            }
            KeySource::PassphraseFile(path) => Ok(BuildKey {
                passphrase: read_passphrase_file(path)?,
                wrapped: None,
            }),
            KeySource::Prompt => {
                let first = prompt("Enter passphrase for encryption: ")?;
                let again = prompt("Retype passphrase: ")?;
                if first != again {
                    return Err(Error::usage("passphrases do not match"));
                }
                Ok(BuildKey {
                    passphrase: first,
                    wrapped: None,
                })
            }
        }
    }

    /// The passphrase that opens an existing image; `wrapped` is the
    /// image's key object, if it has one.
    pub fn for_run(&self, wrapped: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>> {
        match self {
            KeySource::Pem(path) => {
                let wrapped = wrapped.ok_or_else(|| {
                    Error::usage(
                        "this image was encrypted with a passphrase, not a PEM key: use --passphrase-file or the prompt",
                    )
                })?;
                let private = load_private_key(path)?;
                unwrap(&private, wrapped)
            }
            KeySource::PassphraseFile(path) => read_passphrase_file(path),
            KeySource::Prompt => prompt("Enter passphrase for the encrypted image: "),
        }
    }
}

fn read_limited(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::usage(format!("{what} {}: {e}", path.display())))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(Error::usage(format!(
            "{what} {} is too large",
            path.display()
        )));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::usage(format!("{what} {}: {e}", path.display())))
}

/// The LUKS passphrase from the contents of one key file, whose kind the
/// image decides (the Slurm option `--container-key-file` takes either):
/// for an image with a key object (`wrapped`), a PEM RSA private key that
/// unwraps it; otherwise a passphrase file (one trailing newline dropped).
/// `file` is read to its end (bounded); `path` names it in errors.
pub fn passphrase_from_key_file(
    file: &mut File,
    path: &Path,
    wrapped: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut data = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::usage(format!("key file {}: {e}", path.display())))?;
    if data.len() as u64 > MAX_KEY_FILE {
        return Err(Error::usage(format!(
            "key file {} is too large",
            path.display()
        )));
    }
    let looks_pem = data.starts_with(b"-----BEGIN ");
    match wrapped {
        Some(wrapped) => {
            let text = std::str::from_utf8(&data)
                .ok()
                .filter(|_| looks_pem)
                .ok_or_else(|| {
                    Error::usage(format!(
                        "key file {}: this image was encrypted to an RSA key: give its PEM private key",
                        path.display()
                    ))
                })?;
            let private = private_key_from_pem(text, path)?;
            unwrap(&private, wrapped)
        }
        None if looks_pem => Err(Error::usage(format!(
            "key file {}: this image was encrypted with a passphrase, not a PEM key: give a file holding the passphrase",
            path.display()
        ))),
        None => passphrase_from(data, "key file", path),
    }
}

/// Reads a passphrase file; a single trailing `\n` (or `\r\n`) is dropped
/// so that `echo secret > file` means "secret", as when typed.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let data = read_limited(path, "passphrase file")?;
    passphrase_from(data, "passphrase file", path)
}

/// A file's bytes as a passphrase: one trailing `\n` (or `\r\n`) dropped,
/// empty refused (`what` names the file in the message).
fn passphrase_from(
    mut data: Zeroizing<Vec<u8>>,
    what: &str,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>> {
    if data.ends_with(b"\n") {
        data.pop();
        if data.ends_with(b"\r") {
            data.pop();
        }
    }
    if data.is_empty() {
        return Err(Error::usage(format!("{what} {} is empty", path.display())));
    }
    Ok(data)
}

fn pem_text(path: &Path) -> Result<Zeroizing<String>> {
    let bytes = read_limited(path, "PEM key")?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::usage(format!("PEM key {} is not text", path.display())))?;
    Ok(Zeroizing::new(text))
}

/// Loads an RSA public key (PKCS#1 `RSA PUBLIC KEY`, or SPKI `PUBLIC KEY`).
pub fn load_public_key(path: &Path) -> Result<RsaPublicKey> {
    let text = pem_text(path)?;
    RsaPublicKey::from_pkcs1_pem(&text)
        .or_else(|_| RsaPublicKey::from_public_key_pem(&text))
        .map_err(|_| {
            Error::usage(format!(
                "{} is not a PEM RSA public key (PKCS#1 or SPKI)",
                path.display()
            ))
        })
}

/// Loads an RSA private key (PKCS#1 `RSA PRIVATE KEY`, or PKCS#8).
pub fn load_private_key(path: &Path) -> Result<RsaPrivateKey> {
    let text = pem_text(path)?;
    private_key_from_pem(&text, path)
}

/// Parses an RSA private key from PEM text; `path` names it in errors.
fn private_key_from_pem(text: &str, path: &Path) -> Result<RsaPrivateKey> {
    if text.contains("ENCRYPTED") {
        return Err(Error::usage(format!(
            "{}: passphrase-protected PEM keys are not supported",
            path.display()
        )));
    }
    RsaPrivateKey::from_pkcs1_pem(text)
        .or_else(|_| RsaPrivateKey::from_pkcs8_pem(text))
        .map_err(|_| {
            Error::usage(format!(
                "{} is not a PEM RSA private key (PKCS#1 or PKCS#8)",
                path.display()
            ))
        })
}

/// RSA-OAEP(SHA-256) encrypts `secret` to `key` and wraps it as a PEM
/// `MESSAGE`. Secrets longer than one OAEP block (k − 66 bytes) are
/// encrypted block by block and the ciphertexts concatenated; a 64-byte
/// key needs one block with any RSA key of 1024 bits or more.
pub fn wrap(key: &RsaPublicKey, secret: &[u8]) -> Result<Vec<u8>> {
    let mut rng = rand_core::OsRng;
    let block = key.size().saturating_sub(66).max(1);
    let mut ciphertext = Vec::new();
    for chunk in secret.chunks(block) {
        let c = key
            .encrypt(&mut rng, Oaep::new::<Sha256>(), chunk)
            .map_err(|e| Error::system(format!("encrypting the image key: {e}")))?;
        ciphertext.extend_from_slice(&c);
    }
    let der = der::asn1::OctetString::new(ciphertext)
        .and_then(|o| o.to_der())
        .map_err(|e| Error::system(format!("encoding the image key: {e}")))?;
    let pem = der::pem::encode_string(MESSAGE_LABEL, der::pem::LineEnding::LF, &der)
        .map_err(|e| Error::system(format!("encoding the image key: {e}")))?;
    Ok(pem.into_bytes())
}

/// Reverses [`wrap`] with the private key.
pub fn unwrap(key: &RsaPrivateKey, message: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let bad = |why: &str| Error::image(format!("the image's key object is malformed ({why})"));
    let (label, der) = der::pem::decode_vec(message).map_err(|_| bad("not PEM"))?;
    if label != MESSAGE_LABEL {
        return Err(bad("not a PEM MESSAGE"));
    }
    let octets =
        der::asn1::OctetString::from_der(&der).map_err(|_| bad("not a DER octet string"))?;
    let ciphertext = octets.as_bytes();
    let k = key.size();
    if ciphertext.is_empty() || ciphertext.len() % k != 0 {
        return Err(Error::image(
            "the image's key was encrypted to a different RSA key (wrong key size)",
        ));
    }
    let mut secret = Zeroizing::new(Vec::new());
    for block in ciphertext.chunks(k) {
        let plain = Zeroizing::new(key.decrypt(Oaep::new::<Sha256>(), block).map_err(|_| {
            Error::image("the PEM key does not decrypt this image's key (wrong private key)")
        })?);
        secret.extend_from_slice(&plain);
    }
    Ok(secret)
}

/// Asks for a passphrase on the controlling terminal, echo off.
pub fn prompt(question: &str) -> Result<Zeroizing<Vec<u8>>> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let tty = File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            Error::usage(
                "the image is encrypted and there is no terminal to ask for its key: use --passphrase-file or --pem-path",
            )
        })?;
    let saved = tcgetattr(tty.as_fd()).map_err(|e| Error::system(format!("terminal: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(tty.as_fd(), SetArg::TCSANOW, &quiet)
        .map_err(|e| Error::system(format!("terminal: {e}")))?;
    let mut line = Zeroizing::new(String::new());
    let result = (&tty)
        .write_all(question.as_bytes())
        .and_then(|_| BufReader::new(&tty).read_line(&mut line));
    let _ = tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    result.map_err(|e| Error::system(format!("reading the passphrase: {e}")))?;
    let text = line.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(Error::usage("empty passphrase"));
    }
    Ok(Zeroizing::new(text.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_key() {
        let mut rng = rand_core::OsRng;
        let a = RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let b = RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let secret = [42u8; RANDOM_PASSPHRASE_LEN];
        let msg = wrap(&a.to_public_key(), &secret).unwrap();
        assert!(String::from_utf8_lossy(&msg).starts_with("-----BEGIN MESSAGE-----\n"));
        // 1024-bit keys take 62 bytes per block: two blocks.
        assert_eq!(&unwrap(&a, &msg).unwrap()[..], &secret[..]);
        let e = unwrap(&b, &msg).unwrap_err();
        assert!(e.message().contains("wrong private key"), "{}", e.message());
        assert!(unwrap(&a, b"garbage").is_err());
    }

    #[test]
    fn passphrase_file_drops_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "secret\n").unwrap();
        assert_eq!(&read_passphrase_file(&p).unwrap()[..], b"secret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_passphrase_file(&p).is_err());
    }
}
