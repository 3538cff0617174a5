//! Files root acts on: who may have written them.
//!
//! A file decides what root does (the helper binary, an ECL, a keyring, the
//! GPU driver list) or is mounted as verified bytes only when nobody but
//! root can change it: owned by root and not writable by group or others.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Owned by root and not writable by group or others.
pub fn root_owned_not_writable(meta: &std::fs::Metadata) -> bool {
    writable_only_by(meta, 0)
}

/// Owned by root or by `uid`, and not writable by group or others: no one
/// but those two can change the file.
pub fn writable_only_by(meta: &std::fs::Metadata, uid: u32) -> bool {
    (meta.uid() == 0 || meta.uid() == uid) && meta.mode() & 0o022 == 0
}

/// Checks a configuration file root reads: a regular file (a symlink is
/// refused, since its target could be elsewhere), owned by root, not
/// writable by group or others. The error is the reason, for the caller
/// to put after the file's name.
pub fn check_config_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("must be a regular file (not a symlink)".to_string());
    }
    if !root_owned_not_writable(&meta) {
        return Err("must be owned by root and not writable by group or others".to_string());
    }
    Ok(())
}

/// Checks a directory of configuration files root reads (CDI specs, site
/// hooks): it and every directory above it (by real path) owned by root
/// and not writable by group or others, so that nobody else can add,
/// swap or rename an entry. The error is the reason, for the caller to put
/// after the directory's name.
pub fn check_config_dir(path: &Path) -> Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    for dir in real.ancestors() {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err("must be a directory".to_string());
        }
        if !root_owned_not_writable(&meta) {
            return Err(if dir == real {
                "must be owned by root and not writable by group or others".to_string()
            } else {
                format!(
                    "{} above it must be owned by root and not writable by group or others",
                    dir.display()
                )
            });
        }
    }
    Ok(())
}

/// Checks a program root runs for the admin (a CDI hook): its real file
/// owned by root and not writable by group or others, in directories of
/// the same kind ([`check_config_dir`]).
pub fn check_program(path: &Path) -> Result<(), String> {
    let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&real).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("must be a regular file".to_string());
    }
    if !root_owned_not_writable(&meta) {
        return Err("must be owned by root and not writable by group or others".to_string());
    }
    match real.parent() {
        Some(dir) => check_config_dir(dir),
        None => Ok(()),
    }
}
