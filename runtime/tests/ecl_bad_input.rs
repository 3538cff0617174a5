//! `sifrun ecl check` on hostile or broken input: keyrings that fail to
//! parse, expired, revoked and signing-incapable keys, malformed signature
//! objects, thousands of signature objects, garbage images. Each must end
//! in a refusal (exit 1) or a one-line error (exit 2), never in "allowed".

mod common;
mod ecl_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sequoia_openpgp as openpgp;

use openpgp::armor;
use openpgp::cert::CertBuilder;
use openpgp::packet::signature::SignatureBuilder;
use openpgp::packet::UserID;
use openpgp::serialize::{MarshalInto, SerializeInto};

/// A packet, serialized (no armor).
fn packet_bytes(p: Packet) -> Vec<u8> {
    MarshalInto::to_vec(&p).unwrap()
}

/// Armored transferable key or certificate.
fn armored(c: &openpgp::Cert, secret: bool) -> Vec<u8> {
    if secret {
        SerializeInto::to_vec(&c.as_tsk().armored()).unwrap()
    } else {
        SerializeInto::to_vec(&c.armored()).unwrap()
    }
}
use openpgp::types::{KeyFlags, SignatureType};
use openpgp::Packet;
use sif::integrity::{self, SignOptions, SigningKey};
use sif::{DataType, HashType, Image, ObjectInput};

use common::*;
use ecl_support::*;

/// A site with a keyring of `keys` and partitions `wl` (whitelist of
/// `listed`) and `bl` (blacklist of a key nobody has).
fn site_with(keys: &[&Key], listed: &str) -> (Site, PathBuf) {
    let site = Site::new();
    let ring = site.keyring("keyring.asc", keys);
    let body = partition("wl", "whitelist", "", &[listed])
        + &partition(
            "bl",
            "blacklist",
            "",
            &["0000000000000000000000000000000000000001"],
        );
    let config = site.config(&[&ring], &body);
    (site, config)
}

/// Signature object `id` of `image`: its body and descriptor fingerprint.
fn signature_object(image: &Path, id: u32) -> (Vec<u8>, [u8; 20]) {
    let mut img = Image::open(image).unwrap();
    let d = img.descriptor(id).unwrap().clone();
    let fp = d.signature().unwrap().fingerprint.unwrap();
    (img.read_object(&d, 1 << 20).unwrap(), fp)
}

/// A signature object with `body`, linked to group 1, naming `fp`.
fn sig_object(body: Vec<u8>, fp: [u8; 20]) -> ObjectInput {
    ObjectInput::new(DataType::Signature, body)
        .no_group()
        .link_group(1)
        .signature(HashType::Sha256, fp)
}

fn add(image: &Path, obj: ObjectInput) {
    sif::add_object(image, obj, &sif::AddOptions::default()).unwrap();
}

#[test]
fn unparsable_keyrings_are_errors_naming_the_keyring() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let a = Key::generate("a");
    let armored = a.public_armored();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage.asc", b"this is not a key\n".to_vec()),
        ("empty.asc", Vec::new()),
        ("truncated.asc", armored[..armored.len() / 2].to_vec()),
        ("junk.gpg", vec![0x99, 0x00, 0x0d, 0x04, 0xff, 0xff, 0x00]),
    ];
    for (name, bytes) in cases {
        let site = Site::new();
        let img = site.signed_image(&c, "a.sif", &[&a]);
        let ring = site.trusted(name, bytes);
        let config = site.config(&[&ring], &partition("wl", "whitelist", "", &[&a.fp()]));
        let out = ecl_check(&config, "wl", &img, false);
        assert_config_error(&out, &ring, "keyring");
    }
}

#[test]
fn expired_key_is_refused() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let created = SystemTime::now() - Duration::from_secs(3 * 86400);
    let (cert, _) = CertBuilder::general_purpose(Some("Short <short@example.invalid>"))
        .set_creation_time(created)
        .set_validity_period(Some(Duration::from_secs(86400)))
        .generate()
        .unwrap();
    let key = Key { cert };
    let (site, config) = site_with(&[&key], &key.fp());
    // Signed while the key was valid; it has expired since.
    let signed_at = created + Duration::from_secs(3600);
    let img = site.corpus_copy(&c, "one-group.sif", "expired.sif");
    let tsk = armored(&key.cert, true);
    let mut sk = SigningKey::from_bytes_at(&tsk, None, signed_at).unwrap();
    let opts = SignOptions {
        time: Some(signed_at),
        ..Default::default()
    };
    integrity::sign(&img, &mut sk, &opts).unwrap();
    for p in ["wl", "bl"] {
        assert_refused(
            &ecl_check(&config, p, &img, false),
            &["signed by unusable key", &key.fp(), "expired"],
        );
    }
}

#[test]
fn revoked_key_is_refused() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let (cert, revocation) = CertBuilder::general_purpose(Some("Rev <rev@example.invalid>"))
        .generate()
        .unwrap();
    let key = Key { cert };
    let site = Site::new();
    let img = site.signed_image(&c, "rev.sif", &[&key]);
    let (revoked, _) = key.cert.clone().insert_packets(revocation).unwrap();
    let ring = site.trusted("revoked.asc", armored(&revoked, false));
    let body = partition("wl", "whitelist", "", &[&key.fp()])
        + &partition(
            "bl",
            "blacklist",
            "",
            &["0000000000000000000000000000000000000001"],
        );
    let config = site.config(&[&ring], &body);
    for p in ["wl", "bl"] {
        assert_refused(
            &ecl_check(&config, p, &img, false),
            &["signed by unusable key", &key.fp(), "revoked"],
        );
    }
}

/// The image was signed by a signing subkey that the keyring's (newer)
/// binding signature declares encryption-only.
#[test]
fn signing_incapable_subkey_is_refused() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let created = SystemTime::now() - Duration::from_secs(86400);
    let (cert, _) = CertBuilder::new()
        .set_creation_time(created)
        .set_primary_key_flags(KeyFlags::empty().set_certification())
        .add_signing_subkey()
        .add_userid("Sub <sub@example.invalid>")
        .generate()
        .unwrap();
    let signer = Key { cert };
    let site = Site::new();
    // The primary key cannot sign, so this uses the subkey.
    let img = site.signed_image(&c, "sub.sif", &[&signer]);

    let mut primary = signer
        .cert
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let subkey = signer.cert.keys().subkeys().next().unwrap().key().clone();
    let rebinding = SignatureBuilder::new(SignatureType::SubkeyBinding)
        .set_signature_creation_time(SystemTime::now() - Duration::from_secs(60))
        .unwrap()
        .set_key_flags(KeyFlags::empty().set_transport_encryption())
        .unwrap();
    let binding = subkey.bind(&mut primary, &signer.cert, rebinding).unwrap();
    let (cert, _) = signer
        .cert
        .clone()
        .insert_packets(Packet::from(binding))
        .unwrap();
    let incapable = Key { cert };

    // Control: with the original binding the image is allowed.
    let (_, config) = {
        let ring = site.keyring("capable.asc", &[&signer]);
        let cfg = site.config_named(
            "capable.toml",
            &[&ring],
            &partition("wl", "whitelist", "", &[&signer.fp()]),
        );
        ((), cfg)
    };
    assert_allowed(&ecl_check(&config, "wl", &img, false), &[&signer.fp()]);

    let ring = site.keyring("incapable.asc", &[&incapable]);
    let body = partition("wl", "whitelist", "", &[&signer.fp()])
        + &partition(
            "bl",
            "blacklist",
            "",
            &["0000000000000000000000000000000000000001"],
        );
    let config = site.config(&[&ring], &body);
    for p in ["wl", "bl"] {
        assert_refused(
            &ecl_check(&config, p, &img, false),
            &["signed by unusable key", "not signing-capable"],
        );
    }
}

/// Replaces the armored signature block of a clear-signed body with an
/// armored block holding `packet` instead.
fn with_signature_block(body: &[u8], packet: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let at = text.find("-----BEGIN PGP SIGNATURE-----").unwrap();
    let mut out = text.as_bytes()[..at].to_vec();
    let mut w = armor::Writer::new(Vec::new(), armor::Kind::Signature).unwrap();
    std::io::Write::write_all(&mut w, &packet).unwrap();
    out.extend(w.finalize().unwrap());
    out
}

#[test]
fn malformed_signature_objects_are_refused() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let a = Key::generate("a");
    let (site, config) = site_with(&[&a], &a.fp());
    // A genuine signature by A over one-group.sif, and one over other data.
    let genuine = site.signed_image(&c, "genuine.sif", &[&a]);
    let (body, fp) = signature_object(&genuine, 3);
    // The same image with one byte of its SquashFS object changed, signed.
    let other = site.corpus_copy(&c, "one-group.sif", "other.sif");
    let mut bytes = std::fs::read(&other).unwrap();
    bytes[36864 + 100] ^= 1;
    std::fs::write(&other, bytes).unwrap();
    a.sign(&other);
    let (other_body, _) = signature_object(&other, 3);

    let text = String::from_utf8(body.clone()).unwrap();
    let armor_at = text.find("-----BEGIN PGP SIGNATURE-----").unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("garbage".into(), b"garbage".to_vec()),
        ("binary".into(), vec![0xff; 5000]),
        ("armor without end".into(), body[..body.len() - 30].to_vec()),
        (
            "armor cut in the base64".into(),
            body[..armor_at + 60].to_vec(),
        ),
        ("message only".into(), body[..armor_at].to_vec()),
        (
            "user ID packet".into(),
            with_signature_block(&body, packet_bytes(UserID::from("x").into())),
        ),
        (
            "certification signature".into(),
            with_signature_block(
                &body,
                packet_bytes(
                    a.cert
                        .userids()
                        .next()
                        .unwrap()
                        .self_signatures()
                        .next()
                        .unwrap()
                        .clone()
                        .into(),
                ),
            ),
        ),
        ("signature over other data".into(), other_body),
        ("signed text altered".into(), {
            let altered = text.replacen("\"relativeId\":0", "\"relativeId\":1", 1);
            assert_ne!(altered, text);
            altered.into_bytes()
        }),
    ];
    for n in (1..armor_at).step_by(armor_at / 7 + 1) {
        cases.push((format!("truncated at {n}"), body[..n].to_vec()));
    }
    for (what, bad) in cases {
        // Alone, and next to a genuine signature: either way refused.
        for with_genuine in [false, true] {
            let img = site.corpus_copy(&c, "one-group.sif", "m.sif");
            if with_genuine {
                add(&img, sig_object(body.clone(), fp));
            }
            add(&img, sig_object(bad.clone(), fp));
            for p in ["wl", "bl"] {
                let out = ecl_check(&config, p, &img, false);
                assert_not_allowed(&out, &format!("{what} (genuine too: {with_genuine}), {p}"));
                assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
            }
        }
    }
    // Control: a signature is over content, not over a file. two-groups.sif
    // has the same header id and the same group 1 as one-group.sif, so its
    // group-1 signature genuinely covers one-group.sif's group 1.
    let two = site.corpus_copy(&c, "two-groups.sif", "two.sif");
    a.sign(&two);
    let img = site.corpus_copy(&c, "one-group.sif", "same-content.sif");
    add(&img, sig_object(signature_object(&two, 4).0, fp));
    assert_allowed(&ecl_check(&config, "wl", &img, false), &[&a.fp()]);

    // A signature object too large to be a signature is not even read.
    let img = site.corpus_copy(&c, "one-group.sif", "huge.sif");
    add(&img, sig_object(body.clone(), fp));
    add(&img, sig_object(vec![b'x'; 2 << 20], fp));
    assert_refused(
        &ecl_check(&config, "wl", &img, false),
        &["malformed signature"],
    );
    // A signature linked to a group the image does not have.
    let img = site.signed_image(&c, "orphan.sif", &[&a]);
    add(
        &img,
        ObjectInput::new(DataType::Signature, body.clone())
            .no_group()
            .link_group(7)
            .signature(HashType::Sha256, fp),
    );
    assert_refused(&ecl_check(&config, "wl", &img, false), &["group 7"]);
}

/// 3000 signature objects: bounded time; allowed only when every one is
/// a genuine signature by a listed key.
#[test]
fn thousands_of_signature_objects() {
    if skip_unless_root() {
        return;
    }
    const COUNT: usize = 3000;
    // Generous for a debug build on a slow machine; a quadratic blow-up
    // or per-object re-hashing would exceed it by far.
    const BOUND: Duration = Duration::from_secs(60);
    let a = Key::generate("a");
    let stranger = Key::generate("stranger");
    let (site, config) = site_with(&[&a], &a.fp());
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let opts = sif::CreateOptions {
        deterministic: true,
        descriptor_capacity: Some(COUNT as i64 + 8),
        ..Default::default()
    };
    let make = |name: &str, sigs: Vec<ObjectInput>| -> PathBuf {
        let p = site.path(name);
        let mut objects = vec![ObjectInput::new(DataType::Generic, data.clone())];
        objects.extend(sigs);
        sif::create(&p, objects, &opts).unwrap();
        p
    };
    // Genuine signatures made over the same deterministic image.
    let signed_by = |k: &Key, name: &str| {
        let p = make(name, Vec::new());
        k.sign(&p);
        signature_object(&p, 2)
    };
    let (good, fp) = signed_by(&a, "a-once.sif");
    let (strange, sfp) = signed_by(&stranger, "s-once.sif");

    let timed = |img: &Path| {
        let t = Instant::now();
        let out = ecl_check(&config, "wl", img, false);
        assert!(
            t.elapsed() < BOUND,
            "{}: took {:?}",
            img.display(),
            t.elapsed()
        );
        out
    };
    let copies = |body: &[u8], fp: [u8; 20]| -> Vec<ObjectInput> {
        (0..COUNT).map(|_| sig_object(body.to_vec(), fp)).collect()
    };

    let all_good = make("all-good.sif", copies(&good, fp));
    assert_allowed(&timed(&all_good), &[&a.fp()]);

    let garbage = make(
        "garbage.sif",
        copies(b"garbage", fp)
            .into_iter()
            .chain([sig_object(good.clone(), fp)])
            .collect(),
    );
    assert_refused(&timed(&garbage), &["malformed signature"]);

    let unknown = make("unknown.sif", copies(&strange, sfp));
    assert_refused(&timed(&unknown), &["not in the partition keyring"]);

    // Many unknown-key signatures next to one genuine one: the listed key
    // verified and nothing is invalid, so this is allowed, as the same
    // image with one signature would be.
    let mixed = make(
        "mixed.sif",
        copies(&strange, sfp)
            .into_iter()
            .chain([sig_object(good.clone(), fp)])
            .collect(),
    );
    assert_allowed(&timed(&mixed), &[&a.fp()]);
}

#[test]
fn hostile_images_are_never_allowed() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let corpus_key = Key::corpus(&c);
    let (site, config) = site_with(&[&corpus_key], CORPUS_FP);
    let signed = std::fs::read(c.join("images/one-group-signed.sif")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = site.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let noise: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let mut cases: Vec<(String, PathBuf)> = vec![
        ("noise".into(), write("noise.sif", &noise)),
        ("empty".into(), write("empty.sif", b"")),
        ("header only".into(), write("header.sif", &signed[..128])),
        ("cut table".into(), write("cut.sif", &signed[..1000])),
        (
            "cut data".into(),
            write("cutdata.sif", &signed[..signed.len() - 1000]),
        ),
        ("directory".into(), site.path("")),
        ("missing".into(), site.path("missing.sif")),
    ];
    // Huge descriptor counts in the header (free, total, then offsets).
    for (i, off) in [80usize, 88, 96, 104, 112, 120].into_iter().enumerate() {
        let mut b = signed.clone();
        b[off..off + 8].copy_from_slice(&i64::MAX.to_le_bytes());
        cases.push((
            format!("header field at {off}"),
            write(&format!("h{i}.sif"), &b),
        ));
    }
    // Covered bytes: header id, object data, the signature's text.
    let img = Image::open(c.join("images/one-group-signed.sif")).unwrap();
    let mut offsets = vec![50u64];
    for d in img.descriptors() {
        offsets.extend([d.offset, d.offset + d.size / 2, d.offset + d.size - 1]);
    }
    for (i, off) in offsets.into_iter().enumerate() {
        let mut b = signed.clone();
        b[off as usize] ^= 0x20;
        cases.push((
            format!("byte {off} flipped"),
            write(&format!("f{i}.sif"), &b),
        ));
    }
    for (what, img) in cases {
        let out = ecl_check(&config, "wl", &img, false);
        assert_not_allowed(&out, &what);
        if matches!(what.as_str(), "noise" | "missing" | "directory") {
            assert_eq!(out.status.code(), Some(2), "{what}");
            assert!(
                stderr(&out).contains(img.to_str().unwrap()),
                "{what}: {}",
                stderr(&out)
            );
        }
    }
    // Control: the untouched image is allowed.
    let ok = write("ok.sif", &signed);
    assert_allowed(&ecl_check(&config, "wl", &ok, false), &[CORPUS_FP]);
}

/// Every byte of the used header and descriptors of a signed image,
/// flipped one at a time: whatever the check says, it says it in time and
/// with an exit status of 0, 1 or 2, and it allows only what full
/// verification (`sifrun verify`) also accepts.
#[test]
fn flipped_metadata_bytes_allow_only_what_verifies() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let corpus_key = Key::corpus(&c);
    let (site, config) = site_with(&[&corpus_key], CORPUS_FP);
    let ring = site.path("keyring.asc");
    let signed = std::fs::read(c.join("images/one-group-signed.sif")).unwrap();
    let img = Image::open(c.join("images/one-group-signed.sif")).unwrap();
    // The header and the used descriptor slots.
    let table = img.header().descriptors_offset as usize;
    let used = img.descriptors().len() * sif::DESCRIPTOR_SIZE;
    let p = site.path("flip.sif");
    let offsets = (0..sif::HEADER_SIZE).chain(table..table + used);
    for off in offsets.step_by(3) {
        let mut b = signed.clone();
        b[off] ^= 0x01;
        std::fs::write(&p, &b).unwrap();
        let out = ecl_check(&config, "wl", &p, false);
        let code = out.status.code();
        assert!(matches!(code, Some(0..=2)), "byte {off}: {out:?}");
        if code == Some(0) {
            let v = run_sifrun(&[
                "verify",
                "--keyring",
                ring.to_str().unwrap(),
                p.to_str().unwrap(),
            ]);
            assert!(v.status.success(), "byte {off}: allowed but {}", stderr(&v));
        }
    }
}
