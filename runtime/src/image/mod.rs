//! The only module that talks to the `sif` crate: opening an image for
//! running, writing a freshly built image, and summarising one for
//! `inspect`. Keeping all of it here keeps adjustments to the sif API local.

pub mod metadata;
pub mod pinned;
pub mod signatures;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::container::env::{parse_env_object, render_env_object};
use crate::error::{Context, Error, Result};

/// Largest environment object sifrun reads (a sanity bound, not a format limit).
const MAX_ENV_OBJECT: u64 = 1 << 20;

/// What `sifrun exec` needs from an image.
#[derive(Debug, Clone)]
pub struct RunnableImage {
    /// Path the image was opened from.
    pub path: PathBuf,
    /// Absolute file offset of the SquashFS primary partition.
    pub partition_offset: u64,
    /// Size of the primary partition in bytes.
    pub partition_size: u64,
    /// The image's own environment (all env objects, in descriptor order).
    pub env: Vec<(String, String)>,
    /// The definition file the image was built from, if it stores one
    /// (`sifrun run` falls back to its `%runscript` section).
    pub deffile: Option<Vec<u8>>,
    /// Set when the partition is an encrypted SquashFS (a LUKS2 container).
    pub encryption: Option<Encryption>,
    /// The overlay partition (`apptainer overlay create`: ext3), whose
    /// files lie over the primary partition's.
    pub overlay: Option<OverlayExtent>,
}

/// Where an overlay partition lies in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayExtent {
    /// Its object ID (for messages).
    pub id: u32,
    /// Absolute file offset.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What running an encrypted image needs besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// The PEM `MESSAGE` holding the RSA-wrapped LUKS passphrase (the
    /// crypto-message object linked to the partition), when the image was
    /// encrypted to a PEM key; `None` for passphrase images.
    pub wrapped_key: Option<Vec<u8>>,
}

/// Why an OCI-SIF image does not run.
const OCI_SIF_REFUSED: &str = "an OCI-SIF image (OCI image layers in a SIF, made by SingularityCE 4 with `--oci`), which sifrun cannot run: it runs SIF images with a SquashFS system partition (what `apptainer build`/`pull` make, and SingularityCE without `--oci`)";

/// Why a gocryptfs-encrypted image does not run.
const GOCRYPTFS_REFUSED: &str = "encrypted with gocryptfs (Apptainer's encryption for images built without root), which sifrun cannot unlock: it runs LUKS2-encrypted images (built as root with `--passphrase` or `--pem-path`)";

/// Largest key object read.
const MAX_KEY_OBJECT: u64 = 1 << 20;

impl RunnableImage {
    /// Opens `path` and checks it can be run: a SIF with a SquashFS primary
    /// partition lying entirely inside the file. Encrypted images are
    /// refused: their callers must unlock them ([`Self::open_maybe_encrypted`]).
    pub fn open(path: &Path) -> Result<Self> {
        let image = Self::open_maybe_encrypted(path)?;
        if image.encryption.is_some() {
            return Err(Error::image(
                "the image is encrypted; this path cannot unlock it (use sifrun exec with --pem-path or --passphrase-file)",
            )
            .at(path));
        }
        Ok(image)
    }

    /// Like [`Self::open`], but also accepts an encrypted SquashFS
    /// partition (LUKS2), recording its key object if it has one.
    pub fn open_maybe_encrypted(path: &Path) -> Result<Self> {
        let mut image = open_sif(path)?;
        let bad = |text: String| Error::image(text).at(path);
        let part = match image.primary_partition() {
            Err(sif::Error::NoPrimaryPartition)
                if image
                    .find_by_type(sif::DataType::OciRootIndex)
                    .next()
                    .is_some() =>
            {
                return Err(bad(OCI_SIF_REFUSED.to_string()));
            }
            other => other.map_err(|e| bad(primary_error(&e)))?.clone(),
        };
        let info = part.partition().map_err(|e| bad(e.to_string()))?;
        let encrypted = info.fs_type == sif::FsType::EncryptedSquashfs;
        if info.fs_type == sif::FsType::GocryptfsSquashfs {
            return Err(bad(GOCRYPTFS_REFUSED.to_string()));
        }
        if info.fs_type != sif::FsType::Squashfs && !encrypted {
            return Err(bad(format!(
                "unsupported filesystem type {} (only squashfs and encrypted squashfs can be run)",
                info.fs_type.json_name()
            )));
        }
        let file_len = std::fs::metadata(path).context_at(path, "reading")?.len();
        match part.offset.checked_add(part.size) {
            Some(end) if end <= file_len && part.size > 0 => {}
            _ => {
                return Err(bad(format!(
                "primary partition (offset {}, size {}) lies outside the file ({file_len} bytes)",
                part.offset, part.size
            )))
            }
        }
        let env_descriptors: Vec<sif::Descriptor> =
            image.find_by_type(sif::DataType::EnvVar).cloned().collect();
        let mut env = Vec::new();
        for d in &env_descriptors {
            let data = image
                .read_object(d, MAX_ENV_OBJECT)
                .map_err(|e| bad(format!("reading environment object: {e}")))?;
            env.extend(parse_env_object(&data));
        }
        let deffile_descriptor = image.find_by_type(sif::DataType::Deffile).next().cloned();
        let deffile = match deffile_descriptor {
            Some(d) => Some(
                image
                    .read_object(&d, MAX_ENV_OBJECT)
                    .map_err(|e| bad(format!("reading definition file: {e}")))?,
            ),
            None => None,
        };
        let overlay = overlay_extent(&image, file_len).map_err(bad)?;
        let encryption = if encrypted {
            Some(Encryption {
                wrapped_key: read_key_object(&mut image, part.id)
                    .map_err(|e| bad(format!("reading key object: {e}")))?,
            })
        } else {
            None
        };
        Ok(RunnableImage {
            path: path.to_path_buf(),
            partition_offset: part.offset,
            partition_size: part.size,
            env,
            deffile,
            encryption,
            overlay,
        })
    }
}

/// The image's overlay partition, if it has one: ext3 (what Apptainer
/// writes), inside the file; at most one.
fn overlay_extent(
    image: &sif::Image<File>,
    file_len: u64,
) -> std::result::Result<Option<OverlayExtent>, String> {
    let overlays: Vec<&sif::Descriptor> = image
        .descriptors()
        .iter()
        .filter(|d| d.is_partition_of_type(sif::PartType::Overlay))
        .collect();
    let [d] = overlays[..] else {
        return match overlays.len() {
            0 => Ok(None),
            n => Err(format!(
                "{n} overlay partitions (objects {}): sifrun uses at most one",
                overlays
                    .iter()
                    .map(|d| d.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
    };
    let info = d.partition().map_err(|e| e.to_string())?;
    if info.fs_type != sif::FsType::Ext3 {
        return Err(format!(
            "overlay partition (object {}) has filesystem type {}; only ext3 overlays (apptainer overlay create) can be used",
            d.id,
            info.fs_type.json_name()
        ));
    }
    match d.offset.checked_add(d.size) {
        Some(end) if end <= file_len && d.size > 0 => Ok(Some(OverlayExtent {
            id: d.id,
            offset: d.offset,
            size: d.size,
        })),
        _ => Err(format!(
            "overlay partition (object {}, offset {}, size {}) lies outside the file ({file_len} bytes)",
            d.id, d.offset, d.size
        )),
    }
}

/// The crypto-message object linked to partition `id` holding a PEM
/// RSA-OAEP message (the first such, as Apptainer looks it up).
fn read_key_object(
    image: &mut sif::Image<File>,
    id: u32,
) -> std::result::Result<Option<Vec<u8>>, sif::Error> {
    let found = image
        .find_by_type(sif::DataType::CryptoMessage)
        .find(|d| {
            d.link == sif::Link::Object(id)
                && d.crypto_message().is_ok_and(|m| {
                    m.format == sif::CryptoFormat::Pem
                        && m.message_type == sif::MessageType::RsaOaep
                })
        })
        .cloned();
    match found {
        Some(d) => image.read_object(&d, MAX_KEY_OBJECT).map(Some),
        None => Ok(None),
    }
}

fn open_sif(path: &Path) -> Result<sif::Image<File>> {
    if !path.exists() {
        return Err(Error::image("image not found").at(path));
    }
    if path.is_dir() {
        return Err(Error::image("a directory, not a SIF image").at(path));
    }
    sif::Image::open(path).map_err(|e| match e {
        sif::Error::Io(io) => {
            let errno = io.raw_os_error().map(nix::errno::Errno::from_raw);
            let e = Error::image(format!("cannot read: {io}")).at(path);
            match errno {
                Some(errno) => e.with_errno(errno),
                None => e,
            }
        }
        other => Error::image(format!("not a valid SIF image: {other}")).at(path),
    })
}

fn primary_error(e: &sif::Error) -> String {
    match e {
        sif::Error::NoPrimaryPartition => "no primary partition in image".to_string(),
        other => other.to_string(),
    }
}

/// Metadata objects stored next to the root filesystem by `sifrun build`.
#[derive(Debug, Clone, Default)]
pub struct ImageMetadata {
    /// Definition file contents (object 0x4001).
    pub deffile: Option<Vec<u8>>,
    /// Labels (object 0x4003, a JSON object of strings).
    pub labels: BTreeMap<String, String>,
    /// The image's own environment (object 0x4002, `NAME=VALUE` lines).
    pub env: Vec<(String, String)>,
    /// Apptainer's `inspect-metadata.json` object (see [`metadata`]).
    pub inspect_metadata: Option<Vec<u8>>,
}

/// Writes a SIF at `dest` holding `squashfs` as the primary partition
/// (SquashFS/PrimSys/host arch, group 1) plus the metadata objects.
pub fn write_image(
    dest: &Path,
    squashfs: &Path,
    meta: &ImageMetadata,
    deterministic: bool,
) -> Result<()> {
    write_image_with(dest, squashfs, None, meta, deterministic)
}

/// How the primary partition of an encrypted image is stored.
#[derive(Debug, Clone, Default)]
pub struct EncryptedPartition {
    /// PEM `MESSAGE` with the wrapped LUKS passphrase (PEM-key images).
    pub wrapped_key: Option<Vec<u8>>,
}

/// [`write_image`], or, with `encrypted`, an image whose primary partition
/// `partition` is a LUKS2 container (file system type "encrypted
/// squashfs") followed by its key object: a crypto-message (PEM,
/// RSA-OAEP) linked to the partition and in group 1, so that a group
/// signature covers it, as Apptainer stores it.
pub fn write_image_with(
    dest: &Path,
    partition: &Path,
    encrypted: Option<&EncryptedPartition>,
    meta: &ImageMetadata,
    deterministic: bool,
) -> Result<()> {
    let squashfs = partition;
    let mut objects = Vec::new();
    if let Some(def) = &meta.deffile {
        objects.push(sif::ObjectInput::new(sif::DataType::Deffile, def.clone()));
    }
    if !meta.labels.is_empty() {
        let json = serde_json::to_vec(&meta.labels).context("encoding labels")?;
        objects.push(sif::ObjectInput::new(sif::DataType::Labels, json));
    }
    if !meta.env.is_empty() {
        objects.push(sif::ObjectInput::new(
            sif::DataType::EnvVar,
            render_env_object(&meta.env),
        ));
    }
    if let Some(json) = &meta.inspect_metadata {
        objects.push(
            sif::ObjectInput::new(sif::DataType::GenericJson, json.clone())
                .name(metadata::METADATA_OBJECT),
        );
    }
    let fs_type = if encrypted.is_some() {
        sif::FsType::EncryptedSquashfs
    } else {
        sif::FsType::Squashfs
    };
    objects.push(
        sif::ObjectInput::new(sif::DataType::Partition, squashfs).partition(
            fs_type,
            sif::PartType::PrimSys,
            sif::Arch::host(),
        ),
    );
    // Object IDs are assigned in order from 1: the partition's is its count.
    let partition_id = objects.len() as u32;
    if let Some(wrapped) = encrypted.and_then(|e| e.wrapped_key.clone()) {
        objects.push(
            sif::ObjectInput::new(sif::DataType::CryptoMessage, wrapped)
                .link_object(partition_id)
                .crypto_message(sif::CryptoFormat::Pem, sif::MessageType::RsaOaep),
        );
    }
    let opts = sif::CreateOptions {
        deterministic,
        ..Default::default()
    };
    sif::create(dest, objects, &opts)
        .map_err(|e| Error::system(format!("writing {}: {e}", dest.display())))?;
    Ok(())
}

/// The `inspect --json` document of `path` ([`sif::json::ImageView`]).
pub fn summarize(path: &Path) -> Result<sif::json::ImageView> {
    let image = open_sif(path)?;
    Ok(sif::json::ImageView::of(
        &image,
        &path.display().to_string(),
    ))
}

/// siftool-style rendering (header, then object list) from `sif::display`.
pub fn render_text(path: &Path) -> Result<String> {
    let image = open_sif(path)?;
    let mut out = sif::display::render_header(image.header());
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&sif::display::render_list(image.descriptors()));
    Ok(out)
}
