//! The image file `sifrun exec` runs, opened once.
//!
//! Between parsing an image, verifying its signatures and attaching it to
//! a loop device, a path can be made to name another file (a rename over
//! it, a symlink swap) and a file its owner can write can change. So the
//! path is opened exactly once, and everything after works on that open
//! file through `/proc/<pid>/fd/<n>` (valid in this process, its children
//! and the FUSE server it starts). When the image is to be verified and
//! someone other than the invoking user or root may write the file, a
//! private copy of what verification covers is made first
//! ([`crate::node::ecl::copy`]) and the copy alone is parsed, verified and run:
//! the rule the Slurm plugin follows under an execution control list.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::node::ecl::copy::{copy_image_objects, CopyLimits};

/// An image opened once, or a private copy of it.
#[derive(Debug)]
pub struct PinnedImage {
    /// Keeps the descriptor behind [`Self::path`] open.
    _file: File,
    /// What every later step opens.
    path: PathBuf,
    /// The path the user gave (for messages).
    named: PathBuf,
    /// Holds the private copy, removed on drop.
    _copy_dir: Option<tempfile::TempDir>,
}

impl PinnedImage {
    /// Opens `image` (a regular file, without blocking); with `verify`,
    /// copies it into a private directory under `copy_base` when a user
    /// other than the invoking one (or root) could change it.
    pub fn open(image: &Path, verify: bool, copy_base: &Path) -> Result<Self> {
        let file = crate::node::credentials::open_regular_file(image).map_err(|e| {
            let text = match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::NotFound, _) => "image not found".to_string(),
                (_, Some(libc::EISDIR)) => "a directory, not a SIF image".to_string(),
                (_, Some(libc::ENXIO)) => "not a regular file".to_string(),
                _ => e.to_string(),
            };
            let error = Error::image(text).at(image);
            match e.raw_os_error() {
                Some(n) => error.with_errno(nix::errno::Errno::from_raw(n)),
                None => error,
            }
        })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::image(e.to_string()).at(image))?;
        let fd_path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            file.as_raw_fd()
        ));
        // Owned by root or the invoker and not group/other writable: nobody
        // else can change the bytes between verify and run.
        let invoker = nix::unistd::geteuid().as_raw();
        if !verify || crate::node::trusted::writable_only_by(&meta, invoker) {
            return Ok(PinnedImage {
                _file: file,
                path: fd_path,
                named: image.to_path_buf(),
                _copy_dir: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("sifrun-verified-")
            .tempdir_in(copy_base)
            .map_err(|e| {
                Error::system(format!(
                    "creating a private copy directory in {}: {e}",
                    copy_base.display()
                ))
            })?;
        let copy = dir.path().join("image.sif");
        copy_image_objects(&file, image, &copy, &CopyLimits::NONE)?;
        Ok(PinnedImage {
            _file: file,
            path: copy,
            named: image.to_path_buf(),
            _copy_dir: Some(dir),
        })
    }

    /// Where to read the image from, in this process and its children.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The opened file, when what runs is that file itself; `None` for a
    /// private copy (made because someone else could change the file).
    pub fn file_itself(&self) -> Option<&File> {
        self._copy_dir.is_none().then_some(&self._file)
    }

    /// The path the user gave.
    pub fn named(&self) -> &Path {
        &self.named
    }

    /// `e` with [`Self::path`] replaced by the path the user gave.
    pub fn name_in(&self, e: Error) -> Error {
        e.shown_as(&self.path, &self.named)
    }
}
