//! Signing and verification against the reference corpus and real keys:
//! corpus signatures verify with the key that made them and fail with any
//! other, our signatures verify, every tampered region is named, legacy and
//! DSSE signatures verify only with what they need.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::corpus_dir;
use openpgp::cert::CertBuilder;
use openpgp::serialize::SerializeInto;
use sequoia_openpgp as openpgp;
use sif::integrity::{
    self, group_metadata, DigestAlg, Format, Keyring, PemPublicKey, SignOptions, SignTarget,
    SigningKey, VerifyError, VerifyOptions,
};
use sif::{DataType, HashType, Image, Link};

const CORPUS_FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

/// The corpus' signing key (secret, unencrypted), next to the images.
fn corpus_key(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("../keys/private.asc"))
        .expect("test/keys/private.asc next to the images")
}

/// A freshly generated signing key, armored secret key.
fn other_key() -> Vec<u8> {
    let (cert, _) = CertBuilder::general_purpose(Some("Other <other@example.invalid>"))
        .generate()
        .unwrap();
    let tsk = cert.as_tsk().armored().to_vec().unwrap();
    tsk
}

fn keyring(bytes: &[u8]) -> Keyring {
    Keyring::from_bytes(bytes).unwrap()
}

fn verify_with(path: &Path, opts: &VerifyOptions) -> Result<(), VerifyError> {
    let mut img = Image::open(path).unwrap();
    integrity::verify(&mut img, opts).verdict
}

fn pgp(kr: Keyring) -> VerifyOptions {
    VerifyOptions {
        keyring: kr,
        ..Default::default()
    }
}

fn copy_to(dir: &Path, src: &Path) -> PathBuf {
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap();
    dst
}

/// PGP-signed images of the corpus (Debian 2.8.3 and upstream names).
fn pgp_images(dir: &Path) -> Vec<PathBuf> {
    [
        "one-group-signed.sif",
        "two-groups-signed.sif",
        "one-group-signed-pgp.sif",
        "two-groups-signed-pgp.sif",
    ]
    .iter()
    .map(|n| dir.join(n))
    .filter(|p| p.is_file())
    .collect()
}

#[test]
fn corpus_signatures_verify_with_their_key_only() {
    let Some(dir) = corpus_dir() else { return };
    let images = pgp_images(&dir);
    assert!(!images.is_empty(), "no signed images in {}", dir.display());
    let key = corpus_key(&dir);
    let other = other_key();
    for img in &images {
        let mut i = Image::open(img).unwrap();
        let report = integrity::verify(&mut i, &pgp(keyring(&key)));
        assert_eq!(report.verdict, Ok(()), "{}", img.display());
        assert_eq!(report.signers(), vec![CORPUS_FP.to_string()]);
        assert!(report
            .signatures
            .iter()
            .all(|s| s.format == Format::OpenPgp));

        match verify_with(img, &pgp(keyring(&other))) {
            Err(VerifyError::UnknownKey { signer, .. }) => {
                assert_eq!(signer.as_deref(), Some(CORPUS_FP), "{}", img.display())
            }
            other => panic!("{}: {other:?}", img.display()),
        }
        assert!(matches!(
            verify_with(img, &VerifyOptions::default()),
            Err(VerifyError::NoKeyMaterial {
                format: "openpgp",
                ..
            })
        ));
        // A keyring holding both keys is fine.
        let mut both = keyring(&other);
        both.extend(keyring(&key));
        assert_eq!(verify_with(img, &pgp(both)), Ok(()));
    }
}

#[test]
fn unsigned_corpus_images_name_the_group() {
    let Some(dir) = corpus_dir() else { return };
    let kr = keyring(&corpus_key(&dir));
    for name in ["one-group.sif", "two-groups.sif"] {
        assert_eq!(
            verify_with(&dir.join(name), &pgp(kr.clone())),
            Err(VerifyError::Unsigned {
                group: 1,
                legacy_only: false
            }),
            "{name}"
        );
    }
    assert_eq!(
        verify_with(&dir.join("empty.sif"), &pgp(kr.clone())),
        Err(VerifyError::NoGroups)
    );
}

#[test]
fn legacy_corpus_images_verify_only_when_asked() {
    let Some(dir) = corpus_dir() else { return };
    let key = corpus_key(&dir);
    let legacy = |kr| VerifyOptions {
        keyring: kr,
        legacy: true,
        ..Default::default()
    };
    let mut seen = 0;
    for name in [
        "one-group-signed-legacy.sif",
        "one-group-signed-legacy-group.sif",
        "one-group-signed-legacy-all.sif",
        "two-groups-signed-legacy.sif",
        "two-groups-signed-legacy-group.sif",
        "two-groups-signed-legacy-all.sif",
    ] {
        let p = dir.join(name);
        if !p.is_file() {
            continue;
        }
        seen += 1;
        match verify_with(&p, &pgp(keyring(&key))) {
            Err(VerifyError::Unsigned { legacy_only, .. }) => assert!(legacy_only, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        let mut img = Image::open(&p).unwrap();
        let report = integrity::verify(&mut img, &legacy(keyring(&key)));
        assert_eq!(report.verdict, Ok(()), "{name}");
        assert!(report.signatures.iter().all(|s| s.format == Format::Legacy));
        assert!(
            matches!(
                verify_with(&p, &legacy(keyring(&other_key()))),
                Err(VerifyError::UnknownKey { .. })
            ),
            "{name}"
        );
    }
    assert_eq!(seen, 6);
}

#[test]
fn legacy_object_tampering_is_named() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let opts = VerifyOptions {
        keyring: keyring(&key),
        legacy: true,
        ..Default::default()
    };
    for (name, expect_group) in [
        ("one-group-signed-legacy.sif", false),
        ("one-group-signed-legacy-group.sif", true),
    ] {
        let p = copy_to(tmp.path(), &dir.join(name));
        let d = Image::open(&p).unwrap().descriptor(2).unwrap().clone();
        flip(&p, d.offset + 1);
        let got = verify_with(&p, &opts);
        if expect_group {
            assert!(
                matches!(got, Err(VerifyError::GroupDataTampered { group: 1, .. })),
                "{got:?}"
            );
        } else {
            assert!(
                matches!(got, Err(VerifyError::ObjectTampered { id: 2, .. })),
                "{got:?}"
            );
        }
    }
}

/// A legacy signature covers single objects: one over the primary
/// partition says nothing about an overlay partition added to its group
/// afterwards, whose files would lie over the signed ones.
#[test]
fn legacy_signatures_do_not_vouch_for_an_added_overlay() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let opts = VerifyOptions {
        keyring: keyring(&key),
        legacy: true,
        ..Default::default()
    };
    let p = copy_to(tmp.path(), &dir.join("one-group-signed-legacy.sif"));
    assert_eq!(verify_with(&p, &opts), Ok(()));
    let overlay = sif::ObjectInput::new(DataType::Partition, vec![0u8; 4096])
        .group(1)
        .partition(sif::FsType::Ext3, sif::PartType::Overlay, sif::Arch::Amd64);
    let id = sif::add_object(&p, overlay, &Default::default()).unwrap();
    assert_eq!(
        verify_with(&p, &opts),
        Err(VerifyError::UnsignedObject { id })
    );
}

/// The JSON document we produce is byte-identical to the one inside the
/// reference signatures.
#[test]
fn metadata_document_matches_the_corpus_signatures() {
    let Some(dir) = corpus_dir() else { return };
    for (unsigned, signed, groups) in [
        ("one-group.sif", "one-group-signed.sif", &[1u32][..]),
        ("two-groups.sif", "two-groups-signed.sif", &[1, 2][..]),
    ] {
        if !dir.join(signed).is_file() {
            continue;
        }
        let mut u = Image::open(dir.join(unsigned)).unwrap();
        let mut s = Image::open(dir.join(signed)).unwrap();
        for &g in groups {
            let ids: Vec<u32> = u
                .descriptors()
                .iter()
                .filter(|d| d.group_id == Some(g))
                .map(|d| d.id)
                .collect();
            let ours = group_metadata(&mut u, g, &ids, DigestAlg::Sha256)
                .unwrap()
                .to_json();
            let sig = s
                .descriptors()
                .iter()
                .find(|d| d.data_type == DataType::Signature && d.link == Link::Group(g))
                .unwrap()
                .clone();
            let data = s.read_object(&sig, 1 << 20).unwrap();
            let text = integrity::clearsigned_text(&data).unwrap();
            assert_eq!(
                format!("{ours}\n").as_bytes(),
                &text[..],
                "{signed} group {g}"
            );
        }
    }
}

#[test]
fn our_signatures_verify_and_look_like_the_reference_ones() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let mut sk = SigningKey::from_bytes(&key, None).unwrap();
    let p = copy_to(tmp.path(), &dir.join("two-groups.sif"));
    let ids = integrity::sign(&p, &mut sk, &SignOptions::default()).unwrap();
    assert_eq!(ids, vec![4, 5]);
    let img = Image::open(&p).unwrap();
    for (id, g) in [(4, 1), (5, 2)] {
        let d = img.descriptor(id).unwrap();
        assert_eq!(d.data_type, DataType::Signature);
        assert_eq!(d.group_id, None);
        assert_eq!(d.link, Link::Group(g));
        let s = d.signature().unwrap();
        assert_eq!(s.hash_type, HashType::Sha256);
        assert_eq!(integrity_hex(&s.fingerprint.unwrap()), CORPUS_FP);
    }
    assert_eq!(verify_with(&p, &pgp(keyring(&key))), Ok(()));
    assert!(matches!(
        verify_with(&p, &pgp(keyring(&other_key()))),
        Err(VerifyError::UnknownKey { .. })
    ));
}

fn integrity_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

#[test]
fn signing_one_group_or_one_object() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let mut sk = SigningKey::from_bytes(&key, None).unwrap();

    let p = copy_to(tmp.path(), &dir.join("two-groups.sif"));
    let ids = integrity::sign(
        &p,
        &mut sk,
        &SignOptions {
            target: SignTarget::Group(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ids, vec![4]);
    // Group 1 is still unsigned.
    assert_eq!(
        verify_with(&p, &pgp(keyring(&key))),
        Err(VerifyError::Unsigned {
            group: 1,
            legacy_only: false
        })
    );

    let p = tmp.path().join("obj.sif");
    std::fs::copy(dir.join("one-group.sif"), &p).unwrap();
    integrity::sign(
        &p,
        &mut sk,
        &SignOptions {
            target: SignTarget::Object(2),
            ..Default::default()
        },
    )
    .unwrap();
    let img = Image::open(&p).unwrap();
    assert_eq!(img.descriptor(3).unwrap().link, Link::Group(1));
    drop(img);
    // The signature links to the group but covers object 2 only, so object
    // 1 counts as added after signing (as in the reference library).
    assert!(matches!(
        verify_with(&p, &pgp(keyring(&key))),
        Err(VerifyError::ObjectAdded {
            id: 1,
            group: 1,
            ..
        })
    ));

    assert!(integrity::sign(
        &p,
        &mut sk,
        &SignOptions {
            target: SignTarget::Group(9),
            ..Default::default()
        }
    )
    .is_err());
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

fn set_bytes(path: &Path, offset: u64, bytes: &[u8]) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, b).unwrap();
}

/// Flips one byte in each covered region of a freshly signed two-group image
/// and checks that the verdict names the region (and the object).
#[test]
fn tampering_with_each_region_is_named() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let mut sk = SigningKey::from_bytes(&key, None).unwrap();
    let signed = copy_to(tmp.path(), &dir.join("two-groups.sif"));
    integrity::sign(&signed, &mut sk, &SignOptions::default()).unwrap();
    let opts = pgp(keyring(&key));
    assert_eq!(verify_with(&signed, &opts), Ok(()));
    let img = Image::open(&signed).unwrap();
    let descr_off = img.header().descriptors_offset as u64;
    let objects: Vec<_> = img
        .descriptors()
        .iter()
        .filter(|d| d.data_type != DataType::Signature)
        .cloned()
        .collect();
    let sigs: Vec<_> = img
        .descriptors()
        .iter()
        .filter(|d| d.data_type == DataType::Signature)
        .cloned()
        .collect();
    drop(img);

    let check = |what: &str, offset: u64, expect: &dyn Fn(&Result<(), VerifyError>) -> bool| {
        let p = tmp.path().join("t.sif");
        std::fs::copy(&signed, &p).unwrap();
        flip(&p, offset);
        let got = match Image::open(&p) {
            Ok(mut img) => integrity::verify(&mut img, &opts).verdict,
            Err(e) => Err(VerifyError::Image(e.to_string())),
        };
        assert!(expect(&got), "{what} (offset {offset}): {got:?}");
    };

    // Header: launch script and image id are covered.
    for off in [0u64, 5, 48, 63] {
        check("header", off, &|r| {
            matches!(r, Err(VerifyError::HeaderTampered { .. }))
        });
    }
    // Not covered by design: created/modified times (so signatures can be
    // added). Verification still succeeds.
    for off in [64u64, 72] {
        check("header time", off, &|r| r.is_ok());
    }

    for d in &objects {
        let base = descr_off + d.slot() * 585;
        let id = d.id;
        let descr = move |r: &Result<(), VerifyError>| matches!(r, Err(VerifyError::DescriptorTampered { id: i, .. }) if *i == id);
        // data type, link, size, created, uid, gid, name, extra
        for (field, off) in [
            ("data type", 0u64),
            ("linked id", 13),
            ("created", 41),
            ("uid", 57),
            ("gid", 65),
            ("name", 73),
            ("extra", 201),
            ("extra end", 584),
        ] {
            check(
                &format!("object {id} descriptor {field}"),
                base + off,
                &descr,
            );
        }
        // The size is covered too; growing it by one byte either fails the
        // descriptor digest or makes the image unreadable (overlap/EOF).
        check(&format!("object {id} size"), base + 25, &|r| {
            descr(r) || matches!(r, Err(VerifyError::Image(_)))
        });
        // Used flag cleared: the object vanished after signing.
        check(&format!("object {id} used"), base + 4, &|r| {
            matches!(
                r,
                Err(VerifyError::ObjectRemoved { .. } | VerifyError::GroupRemoved { .. })
            )
        });
        // Changing the group moves the object out of the signed set.
        check(&format!("object {id} group"), base + 9, &|r| {
            matches!(
                r,
                Err(VerifyError::ObjectRemoved { .. }
                    | VerifyError::ObjectAdded { .. }
                    | VerifyError::Unsigned { .. }
                    | VerifyError::Ungrouped { .. })
            )
        });
        // Changing the id changes the relative id or the set.
        check(&format!("object {id} id"), base + 5, &|r| {
            matches!(
                r,
                Err(VerifyError::ObjectRemoved { .. }
                    | VerifyError::ObjectAdded { .. }
                    | VerifyError::DescriptorTampered { .. }
                    | VerifyError::Image(_))
            )
        });
        // Data: first and last byte.
        for off in [d.offset, d.offset + d.size - 1] {
            check(
                &format!("object {id} data"),
                off,
                &|r| matches!(r, Err(VerifyError::ObjectTampered { id: i, .. }) if *i == id),
            );
        }
    }

    // The signature object itself: the signed JSON or the signature bytes.
    for s in &sigs {
        let sid = s.id;
        let data = std::fs::read(&signed).unwrap()[s.offset as usize..(s.offset + s.size) as usize]
            .to_vec();
        let json_at = data.windows(9).position(|w| w == b"\"version\"").unwrap() as u64;
        check(
            "signed document",
            s.offset + json_at + 12,
            &|r| matches!(r, Err(VerifyError::BadSignature { signature, .. } | VerifyError::Malformed { signature, .. }) if *signature == sid),
        );
        let armor_at = data
            .windows(6)
            .position(|w| w == b"\n\nwsB" || w == b"\n\nwl4")
            .unwrap_or(0) as u64;
        if armor_at > 0 {
            check("signature packet", s.offset + armor_at + 40, &|r| {
                matches!(
                    r,
                    Err(VerifyError::BadSignature { .. } | VerifyError::Malformed { .. })
                )
            });
        }
        // Fingerprint in the signature's descriptor.
        let base = descr_off + s.slot() * 585;
        check(
            "signature descriptor fingerprint",
            base + 201 + 4,
            &|r| matches!(r, Err(VerifyError::FingerprintMismatch { signature, .. }) if *signature == sid),
        );
    }
}

#[test]
fn object_added_after_signing_is_named() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let mut sk = SigningKey::from_bytes(&key, None).unwrap();
    let p = copy_to(tmp.path(), &dir.join("one-group.sif"));
    integrity::sign(&p, &mut sk, &SignOptions::default()).unwrap();
    let id = sif::add_object(
        &p,
        sif::ObjectInput::new(DataType::GenericJson, b"{}".to_vec()),
        &sif::AddOptions::default(),
    )
    .unwrap();
    assert_eq!(
        verify_with(&p, &pgp(keyring(&key))),
        Err(VerifyError::ObjectAdded {
            id,
            group: 1,
            signature: 3
        })
    );
    // An object outside every group is refused outright.
    sif::delete_object(&p, id, &sif::DeleteOptions::default()).unwrap();
    assert_eq!(verify_with(&p, &pgp(keyring(&key))), Ok(()));
    let id = sif::add_object(
        &p,
        sif::ObjectInput::new(DataType::GenericJson, b"{}".to_vec()).no_group(),
        &sif::AddOptions::default(),
    )
    .unwrap();
    assert_eq!(
        verify_with(&p, &pgp(keyring(&key))),
        Err(VerifyError::Ungrouped { id })
    );
}

#[test]
fn malformed_signature_objects_are_verdicts_not_panics() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let key = corpus_key(&dir);
    let good = std::fs::read(dir.join("one-group-signed.sif")).ok();
    let Some(good) = good else { return };
    let img = Image::open(dir.join("one-group-signed.sif")).unwrap();
    let sig = img.descriptor(3).unwrap().clone();
    drop(img);
    let body = good[sig.offset as usize..(sig.offset + sig.size) as usize].to_vec();
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage".to_vec(),
        b"{\"payloadType\":\"application/vnd.sylabs.sif-metadata+json\"}".to_vec(),
        vec![0xff; 5000],
    ];
    // Every truncation of the real signature.
    for n in (0..body.len()).step_by(37) {
        bodies.push(body[..n].to_vec());
    }
    for (i, b) in bodies.iter().enumerate() {
        let p = tmp.path().join(format!("m{i}.sif"));
        std::fs::copy(dir.join("one-group.sif"), &p).unwrap();
        let fp = sig.signature().unwrap().fingerprint.unwrap();
        sif::add_object(
            &p,
            sif::ObjectInput::new(DataType::Signature, b.clone())
                .no_group()
                .link_group(1)
                .signature(HashType::Sha256, fp),
            &sif::AddOptions::default(),
        )
        .unwrap();
        let got = verify_with(&p, &pgp(keyring(&key)));
        assert!(
            matches!(
                got,
                Err(VerifyError::Malformed { .. }
                    | VerifyError::BadSignature { .. }
                    | VerifyError::NoKeyMaterial { .. })
            ),
            "case {i}: {got:?}"
        );
    }
    // An oversized signature object is refused without being read.
    let p = tmp.path().join("huge.sif");
    std::fs::copy(dir.join("one-group.sif"), &p).unwrap();
    sif::add_object(
        &p,
        sif::ObjectInput::new(DataType::Signature, vec![b'x'; (2 << 20) as usize])
            .no_group()
            .link_group(1),
        &sif::AddOptions::default(),
    )
    .unwrap();
    assert!(matches!(
        verify_with(&p, &pgp(keyring(&key))),
        Err(VerifyError::Malformed { .. })
    ));
}

#[test]
fn passphrase_protected_keys() {
    let Some(dir) = corpus_dir() else { return };
    let (cert, _) = CertBuilder::general_purpose(Some("Locked <locked@example.invalid>"))
        .set_password(Some("sesame".into()))
        .generate()
        .unwrap();
    let tsk = cert.as_tsk().armored().to_vec().unwrap();
    assert!(SigningKey::needs_passphrase(&tsk).unwrap());
    assert!(matches!(
        SigningKey::from_bytes(&tsk, None),
        Err(integrity::KeyError::PassphraseNeeded(_))
    ));
    assert!(matches!(
        SigningKey::from_bytes(&tsk, Some(b"wrong")),
        Err(integrity::KeyError::BadPassphrase(_))
    ));
    let mut sk = SigningKey::from_bytes(&tsk, Some(b"sesame")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = copy_to(tmp.path(), &dir.join("one-group.sif"));
    integrity::sign(&p, &mut sk, &SignOptions::default()).unwrap();
    let public = cert.armored().to_vec().unwrap();
    assert_eq!(verify_with(&p, &pgp(keyring(&public))), Ok(()));
    // A public key cannot sign.
    assert!(SigningKey::from_bytes(&public, None).is_err());
}

#[test]
fn expired_and_revoked_keys_are_not_usable() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let created = now - Duration::from_secs(3 * 86400);
    let (cert, rev) = CertBuilder::general_purpose(Some("Short <short@example.invalid>"))
        .set_creation_time(created)
        .set_validity_period(Some(Duration::from_secs(86400)))
        .generate()
        .unwrap();
    // Sign while the key was still valid.
    let mut sk = signing_key_at(&cert, created + Duration::from_secs(3600));
    let p = copy_to(tmp.path(), &dir.join("one-group.sif"));
    integrity::sign(
        &p,
        &mut sk,
        &SignOptions {
            time: Some(created + Duration::from_secs(3600)),
            ..Default::default()
        },
    )
    .unwrap();
    let got = verify_with(&p, &pgp(keyring(&cert.armored().to_vec().unwrap())));
    assert!(
        matches!(got, Err(VerifyError::KeyNotUsable { .. })),
        "{got:?}"
    );

    // Revoked certificate.
    let (cert, rev2) = CertBuilder::general_purpose(Some("Rev <rev@example.invalid>"))
        .generate()
        .unwrap();
    let _ = rev;
    let mut sk = SigningKey::from_bytes(&cert.as_tsk().armored().to_vec().unwrap(), None).unwrap();
    let p = tmp.path().join("rev.sif");
    std::fs::copy(dir.join("one-group.sif"), &p).unwrap();
    integrity::sign(&p, &mut sk, &SignOptions::default()).unwrap();
    let (revoked, _) = cert.insert_packets(rev2).unwrap();
    let got = verify_with(&p, &pgp(keyring(&revoked.armored().to_vec().unwrap())));
    assert!(
        matches!(got, Err(VerifyError::KeyNotUsable { .. })),
        "{got:?}"
    );
}

/// A signing key whose validity is judged at `t` (it may have expired since).
fn signing_key_at(cert: &openpgp::Cert, t: SystemTime) -> SigningKey {
    let tsk = cert.as_tsk().armored().to_vec().unwrap();
    assert!(
        SigningKey::from_bytes(&tsk, None).is_err(),
        "expired key must not sign now"
    );
    SigningKey::from_bytes_at(&tsk, None, t).unwrap()
}

#[test]
fn dsse_corpus_images_verify_with_pem_keys() {
    let Some(dir) = corpus_dir() else { return };
    let keys = dir.join("../keys");
    let images: Vec<_> = ["one-group-signed-dsse.sif", "two-groups-signed-dsse.sif"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect();
    if images.is_empty() {
        eprintln!(
            "SKIPPED: no DSSE images in {} (Debian's 2.8.3 corpus has none; upstream v2.9+ does)",
            dir.display()
        );
        return;
    }
    let pem =
        |n: &str| PemPublicKey::from_pem(&std::fs::read_to_string(keys.join(n)).unwrap()).unwrap();
    for img in &images {
        for good in ["ed25519-public.pem", "rsa-public.pem"] {
            let opts = VerifyOptions {
                pem_keys: vec![pem(good)],
                ..Default::default()
            };
            assert_eq!(verify_with(img, &opts), Ok(()), "{} {good}", img.display());
        }
        let opts = VerifyOptions {
            pem_keys: vec![pem("ecdsa-public.pem")],
            ..Default::default()
        };
        assert!(matches!(
            verify_with(img, &opts),
            Err(VerifyError::UnknownKey { .. })
        ));
        assert!(matches!(
            verify_with(img, &VerifyOptions::default()),
            Err(VerifyError::NoKeyMaterial { format: "dsse", .. })
        ));
    }
}

/// DSSE envelopes made with independently generated keys (openssl signs the
/// PAE): Ed25519, RSA PKCS#1 v1.5 and ECDSA P-256/P-384.
#[test]
fn dsse_envelopes_signed_by_openssl_verify() {
    let Some(dir) = corpus_dir() else { return };
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(t)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (name, gen, sign) in [
        (
            "ed25519",
            &["genpkey", "-algorithm", "ed25519", "-out", "k.pem"][..],
            &[
                "pkeyutl", "-sign", "-rawin", "-inkey", "k.pem", "-in", "pae", "-out", "sig",
            ][..],
        ),
        (
            "rsa",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "k.pem",
            ][..],
            &["dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "pae"][..],
        ),
        (
            "p256",
            &[
                "genpkey",
                "-algorithm",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "k.pem",
            ][..],
            &["dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "pae"][..],
        ),
        (
            "p384",
            &[
                "genpkey",
                "-algorithm",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                "k.pem",
            ][..],
            &["dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "pae"][..],
        ),
    ] {
        openssl(gen);
        openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "pub.pem"]);
        let p = t.join(format!("{name}.sif"));
        std::fs::copy(dir.join("one-group.sif"), &p).unwrap();
        let ids = [1u32, 2];
        let mut img = Image::open(&p).unwrap();
        let json = group_metadata(&mut img, 1, &ids, DigestAlg::Sha256)
            .unwrap()
            .to_json();
        drop(img);
        let pae = format!(
            "DSSEv1 {} {} {} {}",
            integrity::DSSE_PAYLOAD_TYPE.len(),
            integrity::DSSE_PAYLOAD_TYPE,
            json.len(),
            json
        );
        std::fs::write(t.join("pae"), pae).unwrap();
        openssl(sign);
        let sig = std::fs::read(t.join("sig")).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let env = format!(
            r#"{{"payloadType":"{}","payload":"{}","signatures":[{{"keyid":"","sig":"{}"}}]}}"#,
            integrity::DSSE_PAYLOAD_TYPE,
            b64.encode(&json),
            b64.encode(&sig)
        );
        sif::add_object(
            &p,
            sif::ObjectInput::new(DataType::Signature, env.into_bytes())
                .no_group()
                .link_group(1)
                .signature(HashType::Sha256, [0; 20]),
            &sif::AddOptions::default(),
        )
        .unwrap();
        let key =
            PemPublicKey::from_pem(&std::fs::read_to_string(t.join("pub.pem")).unwrap()).unwrap();
        let opts = VerifyOptions {
            pem_keys: vec![key],
            ..Default::default()
        };
        let mut img = Image::open(&p).unwrap();
        let report = integrity::verify(&mut img, &opts);
        assert_eq!(report.verdict, Ok(()), "{name}");
        assert_eq!(report.signatures[0].format, Format::Dsse);
        drop(img);
        // Tampering with the data is still named.
        let d = Image::open(&p).unwrap().descriptor(2).unwrap().clone();
        flip(&p, d.offset);
        assert!(
            matches!(
                verify_with(&p, &opts),
                Err(VerifyError::ObjectTampered { id: 2, .. })
            ),
            "{name}"
        );
        let _ = set_bytes;
        let _ = UNIX_EPOCH;
    }
}
