//! The root-only copy of an image its owner could still change (see
//! [`super::enforce::ImageSource::Copy`]): what gets verified and mounted.
//!
//! Only what verification covers is copied: the header and descriptor
//! table exactly as the SIF parser read them, and each object's bytes, at
//! their own offsets. Everything else (gaps, trailing bytes, a file
//! truncated to gigabytes of holes) stays a hole in the copy, and runs of
//! zeros inside objects are left as holes too, so the copy takes the space
//! of the data, not of the file's length. The node's space is shared by all
//! users (the state directory is usually a tmpfs, that is RAM), so a copy
//! is refused up front when its objects exceed the admin's per-image limit,
//! the user's share of all copies on the node, or the space free.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Copy chunk; all-zero chunks become holes.
const CHUNK: usize = 1 << 20;
/// Space always left free in the state directory's filesystem.
const RESERVE_PERCENT: u64 = 10;
/// Largest header + descriptor table accepted (65,536 descriptors of 585
/// bytes is 37 MiB; real images use a few KiB).
const MAX_METADATA: u64 = 64 << 20;

/// What one user may copy on this node.
#[derive(Debug, Clone, Copy)]
pub struct CopyLimits {
    /// Objects of one image, in bytes (0: no limit beyond free space).
    pub per_image: u64,
    /// All copies held by one user on the node, in bytes (0: no limit).
    pub per_user: u64,
    /// Bytes already held by the user's other copies.
    pub used_by_user: u64,
}

impl CopyLimits {
    /// Nothing but the space free limits the copy.
    pub const NONE: CopyLimits = CopyLimits {
        per_image: 0,
        per_user: 0,
        used_by_user: 0,
    };
}

/// Written beside a copy: who it is accounted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    pub uid: u32,
    /// Bytes the copy really occupies.
    pub bytes: u64,
}

/// Copies the SIF metadata and objects of `src` (the user's open file,
/// `named` so in messages) to `dest` (root-only, created new) within
/// `limits`; returns the bytes the copy occupies. On error nothing is left
/// at `dest`.
pub fn copy_image_objects(
    src: &File,
    named: &Path,
    dest: &Path,
    limits: &CopyLimits,
) -> Result<u64> {
    let fail = |what: String| {
        Error::system(format!("copying the image to {}: {what}", dest.display())).at(named)
    };
    let mut recorder = Recorder::new(src).map_err(|e| fail(e.to_string()))?;
    let image = sif::Image::from_reader(&mut recorder)
        .map_err(|e| Error::image(format!("reading the image to copy it: {e}")).at(named))?;
    let ranges: Vec<(u64, u64)> = image
        .descriptors()
        .iter()
        .map(|d| (d.offset, d.size))
        .collect();
    let file_len = image.file_len();
    drop(image);
    let needed: u64 = ranges.iter().map(|&(_, size)| size).sum::<u64>() + recorder.read_bytes;
    check_limits(needed, limits, dest.parent().unwrap_or(Path::new("/")))
        .map_err(|e| e.at(named))?;

    let tmp = dest.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        for (offset, bytes) in &recorder.seen {
            out.write_all_at(bytes, *offset)?;
        }
        let mut buf = vec![0u8; CHUNK];
        for &(offset, size) in &ranges {
            copy_range(src, &out, offset, size, &mut buf)?;
        }
        out.set_len(file_len)?;
        std::fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e.to_string()));
    }
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dest)
        .map(|m| m.blocks() * 512)
        .unwrap_or(needed))
}

/// What a user refused a copy can do instead, said with the refusal.
const NO_COPY_HINT: &str = "an image staged in the site's catalogue (sifrun catalogue stage), or owned by root and not writable by group or others, is never copied: ask your admin to stage it";

/// Refuses a copy of `needed` bytes that exceeds a limit or the space free
/// in `dir` (keeping [`RESERVE_PERCENT`] of the filesystem free).
fn check_limits(needed: u64, limits: &CopyLimits, dir: &Path) -> Result<()> {
    let mib = |b: u64| b.div_ceil(1 << 20);
    if limits.per_image > 0 && needed > limits.per_image {
        return Err(Error::image(format!(
            "the image's objects take {} MiB, more than this node copies for verification ({} MiB, admin setting copy_limit_mib); {NO_COPY_HINT}",
            mib(needed),
            mib(limits.per_image)
        )));
    }
    if limits.per_user > 0 && limits.used_by_user + needed > limits.per_user {
        return Err(Error::image(format!(
            "copying the image ({} MiB) for verification would exceed your share of this node's image copies ({} MiB held of {} MiB, admin setting copy_quota_mib); {NO_COPY_HINT}",
            mib(needed),
            mib(limits.used_by_user),
            mib(limits.per_user)
        )));
    }
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Error::system(format!("reading free space of {}: {e}", dir.display())))?;
    let frsize = st.fragment_size();
    let total = st.blocks() * frsize;
    let free = st.blocks_available() * frsize;
    let reserve = total / 100 * RESERVE_PERCENT;
    if needed.saturating_add(reserve) > free {
        return Err(Error::image(format!(
            "not enough space on this node to copy the image for verification ({} MiB needed, {} MiB free in {})",
            mib(needed),
            mib(free.saturating_sub(reserve)),
            dir.display()
        )));
    }
    Ok(())
}

/// Copies `[offset, offset + size)` from `src` to the same place in `out`,
/// leaving holes for all-zero chunks.
fn copy_range(
    src: &File,
    out: &File,
    offset: u64,
    size: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from((size - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = &mut buf[..want];
        src.read_exact_at(chunk, offset + done)?;
        if chunk.iter().any(|&b| b != 0) {
            out.write_all_at(chunk, offset + done)?;
        }
        done += want as u64;
    }
    Ok(())
}

/// A reader over the user's file that keeps every byte the SIF parser
/// reads, at its offset: the copy's metadata is then exactly what was
/// parsed, whatever the file holds a moment later.
struct Recorder<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
    seen: Vec<(u64, Vec<u8>)>,
    read_bytes: u64,
}

impl<'a> Recorder<'a> {
    fn new(file: &'a File) -> std::io::Result<Self> {
        Ok(Recorder {
            file,
            pos: 0,
            len: file.metadata()?.len(),
            seen: Vec::new(),
            read_bytes: 0,
        })
    }
}

impl Read for Recorder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.read_bytes + buf.len() as u64 > MAX_METADATA {
            return Err(std::io::Error::other("image metadata too large"));
        }
        let n = self.file.read_at(buf, self.pos)?;
        self.seen.push((self.pos, buf[..n].to_vec()));
        self.pos += n as u64;
        self.read_bytes += n as u64;
        Ok(n)
    }
}

impl Seek for Recorder<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A small real SIF image from the reference corpus (or none).
    fn corpus_image() -> Option<std::path::PathBuf> {
        let p = Path::new(
            "/usr/share/gocode/src/github.com/sylabs/sif/test/images/one-group-signed.sif",
        );
        p.exists().then(|| p.to_path_buf())
    }

    #[test]
    fn only_metadata_and_objects_are_copied_and_holes_stay_holes() {
        let Some(image) = corpus_image() else {
            eprintln!("skipped: no reference corpus");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // The attack: a small image truncated to 1.5 GB of holes.
        let big = dir.path().join("big.sif");
        std::fs::copy(&image, &big).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.set_len(1536 << 20).unwrap();
        drop(f);
        let src = File::open(&big).unwrap();
        let dest = dir.path().join("copy.sif");
        let bytes = copy_image_objects(&src, &big, &dest, &CopyLimits::NONE).unwrap();
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.len(), 1536 << 20, "same length: offsets unchanged");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "copy occupies {} bytes",
            meta.blocks() * 512
        );
        assert_eq!(bytes, meta.blocks() * 512);
        // What was copied is byte for byte the image, and verifies the same.
        let orig = std::fs::read(&image).unwrap();
        let copied = std::fs::read(&dest).unwrap();
        assert_eq!(&copied[..orig.len()], &orig[..]);
    }

    #[test]
    fn limits_refuse_before_anything_is_written() {
        let Some(image) = corpus_image() else {
            eprintln!("skipped: no reference corpus");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = File::open(&image).unwrap();
        let dest = dir.path().join("copy.sif");
        let small = CopyLimits {
            per_image: 16,
            ..CopyLimits::NONE
        };
        let e = copy_image_objects(&src, &image, &dest, &small).unwrap_err();
        assert!(e.message().contains("copy_limit_mib"), "{}", e.message());
        let quota = CopyLimits {
            per_image: 0,
            per_user: 1 << 20,
            used_by_user: (1 << 20) - 1,
        };
        let e = copy_image_objects(&src, &image, &dest, &quota).unwrap_err();
        assert!(e.message().contains("copy_quota_mib"), "{}", e.message());
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_file_that_is_not_sif_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let src = File::open(&path).unwrap();
        assert!(copy_image_objects(&src, &path, &dir.path().join("c"), &CopyLimits::NONE).is_err());
        assert!(!dir.path().join("c").exists());
    }
}
