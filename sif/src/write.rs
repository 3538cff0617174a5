//! Creating images and adding or deleting objects, laid out exactly as
//! sylabs/sif v2 does (`CreateContainer`, `AddObject`, `DeleteObject`).
//!
//! Layout rules reproduced here: the descriptor table sits at offset 4096 and
//! the data section starts right after it; objects are appended at
//! `data offset + data size`, partitions rounded up to 4096 bytes and other
//! objects unaligned; the gap is left as a hole (never written); the data is
//! written first, then the descriptor table, then the header, so an
//! interrupted write leaves a file without a valid header.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::descriptor::{
    crypto_extra, oci_extra, partition_extra, sbom_extra, signature_extra, Descriptor,
    PartitionInfo, DESCRIPTOR_SIZE, EXTRA_SIZE, NAME_SIZE,
};
use crate::header::{
    Header, DEFAULT_DESCRIPTORS_OFFSET, DEFAULT_DESCRIPTOR_CAPACITY, DEFAULT_LAUNCH_SCRIPT,
    GO_ZERO_TIME,
};
use crate::read::{load, MAX_DESCRIPTORS};
use crate::types::{
    Arch, CryptoFormat, DataType, FsType, HashType, Link, MessageType, PartType, SbomFormat,
    GROUP_MASK,
};
use crate::Error;

/// Alignment sylabs/sif applies to partition objects.
pub const PARTITION_ALIGNMENT: u64 = 4096;

/// Bytes copied between two progress reports.
const PROGRESS_CHUNK: u64 = 8 << 20;

/// Progress callback: `(object bytes written so far, expected total)`.
///
/// The total is the sum of the sizes known up front (byte buffers and files);
/// data given as a plain reader counts as 0, so `written` may exceed it.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Where an object's bytes come from.
///
/// Files and readers are streamed, never loaded into memory; file-to-file
/// copies go through `std::io::copy`, which uses `copy_file_range` on Linux.
pub enum ObjectData {
    /// In-memory bytes.
    Bytes(Vec<u8>),
    /// A file opened when the image is written.
    Path(PathBuf),
    /// An open file, read from its current position to the end.
    File(File),
    /// Any reader, read to the end.
    Reader(Box<dyn Read + Send>),
}

impl ObjectData {
    /// Wraps an arbitrary reader.
    pub fn reader(r: impl Read + Send + 'static) -> Self {
        Self::Reader(Box::new(r))
    }

    /// Size known before copying, used for progress reporting.
    fn known_len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::Path(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Self::File(f) => f.metadata().map(|m| m.len()).unwrap_or(0),
            Self::Reader(_) => 0,
        }
    }
}

impl fmt::Debug for ObjectData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Self::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Self::File(file) => f.debug_tuple("File").field(file).finish(),
            Self::Reader(_) => f.write_str("Reader(..)"),
        }
    }
}

impl From<Vec<u8>> for ObjectData {
    fn from(v: Vec<u8>) -> Self {
        Self::Bytes(v)
    }
}

impl From<&[u8]> for ObjectData {
    fn from(v: &[u8]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for ObjectData {
    fn from(v: &[u8; N]) -> Self {
        Self::Bytes(v.to_vec())
    }
}

/// Text is stored as its UTF-8 bytes (use a `Path` to read a file).
impl From<String> for ObjectData {
    fn from(v: String) -> Self {
        Self::Bytes(v.into_bytes())
    }
}

/// Text is stored as its UTF-8 bytes (use a `Path` to read a file).
impl From<&str> for ObjectData {
    fn from(v: &str) -> Self {
        Self::Bytes(v.as_bytes().to_vec())
    }
}

impl From<PathBuf> for ObjectData {
    fn from(p: PathBuf) -> Self {
        Self::Path(p)
    }
}

impl From<&Path> for ObjectData {
    fn from(p: &Path) -> Self {
        Self::Path(p.to_path_buf())
    }
}

impl From<&PathBuf> for ObjectData {
    fn from(p: &PathBuf) -> Self {
        Self::Path(p.clone())
    }
}

impl From<File> for ObjectData {
    fn from(f: File) -> Self {
        Self::File(f)
    }
}

/// Type-specific metadata requested for a new object.
#[derive(Debug, Clone)]
enum Metadata {
    None,
    Partition(PartitionInfo),
    Signature(HashType, [u8; 20]),
    CryptoMessage(CryptoFormat, MessageType),
    Sbom(SbomFormat),
    OciDigest(String),
}

impl Metadata {
    fn data_type(&self) -> Option<DataType> {
        match self {
            Self::None => None,
            Self::Partition(_) => Some(DataType::Partition),
            Self::Signature(..) => Some(DataType::Signature),
            Self::CryptoMessage(..) => Some(DataType::CryptoMessage),
            Self::Sbom(_) => Some(DataType::Sbom),
            Self::OciDigest(_) => Some(DataType::OciBlob),
        }
    }
}

/// A data object to write, built like sylabs/sif's `NewDescriptorInput`.
///
/// Defaults match Go: group 1, no link, no name, partitions aligned to 4096
/// bytes and everything else unaligned, object times equal to the image
/// time. Invalid settings (group 0, metadata for another data type, ...) are
/// reported when the object is written.
///
/// ```
/// use sif::{Arch, DataType, FsType, ObjectInput, PartType};
/// let part = ObjectInput::new(DataType::Partition, vec![0u8; 16])
///     .partition(FsType::Squashfs, PartType::PrimSys, Arch::Amd64);
/// let labels = ObjectInput::new(DataType::Labels, b"{}").name("labels.json");
/// # let _ = (part, labels);
/// ```
#[derive(Debug)]
pub struct ObjectInput {
    data_type: DataType,
    data: ObjectData,
    name: String,
    group: u32,
    link: Link,
    alignment: u64,
    metadata: Metadata,
    time: Option<i64>,
    bad_group: bool,
    bad_link: bool,
}

impl ObjectInput {
    /// A new object of type `data_type` whose contents come from `data`.
    pub fn new(data_type: DataType, data: impl Into<ObjectData>) -> Self {
        Self {
            data_type,
            data: data.into(),
            name: String::new(),
            group: 1,
            link: Link::None,
            alignment: if data_type == DataType::Partition {
                PARTITION_ALIGNMENT
            } else {
                0
            },
            metadata: Metadata::None,
            time: None,
            bad_group: false,
            bad_link: false,
        }
    }

    /// Object name (at most 128 bytes).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Places the object in group `group` (must not be 0).
    pub fn group(mut self, group: u32) -> Self {
        self.bad_group = group == 0 || group & GROUP_MASK != 0;
        self.group = group;
        self
    }

    /// Places the object in no group.
    pub fn no_group(mut self) -> Self {
        self.bad_group = false;
        self.group = 0;
        self
    }

    /// Links the object to object `id` (must not be 0).
    pub fn link_object(mut self, id: u32) -> Self {
        self.bad_link = id == 0 || id & GROUP_MASK != 0;
        self.link = Link::Object(id);
        self
    }

    /// Links the object to group `group` (must not be 0).
    pub fn link_group(mut self, group: u32) -> Self {
        self.bad_link = group == 0 || group & GROUP_MASK != 0;
        self.link = Link::Group(group);
        self
    }

    /// Data alignment in bytes (0 or 1 = none). Overrides the per-type default.
    pub fn alignment(mut self, alignment: u64) -> Self {
        self.alignment = alignment;
        self
    }

    /// Object creation/modification time (Unix seconds) instead of the image time.
    pub fn time(mut self, unix_seconds: i64) -> Self {
        self.time = Some(unix_seconds);
        self
    }

    /// Partition metadata (partition objects only; `arch` must be known).
    pub fn partition(mut self, fs_type: FsType, part_type: PartType, arch: Arch) -> Self {
        self.metadata = Metadata::Partition(PartitionInfo {
            fs_type,
            part_type,
            arch,
        });
        self
    }

    /// Signature metadata (signature objects only). An all-zero fingerprint means "none".
    pub fn signature(mut self, hash_type: HashType, fingerprint: [u8; 20]) -> Self {
        self.metadata = Metadata::Signature(hash_type, fingerprint);
        self
    }

    /// Cryptographic message metadata (crypto message objects only).
    pub fn crypto_message(mut self, format: CryptoFormat, message_type: MessageType) -> Self {
        self.metadata = Metadata::CryptoMessage(format, message_type);
        self
    }

    /// SBOM format (SBOM objects only).
    pub fn sbom(mut self, format: SbomFormat) -> Self {
        self.metadata = Metadata::Sbom(format);
        self
    }

    /// Digest text (`sha256:<hex>`) for OCI root index and blob objects.
    /// Without it the SHA-256 of the data is computed while writing.
    pub fn oci_digest(mut self, digest: &str) -> Self {
        self.metadata = Metadata::OciDigest(digest.to_string());
        self
    }

    /// The object's data type.
    pub fn data_type(&self) -> DataType {
        self.data_type
    }

    fn primary_arch(&self) -> Option<Arch> {
        match &self.metadata {
            Metadata::Partition(p) if p.part_type == PartType::PrimSys => Some(p.arch),
            _ => None,
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.bad_group {
            return Err(Error::InvalidGroupId);
        }
        if self.bad_link {
            return Err(Error::InvalidLinkId);
        }
        if self.name.len() > NAME_SIZE {
            return Err(Error::NameTooLong {
                len: self.name.len(),
            });
        }
        if let Some(expected) = self.metadata.data_type() {
            let is_oci = matches!(self.data_type, DataType::OciBlob | DataType::OciRootIndex);
            let matches = expected == self.data_type || (expected == DataType::OciBlob && is_oci);
            if !matches {
                return Err(Error::MetadataTypeMismatch {
                    expected,
                    actual: self.data_type,
                });
            }
        }
        match &self.metadata {
            Metadata::Partition(p) if p.arch == Arch::Unknown => Err(Error::UnknownArchitecture),
            Metadata::OciDigest(d) => oci_extra(d).map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// Options for [`create`] and [`create_to_writer`].
///
/// Defaults: random image id, current time, launch script
/// `#!/usr/bin/env run-singularity\n`, 48 descriptor slots.
#[derive(Clone, Default)]
pub struct CreateOptions {
    /// Nil image id and Go's zero time (-62135596800) for every timestamp,
    /// unless `id` / `time` say otherwise.
    pub deterministic: bool,
    /// Launch script; `Some("")` writes none (as sylabs/sif does by default).
    pub launch_script: Option<String>,
    /// Image id (raw UUID bytes).
    pub id: Option<[u8; 16]>,
    /// Image and object time, Unix seconds.
    pub time: Option<i64>,
    /// Number of descriptor slots (default 48, at most 65536).
    pub descriptor_capacity: Option<i64>,
    /// Called while object data is copied.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOptions")
            .field("deterministic", &self.deterministic)
            .field("launch_script", &self.launch_script)
            .field("id", &self.id)
            .field("time", &self.time)
            .field("descriptor_capacity", &self.descriptor_capacity)
            .field("progress", &self.progress.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Options for [`add_object`]. Default: current time.
#[derive(Clone, Default)]
pub struct AddOptions {
    /// Use Go's zero time for the object and the header modification time.
    pub deterministic: bool,
    /// Explicit time, Unix seconds (wins over `deterministic`).
    pub time: Option<i64>,
    /// Called while object data is copied.
    pub progress: Option<ProgressFn>,
}

impl fmt::Debug for AddOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddOptions")
            .field("deterministic", &self.deterministic)
            .field("time", &self.time)
            .field("progress", &self.progress.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Options for [`delete_object`], mirroring sylabs/sif's `OptDelete*`.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Overwrite the object's data with zeros.
    pub zero: bool,
    /// Truncate the file after removing the object; only allowed for the
    /// object whose data ends last ([`Error::CompactNotLast`] otherwise).
    pub compact: bool,
    /// Use Go's zero time for the header modification time.
    pub deterministic: bool,
    /// Explicit modification time, Unix seconds (wins over `deterministic`).
    pub time: Option<i64>,
}

fn now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn choose_time(explicit: Option<i64>, deterministic: bool) -> i64 {
    explicit.unwrap_or(if deterministic { GO_ZERO_TIME } else { now() })
}

/// A random (version 4) UUID from the kernel's random source.
fn random_uuid() -> Result<[u8; 16], Error> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut id)?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

fn align_up(offset: u64, alignment: u64) -> Result<u64, Error> {
    if alignment <= 1 {
        return Ok(offset);
    }
    match offset % alignment {
        0 => Ok(offset),
        r => offset.checked_add(alignment - r).ok_or(Error::Overflow),
    }
}

fn to_i64(v: u64) -> Result<i64, Error> {
    i64::try_from(v).map_err(|_| Error::Overflow)
}

/// Progress bookkeeping shared by all objects of one write.
struct Progress<'a> {
    callback: Option<&'a ProgressFn>,
    written: u64,
    total: u64,
}

impl Progress<'_> {
    fn advance(&mut self, n: u64) {
        self.written = self.written.saturating_add(n);
        if let Some(cb) = self.callback {
            cb(self.written, self.total);
        }
    }
}

/// Writer adapter that hashes everything written through it (OCI digests).
struct HashingWriter<'a, W> {
    inner: &'a mut W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `src` to `w` in chunks so progress can be reported. Each chunk is
/// a plain `io::copy`, so file-to-file copies keep the kernel fast path.
fn copy_chunked<R: Read, W: Write>(
    src: &mut R,
    w: &mut W,
    progress: &mut Progress<'_>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = io::copy(&mut src.by_ref().take(PROGRESS_CHUNK), w)?;
        total += n;
        if n > 0 {
            progress.advance(n);
        }
        if n < PROGRESS_CHUNK {
            return Ok(total);
        }
    }
}

fn copy_data<W: Write>(
    data: ObjectData,
    w: &mut W,
    progress: &mut Progress<'_>,
) -> io::Result<u64> {
    match data {
        ObjectData::Bytes(b) => {
            w.write_all(&b)?;
            progress.advance(b.len() as u64);
            Ok(b.len() as u64)
        }
        ObjectData::Path(p) => copy_chunked(&mut File::open(p)?, w, progress),
        ObjectData::File(mut f) => copy_chunked(&mut f, w, progress),
        ObjectData::Reader(mut r) => copy_chunked(&mut r, w, progress),
    }
}

/// Writes one object at the first suitably aligned offset at or after
/// `unaligned` and returns its descriptor.
fn write_object<W: Write + Seek>(
    w: &mut W,
    unaligned: u64,
    obj: ObjectInput,
    image_time: i64,
    slot: u64,
    progress: &mut Progress<'_>,
) -> Result<Descriptor, Error> {
    let id = u32::try_from(slot + 1).map_err(|_| Error::Overflow)?;
    let offset = align_up(unaligned, obj.alignment)?;
    to_i64(offset)?;
    w.seek(SeekFrom::Start(offset))?;

    let is_oci = matches!(obj.data_type, DataType::OciBlob | DataType::OciRootIndex);
    let (size, extra) = match obj.metadata {
        Metadata::None if is_oci => {
            let mut hw = HashingWriter {
                inner: w,
                hasher: Sha256::new(),
            };
            let n = copy_data(obj.data, &mut hw, progress)?;
            let hex: String = hw
                .hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (n, oci_extra(&format!("sha256:{hex}"))?)
        }
        ref meta => {
            let extra = match meta {
                Metadata::None => [0u8; EXTRA_SIZE],
                Metadata::Partition(p) => partition_extra(p),
                Metadata::Signature(h, fp) => signature_extra(*h, fp),
                Metadata::CryptoMessage(f, m) => crypto_extra(*f, *m),
                Metadata::Sbom(f) => sbom_extra(*f),
                Metadata::OciDigest(d) => oci_extra(d)?,
            };
            (copy_data(obj.data, w, progress)?, extra)
        }
    };
    let end = offset.checked_add(size).ok_or(Error::Overflow)?;
    to_i64(end)?;

    let mut raw_name = [0u8; NAME_SIZE];
    raw_name[..obj.name.len()].copy_from_slice(obj.name.as_bytes());
    let t = obj.time.unwrap_or(image_time);
    Ok(Descriptor {
        data_type: obj.data_type,
        id,
        group_id: (obj.group != 0).then_some(obj.group),
        link: obj.link,
        offset,
        size,
        size_with_padding: end - unaligned,
        created: t,
        modified: t,
        uid: 0,
        gid: 0,
        name: obj.name,
        extra,
        raw_group_id: obj.group | GROUP_MASK,
        raw_link_id: obj.link.to_raw(),
        raw_name,
        slot,
    })
}

fn write_table<W: Write + Seek>(
    w: &mut W,
    offset: u64,
    table: &[[u8; DESCRIPTOR_SIZE]],
) -> Result<(), Error> {
    w.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(table.len() * DESCRIPTOR_SIZE);
    for slot in table {
        buf.extend_from_slice(slot);
    }
    w.write_all(&buf)?;
    Ok(())
}

fn write_header<W: Write + Seek>(w: &mut W, h: &Header) -> Result<(), Error> {
    w.seek(SeekFrom::Start(0))?;
    w.write_all(&h.encode())?;
    Ok(())
}

/// Creates a new image at `path` (truncating any existing file, mode 0755)
/// holding `objects` in order; the file is removed again on failure.
pub fn create(
    path: impl AsRef<Path>,
    objects: Vec<ObjectInput>,
    opts: &CreateOptions,
) -> Result<(), Error> {
    let path = path.as_ref();
    let mut oo = OpenOptions::new();
    oo.read(true).write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut oo, 0o755);
    let mut f = oo.open(path)?;
    let result = create_to_writer(&mut f, objects, opts);
    if result.is_err() {
        drop(f);
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Writes a new image to `w`, which should be empty (gaps are produced by
/// seeking, as sylabs/sif does, so they read back as zeros).
pub fn create_to_writer<W: Write + Seek>(
    w: &mut W,
    objects: Vec<ObjectInput>,
    opts: &CreateOptions,
) -> Result<(), Error> {
    let launch = opts
        .launch_script
        .as_deref()
        .unwrap_or(DEFAULT_LAUNCH_SCRIPT);
    // Go requires room for a terminating NUL.
    if launch.len() >= 32 {
        return Err(Error::LaunchScriptTooLong { len: launch.len() });
    }
    let capacity = opts
        .descriptor_capacity
        .unwrap_or(DEFAULT_DESCRIPTOR_CAPACITY);
    if capacity < 0 || capacity as u64 > MAX_DESCRIPTORS {
        return Err(Error::InvalidCapacity(capacity));
    }
    if objects.len() as u64 > capacity as u64 {
        return Err(Error::InsufficientCapacity { capacity });
    }
    let mut arch = Arch::Unknown;
    let mut seen_primary = false;
    for obj in &objects {
        obj.validate()?;
        if let Some(a) = obj.primary_arch() {
            if seen_primary {
                return Err(Error::PrimaryPartitionExists);
            }
            seen_primary = true;
            arch = a;
        }
    }

    let id = match opts.id {
        Some(id) => id,
        None if opts.deterministic => [0u8; 16],
        None => random_uuid()?,
    };
    let t = choose_time(opts.time, opts.deterministic);
    let table_size = capacity * DESCRIPTOR_SIZE as i64;
    let mut raw_launch_script = [0u8; 32];
    raw_launch_script[..launch.len()].copy_from_slice(launch.as_bytes());
    let mut header = Header {
        launch_script: launch.to_string(),
        version: "01".into(),
        arch,
        id,
        created: t,
        modified: t,
        descriptors_free: capacity,
        descriptors_total: capacity,
        descriptors_offset: DEFAULT_DESCRIPTORS_OFFSET,
        descriptors_size: table_size,
        data_offset: DEFAULT_DESCRIPTORS_OFFSET + table_size,
        data_size: 0,
        raw_launch_script,
        raw_arch: arch.code(),
    };

    let mut progress = Progress {
        callback: opts.progress.as_ref(),
        written: 0,
        total: objects.iter().map(|o| o.data.known_len()).sum(),
    };
    let mut table = vec![[0u8; DESCRIPTOR_SIZE]; capacity as usize];
    let data_offset = header.data_offset as u64;
    let mut data_size = 0u64;
    for (slot, obj) in objects.into_iter().enumerate() {
        let unaligned = data_offset.checked_add(data_size).ok_or(Error::Overflow)?;
        let d = write_object(w, unaligned, obj, t, slot as u64, &mut progress)?;
        data_size = data_size
            .checked_add(d.size_with_padding)
            .ok_or(Error::Overflow)?;
        table[slot] = d.encode();
        header.descriptors_free -= 1;
    }
    header.data_size = to_i64(data_size)?;

    write_table(w, DEFAULT_DESCRIPTORS_OFFSET as u64, &table)?;
    write_header(w, &header)?;
    w.flush()?;
    Ok(())
}

/// Appends `obj` to the image at `path` in the first free descriptor slot
/// and returns its object id (slot index + 1).
pub fn add_object(
    path: impl AsRef<Path>,
    obj: ObjectInput,
    opts: &AddOptions,
) -> Result<u32, Error> {
    obj.validate()?;
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut loaded = load(&mut f)?;
    let h = &mut loaded.header;

    let slot = loaded
        .table
        .iter()
        .position(|s| !crate::descriptor::slot_is_used(s))
        .ok_or(Error::InsufficientCapacity {
            capacity: h.descriptors_total,
        })?;
    let new_id = u32::try_from(slot + 1).map_err(|_| Error::Overflow)?;
    if loaded.descriptors.iter().any(|d| d.id == new_id) {
        return Err(Error::DuplicateObjectId { id: new_id });
    }
    if let Some(arch) = obj.primary_arch() {
        if loaded
            .descriptors
            .iter()
            .any(|d| d.is_partition_of_type(PartType::PrimSys))
        {
            return Err(Error::PrimaryPartitionExists);
        }
        h.set_arch(arch);
    }

    // New data goes at the end of the data section; refuse headers whose data
    // section would make the new object overwrite metadata or existing data.
    let unaligned = (h.data_offset as u64)
        .checked_add(h.data_size as u64)
        .ok_or(Error::Overflow)?;
    let table_end = h.descriptors_offset as u64 + h.descriptors_size as u64;
    let data_end = loaded
        .descriptors
        .iter()
        .map(|d| d.offset + d.size)
        .max()
        .unwrap_or(0);
    if unaligned < table_end.max(data_end) {
        return Err(Error::InvalidHeaderField {
            field: "data size",
            value: h.data_size,
        });
    }

    let t = choose_time(opts.time, opts.deterministic);
    let mut progress = Progress {
        callback: opts.progress.as_ref(),
        written: 0,
        total: obj.data.known_len(),
    };
    let d = write_object(&mut f, unaligned, obj, t, slot as u64, &mut progress)?;
    loaded.table[slot] = d.encode();
    h.descriptors_free -= 1;
    h.data_size = h
        .data_size
        .checked_add(to_i64(d.size_with_padding)?)
        .ok_or(Error::Overflow)?;
    h.modified = t;

    write_table(&mut f, h.descriptors_offset as u64, &loaded.table)?;
    write_header(&mut f, h)?;
    f.flush()?;
    Ok(new_id)
}

/// Removes object `id` from the image at `path`.
///
/// The descriptor slot is zeroed and the header updated (architecture reset
/// when the primary partition goes). `zero` overwrites the data with zeros;
/// `compact` truncates the file at the start of the object's padded region.
pub fn delete_object(path: impl AsRef<Path>, id: u32, opts: &DeleteOptions) -> Result<(), Error> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut loaded = load(&mut f)?;
    let d = loaded
        .descriptors
        .iter()
        .find(|d| d.id == id)
        .cloned()
        .ok_or(Error::ObjectNotFound(id))?;
    let h = &mut loaded.header;
    let end = d.offset + d.size;

    let mut truncate_at = None;
    if opts.compact {
        if loaded.descriptors.iter().any(|o| o.offset + o.size > end) {
            return Err(Error::CompactNotLast { id });
        }
        let start = end
            .checked_sub(d.size_with_padding)
            .filter(|&s| s >= h.data_offset as u64)
            .ok_or(Error::InvalidPadding {
                id,
                size_with_padding: d.size_with_padding,
            })?;
        truncate_at = Some(start);
    }

    if opts.zero {
        f.seek(SeekFrom::Start(d.offset))?;
        let zeros = [0u8; 64 * 1024];
        let mut left = d.size;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
    }

    if let Some(start) = truncate_at {
        f.set_len(start)?;
        h.data_size = h
            .data_size
            .checked_sub(to_i64(d.size_with_padding)?)
            .filter(|&s| s >= 0)
            .ok_or(Error::InvalidPadding {
                id,
                size_with_padding: d.size_with_padding,
            })?;
    }

    if d.is_partition_of_type(PartType::PrimSys) {
        h.set_arch(Arch::Unknown);
    }
    h.descriptors_free += 1;
    h.modified = choose_time(opts.time, opts.deterministic);

    let slot_offset = (h.descriptors_offset as u64) + d.slot * DESCRIPTOR_SIZE as u64;
    f.seek(SeekFrom::Start(slot_offset))?;
    f.write_all(&[0u8; DESCRIPTOR_SIZE])?;
    write_header(&mut f, h)?;
    f.flush()?;
    Ok(())
}
