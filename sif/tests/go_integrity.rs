//! Signature interoperability with the reference Go library (sylabs/sif
//! pkg/integrity as packaged by Debian), both ways: images signed here
//! verify in Go, images signed by Go verify here, and both agree on the
//! signed document and on tampering.

mod common;

use std::path::{Path, PathBuf};

use common::{checker, corpus_dir, run_checker};
use sif::integrity::{
    self, Keyring, SignOptions, SignTarget, SigningKey, VerifyError, VerifyOptions,
};
use sif::Image;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    corpus: PathBuf,
    key: PathBuf,
}

fn setup() -> Option<(&'static Path, Setup)> {
    let bin = checker()?;
    let corpus = corpus_dir()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let key = corpus.join("../keys/private.asc");
    Some((
        bin,
        Setup {
            _tmp: tmp,
            dir,
            corpus,
            key,
        },
    ))
}

fn rust_verify(path: &Path, key: &Path) -> Result<(), VerifyError> {
    let kr = Keyring::from_bytes(&std::fs::read(key).unwrap()).unwrap();
    let mut img = Image::open(path).unwrap();
    integrity::verify(
        &mut img,
        &VerifyOptions {
            keyring: kr,
            ..Default::default()
        },
    )
    .verdict
}

#[test]
fn images_signed_here_verify_in_go() {
    let Some((bin, t)) = setup() else { return };
    let mut sk = SigningKey::from_bytes(&std::fs::read(&t.key).unwrap(), None).unwrap();
    for (name, target) in [
        ("one-group.sif", SignTarget::AllGroups),
        ("two-groups.sif", SignTarget::AllGroups),
    ] {
        let p = t.dir.join(name);
        std::fs::copy(t.corpus.join(name), &p).unwrap();
        integrity::sign(
            &p,
            &mut sk,
            &SignOptions {
                target,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            run_checker(bin, &["verify", s(&p), s(&t.key)]).trim(),
            "ok",
            "{name}"
        );
        // Go notices tampering too, and so do we.
        let d = Image::open(&p).unwrap().descriptor(2).unwrap().clone();
        let mut b = std::fs::read(&p).unwrap();
        b[d.offset as usize] ^= 1;
        std::fs::write(&p, b).unwrap();
        let go = run_checker(bin, &["verify", s(&p), s(&t.key)]);
        assert!(go.contains("data object integrity compromised: 2"), "{go}");
        assert!(matches!(
            rust_verify(&p, &t.key),
            Err(VerifyError::ObjectTampered { id: 2, .. })
        ));
    }
}

#[test]
fn images_signed_by_go_verify_here() {
    let Some((bin, t)) = setup() else { return };
    for (name, extra) in [
        ("one-group.sif", &[][..]),
        ("two-groups.sif", &[][..]),
        ("two-groups.sif", &["group", "2"][..]),
    ] {
        let p = t.dir.join(format!("go-{name}"));
        std::fs::copy(t.corpus.join(name), &p).unwrap();
        let mut args = vec!["sign", s(&p), s(&t.key)];
        args.extend_from_slice(extra);
        run_checker(bin, &args);
        let got = rust_verify(&p, &t.key);
        if extra.is_empty() {
            assert_eq!(got, Ok(()), "{name}");
        } else {
            assert!(
                matches!(got, Err(VerifyError::Unsigned { group: 1, .. })),
                "{got:?}"
            );
        }
    }
}

#[test]
fn signed_document_is_byte_identical_to_go() {
    let Some((bin, t)) = setup() else { return };
    for (name, groups) in [
        ("one-group.sif", &[1u32][..]),
        ("two-groups.sif", &[1, 2][..]),
    ] {
        let p = t.corpus.join(name);
        let mut img = Image::open(&p).unwrap();
        for &g in groups {
            let ids: Vec<u32> = img
                .descriptors()
                .iter()
                .filter(|d| d.group_id == Some(g))
                .map(|d| d.id)
                .collect();
            let ours = integrity::group_metadata(&mut img, g, &ids, integrity::DigestAlg::Sha256)
                .unwrap()
                .to_json();
            let go = run_checker(bin, &["metadata", s(&p), s(&t.key), &g.to_string()]);
            assert_eq!(ours, go, "{name} group {g}");
        }
    }
}
