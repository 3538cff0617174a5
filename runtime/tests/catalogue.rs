//! `sifrun catalogue stage` and `check` with real keys and images: what is
//! staged is verified once and trusted by its record; a record that no
//! longer matches, an image outside the catalogue and a catalogue someone
//! else could write are not trusted; `--verify` and `--json` say so.

mod common;
mod ecl_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use ecl_support::*;

fn stage(config: &Path, extra: &[&str], image: &Path, dir: &Path) -> std::process::Output {
    let mut args = vec!["catalogue", "stage", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend([image.to_str().unwrap(), dir.to_str().unwrap()]);
    run_sifrun(&args)
}

fn check(config: &Path, extra: &[&str], images: &[&Path]) -> std::process::Output {
    let mut args = vec!["catalogue", "check", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(images.iter().map(|p| p.to_str().unwrap()));
    run_sifrun(&args)
}

#[test]
fn staged_images_are_decided_from_their_record_and_nothing_else_is() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let a = Key::generate("a");
    let ring = site.keyring("keyring.asc", &[&a]);
    let catalogue = site.path("catalogue");
    std::fs::create_dir(&catalogue).unwrap();
    std::fs::set_permissions(&catalogue, std::fs::Permissions::from_mode(0o755)).unwrap();
    let body = format!(
        "{}\n[catalogue]\ndirs = [{catalogue:?}]\nowner = \"root\"\n",
        partition("secure", "whitelist", "", &[&a.fp()])
    );
    let config = site.config(&[&ring], &body);
    let signed = site.signed_image(&c, "in/app.sif", &[&a]);
    let unsigned = site.corpus_copy(&c, "one-group.sif", "in/plain.sif");

    // Staging verifies the copy and says what each list decides.
    let out = stage(&config, &[], &signed, &catalogue);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("partition secure: allowed"),
        "{}",
        stdout(&out)
    );
    let out = stage(&config, &[], &unsigned, &catalogue);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("partition secure: refused"),
        "{}",
        stdout(&out)
    );
    let staged = catalogue.join("app.sif");
    let meta = std::fs::metadata(&staged).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o444);
    assert!(catalogue.join("app.sif.json").is_file());

    // Trusted, decided from the record, and the record holds on re-check.
    let out = check(&config, &["--verify"], &[&staged]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("trusted; secure allowed; verified again: matches the record"),
        "{text}"
    );
    // The unsigned one is trusted as staged, and its record refuses it.
    let out = check(&config, &[], &[&catalogue.join("plain.sif")]);
    assert!(
        stdout(&out).contains("trusted; secure refused"),
        "{}",
        stdout(&out)
    );
    // Outside the catalogue: not staged (exit 1).
    let out = check(&config, &[], &[&signed]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("not-staged"), "{}", stdout(&out));

    // Rewritten in place by its owner (same size): the record no longer
    // matches; the node would verify in full.
    let mut bytes = std::fs::read(&staged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&staged, &bytes).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o444)).unwrap();
    // A change within the first 64 KiB (or a new mtime second) is caught
    // by the identity: unrecorded; one beyond it, by --verify.
    let out = check(&config, &["--verify", "--json"], &[&staged]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json[0]["state"] == "unrecorded" || json[0]["reverified"] == false,
        "{json}"
    );

    // A catalogue others may write: nothing in it is trusted.
    std::fs::set_permissions(&catalogue, std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = check(&config, &[], &[&catalogue.join("plain.sif")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("untrusted"), "{}", stdout(&out));
}

#[test]
fn staging_refuses_odd_names_and_a_site_without_lists() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let a = Key::generate("a");
    let ring = site.keyring("keyring.asc", &[&a]);
    let config = site.config(&[&ring], &partition("secure", "whitelist", "", &[&a.fp()]));
    let image = site.signed_image(&c, "in/app.sif", &[&a]);
    let dir = site.path("catalogue");
    std::fs::create_dir(&dir).unwrap();
    for name in [".hidden", "x.json", "a/b"] {
        let out = stage(&config, &["--name", name], &image, &dir);
        assert_one_line_error(&out, "--name");
    }
    // Nothing was left behind by the refusals.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let none = site.config_named(
        "none.toml",
        &[&ring],
        "[partitions.debug]\nactivated = false\n",
    );
    let out = stage(&none, &[], &image, &dir);
    assert_one_line_error(&out, "no partition has an activated execution control list");
}
