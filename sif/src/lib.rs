//! Reading and writing Singularity Image Format (SIF) files, byte-compatible
//! with sylabs/sif v2.
//!
//! A SIF file is a 128-byte global header, a table of 585-byte object
//! descriptors and the object data (partitions, signatures, metadata). This
//! crate reads images without loading object data, validates every offset
//! against the file (hostile images produce an [`Error`], never a panic or an
//! unbounded allocation), streams object data through a bounded reader, and
//! writes images with exactly the layout the Go library produces.
//!
//! ```no_run
//! use std::io::Read;
//! let mut img = sif::Image::open("image.sif")?;
//! println!("{}", sif::display::render_header(img.header()));
//! let part = img.primary_partition()?.clone();
//! let mut r = img.object_reader(&part)?;
//! let mut magic = [0u8; 4];
//! r.read_exact(&mut magic)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod descriptor;
pub mod display;
mod error;
mod header;
pub mod integrity;
pub mod json;
mod read;
mod types;
mod write;

pub use descriptor::{
    CryptoMessageInfo, Descriptor, PartitionInfo, SignatureInfo, DESCRIPTOR_SIZE, EXTRA_SIZE,
    NAME_SIZE,
};
pub use error::Error;
pub use header::{
    uuid_string, Header, DEFAULT_DESCRIPTORS_OFFSET, DEFAULT_DESCRIPTOR_CAPACITY,
    DEFAULT_LAUNCH_SCRIPT, GO_ZERO_TIME, HEADER_SIZE, MAGIC, VERSION,
};
pub use read::{Image, ObjectReader, MAX_DESCRIPTORS};
pub use types::{
    Arch, CryptoFormat, DataType, FsType, HashType, Link, MessageType, PartType, SbomFormat,
    GROUP_MASK,
};
pub use write::{
    add_object, create, create_to_writer, delete_object, AddOptions, CreateOptions, DeleteOptions,
    ObjectData, ObjectInput, ProgressFn, PARTITION_ALIGNMENT,
};
