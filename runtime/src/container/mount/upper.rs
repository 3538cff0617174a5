//! Preparing the overlay's upper layer for an unprivileged build.
//!
//! In a user namespace that maps only the invoking user, the image's files
//! (owned by root or other users, none of them mapped) are not the user's,
//! and capabilities do not apply to them: the user cannot create a mount
//! point in `/` or rewrite `/etc/passwd` through the overlay as root can.
//! The upper layer, though, is the user's own tmpfs. Before the overlay is
//! mounted, everything [`super::rootfs::build_rootfs`] will create is made
//! there: missing mount points, and copies of the identity files. Overlayfs
//! merges them in, and the rest of the build runs exactly as it does as root.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::resolve_in_root;
use crate::error::{Context, Result};

/// A path [`super::rootfs::build_rootfs`] needs to exist in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Needed {
    /// A directory (mount point for /proc, a bind of a directory, ...).
    Dir(PathBuf),
    /// A file mount point (bind of a file): created empty when missing.
    File(PathBuf),
    /// A file rewritten in place (passwd, group): copied up from the image.
    Rewritten(PathBuf),
}

/// Creates in `upper` what `needed` asks for, where the image (`lower`)
/// lacks it. Container paths are resolved against the image, following its
/// symlinks as if it were `/`, so the upper entry lands where the merged
/// view will look for it.
pub fn prepare(lower: &Path, upper: &Path, needed: &[Needed]) -> Result<()> {
    for need in needed {
        match need {
            Needed::Dir(path) => {
                let (in_lower, in_upper) = locate(lower, upper, path)?;
                if !in_lower.is_dir() {
                    make_dirs(&in_upper)?;
                }
            }
            Needed::File(path) => {
                let (in_lower, in_upper) = locate(lower, upper, path)?;
                if !in_lower.exists() {
                    make_parent(&in_upper)?;
                    create_file(&in_upper, b"")?;
                }
            }
            Needed::Rewritten(path) => {
                let (in_lower, in_upper) = locate(lower, upper, path)?;
                let content = fs::read(&in_lower).unwrap_or_default();
                make_parent(&in_upper)?;
                create_file(&in_upper, &content)?;
            }
        }
    }
    Ok(())
}

/// `path` (absolute, in the container) resolved in `lower`, and the
/// corresponding location in `upper`.
fn locate(lower: &Path, upper: &Path, path: &Path) -> Result<(PathBuf, PathBuf)> {
    let in_lower = resolve_in_root(lower, path)?;
    let relative = in_lower.strip_prefix(lower).unwrap_or(Path::new(""));
    Ok((in_lower.clone(), upper.join(relative)))
}

fn make_dirs(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .with_context(|| format!("creating {} in the overlay", dir.display()))
}

fn make_parent(file: &Path) -> Result<()> {
    match file.parent() {
        Some(parent) => make_dirs(parent),
        None => Ok(()),
    }
}

fn create_file(path: &Path, content: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .with_context(|| format!("creating {} in the overlay", path.display()))?;
    f.write_all(content)
        .with_context(|| format!("writing {} in the overlay", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn creates_only_what_the_image_lacks_following_its_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        fs::create_dir_all(lower.join("real/etc")).unwrap();
        fs::create_dir_all(lower.join("proc")).unwrap();
        fs::create_dir_all(&upper).unwrap();
        symlink("/real/etc", lower.join("etc")).unwrap();
        fs::write(lower.join("real/etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        prepare(
            &lower,
            &upper,
            &[
                Needed::Dir("/proc".into()),
                Needed::Dir("/home/alice".into()),
                Needed::File("/data/file".into()),
                Needed::Rewritten("/etc/passwd".into()),
                Needed::Rewritten("/etc/group".into()),
            ],
        )
        .unwrap();
        assert!(!upper.join("proc").exists());
        assert!(upper.join("home/alice").is_dir());
        assert!(upper.join("data/file").is_file());
        assert_eq!(
            fs::read_to_string(upper.join("real/etc/passwd")).unwrap(),
            "root:x:0:0::/:/bin/sh\n"
        );
        assert_eq!(fs::read(upper.join("real/etc/group")).unwrap(), b"");
    }
}
