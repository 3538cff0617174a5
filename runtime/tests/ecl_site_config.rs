//! Invalid site ECL configurations: every one refuses every check with
//! exit 2 and one line naming the offending file, whichever partition is
//! asked about (an invalid configuration must never mean "unchecked").

mod common;
mod ecl_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use ecl_support::*;

/// A site with a keyring, a signed image and a valid partition `good`.
struct Fixture {
    site: Site,
    ring: PathBuf,
    image: PathBuf,
    good: String,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let c = corpus()?;
        let site = Site::new();
        let a = Key::generate("a");
        let ring = site.keyring("keyring.asc", &[&a]);
        let image = site.signed_image(&c, "a.sif", &[&a]);
        let good = partition("good", "whitelist", "", &[&a.fp()]);
        Some(Fixture {
            site,
            ring,
            image,
            good,
        })
    }

    /// Checks partition `good` under a site file of the good partition
    /// plus `extra`; asserts the error names `blame` (the site file when
    /// `None`) and contains `needle`.
    fn assert_refuses(&self, name: &str, extra: &str, blame: Option<&Path>, needle: &str) {
        let config = self
            .site
            .config_named(name, &[&self.ring], &format!("{}{extra}", self.good));
        self.assert_error(&config, blame.unwrap_or(&config), needle);
    }

    fn assert_error(&self, config: &Path, blame: &Path, needle: &str) {
        for p in ["good", "unlisted"] {
            let out = ecl_check(config, p, &self.image, false);
            assert_config_error(&out, blame, needle);
        }
    }
}

#[test]
fn the_fixture_itself_is_valid() {
    if skip_unless_root() {
        return;
    }
    let Some(f) = Fixture::new() else { return };
    let config = f.site.config(&[&f.ring], &f.good);
    assert_allowed(&ecl_check(&config, "good", &f.image, false), &[]);
}

#[test]
fn schema_errors_name_the_site_file() {
    if skip_unless_root() {
        return;
    }
    let Some(f) = Fixture::new() else { return };
    let group = |fields: &str| {
        format!("[partitions.bad]\nactivated = true\n[[partitions.bad.execgroup]]\n{fields}\n")
    };
    let fp = "0000000000000000000000000000000000000001";
    let cases: Vec<(&str, String, &str)> = vec![
        ("toplevel.toml", "bogus = 1\n".into(), "unknown field `bogus`"),
        (
            "partkey.toml",
            "[partitions.bad]\nactivated = true\nmode = \"whitelist\"\n".into(),
            "unknown field `mode`",
        ),
        (
            "groupkey.toml",
            group(&format!(
                "tagname = \"g\"\nmode = \"whitelist\"\nkeyfp = [\"{fp}\"]\nkeyfps = []"
            )),
            "unknown field `keyfps`",
        ),
        (
            "mode.toml",
            group("tagname = \"g\"\nmode = \"greylist\""),
            "unknown variant `greylist`",
        ),
        ("notag.toml", group("mode = \"whitelist\""), "tagname"),
        (
            "dup.toml",
            group("tagname = \"g1\"\nmode = \"whitelist\"\ndirpath = \"/usr\"")
                + "[[partitions.bad.execgroup]]\ntagname = \"g2\"\nmode = \"blacklist\"\ndirpath = \"/usr\"\n",
            "another group already uses dirpath \"/usr\"",
        ),
        (
            "dupfallback.toml",
            group("tagname = \"g1\"\nmode = \"whitelist\"")
                + "[[partitions.bad.execgroup]]\ntagname = \"g2\"\nmode = \"blacklist\"\n",
            "another group already uses dirpath \"\"",
        ),
        (
            "shortfp.toml",
            group("tagname = \"g\"\nmode = \"whitelist\"\nkeyfp = [\"ABCD\"]"),
            "is not a 40-digit hex fingerprint",
        ),
        (
            "nonhexfp.toml",
            group(&format!(
                "tagname = \"g\"\nmode = \"whitelist\"\nkeyfp = [\"{}\"]",
                "Z".repeat(40)
            )),
            "is not a 40-digit hex fingerprint",
        ),
        (
            "nodir.toml",
            group("tagname = \"g\"\nmode = \"whitelist\"\ndirpath = \"/nonexistent/images\""),
            "dirpath \"/nonexistent/images\"",
        ),
        (
            "uncleandir.toml",
            group("tagname = \"g\"\nmode = \"whitelist\"\ndirpath = \"/usr/../usr\""),
            "must be written as its real path",
        ),
        (
            "syntax.toml",
            "[partitions.bad\nactivated = true\n".into(),
            "ECL configuration",
        ),
        (
            "nokeyrings.toml",
            group(&format!("tagname = \"g\"\nmode = \"whitelist\"\nkeyfp = [\"{fp}\"]"))
                .replace("activated = true\n", "activated = true\nkeyrings = []\n"),
            "an activated list needs at least one keyring",
        ),
        (
            "fileandinline.toml",
            "[partitions.bad]\nfile = \"/etc/hostname\"\nactivated = true\n".into(),
            "must not also list",
        ),
    ];
    for (name, extra, needle) in cases {
        f.assert_refuses(name, &extra, None, needle);
    }
    // Validation runs for lists that are not activated too (as Apptainer's).
    f.assert_refuses(
        "inactive.toml",
        &group("tagname = \"g\"\nmode = \"whitelist\"\nkeyfp = [\"ABCD\"]")
            .replace("activated = true", "activated = false"),
        None,
        "40-digit",
    );
    // No keyrings at all anywhere, activated list: the site file is named.
    let config = f.site.config_named("noring.toml", &[], &f.good);
    f.assert_error(&config, &config, "needs at least one keyring");
}

#[test]
fn untrusted_files_are_refused_and_named() {
    if skip_unless_root() {
        return;
    }
    let Some(f) = Fixture::new() else { return };
    let site = &f.site;
    let ecl_text = "activated = true\n[[execgroup]]\ntagname = \"g\"\nmode = \"whitelist\"\n\
                    dirpath = \"\"\nkeyfp = [\"0000000000000000000000000000000000000001\"]\n";
    let file_entry = |p: &Path| format!("[partitions.bad]\nfile = {p:?}\n");

    // `file =` naming an ecl.toml owned by someone else.
    let foreign = site.trusted("foreign/ecl.toml", ecl_text);
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    f.assert_refuses(
        "foreign.toml",
        &file_entry(&foreign),
        Some(&foreign),
        "owned by root",
    );
    // Root's, but group-writable.
    let writable = site.trusted("writable/ecl.toml", ecl_text);
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o664)).unwrap();
    f.assert_refuses(
        "writable.toml",
        &file_entry(&writable),
        Some(&writable),
        "not writable by group or others",
    );
    // A symlink to a good file (the link could be repointed).
    let good = site.trusted("good/ecl.toml", ecl_text);
    let link = site.path("good/link.toml");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    f.assert_refuses("link.toml", &file_entry(&link), Some(&link), "symlink");
    // Missing.
    let missing = site.path("missing/ecl.toml");
    f.assert_refuses(
        "missing.toml",
        &file_entry(&missing),
        Some(&missing),
        "No such file",
    );
    // An error inside the Apptainer file names that file.
    let badmode = site.trusted(
        "badmode/ecl.toml",
        ecl_text.replace("whitelist", "greylist"),
    );
    f.assert_refuses(
        "badmode.toml",
        &file_entry(&badmode),
        Some(&badmode),
        "greylist",
    );
    let baddir = site.trusted(
        "baddir/ecl.toml",
        ecl_text.replace("dirpath = \"\"", "dirpath = \"/nonexistent\""),
    );
    f.assert_refuses(
        "baddir.toml",
        &file_entry(&baddir),
        Some(&baddir),
        "/nonexistent",
    );

    // A keyring that is not root's.
    let ring = site.keyring("foreign.asc", &[&Key::generate("k")]);
    std::os::unix::fs::chown(&ring, Some(65534), None).unwrap();
    f.assert_refuses(
        "foreignring.toml",
        &format!(
            "[partitions.bad]\nactivated = false\nkeyrings = [{:?}]\n",
            ring
        ),
        Some(&ring),
        "owned by root",
    );
    // The site file itself, group-writable or someone else's.
    let config = site.config_named("site-writable.toml", &[&f.ring], &f.good);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    f.assert_error(&config, &config, "not writable by group or others");
    let config = site.config_named("site-foreign.toml", &[&f.ring], &f.good);
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    f.assert_error(&config, &config, "owned by root");
}
