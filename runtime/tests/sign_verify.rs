//! `sifrun sign` / `sifrun verify`: exit statuses, the one verdict line and
//! the JSON report, on images of the reference corpus (no root needed).

mod common;

use std::path::Path;

use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Asserts a failed verify printed exactly one verdict line containing `needle`.
fn assert_verdict_line(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err:?}");
    assert!(
        lines[0].starts_with("sifrun: not verified: ") && lines[0].contains(needle),
        "{err:?} (wanted {needle:?})"
    );
}

#[test]
fn sign_then_verify_round_trip() {
    let Some(c) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("a.sif");
    std::fs::copy(c.join("images/two-groups.sif"), &img).unwrap();
    let key = c.join("keys/private.asc");

    let out = run_sifrun(&["verify", "--keyring", s(&key), s(&img)]);
    assert_verdict_line(&out, "unsigned: object group 1 has no signature");

    let out = run_sifrun(&["sign", "--key", s(&key), s(&img)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("signature objects 4, 5"),
        "{}",
        stderr(&out)
    );

    let out = run_sifrun(&["verify", "--keyring", s(&key), s(&img)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("verified: "));
    assert!(stdout(&out).contains(CORPUS_FP));

    // No keyring: not verified, and the line says what is missing.
    let out = run_sifrun(&["verify", s(&img)]);
    assert_verdict_line(&out, "no OpenPGP keyring was given");

    // JSON report.
    let out = run_sifrun(&["verify", "--keyring", s(&key), "--json", s(&img)]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["verdict"]["kind"], "verified");
    assert_eq!(v["signers"][0], CORPUS_FP);
    assert_eq!(v["groups"].as_array().unwrap().len(), 2);
    assert_eq!(v["signatures"][0]["format"], "openpgp");
    assert_eq!(v["signatures"][0]["linked"]["group"], 1);
    assert_eq!(
        v["signatures"][0]["verified_objects"],
        serde_json::json!([1, 2])
    );

    // Tampered object data: the line names the object; JSON has the kind.
    let mut b = std::fs::read(&img).unwrap();
    let off = 36864; // object 2 (SquashFS partition) of two-groups.sif
    b[off] ^= 1;
    std::fs::write(&img, b).unwrap();
    let out = run_sifrun(&["verify", "--keyring", s(&key), s(&img)]);
    assert_verdict_line(&out, "tampered object: the data of object 2");
    let out = run_sifrun(&["verify", "--keyring", s(&key), "--json", s(&img)]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["verdict"]["kind"], "tampered-object");
}

#[test]
fn sign_one_group_and_bad_arguments() {
    let Some(c) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("g.sif");
    std::fs::copy(c.join("images/two-groups.sif"), &img).unwrap();
    let key = c.join("keys/private.asc");
    let out = run_sifrun(&["sign", "--key", s(&key), "--group", "2", s(&img)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_sifrun(&["verify", "--keyring", s(&key), s(&img)]);
    assert_verdict_line(&out, "object group 1 has no signature");

    let out = run_sifrun(&["sign", "--key", s(&key), "--group", "7", s(&img)]);
    assert_one_line_error(&out, "object group 7 not found");
    let out = run_sifrun(&[
        "sign",
        "--key",
        s(&key),
        "--group",
        "1",
        "--object",
        "1",
        s(&img),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_sifrun(&["sign", "--key", "/nonexistent.asc", s(&img)]);
    assert_one_line_error(&out, "/nonexistent.asc");
    let out = run_sifrun(&["verify", "--keyring", s(&img), s(&img)]);
    assert_one_line_error(&out, "keyring");
}

#[test]
fn passphrase_file_and_no_terminal() {
    let Some(c) = corpus() else { return };
    use sequoia_openpgp::cert::CertBuilder;
    use sequoia_openpgp::serialize::SerializeInto;
    let tmp = tempfile::tempdir().unwrap();
    let (cert, _) = CertBuilder::general_purpose(Some("Locked <l@example.invalid>"))
        .set_password(Some("open sesame".into()))
        .generate()
        .unwrap();
    let key = tmp.path().join("locked.asc");
    std::fs::write(&key, cert.as_tsk().armored().to_vec().unwrap()).unwrap();
    let public = tmp.path().join("locked.pub.asc");
    std::fs::write(&public, cert.armored().to_vec().unwrap()).unwrap();
    let img = tmp.path().join("p.sif");
    std::fs::copy(c.join("images/one-group.sif"), &img).unwrap();

    // No passphrase and no terminal: a clear error, not a hang.
    let out = sifrun_command()
        .args(["sign", "--key", s(&key), s(&img)])
        .stdin(std::process::Stdio::null())
        .env_remove("TERM")
        .output()
        .unwrap();
    if !out.status.success() {
        assert!(stderr(&out).contains("passphrase"), "{}", stderr(&out));
    }

    let pass = tmp.path().join("pass");
    std::fs::write(&pass, "wrong\n").unwrap();
    let out = run_sifrun(&[
        "sign",
        "--key",
        s(&key),
        "--passphrase-file",
        s(&pass),
        s(&img),
    ]);
    assert_one_line_error(&out, "wrong passphrase");
    std::fs::write(&pass, "open sesame\n").unwrap();
    let out = run_sifrun(&[
        "sign",
        "--key",
        s(&key),
        "--passphrase-file",
        s(&pass),
        s(&img),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run_sifrun(&["verify", "--keyring", s(&public), s(&img)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Signed by a key that is not in the keyring given.
    let out = run_sifrun(&[
        "verify",
        "--keyring",
        s(&c.join("keys/private.asc")),
        s(&img),
    ]);
    assert_verdict_line(&out, "signed by unknown key");
}

#[test]
fn legacy_images_need_the_flag() {
    let Some(c) = corpus() else { return };
    let img = c.join("images/one-group-signed-legacy.sif");
    let key = c.join("keys/private.asc");
    let out = run_sifrun(&["verify", "--keyring", s(&key), s(&img)]);
    assert_verdict_line(&out, "only legacy signatures");
    let out = run_sifrun(&["verify", "--keyring", s(&key), "--legacy", s(&img)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn help_texts() {
    for sub in ["sign", "verify"] {
        let out = run_sifrun(&[sub, "--help"]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("Examples:"), "{sub}");
    }
    let h = stdout(&run_sifrun(&["verify", "--help"]));
    for f in ["--keyring", "--key-pem", "--legacy", "--json"] {
        assert!(h.contains(f), "{f}");
    }
    let h = stdout(&run_sifrun(&["sign", "--help"]));
    for f in ["--key", "--group", "--object", "--passphrase-file"] {
        assert!(h.contains(f), "{f}");
    }
}
