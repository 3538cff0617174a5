//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sif::{DataType, Descriptor, Image, Link, ObjectInput};

/// Root of the sylabs/sif sources shipped by Debian's golang-github-sylabs-sif-dev.
pub const SYLABS_SIF: &str = "/usr/share/gocode/src/github.com/sylabs/sif";

/// The reference test images, or `None` (after printing why) when absent.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SIF_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(SYLABS_SIF).join("test/images"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: sylabs/sif test corpus not found at {} \
             (install golang-github-sylabs-sif-dev or set SIF_CORPUS_DIR)",
            dir.display()
        );
        None
    }
}

/// siftool golden files directory.
pub fn golden_dir() -> PathBuf {
    Path::new(SYLABS_SIF).join("internal/app/siftool/testdata")
}

/// Rebuilds the `ObjectInput` that would produce `d` (data, name, group,
/// link, type-specific metadata) using the typed builder methods.
pub fn input_from(img: &mut Image<std::fs::File>, d: &Descriptor) -> ObjectInput {
    let data = img.read_object(d, 1 << 30).expect("read object");
    let mut o = ObjectInput::new(d.data_type, data).name(&d.name);
    o = match d.group_id {
        Some(g) => o.group(g),
        None => o.no_group(),
    };
    o = match d.link {
        Link::None => o,
        Link::Object(id) => o.link_object(id),
        Link::Group(g) => o.link_group(g),
    };
    match d.data_type {
        DataType::Partition => {
            let p = d.partition().unwrap();
            o.partition(p.fs_type, p.part_type, p.arch)
        }
        DataType::Signature => {
            let s = d.signature().unwrap();
            o.signature(s.hash_type, s.fingerprint.unwrap_or([0; 20]))
        }
        DataType::CryptoMessage => {
            let m = d.crypto_message().unwrap();
            o.crypto_message(m.format, m.message_type)
        }
        DataType::Sbom => o.sbom(d.sbom_format().unwrap()),
        _ => o,
    }
}
