//! The kernel decryption path: `cryptsetup open` maps the loop device of
//! the encrypted partition to `/dev/mapper/<name>`, and the kernel mounts
//! SquashFS from that. Used only as root and only where device-mapper
//! with dm-crypt is present; otherwise sifrun takes the user-space path
//! ([`super::fuse_file`]).
//!
//! NOTE: written for hosts with dm-crypt, but the machines sifrun is
//! developed and tested on have no device-mapper: this path is untested.
//! It is off unless `SIFRUN_DMCRYPT=1` asks for it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Error, Result};

/// `SIFRUN_DMCRYPT=1`: use dm-crypt where available (untested; see above).
pub const DMCRYPT_ENV: &str = "SIFRUN_DMCRYPT";

/// `cryptsetup`, when device-mapper with dm-crypt is usable and the
/// kernel path was asked for.
pub fn available() -> Option<PathBuf> {
    if std::env::var_os(DMCRYPT_ENV).is_none_or(|v| v != "1") {
        return None;
    }
    let dm = Path::new("/dev/mapper/control").exists();
    let crypt = Path::new("/sys/module/dm_crypt").exists();
    if !dm || !crypt {
        return None;
    }
    ["/usr/sbin/cryptsetup", "/sbin/cryptsetup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// An open dm-crypt mapping; closed on drop (after the mount holding it
/// is gone the close succeeds; while it is in use it fails harmlessly and
/// the mapping must be closed by the caller later).
#[derive(Debug)]
pub struct Mapping {
    cryptsetup: PathBuf,
    name: String,
}

impl Mapping {
    /// Opens `device` (a loop device over the partition) as `name`,
    /// feeding the passphrase on stdin; waits for the mapper node.
    pub fn open(cryptsetup: &Path, device: &Path, name: &str, passphrase: &[u8]) -> Result<Self> {
        let mut child = Command::new(cryptsetup)
            .args(["open", "--readonly", "--type", "luks2", "--key-file", "-"])
            .arg(device)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", cryptsetup.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(passphrase);
        }
        let out = child.wait_with_output().context("waiting for cryptsetup")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err.lines().next().unwrap_or("failed").trim();
            return Err(Error::image(format!("cryptsetup open: {line}")));
        }
        let mapping = Mapping {
            cryptsetup: cryptsetup.to_path_buf(),
            name: name.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !mapping.path().exists() {
            if Instant::now() > deadline {
                return Err(Error::system(format!(
                    "{} did not appear",
                    mapping.path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(mapping)
    }

    /// The decrypted block device.
    pub fn path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.name)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Deferred removal: the kernel removes the mapping once the last
        // user (the SquashFS mount) is gone.
        let _ = Command::new(&self.cryptsetup)
            .args(["close", "--deferred", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
