//! The staged catalogue: one verification serves every node.
//!
//! Under an execution control list every node would otherwise hash the
//! whole image before mounting it (or copy it first, when the user could
//! change it), so `N` nodes read `N` whole images from the shared
//! filesystem. Instead, the account that owns a catalogue directory stages
//! an image there once (`sifrun catalogue stage`): the image is copied in
//! read-only, verified against every activated list's keyrings, and a
//! record of what verification found is written beside it
//! (`NAME.json` next to `NAME`).
//!
//! A node trusts such a record for the image the **job user** opened when
//! nobody but that account (or root) could have written either of them:
//!
//! * the opened file's real directory (as this process's mount namespace
//!   sees the open file, never the path the user gave) is one of the
//!   configured catalogue directories;
//! * that directory and every directory above it are owned by root or the
//!   catalogue account and not writable by group or others, and none is a
//!   symlink (so nobody else can rename or replace anything in the chain);
//! * the opened file is still the directory's entry of that name, and it
//!   and the record are regular files owned by root or the account, not
//!   writable by group or others;
//! * the record matches the file: its size, its modification time and the
//!   SHA-256 of its first 64 KiB (the SIF header and descriptors, which
//!   hold the image's unique ID and its signature descriptors). Inode
//!   numbers and change times are not compared: network filesystems do not
//!   all show the same ones on every client. This comparison only catches
//!   the account's own mistakes (an image replaced without staging it);
//!   what makes the record trustworthy is who can write it.
//!
//! The record says which signatures are valid under which keys (one set of
//! facts per *policy digest*, the digest of a list's keyrings and legacy
//! setting), not what any partition allows: each node still applies its
//! own partition's list to the recorded facts. A list whose keyrings
//! changed since staging finds no facts for its digest and verifies in
//! full, as it would without a catalogue.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sif::integrity::hex;

use super::decide::SignerFacts;

/// The record format this code writes and reads.
pub const RECORD_FORMAT: u32 = 1;
/// How much of the image's start the record's identity covers.
pub const HEAD_BYTES: u64 = 64 * 1024;
/// A record larger than this is not a record (they are a few KiB).
const RECORD_LIMIT: u64 = 1 << 20;

/// The catalogue settings of the site file, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    /// Directories holding staged images, as the nodes see them.
    pub dirs: Vec<PathBuf>,
    /// The account that stages images (root is always trusted too).
    pub owner_uid: u32,
}

/// What the record says about the staged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagedIdentity {
    pub size: u64,
    /// Seconds since the epoch (sub-second parts differ between clients).
    pub mtime: i64,
    /// SHA-256 of the first [`HEAD_BYTES`] bytes, hex.
    pub head_sha256: String,
}

/// `NAME.json`, beside the staged `NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub format: u32,
    /// The staged file's name in its directory.
    pub image: String,
    pub identity: StagedIdentity,
    /// SHA-256 of the whole file as staged, hex (`sifrun catalogue check
    /// --verify` compares it; nodes never read the whole file for it).
    pub sha256: String,
    /// Seconds since the epoch.
    pub staged_at: u64,
    /// What verification found, per policy digest.
    pub verified: BTreeMap<String, SignerFacts>,
}

/// What a node may conclude about an image it opened.
#[derive(Debug)]
pub enum Lookup {
    /// Not in a catalogue directory.
    NotStaged,
    /// In a catalogue directory and writable only by trusted accounts, but
    /// its record cannot be used (missing, not matching the file, made for
    /// other keys): the file cannot change under us, so it is verified in
    /// place, in full.
    Unrecorded { reason: String },
    /// In a catalogue directory, but something there could have been
    /// written by someone else: nothing of the catalogue is trusted.
    Untrusted { reason: String },
    /// The record applies to this file.
    Trusted {
        record_path: PathBuf,
        record: Record,
    },
}

/// The record's name for a staged image called `name`.
pub fn record_name(name: &str) -> String {
    format!("{name}.json")
}

/// Checks a name an image may be staged under: one plain path component,
/// not hidden (staging's temporary files are), not a record's name.
pub fn check_stage_name(name: &str) -> Result<(), String> {
    let plain = matches!(
        Path::new(name).components().collect::<Vec<_>>().as_slice(),
        [Component::Normal(_)]
    );
    if !plain || name.contains('/') {
        return Err(format!("{name:?} must be a plain file name"));
    }
    if name.starts_with('.') {
        return Err(format!("{name:?} must not start with a dot"));
    }
    if name.ends_with(".json") {
        return Err(format!("{name:?} must not end in .json (records do)"));
    }
    Ok(())
}

/// SHA-256 (hex) of the first [`HEAD_BYTES`] bytes of `file`.
pub fn head_digest(file: &File, size: u64) -> std::io::Result<String> {
    let mut head = vec![0u8; size.min(HEAD_BYTES) as usize];
    file.read_exact_at(&mut head, 0)?;
    Ok(hex(&Sha256::digest(&head)))
}

/// The identity a record gives the file with metadata `meta`.
pub fn staged_identity(file: &File, meta: &std::fs::Metadata) -> std::io::Result<StagedIdentity> {
    Ok(StagedIdentity {
        size: meta.size(),
        mtime: meta.mtime(),
        head_sha256: head_digest(file, meta.size())?,
    })
}

impl Catalogue {
    /// Owned by root or the catalogue account, not writable by group or
    /// others.
    fn trusted(&self, meta: &std::fs::Metadata) -> bool {
        (meta.uid() == 0 || meta.uid() == self.owner_uid) && meta.mode() & 0o022 == 0
    }

    /// What may be concluded about `image` (an open file, whatever path
    /// the user named it by). Never an error: anything that cannot be
    /// established is a reason not to trust the record.
    pub fn lookup(&self, image: &File) -> Lookup {
        self.lookup_below(image, Path::new("/"))
    }

    /// [`Self::lookup`], checking the directory chain only below `top`
    /// (tests: their temporary directories sit in a world-writable /tmp).
    fn lookup_below(&self, image: &File, top: &Path) -> Lookup {
        let Ok(name) = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(image)
        )) else {
            return Lookup::NotStaged;
        };
        let (Some(dir), Some(base)) = (name.parent(), name.file_name()) else {
            return Lookup::NotStaged;
        };
        if !self.dirs.iter().any(|d| d == dir) {
            return Lookup::NotStaged;
        }
        match self.lookup_in(image, dir, base, top) {
            Ok(found) => found,
            Err(reason) => Lookup::Untrusted {
                reason: format!("{}: {reason}", name.display()),
            },
        }
    }

    fn lookup_in(
        &self,
        image: &File,
        dir: &Path,
        base: &std::ffi::OsStr,
        top: &Path,
    ) -> Result<Lookup, String> {
        self.check_directory_chain(dir, top)?;
        let meta = image.metadata().map_err(|e| e.to_string())?;
        // Still that directory's entry (not a file renamed away from it,
        // nor one reached through another link).
        let entry = std::fs::symlink_metadata(dir.join(base)).map_err(|e| e.to_string())?;
        if (entry.dev(), entry.ino()) != (meta.dev(), meta.ino()) {
            return Err("no longer the catalogue's entry of that name".into());
        }
        if !meta.file_type().is_file() || !self.trusted(&meta) {
            return Err(self.writers_reason("the image"));
        }
        let Some(base) = base.to_str() else {
            return Err("the name is not UTF-8".into());
        };
        let record_path = dir.join(record_name(base));
        let unrecorded = |reason: String| {
            Ok(Lookup::Unrecorded {
                reason: format!("{}: {reason}", record_path.display()),
            })
        };
        let record = match self.read_record(&record_path) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return unrecorded(
                    "no record (stage the image with `sifrun catalogue stage`)".into(),
                )
            }
            Err(reason) => return Err(format!("{}: {reason}", record_path.display())),
        };
        let identity = staged_identity(image, &meta).map_err(|e| e.to_string())?;
        if record.format != RECORD_FORMAT {
            return unrecorded(format!(
                "record format {} is not {RECORD_FORMAT}",
                record.format
            ));
        }
        if record.image != base {
            return unrecorded(format!("the record is for {:?}", record.image));
        }
        if record.identity != identity {
            return unrecorded("the image changed since it was staged (stage it again)".into());
        }
        Ok(Lookup::Trusted {
            record_path,
            record,
        })
    }

    /// Every directory from `top` (`/`) down to `dir`: a real directory
    /// (not a symlink), owned by root or the account, not writable by
    /// group or others. Checked from the top, so each checked directory
    /// guards the next name. An ancestor (never `dir` itself) may be a
    /// sticky world-writable directory (`/tmp`, a scratch filesystem's
    /// root): there only an entry's owner can rename or remove it, and the
    /// next entry's owner is checked in turn.
    fn check_directory_chain(&self, dir: &Path, top: &Path) -> Result<(), String> {
        let mut path = PathBuf::new();
        for component in dir.components() {
            match component {
                Component::RootDir | Component::Normal(_) => path.push(component),
                _ => return Err(format!("{} is not a plain absolute path", dir.display())),
            }
            if !path.starts_with(top) {
                continue;
            }
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.file_type().is_dir() {
                return Err(format!(
                    "{} is not a directory (a symlink?)",
                    path.display()
                ));
            }
            let sticky_ancestor = path != dir && meta.mode() & libc::S_ISVTX != 0;
            let owner_trusted = meta.uid() == 0 || meta.uid() == self.owner_uid;
            if !(self.trusted(&meta) || sticky_ancestor && owner_trusted) {
                return Err(format!(
                    "{}: {}",
                    path.display(),
                    self.writers_reason("the directory")
                ));
            }
        }
        Ok(())
    }

    fn writers_reason(&self, what: &str) -> String {
        format!(
            "{what} must be owned by root or uid {} (the catalogue's owner) and not writable by group or others",
            self.owner_uid
        )
    }

    /// The record at `path`: `None` when there is none; an error when one
    /// is there but anyone else could have written it or it is not one.
    fn read_record(&self, path: &Path) -> Result<Option<Record>, String> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() || !self.trusted(&meta) {
            return Err(self.writers_reason("the record"));
        }
        if meta.size() > RECORD_LIMIT {
            return Err(format!("over {RECORD_LIMIT} bytes: not a record"));
        }
        let mut text = Vec::new();
        file.take(RECORD_LIMIT)
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| format!("not a catalogue record: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A catalogue in a temporary directory, owned by the test's uid; the
    /// directory chain is checked from the temporary directory down.
    struct Fixture {
        tmp: tempfile::TempDir,
        dir: PathBuf,
        catalogue: Catalogue,
    }

    impl Catalogue {
        fn lookup_test(&self, f: &Fixture, image: &File) -> Lookup {
            self.lookup_below(image, f.tmp.path())
        }
    }

    fn uid() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("catalogue");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let catalogue = Catalogue {
            dirs: vec![dir.clone()],
            owner_uid: uid(),
        };
        Fixture {
            tmp,
            dir,
            catalogue,
        }
    }

    fn stage(f: &Fixture, name: &str, bytes: &[u8], facts: SignerFacts) -> PathBuf {
        let path = f.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let record = Record {
            format: RECORD_FORMAT,
            image: name.into(),
            identity: staged_identity(&file, &meta).unwrap(),
            sha256: hex(&Sha256::digest(bytes)),
            staged_at: 0,
            verified: BTreeMap::from([("policy".to_string(), facts)]),
        };
        let record_path = f.dir.join(record_name(name));
        std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
        std::fs::set_permissions(&record_path, std::fs::Permissions::from_mode(0o444)).unwrap();
        path
    }

    fn facts() -> SignerFacts {
        SignerFacts {
            groups: vec![1],
            signatures: vec![],
        }
    }

    #[test]
    fn a_matching_record_is_trusted() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"SIF image bytes", facts());
        match f.catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Trusted { record, .. } => assert_eq!(record.verified["policy"], facts()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn outside_the_catalogue_nothing_is_staged() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        let elsewhere = f.dir.parent().unwrap().join("app.sif");
        std::fs::copy(&path, &elsewhere).unwrap();
        // A copy beside the catalogue (and the record copied with it) is
        // not the catalogue's.
        std::fs::copy(
            f.dir.join("app.sif.json"),
            f.dir.parent().unwrap().join("app.sif.json"),
        )
        .unwrap();
        assert!(matches!(
            f.catalogue
                .lookup_test(&f, &File::open(&elsewhere).unwrap()),
            Lookup::NotStaged
        ));
    }

    #[test]
    fn a_symlink_into_the_catalogue_is_judged_by_the_real_file() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        let link = f.dir.parent().unwrap().join("link.sif");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            f.catalogue.lookup_test(&f, &File::open(&link).unwrap()),
            Lookup::Trusted { .. }
        ));
    }

    #[test]
    fn a_record_anyone_could_write_is_not_trusted() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        let record = f.dir.join("app.sif.json");
        std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o666)).unwrap();
        match f.catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Untrusted { reason } => assert!(reason.contains("the record"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_of_another_owner_is_not_trusted() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        // Root owns nothing here; the record belongs to an account that
        // is not the catalogue's.
        let record = f.dir.join("app.sif.json");
        let catalogue = if uid() == 0 {
            std::os::unix::fs::chown(&record, Some(65534), None).unwrap();
            f.catalogue.clone()
        } else {
            Catalogue {
                owner_uid: uid() + 1,
                ..f.catalogue.clone()
            }
        };
        match catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Untrusted { reason } => assert!(reason.contains("owned by"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_symlinked_record_is_not_followed() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        let record = f.dir.join("app.sif.json");
        let real = f.dir.parent().unwrap().join("elsewhere.json");
        std::fs::rename(&record, &real).unwrap();
        std::os::unix::fs::symlink(&real, &record).unwrap();
        match f.catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Untrusted { reason } => assert!(reason.contains("app.sif.json"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_group_writable_directory_trusts_nothing() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        match f.catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Untrusted { reason } => assert!(reason.contains("the directory"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sticky_ancestor_is_fine_but_not_a_sticky_catalogue() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        // The catalogue below a sticky world-writable directory (/tmp).
        std::fs::set_permissions(f.tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            f.catalogue.lookup_test(&f, &File::open(&path).unwrap()),
            Lookup::Trusted { .. }
        ));
        // The catalogue itself sticky and world-writable: anyone may add
        // entries (and records for them).
        std::fs::set_permissions(&f.dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            f.catalogue.lookup_test(&f, &File::open(&path).unwrap()),
            Lookup::Untrusted { .. }
        ));
    }

    #[test]
    fn a_rewritten_image_needs_staging_again() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"SIF image, first build", facts());
        // The owner replaces the image without staging it: same size.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"SIF image, other build").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        match f.catalogue.lookup_test(&f, &File::open(&path).unwrap()) {
            Lookup::Unrecorded { reason } => assert!(reason.contains("changed"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_opened_before_a_rename_is_not_the_entry() {
        let f = fixture();
        let path = stage(&f, "app.sif", b"bytes", facts());
        let old = File::open(&path).unwrap();
        // Replaced by rename, with a record for the new file: the old
        // descriptor's file is no longer the entry of that name, and
        // /proc names it "(deleted)".
        stage(&f, "new.sif", b"other bytes", facts());
        std::fs::rename(f.dir.join("new.sif"), &path).unwrap();
        assert!(!matches!(
            f.catalogue.lookup_test(&f, &old),
            Lookup::Trusted { .. }
        ));
    }

    #[test]
    fn an_image_without_record_is_unrecorded() {
        let f = fixture();
        let path = f.dir.join("bare.sif");
        std::fs::write(&path, b"bytes").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(matches!(
            f.catalogue.lookup_test(&f, &File::open(&path).unwrap()),
            Lookup::Unrecorded { .. }
        ));
        // Writable by others: not even that.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            f.catalogue.lookup_test(&f, &File::open(&path).unwrap()),
            Lookup::Untrusted { .. }
        ));
    }

    #[test]
    fn stage_names_are_plain() {
        assert!(check_stage_name("app.sif").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden.sif", "x.json", "/abs"] {
            assert!(check_stage_name(bad).is_err(), "{bad}");
        }
    }
}
