//! Shared helpers for the `sifrun ecl check` tests: a root-owned site
//! directory, generated OpenPGP keys, signed copies of the reference
//! corpus images, and running the check.
//!
//! The ECL loader accepts only root-owned files that group and others
//! cannot write, so every test that loads a site file starts with
//! `skip_unless_root()` (CI runs as root).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use sequoia_openpgp as openpgp;

use openpgp::cert::CertBuilder;
use openpgp::parse::Parse;
use openpgp::serialize::SerializeInto;
use openpgp::Cert;
use sif::integrity::{self, SignOptions, SigningKey};

use crate::common::{run_sifrun, stderr, stdout};

/// A generated OpenPGP key: the certificate (with its secret parts).
pub struct Key {
    pub cert: Cert,
}

impl Key {
    /// A fresh general-purpose key (Ed25519 primary that can sign).
    pub fn generate(name: &str) -> Key {
        let (cert, _) =
            CertBuilder::general_purpose(Some(format!("{name} <{name}@example.invalid>")))
                .generate()
                .unwrap();
        Key { cert }
    }

    /// The corpus key (secret), as the corpus images were signed with it.
    pub fn corpus(corpus: &Path) -> Key {
        let bytes = std::fs::read(corpus.join("keys/private.asc")).unwrap();
        Key {
            cert: Cert::from_bytes(&bytes).unwrap(),
        }
    }

    /// Upper-case hex primary fingerprint, as ECL `keyfp` lists it.
    pub fn fp(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// Armored public certificate (what a keyring holds).
    pub fn public_armored(&self) -> Vec<u8> {
        self.cert.armored().to_vec().unwrap()
    }

    /// Signs every object group of `image` now.
    pub fn sign(&self, image: &Path) {
        let tsk = self.cert.as_tsk().armored().to_vec().unwrap();
        let mut sk = SigningKey::from_bytes(&tsk, None).unwrap();
        integrity::sign(image, &mut sk, &SignOptions::default()).unwrap();
    }
}

/// A root-owned directory holding the site file, keyrings and images.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("sifrun-ecl-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Site { dir }
    }

    /// `name` inside the site directory, symlinks resolved (ECL dirpaths
    /// must be written as real paths).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join(name)
    }

    /// Writes a file the loader trusts (root-owned as we are root, 0644).
    pub fn trusted(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// A keyring file holding the public certificates of `keys`.
    pub fn keyring(&self, name: &str, keys: &[&Key]) -> PathBuf {
        let bytes: Vec<u8> = keys.iter().flat_map(|k| k.public_armored()).collect();
        self.trusted(name, bytes)
    }

    /// The site file `ecl.toml`: global `keyrings` then `body`.
    pub fn config(&self, keyrings: &[&Path], body: &str) -> PathBuf {
        self.config_named("sifrun-ecl.toml", keyrings, body)
    }

    /// Like [`Site::config`], under another name.
    pub fn config_named(&self, name: &str, keyrings: &[&Path], body: &str) -> PathBuf {
        let rings: Vec<String> = keyrings.iter().map(|p| format!("{p:?}")).collect();
        self.trusted(name, format!("keyrings = [{}]\n\n{body}", rings.join(", ")))
    }

    /// A copy of corpus image `name` at `dest` (relative to the site dir).
    pub fn corpus_copy(&self, corpus: &Path, name: &str, dest: &str) -> PathBuf {
        let p = self.path(dest);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(corpus.join("images").join(name), &p).unwrap();
        p
    }

    /// A copy of the unsigned one-group corpus image, signed by `keys`.
    pub fn signed_image(&self, corpus: &Path, dest: &str, keys: &[&Key]) -> PathBuf {
        let p = self.corpus_copy(corpus, "one-group.sif", dest);
        for k in keys {
            k.sign(&p);
        }
        p
    }
}

/// An inline partition list: one execgroup.
pub fn partition(name: &str, mode: &str, dirpath: &str, keyfp: &[&str]) -> String {
    format!(
        "[partitions.{name}]\nactivated = true\n[[partitions.{name}.execgroup]]\n\
         tagname = \"{name}-group\"\nmode = \"{mode}\"\ndirpath = \"{dirpath}\"\nkeyfp = {}\n\n",
        fps(keyfp)
    )
}

/// A TOML array of fingerprints.
pub fn fps(keyfp: &[&str]) -> String {
    let quoted: Vec<String> = keyfp.iter().map(|f| format!("\"{f}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `sifrun ecl check --config CONFIG --partition PARTITION [--json] IMAGE`.
pub fn ecl_check(config: &Path, partition: &str, image: &Path, json: bool) -> Output {
    let mut args = vec![
        "ecl",
        "check",
        "--config",
        config.to_str().unwrap(),
        "--partition",
        partition,
    ];
    if json {
        args.push("--json");
    }
    args.push(image.to_str().unwrap());
    run_sifrun(&args)
}

/// Asserts exit 0 and an `allowed:` line containing every needle.
pub fn assert_allowed(out: &Output, needles: &[&str]) {
    let text = stdout(out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "expected allowed: {text} {}",
        stderr(out)
    );
    assert!(text.starts_with("allowed: "), "{text}");
    for n in needles {
        assert!(text.contains(n), "{text:?} lacks {n:?}");
    }
}

/// Asserts exit 1 and one refusal line containing every needle.
pub fn assert_refused(out: &Output, needles: &[&str]) {
    let text = stdout(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected refused: {text} {}",
        stderr(out)
    );
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(
        text.contains(": refused by the execution control list of partition "),
        "{text}"
    );
    for n in needles {
        assert!(text.contains(n), "{text:?} lacks {n:?}");
    }
}

/// Asserts the check did not allow: refused (exit 1) or an error (exit 2)
/// with one `sifrun: error:` line; never exit 0, never "allowed".
pub fn assert_not_allowed(out: &Output, what: &str) {
    let code = out.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "{what}: exit {code:?}: {} {}",
        stdout(out),
        stderr(out)
    );
    assert!(
        !stdout(out).contains("allowed: "),
        "{what}: {}",
        stdout(out)
    );
    if code == Some(2) {
        let err = stderr(out);
        assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
        assert!(err.starts_with("sifrun: error: "), "{what}: {err:?}");
    }
}

/// Asserts exit 2 with one error line naming `file` and containing `needle`.
pub fn assert_config_error(out: &Output, file: &Path, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{} {err}", stdout(out));
    assert!(stdout(out).is_empty(), "{}", stdout(out));
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.starts_with("sifrun: error: ") && err.contains(file.to_str().unwrap()),
        "{err:?} does not name {}",
        file.display()
    );
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
}
