//! Interoperability with the reference Go library (sylabs/sif v2 as packaged
//! by Debian): images written by this crate must load in Go with the same
//! descriptors, and add/delete must produce the same bytes as Go's
//! `AddObject` / `DeleteObject`.
//!
//! The checker in tests/go-checker is built in GOPATH mode against
//! /usr/share/gocode (no network). Without Go or the Go sources the tests
//! print "SKIPPED" and pass, unless SIF_REQUIRE_GO=1 (set it in CI).

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use common::{checker, corpus_dir, run_checker};
use sif::{
    add_object, create, delete_object, AddOptions, Arch, CreateOptions, CryptoFormat, DataType,
    DeleteOptions, FsType, HashType, Image, Link, MessageType, ObjectData, ObjectInput, PartType,
    SbomFormat,
};

/// Go's `%q` for the ASCII strings used in these tests.
fn go_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(q, "\\x{:02x}", c as u32);
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The checker's "print" output, computed from this crate's reader.
fn rust_print(path: &Path) -> String {
    let mut img = Image::open(path).unwrap();
    let h = img.header().clone();
    let mut s = format!(
        "header launch={} version={} arch={} id={} created={} modified={} free={} total={} \
         descoff={} descsize={} dataoff={} datasize={}\n",
        go_quote(&h.launch_script),
        h.version,
        h.arch,
        h.id_string(),
        h.created,
        h.modified,
        h.descriptors_free,
        h.descriptors_total,
        h.descriptors_offset,
        h.descriptors_size,
        h.data_offset,
        h.data_size
    );
    if let Ok(p) = img.primary_partition() {
        let _ = writeln!(s, "primary id={}", p.id);
    }
    for d in img.descriptors().to_vec() {
        let (link, is_group) = match d.link {
            Link::None => (d.raw_link_id & !sif::GROUP_MASK, false),
            Link::Object(id) => (id, false),
            Link::Group(id) => (id, true),
        };
        let data = img.read_object(&d, 1 << 30).unwrap();
        let _ = write!(
            s,
            "object id={} type={} group={} link={} linkgroup={} offset={} size={} created={} \
             modified={} name={} datalen={}",
            d.id,
            d.data_type.to_raw(),
            d.group_id.unwrap_or(0),
            link,
            is_group,
            d.offset,
            d.size,
            d.created,
            d.modified,
            go_quote(&d.name),
            data.len()
        );
        match d.data_type {
            DataType::Partition => {
                let p = d.partition().unwrap();
                let _ = write!(
                    s,
                    " fs={} part={} arch={}",
                    p.fs_type.to_raw(),
                    p.part_type.to_raw(),
                    p.arch
                );
            }
            DataType::Signature => {
                let g = d.signature().unwrap();
                let fp: String = g
                    .fingerprint
                    .map(|f| f.iter().map(|b| format!("{b:02X}")).collect())
                    .unwrap_or_default();
                let _ = write!(s, " hash={} fp={fp}", g.hash_type);
            }
            DataType::CryptoMessage => {
                let m = d.crypto_message().unwrap();
                let _ = write!(
                    s,
                    " format={} message={}",
                    m.format.to_raw(),
                    m.message_type.to_raw()
                );
            }
            DataType::Sbom => {
                let _ = write!(s, " sbom={}", d.sbom_format().unwrap().to_raw());
            }
            _ => {}
        }
        s.push('\n');
    }
    s
}

fn assert_go_agrees(bin: &Path, path: &Path) {
    let go = run_checker(bin, &["print", path.to_str().unwrap()]);
    assert_eq!(rust_print(path), go, "{}", path.display());
}

#[test]
fn corpus_images_read_the_same_in_go() {
    let Some(bin) = checker() else { return };
    let Some(dir) = corpus_dir() else { return };
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sif") {
            assert_go_agrees(bin, &path);
            n += 1;
        }
    }
    assert!(n > 0);
}

/// An image with one object of every type and all kinds of grouping/links.
fn rich_objects(dir: &Path) -> Vec<ObjectInput> {
    let squash = dir.join("rootfs.squashfs");
    std::fs::write(&squash, vec![0x68u8; 10_000]).unwrap();
    vec![
        ObjectInput::new(DataType::Deffile, b"Bootstrap: docker\n").name("def"),
        ObjectInput::new(DataType::EnvVar, b"A=1\n"),
        ObjectInput::new(DataType::Labels, b"{\"a\":\"b\"}").name("labels.json"),
        ObjectInput::new(DataType::Partition, squash.as_path()).partition(
            FsType::Squashfs,
            PartType::PrimSys,
            Arch::Amd64,
        ),
        ObjectInput::new(
            DataType::Partition,
            ObjectData::reader(std::io::Cursor::new(vec![1u8; 5000])),
        )
        .group(2)
        .partition(FsType::Ext3, PartType::Overlay, Arch::Arm64),
        ObjectInput::new(DataType::Signature, b"sig")
            .no_group()
            .link_group(1)
            .signature(HashType::Sha384, [0xab; 20]),
        ObjectInput::new(DataType::CryptoMessage, b"key")
            .link_object(4)
            .crypto_message(CryptoFormat::Pem, MessageType::RsaOaep),
        ObjectInput::new(DataType::Sbom, b"<bom/>").sbom(SbomFormat::CycloneDxXml),
        ObjectInput::new(DataType::GenericJson, b"{}").name("data.json"),
        ObjectInput::new(DataType::Generic, b"raw").time(1_600_000_000),
        ObjectInput::new(DataType::OciBlob, b"blob"),
        ObjectInput::new(DataType::OciRootIndex, b"{\"schemaVersion\":2}"),
        ObjectInput::new(DataType::from_raw(0x4242), b"future"),
        ObjectInput::new(DataType::Signature, b"unsigned-fp")
            .no_group()
            .signature(HashType::Sha256, [0; 20]),
    ]
}

#[test]
fn created_images_load_in_go() {
    let Some(bin) = checker() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("rich.sif");
    create(
        &path,
        rich_objects(tmp.path()),
        &CreateOptions {
            descriptor_capacity: Some(20),
            ..Default::default()
        },
    )
    .unwrap();
    assert_go_agrees(bin, &path);

    let img = Image::open(&path).unwrap();
    assert_eq!(img.header().launch_script, sif::DEFAULT_LAUNCH_SCRIPT);
    assert_eq!(img.header().arch, Arch::Amd64);
    assert!(!img.header().id_is_nil());
    assert_eq!(img.header().id[6] >> 4, 4, "random ids are version 4");
    let blob = img.find_by_type(DataType::OciBlob).next().unwrap();
    assert_eq!(
        blob.oci_digest().unwrap(),
        format!("sha256:{}", sha256_hex(b"blob"))
    );
    assert_eq!(
        img.find_by_type(DataType::Unknown(0x4242)).count(),
        1,
        "unknown types are kept"
    );
}

fn sha256_hex(data: &[u8]) -> String {
    // Computed with the system tool so the test does not trust the crate's hashing.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), data).unwrap();
    let out = Command::new("sha256sum").arg(tmp.path()).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn add_and_delete_produce_the_same_bytes_as_go() {
    let Some(bin) = checker() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.sif");
    create(
        &base,
        vec![
            ObjectInput::new(DataType::Partition, vec![7u8; 3000]).partition(
                FsType::Squashfs,
                PartType::PrimSys,
                Arch::Arm64,
            ),
            ObjectInput::new(DataType::Labels, b"{}"),
        ],
        &CreateOptions {
            deterministic: true,
            ..Default::default()
        },
    )
    .unwrap();
    let ours = tmp.path().join("ours.sif");
    let theirs = tmp.path().join("theirs.sif");
    std::fs::copy(&base, &ours).unwrap();
    std::fs::copy(&base, &theirs).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let same = |step: &str| {
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "bytes differ from Go after {step}"
        );
        assert_go_agrees(bin, &ours);
    };

    let data = tmp.path().join("data");
    std::fs::write(&data, b"generic payload").unwrap();
    let id = add_object(
        &ours,
        ObjectInput::new(DataType::Generic, data.as_path()).name("payload"),
        &AddOptions {
            deterministic: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(id, 3);
    run_checker(bin, &["add", &s(&theirs), "0x4007", &s(&data), "payload"]);
    same("add");

    // Zeroing delete of the primary partition (also resets the header arch).
    let zero = DeleteOptions {
        zero: true,
        deterministic: true,
        ..Default::default()
    };
    delete_object(&ours, 1, &zero).unwrap();
    run_checker(bin, &["delete", &s(&theirs), "1", "1", "0"]);
    same("zeroing delete");

    // Adding into the freed slot 1 reuses id 1, as Go does.
    let id = add_object(
        &ours,
        ObjectInput::new(DataType::Generic, data.as_path()).name("again"),
        &AddOptions {
            deterministic: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(id, 1);
    run_checker(bin, &["add", &s(&theirs), "0x4007", &s(&data), "again"]);
    same("add into freed slot");

    let compact = DeleteOptions {
        compact: true,
        deterministic: true,
        ..Default::default()
    };
    delete_object(&ours, 1, &compact).unwrap();
    run_checker(bin, &["delete", &s(&theirs), "1", "0", "1"]);
    same("compacting delete");
}
