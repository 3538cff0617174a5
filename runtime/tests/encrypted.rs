//! Encrypted images (LUKS2 primary partition): `sifrun build --encrypt`,
//! running them (user-space decryption through a FUSE file, as root),
//! cryptsetup's view of our containers, containers cryptsetup made, and
//! wrong or damaged keys. Needs root, openssl (test keys) and cryptsetup.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// RSA key pair (PKCS#1 PEM, as Apptainer uses) in `dir`.
fn rsa_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}-private.pem"));
    let public = dir.join(format!("{name}-public.pem"));
    let ok = Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success()
        && Command::new("openssl")
            .args(["rsa", "-RSAPublicKey_out", "-in"])
            .arg(&private)
            .arg("-out")
            .arg(&public)
            .output()
            .unwrap()
            .status
            .success();
    assert!(ok, "openssl could not make a test key");
    (private, public)
}

fn build(fx: &Fixture, name: &str, key_args: &[&str]) -> PathBuf {
    let image = fx.path(name);
    let mut args = vec![
        "build",
        fx.rootfs.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
        "--encrypt",
    ];
    args.extend_from_slice(key_args);
    let out = run_sifrun(&args);
    assert!(out.status.success(), "build --encrypt: {}", stderr(&out));
    image
}

fn exec(image: &Path, opts: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut args = vec!["exec"];
    args.extend_from_slice(opts);
    args.push(image.to_str().unwrap());
    args.extend_from_slice(cmd);
    run_sifrun(&args)
}

/// Offset and size of the primary partition, from `inspect --json`.
fn partition(image: &Path) -> (u64, u64, String) {
    let out = run_sifrun(&["inspect", "--json", image.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "partition")
        .unwrap();
    (
        p["offset"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        p["partition"]["fstype"].as_str().unwrap().to_string(),
    )
}

fn cryptsetup() -> &'static str {
    ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("cryptsetup is not installed (ci/install-deps installs cryptsetup-bin)")
}

const PROBE: &[&str] = &[
    "sh",
    "-c",
    "cat /opt/only-in-image.sh; ls -l /bin | wc -l; md5sum /bin/busybox",
];

#[test]
fn encrypted_images_run_like_plain_ones() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let (private, public) = rsa_pair(fx.dir.path(), "a");
    let pass = fx.path("pass");
    fs::write(&pass, "correct horse\n").unwrap();
    let by_pem = build(&fx, "pem.sif", &["--pem-path", public.to_str().unwrap()]);
    let by_pass = build(
        &fx,
        "pass.sif",
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    assert_eq!(partition(&by_pem).2, "encrypted-squashfs");

    let before = fx.snapshot();
    let plain = fx.exec(&[], PROBE);
    assert!(plain.status.success(), "{}", stderr(&plain));
    for (image, key) in [
        (&by_pem, ["--pem-path", private.to_str().unwrap()]),
        (&by_pass, ["--passphrase-file", pass.to_str().unwrap()]),
    ] {
        let out = exec(image, &key, PROBE);
        assert!(
            out.status.success(),
            "{}: {}",
            image.display(),
            stderr(&out)
        );
        assert_eq!(stdout(&out), stdout(&plain));
        fx.assert_no_leaks(&before);
    }
    // The PEM image stores the wrapped key linked to the partition, in group 1.
    let out = run_sifrun(&["inspect", "--json", by_pem.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "crypto-message")
        .expect("key object");
    assert_eq!(msg["group"], 1);
    assert_eq!(msg["link"]["object"], 1);
    // No plaintext SquashFS anywhere in the image.
    let bytes = fs::read(&by_pem).unwrap();
    assert!(!bytes.windows(4).any(|w| w == b"hsqs"));
}

#[test]
fn wrong_keys_fail_cleanly() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let (_, public) = rsa_pair(fx.dir.path(), "a");
    let (other, _) = rsa_pair(fx.dir.path(), "b");
    let pass = fx.path("pass");
    fs::write(&pass, "right").unwrap();
    let wrong = fx.path("wrong");
    fs::write(&wrong, "wrong").unwrap();
    let by_pem = build(&fx, "pem.sif", &["--pem-path", public.to_str().unwrap()]);
    let by_pass = build(
        &fx,
        "pass.sif",
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    let before = fx.snapshot();
    let cases: [(&Path, Vec<&str>, &str); 5] = [
        (
            &by_pem,
            vec!["--pem-path", other.to_str().unwrap()],
            "wrong private key",
        ),
        (
            &by_pass,
            vec!["--passphrase-file", wrong.to_str().unwrap()],
            "no LUKS2 keyslot opens",
        ),
        (
            &by_pass,
            vec!["--pem-path", other.to_str().unwrap()],
            "not a PEM key",
        ),
        (
            &by_pem,
            vec!["--pem-path", public.to_str().unwrap()],
            "not a PEM RSA private key",
        ),
        (
            &fx.image,
            vec!["--passphrase-file", pass.to_str().unwrap()],
            "is not encrypted",
        ),
    ];
    for (image, key, needle) in cases {
        let out = exec(image, &key, &["true"]);
        assert_one_line_error(&out, needle);
        fx.assert_no_leaks(&before);
    }
    // Damaged: both header copies, then the data area.
    let (off, size, _) = partition(&by_pass);
    let mut bytes = fs::read(&by_pass).unwrap();
    bytes[off as usize + 4200] ^= 1;
    bytes[off as usize + 0x4000 + 4200] ^= 1;
    let corrupt = fx.path("corrupt.sif");
    fs::write(&corrupt, &bytes).unwrap();
    let key = ["--passphrase-file", pass.to_str().unwrap()];
    assert_one_line_error(&exec(&corrupt, &key, &["true"]), "corrupt LUKS2 header");
    let mut bytes = fs::read(&by_pass).unwrap();
    bytes.truncate((off + size / 2) as usize);
    let truncated = fx.path("truncated.sif");
    fs::write(&truncated, &bytes).unwrap();
    assert_one_line_error(
        &exec(&truncated, &key, &["true"]),
        "beyond the end of the file",
    );
    // A SIF that is whole but whose LUKS2 container lost its data area.
    let header_only = fx.path("header-only.luks");
    let bytes = fs::read(&by_pass).unwrap();
    fs::write(&header_only, &bytes[off as usize..off as usize + 0x9000]).unwrap();
    let short = fx.path("short.sif");
    sif::create(
        &short,
        vec![
            sif::ObjectInput::new(sif::DataType::Partition, header_only.as_path()).partition(
                sif::FsType::EncryptedSquashfs,
                sif::PartType::PrimSys,
                sif::Arch::host(),
            ),
        ],
        &sif::CreateOptions::default(),
    )
    .unwrap();
    assert_one_line_error(&exec(&short, &key, &["true"]), "LUKS2 data is truncated");
    fx.assert_no_leaks(&before);
}

/// What cryptsetup makes of our container, and what we make of cryptsetup's.
#[test]
fn cryptsetup_interoperates_with_image_partitions() {
    let fx = Fixture::new();
    let pass = fx.path("pass");
    fs::write(&pass, "s3cret").unwrap();
    let image = build(
        &fx,
        "pass.sif",
        &["--passphrase-file", pass.to_str().unwrap()],
    );
    let (off, size, _) = partition(&image);
    let bytes = fs::read(&image).unwrap();
    let part = fx.path("part.luks");
    fs::write(&part, &bytes[off as usize..(off + size) as usize]).unwrap();
    let dump = Command::new(cryptsetup())
        .arg("luksDump")
        .arg(&part)
        .output()
        .unwrap();
    assert!(dump.status.success(), "luksDump: {}", stderr(&dump));
    assert!(stdout(&dump).contains("argon2id"), "{}", stdout(&dump));
    let test = |key: &Path| {
        Command::new(cryptsetup())
            .args(["open", "--test-passphrase", "--type", "luks2", "--key-file"])
            .arg(key)
            .arg(&part)
            .status()
            .unwrap()
            .success()
    };
    assert!(
        test(&pass),
        "cryptsetup rejects the passphrase of our image"
    );
    let wrong = fx.path("wrong");
    fs::write(&wrong, "nope").unwrap();
    assert!(!test(&wrong));
}

/// An image as Apptainer-style tooling writes it: `cryptsetup luksFormat`
/// made the container, the SIF wraps it as an encrypted SquashFS. Without
/// dm-crypt nothing can be written into that container, so its data is
/// not a SquashFS: sifrun must accept the key (its LUKS2 reader unlocks
/// cryptsetup's keyslot) and then fail at the mount, leaving nothing behind.
#[test]
fn cryptsetup_made_containers_unlock() {
    if skip_unless_root() {
        return;
    }
    let fx = Fixture::new();
    let container = fx.path("cs.luks");
    fs::File::create(&container)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let pass = fx.path("pass");
    fs::write(&pass, "from-cryptsetup").unwrap();
    let out = Command::new(cryptsetup())
        .args([
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
        ])
        .args(["--pbkdf-force-iterations", "1000", "--key-file"])
        .arg(&pass)
        .arg(&container)
        .output()
        .unwrap();
    assert!(out.status.success(), "luksFormat: {}", stderr(&out));
    let image = fx.path("cs.sif");
    sif::create(
        &image,
        vec![
            sif::ObjectInput::new(sif::DataType::Partition, container.as_path()).partition(
                sif::FsType::EncryptedSquashfs,
                sif::PartType::PrimSys,
                sif::Arch::host(),
            ),
        ],
        &sif::CreateOptions::default(),
    )
    .unwrap();
    let before = fx.snapshot();
    let wrong = fx.path("wrong");
    fs::write(&wrong, "nope").unwrap();
    let out = exec(
        &image,
        &["--passphrase-file", wrong.to_str().unwrap()],
        &["true"],
    );
    assert_one_line_error(&out, "no LUKS2 keyslot opens");
    let out = exec(
        &image,
        &["--passphrase-file", pass.to_str().unwrap()],
        &["true"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("LUKS2"), "the key was not accepted: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    fx.assert_no_leaks(&before);
}
