//! The only module that talks to the `sif` crate: opening an image for
//! running, writing a freshly built image, and summarising one for
//! `inspect`. Keeping all of it here keeps adjustments to the sif API local.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::env::{parse_env_object, render_env_object};
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
}

/// What running an encrypted image needs besides its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    /// The PEM `MESSAGE` holding the RSA-wrapped LUKS passphrase (the
    /// crypto-message object linked to the partition), when the image was
    /// encrypted to a PEM key; `None` for passphrase images.
    pub wrapped_key: Option<Vec<u8>>,
}

/// Largest key object read.
const MAX_KEY_OBJECT: u64 = 1 << 20;

impl RunnableImage {
    /// Opens `path` and checks it can be run: a SIF with a SquashFS primary
    /// partition lying entirely inside the file. Encrypted images are
    /// refused: their callers must unlock them ([`Self::open_maybe_encrypted`]).
    pub fn open(path: &Path) -> Result<Self> {
        let image = Self::open_maybe_encrypted(path)?;
        if image.encryption.is_some() {
            return Err(Error::image(format!(
                "{}: the image is encrypted; this path cannot unlock it (use sifrun exec with --pem-path or --passphrase-file)",
                path.display()
            )));
        }
        Ok(image)
    }

    /// Like [`Self::open`], but also accepts an encrypted SquashFS
    /// partition (LUKS2), recording its key object if it has one.
    pub fn open_maybe_encrypted(path: &Path) -> Result<Self> {
        let mut image = open_sif(path)?;
        let display = path.display();
        let part = image
            .primary_partition()
            .map_err(|e| Error::image(format!("{display}: {}", primary_error(&e))))?
            .clone();
        let info = part
            .partition()
            .map_err(|e| Error::image(format!("{display}: {e}")))?;
        let encrypted = info.fs_type == sif::FsType::EncryptedSquashfs;
        if info.fs_type != sif::FsType::Squashfs && !encrypted {
            return Err(Error::image(format!(
                "{display}: unsupported filesystem type {} (only squashfs and encrypted squashfs can be run)",
                fs_type_name(info.fs_type)
            )));
        }
        let file_len = std::fs::metadata(path)
            .with_context(|| format!("reading {display}"))?
            .len();
        match part.offset.checked_add(part.size) {
            Some(end) if end <= file_len && part.size > 0 => {}
            _ => {
                return Err(Error::image(format!(
                    "{display}: primary partition (offset {}, size {}) lies outside the file ({file_len} bytes)",
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
                .map_err(|e| Error::image(format!("{display}: reading environment object: {e}")))?;
            env.extend(parse_env_object(&data));
        }
        let deffile_descriptor = image.find_by_type(sif::DataType::Deffile).next().cloned();
        let deffile =
            match deffile_descriptor {
                Some(d) => Some(image.read_object(&d, MAX_ENV_OBJECT).map_err(|e| {
                    Error::image(format!("{display}: reading definition file: {e}"))
                })?),
                None => None,
            };
        let encryption = if encrypted {
            Some(Encryption {
                wrapped_key: read_key_object(&mut image, part.id)
                    .map_err(|e| Error::image(format!("{display}: reading key object: {e}")))?,
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
        })
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
        return Err(Error::image(format!("image not found: {}", path.display())));
    }
    if path.is_dir() {
        return Err(Error::image(format!(
            "{} is a directory, not a SIF image",
            path.display()
        )));
    }
    sif::Image::open(path).map_err(|e| match e {
        sif::Error::Io(io) => Error::image(format!("cannot read {}: {io}", path.display())),
        other => Error::image(format!(
            "{} is not a valid SIF image: {other}",
            path.display()
        )),
    })
}

fn primary_error(e: &sif::Error) -> String {
    match e {
        sif::Error::NoPrimaryPartition => "no primary partition in image".to_string(),
        other => other.to_string(),
    }
}

/// Lower-case file system type names used in messages and JSON.
pub fn fs_type_name(t: sif::FsType) -> String {
    match t {
        sif::FsType::Squashfs => "squashfs".into(),
        sif::FsType::Ext3 => "ext3".into(),
        sif::FsType::ImmutableObject => "archive".into(),
        sif::FsType::Raw => "raw".into(),
        sif::FsType::EncryptedSquashfs => "encrypted-squashfs".into(),
        sif::FsType::GocryptfsSquashfs => "gocryptfs-squashfs".into(),
        sif::FsType::Unknown(n) => format!("unknown({n})"),
    }
}

fn part_type_name(t: sif::PartType) -> String {
    match t {
        sif::PartType::System => "system".into(),
        sif::PartType::PrimSys => "primsys".into(),
        sif::PartType::Data => "data".into(),
        sif::PartType::Overlay => "overlay".into(),
        sif::PartType::Unknown(n) => format!("unknown({n})"),
    }
}

fn data_type_name(t: sif::DataType) -> String {
    match t {
        sif::DataType::Deffile => "deffile".into(),
        sif::DataType::EnvVar => "envvar".into(),
        sif::DataType::Labels => "labels".into(),
        sif::DataType::Partition => "partition".into(),
        sif::DataType::Signature => "signature".into(),
        sif::DataType::GenericJson => "generic-json".into(),
        sif::DataType::Generic => "generic".into(),
        sif::DataType::CryptoMessage => "crypto-message".into(),
        sif::DataType::Sbom => "sbom".into(),
        sif::DataType::OciRootIndex => "oci-root-index".into(),
        sif::DataType::OciBlob => "oci-blob".into(),
        sif::DataType::Unknown(n) => format!("unknown({n:#x})"),
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

/// Header fields in `inspect --json` output.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderSummary {
    /// Launch script (first line of the file).
    pub launch_script: String,
    /// Format version (`"01"`).
    pub version: String,
    /// Architecture (Go name: amd64, arm64, ...).
    pub arch: String,
    /// Image UUID (all zeros in deterministic images).
    pub id: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Modification time, Unix seconds.
    pub modified: i64,
    /// Free descriptor slots.
    pub descriptors_free: i64,
    /// Descriptor capacity.
    pub descriptors_total: i64,
    /// File offset of the descriptor table.
    pub descriptors_offset: i64,
    /// Size of the descriptor table.
    pub descriptors_size: i64,
    /// File offset of the data area.
    pub data_offset: i64,
    /// Size of the data area.
    pub data_size: i64,
}

/// Partition metadata in `inspect --json` output.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSummary {
    /// `squashfs`, `ext3`, `archive`, `raw`, `encrypted-squashfs`, `gocryptfs-squashfs`.
    pub fstype: String,
    /// `system`, `primsys`, `data`, `overlay`.
    pub parttype: String,
    /// Architecture (Go name).
    pub arch: String,
}

/// Signature metadata in `inspect --json` output.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureSummary {
    /// Hash algorithm (`SHA-256`, ...).
    pub hash: String,
    /// Upper-case hex OpenPGP fingerprint, `null` when absent (DSSE).
    pub fingerprint: Option<String>,
}

/// Object link in `inspect --json` output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkSummary {
    /// Linked to an object id.
    Object(u32),
    /// Linked to a group id.
    Group(u32),
}

/// One object in `inspect --json` output.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectSummary {
    /// Object id.
    pub id: u32,
    /// Data type (`partition`, `signature`, `deffile`, `envvar`, `labels`, ...).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Group id or `null`.
    pub group: Option<u32>,
    /// `{"object": N}`, `{"group": N}` or `null`.
    pub link: Option<LinkSummary>,
    /// File offset of the data.
    pub offset: u64,
    /// Data size.
    pub size: u64,
    /// Object name.
    pub name: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Present for partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionSummary>,
    /// Present for signatures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureSummary>,
}

/// Everything `inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Path inspected.
    pub path: String,
    /// Global header.
    pub header: HeaderSummary,
    /// Used descriptors in id order.
    pub objects: Vec<ObjectSummary>,
}

/// Reads the header and descriptors of `path`.
pub fn summarize(path: &Path) -> Result<ImageSummary> {
    let image = open_sif(path)?;
    let h = image.header();
    let header = HeaderSummary {
        launch_script: h.launch_script.clone(),
        version: h.version.clone(),
        arch: h.arch.to_string(),
        id: sif::uuid_string(&h.id),
        created: h.created,
        modified: h.modified,
        descriptors_free: h.descriptors_free,
        descriptors_total: h.descriptors_total,
        descriptors_offset: h.descriptors_offset,
        descriptors_size: h.descriptors_size,
        data_offset: h.data_offset,
        data_size: h.data_size,
    };
    let objects = image
        .descriptors()
        .iter()
        .map(|d| ObjectSummary {
            id: d.id,
            data_type: data_type_name(d.data_type),
            group: d.group_id,
            link: match d.link {
                sif::Link::None => None,
                sif::Link::Object(id) => Some(LinkSummary::Object(id)),
                sif::Link::Group(id) => Some(LinkSummary::Group(id)),
            },
            offset: d.offset,
            size: d.size,
            name: d.name.clone(),
            created: d.created,
            partition: d.partition().ok().map(|p| PartitionSummary {
                fstype: fs_type_name(p.fs_type),
                parttype: part_type_name(p.part_type),
                arch: p.arch.to_string(),
            }),
            signature: d.signature().ok().map(|s| SignatureSummary {
                hash: s.hash_type.to_string(),
                fingerprint: s
                    .fingerprint
                    .map(|f| f.iter().map(|b| format!("{b:02X}")).collect()),
            }),
        })
        .collect();
    Ok(ImageSummary {
        path: path.display().to_string(),
        header,
        objects,
    })
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
