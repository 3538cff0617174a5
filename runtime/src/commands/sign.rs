//! `sifrun sign`: add OpenPGP signatures to an image, one per object group
//! (or for one group or one object), compatible with `apptainer sign` /
//! `singularity sign`.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use sif::integrity::{self, KeyError, SignOptions, SignTarget, SigningKey};

use sifrun_runtime::error::{Error, Result};

/// What `sifrun sign` was asked to do.
#[derive(Debug, Clone)]
pub struct SignArgs {
    /// Image to sign in place.
    pub image: PathBuf,
    /// Armored (or binary) OpenPGP secret key.
    pub key: PathBuf,
    /// Group or object to sign; every group when `AllGroups`.
    pub target: SignTarget,
    /// File whose first line is the key's passphrase.
    pub passphrase_file: Option<PathBuf>,
}

/// Signs the image; returns the line to print on success.
pub fn run(args: &SignArgs) -> Result<String> {
    let key_bytes = std::fs::read(&args.key)
        .map_err(|e| Error::usage(format!("cannot read key {}: {e}", args.key.display())))?;
    let needs = SigningKey::needs_passphrase(&key_bytes).map_err(|e| key_error(&args.key, e))?;
    let passphrase = match (&args.passphrase_file, needs) {
        (Some(f), _) => Some(read_passphrase_file(f)?),
        (None, true) => Some(prompt_passphrase(&args.key)?),
        (None, false) => None,
    };
    let mut key = SigningKey::from_bytes(&key_bytes, passphrase.as_deref())
        .map_err(|e| key_error(&args.key, e))?;
    let ids = integrity::sign(
        &args.image,
        &mut key,
        &SignOptions {
            target: args.target,
            ..SignOptions::default()
        },
    )
    .map_err(|e| Error::image(format!("signing {}: {e}", args.image.display())))?;
    let fp: String = key
        .fingerprint()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    Ok(format!(
        "Signed {} with key {fp}: signature object{} {}",
        args.image.display(),
        if ids.len() == 1 { "" } else { "s" },
        list.join(", ")
    ))
}

fn key_error(path: &Path, e: KeyError) -> Error {
    Error::usage(format!("key {}: {e}", path.display()))
}

/// First line of the file, without its line end.
fn read_passphrase_file(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(|e| {
        Error::usage(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    })?;
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// Asks on the terminal with echo off. Refuses when there is no terminal,
/// so that batch use fails clearly instead of hanging.
fn prompt_passphrase(key: &Path) -> Result<Vec<u8>> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()
        .filter(|t| t.is_terminal())
        .ok_or_else(|| {
            Error::usage(format!(
                "key {} is passphrase-protected and there is no terminal to ask on; use --passphrase-file",
                key.display()
            ))
        })?;
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let saved = tcgetattr(tty.as_fd()).map_err(|e| Error::system(format!("tcgetattr: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(tty.as_fd(), SetArg::TCSANOW, &quiet)
        .map_err(|e| Error::system(format!("tcsetattr: {e}")))?;
    let mut out = &tty;
    let _ = write!(out, "Passphrase for {}: ", key.display());
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let _ = tcsetattr(tty.as_fd(), SetArg::TCSANOW, &saved);
    let _ = writeln!(out);
    read.map_err(|e| Error::system(format!("reading passphrase: {e}")))?;
    Ok(line.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
}
