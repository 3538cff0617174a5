//! `sifrun ecl check` with real keys and images: each mode allows and
//! refuses, `--json`, dirpath group selection, the reference corpus
//! (current and legacy signatures), and an Apptainer `ecl.toml` used as is.
//! Bad input (keys, signatures, images, site files) is in `ecl_bad_input.rs`.

mod common;
mod ecl_support;

use common::*;
use ecl_support::*;

#[test]
fn each_mode_allows_and_refuses_with_rule_and_reason() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let (a, b, x) = (Key::generate("a"), Key::generate("b"), Key::generate("x"));
    let ring = site.keyring("keyring.asc", &[&a, &b, &x]);
    let (fa, fb, fx) = (a.fp(), b.fp(), x.fp());
    let body = [
        partition("wl", "whitelist", "", &[&fx, &fa]),
        partition("wlother", "whitelist", "", &[&fx]),
        partition("ws", "whitestrict", "", &[&fa, &fb]),
        partition("bl", "blacklist", "", &[&fb]),
    ]
    .concat();
    let config = site.config(&[&ring], &body);
    let by_a = site.signed_image(&c, "img/a.sif", &[&a]);
    let by_ab = site.signed_image(&c, "img/ab.sif", &[&a, &b]);
    let unsigned = site.corpus_copy(&c, "one-group.sif", "img/unsigned.sif");

    let rule = |p: &str, mode: &str| format!("execgroup \"{p}-group\" ({mode})");
    let check = |p: &str, img: &std::path::Path| ecl_check(&config, p, img, false);

    // whitelist: one listed key that verified on every group.
    assert_allowed(
        &check("wl", &by_a),
        &[
            "partition wl",
            &rule("wl", "whitelist"),
            &fa,
            "which the list allows",
        ],
    );
    assert_refused(
        &check("wlother", &by_a),
        &[
            "partition wlother",
            &rule("wlother", "whitelist"),
            &format!("signed by {fa} but by no key the list allows"),
        ],
    );
    // whitestrict: every listed key.
    assert_allowed(
        &check("ws", &by_ab),
        &[&rule("ws", "whitestrict"), "signed by every listed key"],
    );
    assert_refused(
        &check("ws", &by_a),
        &[
            &rule("ws", "whitestrict"),
            &format!("not signed by every listed key: missing {fb}"),
        ],
    );
    // blacklist: no listed signer.
    assert_allowed(
        &check("bl", &by_a),
        &[&rule("bl", "blacklist"), "none of them listed"],
    );
    assert_refused(
        &check("bl", &by_ab),
        &[
            &rule("bl", "blacklist"),
            &format!("signed by {fb}, which the list forbids"),
        ],
    );
    // Unsigned: refused in every mode, the refusal names the image.
    for p in ["wl", "ws", "bl"] {
        let out = check(p, &unsigned);
        assert_refused(&out, &["unsigned: object group 1 has no signature"]);
        assert!(stdout(&out).starts_with(unsigned.to_str().unwrap()));
    }
    // Signed only by a key outside the partition keyring: refused even by
    // a blacklist that does not list it (anyone can make such a key).
    let stranger = Key::generate("stranger");
    let by_stranger = site.signed_image(&c, "img/s.sif", &[&stranger]);
    for p in ["wl", "ws", "bl"] {
        assert_refused(
            &check(p, &by_stranger),
            &["not in the partition keyring", &stranger.fp()],
        );
    }
}

#[test]
fn json_report_shape() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let a = Key::generate("a");
    let ring = site.keyring("keyring.asc", &[&a]);
    let body =
        partition("wl", "whitelist", "", &[&a.fp()]) + "[partitions.open]\nactivated = false\n";
    let config = site.config(&[&ring], &body);
    let img = site.signed_image(&c, "a.sif", &[&a]);

    let out = ecl_check(&config, "wl", &img, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["partition"], "wl");
    assert_eq!(v["rule"], "execgroup \"wl-group\" (whitelist)");
    assert!(v["reason"].as_str().unwrap().contains(&a.fp()));
    assert_eq!(v["ecl"], config.to_str().unwrap());
    assert_eq!(v["cached"], false);
    assert_eq!(v["facts"]["groups"], serde_json::json!([1]));
    let sigs = v["facts"]["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert_eq!(sigs[0]["status"], "verified");
    assert_eq!(sigs[0]["signer"], a.fp());
    assert_eq!(sigs[0]["fingerprint"], a.fp());
    assert_eq!(sigs[0]["group"], 1);

    // Refused: same shape, exit 1, the reason says why.
    let unsigned = site.corpus_copy(&c, "one-group.sif", "u.sif");
    let out = ecl_check(&config, "wl", &unsigned, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["allowed"], false);
    assert!(v["reason"].as_str().unwrap().starts_with("unsigned"));
    // The image-level verdict shows up as an invalid pseudo-signature.
    let sigs = v["facts"]["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), 1, "{sigs:?}");
    assert_eq!(sigs[0]["status"], "invalid");
    assert_eq!(sigs[0]["group"], serde_json::Value::Null);

    // No activated list (inactive entry, or no entry and no default).
    for p in ["open", "elsewhere"] {
        let out = ecl_check(&config, p, &unsigned, true);
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["allowed"], true);
        assert_eq!(v["partition"], p);
        assert_eq!(v["rule"], "no activated ECL");
    }
}

#[test]
fn dirpath_selects_the_execgroup() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let (a, b) = (Key::generate("a"), Key::generate("b"));
    let ring = site.keyring("keyring.asc", &[&a, &b]);
    std::fs::create_dir_all(site.path("images/sub")).unwrap();
    std::fs::create_dir_all(site.path("other")).unwrap();
    let images = site.path("images");
    let group = |tag: &str, dir: &str, fp: &str| {
        format!(
            "[[default.execgroup]]\ntagname = \"{tag}\"\nmode = \"whitelist\"\n\
             dirpath = \"{dir}\"\nkeyfp = [\"{fp}\"]\n"
        )
    };
    let with_fallback = format!(
        "[default]\nactivated = true\n{}{}",
        group("proj", images.to_str().unwrap(), &a.fp()),
        group("fallback", "", &b.fp())
    );
    let config = site.config(&[&ring], &with_fallback);
    let in_dir = site.signed_image(&c, "images/a.sif", &[&a]);
    let in_sub = site.signed_image(&c, "images/sub/a.sif", &[&a]);
    let b_elsewhere = site.signed_image(&c, "other/b.sif", &[&b]);

    // Exactly the directory: its group (any partition falls to [default]).
    assert_allowed(
        &ecl_check(&config, "any", &in_dir, false),
        &["execgroup \"proj\" (whitelist)"],
    );
    // A subdirectory is not the directory: the fallback group, which does
    // not list A.
    assert_refused(
        &ecl_check(&config, "any", &in_sub, false),
        &[
            "execgroup \"fallback\" (whitelist)",
            "by no key the list allows",
        ],
    );
    assert_allowed(
        &ecl_check(&config, "any", &b_elsewhere, false),
        &["execgroup \"fallback\""],
    );
    // The directory is the image's real one: a symlink elsewhere to an
    // image in `images/` gets the `images` group, a symlink in `images/`
    // to an image elsewhere does not.
    let link = site.path("other/link.sif");
    std::os::unix::fs::symlink(&in_dir, &link).unwrap();
    assert_allowed(&ecl_check(&config, "any", &link, false), &["\"proj\""]);
    let link_in = site.path("images/link-b.sif");
    std::os::unix::fs::symlink(&b_elsewhere, &link_in).unwrap();
    assert_allowed(
        &ecl_check(&config, "any", &link_in, false),
        &["\"fallback\""],
    );

    // No fallback group: an image outside every dirpath is refused.
    let no_fallback = format!(
        "[default]\nactivated = true\n{}",
        group("proj", images.to_str().unwrap(), &a.fp())
    );
    let config = site.config_named("nofallback.toml", &[&ring], &no_fallback);
    assert_allowed(&ecl_check(&config, "any", &in_dir, false), &["\"proj\""]);
    for img in [&in_sub, &b_elsewhere] {
        let out = ecl_check(&config, "any", img, false);
        assert_refused(&out, &["(no execgroup)", "is not part of any execgroup"]);
        let dir = img.parent().unwrap().to_str().unwrap().to_string();
        assert!(stdout(&out).contains(&dir), "{}", stdout(&out));
    }
}

#[test]
fn reference_corpus_images() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    // The public keyring derived from the corpus' secret key.
    let corpus_key = Key::corpus(&c);
    assert_eq!(corpus_key.fp(), CORPUS_FP);
    let ring = site.keyring("corpus.asc", &[&corpus_key]);
    let other = Key::generate("other");
    let other_ring = site.keyring("other.asc", &[&other]);
    let legacy_body = partition("legacy", "whitelist", "", &[CORPUS_FP]).replace(
        "activated = true\n",
        "activated = true\nlegacyinsecure = true\n",
    );
    let body = [
        partition("wl", "whitelist", "", &[CORPUS_FP]),
        legacy_body
            .replace("[partitions.legacy", "[partitions.legacyother")
            .replace(CORPUS_FP, "0000000000000000000000000000000000000001"),
        legacy_body,
        // Its own keyrings (before the execgroup tables, as TOML needs).
        partition("otherkeys", "whitelist", "", &[CORPUS_FP]).replace(
            "activated = true\n",
            &format!("activated = true\nkeyrings = [{other_ring:?}]\n"),
        ),
    ]
    .concat();
    let config = site.config(&[&ring], &body);
    let img = |name: &str| c.join("images").join(name);

    for name in ["one-group-signed.sif", "two-groups-signed.sif"] {
        assert_allowed(&ecl_check(&config, "wl", &img(name), false), &[CORPUS_FP]);
        // The keyring is the partition's: another key ring knows no signer.
        assert_refused(
            &ecl_check(&config, "otherkeys", &img(name), false),
            &["not in the partition keyring", CORPUS_FP],
        );
        // legacyinsecure checks legacy signatures only; these have none.
        assert_refused(&ecl_check(&config, "legacy", &img(name), false), &[]);
    }
    for name in ["one-group.sif", "two-groups.sif"] {
        assert_refused(
            &ecl_check(&config, "wl", &img(name), false),
            &["unsigned: object group 1 has no signature"],
        );
    }
    let legacy: Vec<&str> = [
        "one-group-signed-legacy.sif",
        "one-group-signed-legacy-all.sif",
        "one-group-signed-legacy-group.sif",
        "two-groups-signed-legacy.sif",
        "two-groups-signed-legacy-all.sif",
        "two-groups-signed-legacy-group.sif",
    ]
    .into_iter()
    .filter(|n| img(n).is_file())
    .collect();
    assert!(!legacy.is_empty());
    for name in legacy {
        assert_refused(&ecl_check(&config, "wl", &img(name), false), &["legacy"]);
        let out = ecl_check(&config, "legacy", &img(name), true);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stdout(&out));
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["allowed"], true, "{name}");
        assert!(v["reason"].as_str().unwrap().contains(CORPUS_FP));
        // Legacy signatures still name a signer the list must allow.
        assert_refused(
            &ecl_check(&config, "legacyother", &img(name), false),
            &["by no key the list allows"],
        );
        // And still cover the bytes that run: a changed primary partition
        // is refused.
        let copy = site.corpus_copy(&c, name, &format!("tampered-{name}"));
        let part = sif::Image::open(&copy)
            .unwrap()
            .primary_partition()
            .unwrap()
            .clone();
        let mut bytes = std::fs::read(&copy).unwrap();
        bytes[(part.offset + part.size / 2) as usize] ^= 1;
        std::fs::write(&copy, bytes).unwrap();
        assert_refused(&ecl_check(&config, "legacy", &copy, false), &["tampered"]);
        // And an overlay partition added next to the signed one (its files
        // would lie over the signed files): refused, since no legacy
        // signature covers it.
        let with_overlay = site.corpus_copy(&c, name, &format!("overlay-{name}"));
        add_overlay(&with_overlay, Some(1));
        assert_refused(&ecl_check(&config, "legacy", &with_overlay, false), &[]);
    }
}

/// Adds a small overlay partition (as `apptainer overlay create` does, in
/// `group`) to `image`; returns its object ID.
fn add_overlay(image: &std::path::Path, group: Option<u32>) -> u32 {
    let overlay = sif::ObjectInput::new(sif::DataType::Partition, vec![0u8; 64 << 10]).partition(
        sif::FsType::Ext3,
        sif::PartType::Overlay,
        sif::Arch::Amd64,
    );
    let overlay = match group {
        Some(g) => overlay.group(g),
        None => overlay.no_group(),
    };
    sif::add_object(image, overlay, &Default::default()).unwrap()
}

/// An overlay partition's files lie over the image's, so one added to a
/// signed image after signing must not run under a list, wherever it sits
/// in the SIF: in the signed group, in a group of its own, in none.
#[test]
fn an_overlay_added_after_signing_is_refused() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let a = Key::generate("a");
    let ring = site.keyring("keyring.asc", &[&a]);
    let config = site.config(&[&ring], &partition("wl", "whitelist", "", &[&a.fp()]));
    let signed = site.signed_image(&c, "img/a.sif", &[&a]);
    assert_allowed(&ecl_check(&config, "wl", &signed, false), &[&a.fp()]);
    for (group, reason) in [
        (Some(1), "object added after signing"),
        (Some(2), "object group 2 has no signature"),
        (None, "not in any object group"),
    ] {
        let image = site.path(&format!("img/overlay-{group:?}.sif"));
        std::fs::copy(&signed, &image).unwrap();
        add_overlay(&image, group);
        assert_refused(&ecl_check(&config, "wl", &image, false), &[reason]);
    }
}

/// An `ecl.toml` as Apptainer ships and documents it (comments, every
/// key), referenced with `file =`: the same decisions.
#[test]
fn apptainer_ecl_toml_works_unchanged() {
    if skip_unless_root() {
        return;
    }
    let Some(c) = corpus() else { return };
    let site = Site::new();
    let a = Key::generate("a");
    let ring = site.keyring("keyring.asc", &[&a]);
    std::fs::create_dir_all(site.path("trusted")).unwrap();
    let trusted = site.path("trusted");
    let apptainer = format!(
        r#"# ecl.toml: Execution Control List configuration, as in
# Apptainer's etc/ecl.toml.

# activated: enable or disable ECL checks
activated = true

# legacyinsecure: verify only legacy (non-PGP-signed-metadata) signatures
legacyinsecure = false

[[execgroup]]
  tagname = "group1"
  mode = "whitelist"
  dirpath = "{}"
  keyfp = ["{}"]

[[execgroup]]
  tagname = "elsewhere"
  mode = "whitestrict"
  dirpath = ""
  keyfp = ["5994BE54C31CF1B5E1994F987C52CF6D055F072B", "{}"]
"#,
        trusted.display(),
        // Lower case: fingerprints match case-insensitively, as in Apptainer.
        a.fp().to_lowercase(),
        a.fp()
    );
    let ecl = site.trusted("apptainer/ecl.toml", apptainer);
    let config = site.config(&[&ring], &format!("[partitions.secure]\nfile = {ecl:?}\n"));
    let in_trusted = site.signed_image(&c, "trusted/a.sif", &[&a]);
    let elsewhere = site.signed_image(&c, "a.sif", &[&a]);

    let out = ecl_check(&config, "secure", &in_trusted, true);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["rule"], "execgroup \"group1\" (whitelist)");
    // The list's source is the Apptainer file, not the site file.
    assert_eq!(v["ecl"], ecl.to_str().unwrap());
    assert_refused(
        &ecl_check(&config, "secure", &elsewhere, false),
        &[
            "execgroup \"elsewhere\" (whitestrict)",
            "missing 5994BE54C31CF1B5E1994F987C52CF6D055F072B",
        ],
    );
    let unsigned = site.corpus_copy(&c, "one-group.sif", "trusted/u.sif");
    assert_refused(
        &ecl_check(&config, "secure", &unsigned, false),
        &["unsigned"],
    );

    // Deactivated in the Apptainer file: anything runs.
    let off = std::fs::read_to_string(&ecl)
        .unwrap()
        .replace("activated = true", "activated = false");
    site.trusted("apptainer/ecl.toml", off);
    let out = ecl_check(&config, "secure", &unsigned, false);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("no activated execution control list"));
}
