//! Opening and validating images, and reading object data.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use crate::descriptor::{Descriptor, DESCRIPTOR_SIZE};
use crate::header::{Header, HEADER_SIZE};
use crate::types::{DataType, PartType};
use crate::Error;

/// Largest descriptor capacity accepted when reading (about 38 MiB of table).
/// sylabs/sif writers default to 48; the bound keeps a hostile header from
/// driving a huge allocation.
pub const MAX_DESCRIPTORS: u64 = 65_536;

/// A loaded SIF image: the header and the used descriptors, validated against
/// the file. Object data is only read on request.
#[derive(Debug)]
pub struct Image<R> {
    inner: R,
    header: Header,
    descriptors: Vec<Descriptor>,
    file_len: u64,
}

/// Header, raw descriptor table and decoded descriptors of a validated image.
pub(crate) struct Loaded {
    pub(crate) header: Header,
    pub(crate) table: Vec<[u8; DESCRIPTOR_SIZE]>,
    pub(crate) descriptors: Vec<Descriptor>,
    pub(crate) file_len: u64,
}

impl Image<File> {
    /// Opens the image at `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_reader(File::open(path)?)
    }
}

impl<R: Read + Seek> Image<R> {
    /// Loads an image from any seekable reader.
    ///
    /// Reads the header and descriptor table only, and checks that every
    /// structure and object lies inside the stream, that objects do not
    /// overlap each other or the metadata, and that object ids are unique.
    pub fn from_reader(mut r: R) -> Result<Self, Error> {
        let loaded = load(&mut r)?;
        Ok(Self {
            inner: r,
            header: loaded.header,
            descriptors: loaded.descriptors,
            file_len: loaded.file_len,
        })
    }

    /// The global header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Used descriptors in ascending id order.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The descriptor with object id `id`.
    pub fn descriptor(&self, id: u32) -> Option<&Descriptor> {
        self.descriptors
            .binary_search_by_key(&id, |d| d.id)
            .ok()
            .map(|i| &self.descriptors[i])
    }

    /// The primary system partition.
    ///
    /// [`Error::NoPrimaryPartition`] if there is none,
    /// [`Error::MultiplePrimaryPartitions`] if a hostile image has several.
    pub fn primary_partition(&self) -> Result<&Descriptor, Error> {
        let mut found = self
            .descriptors
            .iter()
            .filter(|d| d.is_partition_of_type(PartType::PrimSys));
        let first = found.next().ok_or(Error::NoPrimaryPartition)?;
        if let Some(second) = found.next() {
            return Err(Error::MultiplePrimaryPartitions {
                first: first.id,
                second: second.id,
            });
        }
        Ok(first)
    }

    /// Descriptors of the given data type, in id order.
    pub fn find_by_type(&self, t: DataType) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(move |d| d.data_type == t)
    }

    /// Length of the underlying file when it was loaded.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Lowest object id in the descriptor's group (by raw group field), as
    /// sylabs/sif uses to compute relative ids for signatures.
    pub fn group_min_id(&self, d: &Descriptor) -> u32 {
        self.descriptors
            .iter()
            .filter(|o| o.raw_group_id == d.raw_group_id)
            .map(|o| o.id)
            .min()
            .unwrap_or(d.id)
    }

    /// A bounded reader over the object's bytes (`Read + Seek`, positions
    /// relative to the object start). Fails with [`Error::ObjectNotFound`] if
    /// `d` does not belong to this image.
    pub fn object_reader(&mut self, d: &Descriptor) -> Result<ObjectReader<'_, R>, Error> {
        let d = self.owned(d)?;
        Ok(ObjectReader {
            inner: &mut self.inner,
            start: d.offset,
            len: d.size,
            pos: 0,
            positioned: false,
        })
    }

    /// [`Image::object_reader`] by object id.
    pub fn object_reader_by_id(&mut self, id: u32) -> Result<ObjectReader<'_, R>, Error> {
        let d = self
            .descriptor(id)
            .cloned()
            .ok_or(Error::ObjectNotFound(id))?;
        self.object_reader(&d)
    }

    /// Reads a whole object into memory, refusing objects larger than `max_len`
    /// with [`Error::ObjectTooLarge`].
    pub fn read_object(&mut self, d: &Descriptor, max_len: u64) -> Result<Vec<u8>, Error> {
        let d = self.owned(d)?;
        if d.size > max_len {
            return Err(Error::ObjectTooLarge {
                id: d.id,
                size: d.size,
                max: max_len,
            });
        }
        let len = usize::try_from(d.size).map_err(|_| Error::ObjectTooLarge {
            id: d.id,
            size: d.size,
            max: max_len,
        })?;
        let mut buf = vec![0u8; len];
        self.inner.seek(SeekFrom::Start(d.offset))?;
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| match e.kind() {
                // The file shrank after loading.
                io::ErrorKind::UnexpectedEof => Error::ObjectOutOfBounds {
                    id: d.id,
                    offset: d.offset,
                    size: d.size,
                    file_len: self.file_len,
                },
                _ => Error::Io(e),
            })?;
        Ok(buf)
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The image's own copy of `d` (looked up by id), so that callers cannot
    /// smuggle in a descriptor with bounds that were never validated.
    fn owned(&self, d: &Descriptor) -> Result<Descriptor, Error> {
        match self.descriptor(d.id) {
            Some(own) if own == d => Ok(own.clone()),
            _ => Err(Error::ObjectNotFound(d.id)),
        }
    }
}

/// Reads and validates header and descriptor table from `r`.
pub(crate) fn load<R: Read + Seek>(r: &mut R) -> Result<Loaded, Error> {
    let file_len = r.seek(SeekFrom::End(0))?;
    if file_len < HEADER_SIZE as u64 {
        return Err(Error::Truncated {
            what: "global header",
            needed: HEADER_SIZE as u64,
            available: file_len,
        });
    }
    r.seek(SeekFrom::Start(0))?;
    let mut hb = [0u8; HEADER_SIZE];
    r.read_exact(&mut hb)?;
    let header = Header::decode(&hb)?;

    let (table_offset, count) = check_table_layout(&header, file_len)?;

    // `count` is bounded by MAX_DESCRIPTORS and by the file length, so this
    // allocation is bounded too.
    let table_bytes = count as usize * DESCRIPTOR_SIZE;
    let mut raw = vec![0u8; table_bytes];
    r.seek(SeekFrom::Start(table_offset))?;
    r.read_exact(&mut raw)?;
    let table: Vec<[u8; DESCRIPTOR_SIZE]> = raw
        .chunks_exact(DESCRIPTOR_SIZE)
        .map(|c| {
            let mut a = [0u8; DESCRIPTOR_SIZE];
            a.copy_from_slice(c);
            a
        })
        .collect();

    // Objects must start after the header and the whole declared table.
    let metadata_end = table_offset + header.descriptors_size as u64;
    let mut descriptors = Vec::new();
    for (slot, b) in table.iter().enumerate() {
        if let Some(d) = Descriptor::decode(b, slot as u64)? {
            check_object_bounds(&d, metadata_end, file_len)?;
            descriptors.push(d);
        }
    }
    descriptors.sort_by_key(|d| d.id);
    if let Some(w) = descriptors.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(Error::DuplicateObjectId { id: w[0].id });
    }
    check_no_overlap(&descriptors)?;

    Ok(Loaded {
        header,
        table,
        descriptors,
        file_len,
    })
}

/// Validates the header's descriptor table fields; returns the table offset
/// and the number of slots to read.
fn check_table_layout(h: &Header, file_len: u64) -> Result<(u64, u64), Error> {
    let field = |field: &'static str, value: i64| Error::InvalidHeaderField { field, value };

    let total = u64::try_from(h.descriptors_total)
        .map_err(|_| field("descriptors total", h.descriptors_total))?;
    if total > MAX_DESCRIPTORS {
        return Err(Error::TooManyDescriptors {
            total: h.descriptors_total,
            max: MAX_DESCRIPTORS,
        });
    }
    if h.descriptors_free < 0 || h.descriptors_free > h.descriptors_total {
        return Err(field("descriptors free", h.descriptors_free));
    }
    let offset = u64::try_from(h.descriptors_offset)
        .ok()
        .filter(|&o| o >= HEADER_SIZE as u64)
        .ok_or_else(|| field("descriptors offset", h.descriptors_offset))?;
    let size = u64::try_from(h.descriptors_size)
        .map_err(|_| field("descriptors size", h.descriptors_size))?;
    // Cannot overflow: total <= 65536.
    let needed_size = total * DESCRIPTOR_SIZE as u64;
    if size < needed_size {
        return Err(field("descriptors size", h.descriptors_size));
    }
    let end = offset
        .checked_add(size)
        .ok_or_else(|| field("descriptors size", h.descriptors_size))?;
    if end > file_len {
        return Err(Error::Truncated {
            what: "descriptor table",
            needed: end,
            available: file_len,
        });
    }
    if h.data_offset < 0 {
        return Err(field("data offset", h.data_offset));
    }
    if h.data_size < 0 || h.data_offset.checked_add(h.data_size).is_none() {
        return Err(field("data size", h.data_size));
    }
    Ok((offset, total))
}

fn check_object_bounds(d: &Descriptor, metadata_end: u64, file_len: u64) -> Result<(), Error> {
    let out_of_bounds = || Error::ObjectOutOfBounds {
        id: d.id,
        offset: d.offset,
        size: d.size,
        file_len,
    };
    // Offsets are stored as i64, so anything above i64::MAX was negative and
    // already rejected; the sum can still exceed the file.
    let end = d.offset.checked_add(d.size).ok_or_else(out_of_bounds)?;
    if end > file_len {
        return Err(out_of_bounds());
    }
    if d.size > 0 && d.offset < metadata_end {
        return Err(Error::ObjectOverlapsMetadata {
            id: d.id,
            offset: d.offset,
            metadata_end,
        });
    }
    Ok(())
}

fn check_no_overlap(descriptors: &[Descriptor]) -> Result<(), Error> {
    let mut ranges: Vec<(u64, u64, u32)> = descriptors
        .iter()
        .filter(|d| d.size > 0)
        .map(|d| (d.offset, d.offset + d.size, d.id))
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let (_, end, id) = w[0];
        let (start, _, other) = w[1];
        if start < end {
            return Err(Error::ObjectsOverlap {
                id: other,
                other: id,
            });
        }
    }
    Ok(())
}

/// `Read + Seek` view of one object's bytes, borrowed from an [`Image`].
///
/// Positions are relative to the object start; reads stop at the object end.
#[derive(Debug)]
pub struct ObjectReader<'a, R> {
    inner: &'a mut R,
    start: u64,
    len: u64,
    pos: u64,
    /// Whether `inner` is known to sit at `start + pos`.
    positioned: bool,
}

impl<R> ObjectReader<'_, R> {
    /// Object length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty object.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<R: Read + Seek> Read for ObjectReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if !self.positioned {
            self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
            self.positioned = true;
        }
        let remaining = self.len - self.pos;
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for ObjectReader<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let base = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        let new = base.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        if new != self.pos {
            self.pos = new;
            self.positioned = false;
        }
        Ok(self.pos)
    }
}
