//! `sifrun build`: root filesystem directory or tar archive → SquashFS → SIF.
//!
//! The SquashFS is made by `mksquashfs` (squashfs-tools). Everything is
//! written next to the output (a hidden work directory and a temporary
//! image) and the image is renamed into place only on success, so a failed
//! or interrupted build never leaves a half-written image behind.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sifrun_runtime::container::env::parse_assignment;
use sifrun_runtime::crypt::KeySource;
use sifrun_runtime::error::{Context, Error, Result};
use sifrun_runtime::image::{self, EncryptedPartition, ImageMetadata};
use sifrun_runtime::process;

use crate::commands::singularity_d::Layout;

/// Default SquashFS compressor.
pub const DEFAULT_COMPRESSOR: &str = "zstd";

/// Options of `sifrun build`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Root filesystem directory or tar archive (optionally gzip/xz/zstd/bzip2 compressed).
    pub source: PathBuf,
    /// Output image path.
    pub output: PathBuf,
    /// Replace an existing output file.
    pub force: bool,
    /// mksquashfs compressor (`-comp`).
    pub compressor: String,
    /// Reproducible output: fixed file times, zero SIF UUID and times.
    pub deterministic: bool,
    /// Definition file stored as object 0x4001.
    pub deffile: Option<PathBuf>,
    /// `KEY=VALUE` labels stored as a JSON object (0x4003).
    pub labels: Vec<String>,
    /// `NAME=VALUE` variables stored as the image environment (0x4002).
    pub env: Vec<String>,
    /// Encrypt the root filesystem (LUKS2) with this key; see [`sifrun_runtime::crypt`].
    pub encrypt: Option<KeySource>,
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildSummary {
    /// The image written.
    pub output: PathBuf,
    /// Image size in bytes.
    pub image_size: u64,
    /// SquashFS partition size in bytes.
    pub squashfs_size: u64,
    /// Seconds the build took.
    pub seconds: f64,
}

impl BuildSummary {
    /// One line for the end of the build.
    pub fn line(&self) -> String {
        format!(
            "built {} ({}, squashfs {}) in {:.1}s",
            self.output.display(),
            human_size(self.image_size),
            human_size(self.squashfs_size),
            self.seconds
        )
    }
}

/// Builds the image.
pub fn run(opts: &BuildOptions) -> Result<BuildSummary> {
    let start = Instant::now();
    if opts.output.exists() && !opts.force {
        return Err(Error::usage(format!(
            "output file exists: {} (use --force to overwrite)",
            opts.output.display()
        )));
    }
    let mut meta = collect_metadata(opts)?;
    let layout = Layout::for_build(&meta)?;
    if !layout.is_empty() {
        meta.inspect_metadata = Some(layout.inspect_metadata(&meta)?);
    }
    // Ask for (or load) the key before the slow part, so a typo or an
    // unreadable key fails at once.
    let key = opts.encrypt.as_ref().map(|k| k.for_build()).transpose()?;
    let source_kind = SourceKind::detect(&opts.source)?;

    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".sifrun-build-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
    let squashfs = work.path().join("rootfs.squashfs");
    let pseudo = if layout.is_empty() {
        Vec::new()
    } else {
        layout.pseudo_args(work.path())?
    };
    make_squashfs(opts, &source_kind, &squashfs, &pseudo)?;
    let squashfs_size = fs::metadata(&squashfs)
        .context("reading SquashFS size")?
        .len();

    let tmp_image = work.path().join("image.sif");
    match &key {
        None => image::write_image(&tmp_image, &squashfs, &meta, opts.deterministic)?,
        Some(key) => {
            let container = work.path().join("rootfs.luks");
            encrypt_squashfs(&squashfs, key, &container)?;
            // The plaintext SquashFS is the build's own input; remove it
            // as soon as the ciphertext exists.
            let _ = fs::remove_file(&squashfs);
            let part = EncryptedPartition {
                wrapped_key: key.wrapped.clone(),
            };
            image::write_image_with(
                &tmp_image,
                &container,
                Some(&part),
                &meta,
                opts.deterministic,
            )?;
        }
    }
    let image_size = fs::metadata(&tmp_image)
        .context("reading image size")?
        .len();
    if opts.output.exists() && !opts.force {
        return Err(Error::usage(format!(
            "output file exists: {} (use --force to overwrite)",
            opts.output.display()
        )));
    }
    // Same directory, so rename is atomic.
    fs::rename(&tmp_image, &opts.output)
        .with_context(|| format!("writing {}", opts.output.display()))?;
    Ok(BuildSummary {
        output: opts.output.clone(),
        image_size,
        squashfs_size,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Writes `squashfs` into a new LUKS2 container at `dest`. A random PEM
/// key needs no costly KDF (it cannot be guessed); a passphrase gets
/// Argon2id.
fn encrypt_squashfs(
    squashfs: &Path,
    key: &sifrun_runtime::crypt::key::BuildKey,
    dest: &Path,
) -> Result<()> {
    let kdf = if key.wrapped.is_some() {
        luks2::Kdf::RANDOM_KEY_DEFAULT
    } else {
        luks2::Kdf::PASSPHRASE_DEFAULT
    };
    let opts = luks2::FormatOptions {
        kdf,
        ..Default::default()
    };
    let mut input = std::io::BufReader::new(
        File::open(squashfs).with_context(|| format!("opening {}", squashfs.display()))?,
    );
    let mut out = std::io::BufWriter::new(
        File::create(dest).with_context(|| format!("creating {}", dest.display()))?,
    );
    luks2::format(&mut input, &key.passphrase, &opts, &mut out)
        .map_err(|e| Error::system(format!("encrypting the root filesystem: {e}")))?;
    Ok(())
}

fn collect_metadata(opts: &BuildOptions) -> Result<ImageMetadata> {
    let deffile = match &opts.deffile {
        Some(p) => {
            Some(fs::read(p).with_context(|| format!("reading definition file {}", p.display()))?)
        }
        None => None,
    };
    let mut labels = BTreeMap::new();
    for l in &opts.labels {
        match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(Error::usage(format!(
                    "invalid label '{l}' (expected KEY=VALUE)"
                )))
            }
        }
    }
    let env = opts
        .env
        .iter()
        .map(|e| parse_assignment(e))
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageMetadata {
        deffile,
        labels,
        env,
        inspect_metadata: None,
    })
}

/// What the build source is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A root filesystem directory.
    Directory,
    /// A tar archive; `decompressor` is the tool that turns it into plain tar.
    Tar {
        /// `gzip`, `xz`, `zstd`, `bzip2` or `None` for an uncompressed tar.
        decompressor: Option<&'static str>,
    },
}

impl SourceKind {
    /// Looks at `path`: directory, or a file identified by its magic bytes.
    pub fn detect(path: &Path) -> Result<Self> {
        let meta = fs::metadata(path).map_err(|e| {
            Error::usage(format!("build source {}: {}", path.display(), reason(&e)))
        })?;
        if meta.is_dir() {
            return Ok(SourceKind::Directory);
        }
        let mut head = [0u8; 512];
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = read_up_to(&mut file, &mut head)
            .with_context(|| format!("reading {}", path.display()))?;
        let head = &head[..n];
        let decompressor = if head.starts_with(&[0x1f, 0x8b]) {
            Some("gzip")
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some("xz")
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some("zstd")
        } else if head.starts_with(b"BZh") {
            Some("bzip2")
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            None
        } else {
            return Err(Error::usage(format!(
                "build source {} is neither a directory nor a (compressed) tar archive",
                path.display()
            )));
        };
        Ok(SourceKind::Tar { decompressor })
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        _ => e.to_string(),
    }
}

/// Runs mksquashfs. For tar input the (decompressed) archive is streamed to
/// `mksquashfs -tar` on stdin, so nothing is extracted to disk.
fn make_squashfs(
    opts: &BuildOptions,
    kind: &SourceKind,
    dest: &Path,
    pseudo: &[String],
) -> Result<()> {
    let mut cmd = Command::new("mksquashfs");
    let mut decompress: Option<std::process::Child> = None;
    match kind {
        SourceKind::Directory => {
            cmd.arg(&opts.source).arg(dest);
        }
        SourceKind::Tar { decompressor } => {
            cmd.arg("-").arg(dest).arg("-tar");
            match decompressor {
                None => {
                    let f = File::open(&opts.source)
                        .with_context(|| format!("opening {}", opts.source.display()))?;
                    cmd.stdin(f);
                }
                Some(tool) => {
                    let mut child = Command::new(tool)
                        .arg("-dc")
                        .arg(&opts.source)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .map_err(|e| tool_error(tool, e))?;
                    let out = child.stdout.take().expect("piped stdout");
                    cmd.stdin(out);
                    decompress = Some(child);
                }
            }
        }
    }
    cmd.args(["-noappend", "-comp", &opts.compressor]);
    // Apptainer's /.singularity.d files (what the source has wins).
    cmd.args(pseudo);
    // mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times.
    cmd.env_remove("SOURCE_DATE_EPOCH");
    if opts.deterministic {
        let t = source_date_epoch()?.to_string();
        cmd.args(["-mkfs-time", &t, "-all-time", &t]);
    }
    let interactive = std::io::stderr().is_terminal();
    if interactive {
        // Only the progress bar (no file/summary listing). mksquashfs writes
        // it to stdout; send it to stderr to keep our stdout clean for scripts.
        cmd.args(["-quiet", "-progress"]);
        let err = std::io::stderr()
            .lock()
            .try_clone_stderr()
            .context("duplicating stderr")?;
        cmd.stdout(err).stderr(Stdio::inherit());
    } else {
        cmd.args(["-quiet", "-no-progress"]);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    }
    let child = cmd.spawn().map_err(|e| tool_error("mksquashfs", e))?;
    process::forward_signals_to(child.id() as i32)?;
    let output = child.wait_with_output();
    process::stop_forwarding();
    let output = output.context("waiting for mksquashfs")?;
    if let Some(mut d) = decompress {
        let status = d.wait().context("waiting for the decompressor")?;
        if !status.success() {
            let mut msg = String::new();
            if let Some(mut e) = d.stderr.take() {
                let _ = e.read_to_string(&mut msg);
            }
            return Err(Error::usage(format!(
                "decompressing {} failed: {}",
                opts.source.display(),
                last_line(&msg)
            )));
        }
    }
    if !output.status.success() {
        let msg = String::from_utf8_lossy(&output.stderr);
        let why = match (output.status.code(), last_line(&msg)) {
            (_, l) if !l.is_empty() => l,
            (Some(c), _) => format!("exit status {c}"),
            (None, _) => "killed by a signal".to_string(),
        };
        return Err(Error::system(format!("mksquashfs failed: {why}")));
    }
    Ok(())
}

/// Duplicating stderr as a `Stdio`, behind a tiny trait to keep the call site readable.
trait TryCloneStderr {
    fn try_clone_stderr(&self) -> std::io::Result<Stdio>;
}

impl TryCloneStderr for std::io::StderrLock<'_> {
    fn try_clone_stderr(&self) -> std::io::Result<Stdio> {
        use std::os::fd::AsFd;
        Ok(Stdio::from(self.as_fd().try_clone_to_owned()?))
    }
}

fn tool_error(tool: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        let package = if tool == "mksquashfs" {
            "squashfs-tools"
        } else {
            tool
        };
        Error::system(format!("{tool} not found (install {package})"))
    } else {
        Error::system(format!("running {tool}: {e}"))
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// Timestamp for deterministic builds: SOURCE_DATE_EPOCH, else 0.
fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse::<u32>().map_err(|_| {
            Error::usage(format!(
                "invalid SOURCE_DATE_EPOCH '{v}' (expected seconds since 1970)"
            ))
        }),
        _ => Ok(0),
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_sources() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            SourceKind::detect(dir.path()).unwrap(),
            SourceKind::Directory
        );
        let gz = dir.path().join("a.tgz");
        fs::write(&gz, [0x1f, 0x8b, 8, 0]).unwrap();
        assert_eq!(
            SourceKind::detect(&gz).unwrap(),
            SourceKind::Tar {
                decompressor: Some("gzip")
            }
        );
        let junk = dir.path().join("junk");
        fs::write(&junk, b"hello").unwrap();
        assert!(SourceKind::detect(&junk).is_err());
        let missing = SourceKind::detect(&dir.path().join("nope")).unwrap_err();
        assert!(missing.message().ends_with("does not exist"));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
    }
}
