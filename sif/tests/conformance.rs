//! Conformance against the sylabs/sif reference corpus: every test image
//! loads, the siftool renderings match siftool's golden files byte for byte,
//! object bytes match the dump goldens, and the deterministic images are
//! rebuilt, extended and shrunk to exactly the reference bytes.
//!
//! Each test prints "SKIPPED" and returns when the corpus is not installed.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::{corpus_dir, golden_dir, input_from};
use sif::display::{render_header, render_info, render_list};
use sif::{
    add_object, create, delete_object, AddOptions, Arch, CreateOptions, DataType, DeleteOptions,
    Error, Image, Link, PartType,
};

/// Golden file name -> image, as in siftool's TestApp_Header / TestApp_List.
const IMAGE_GOLDENS: &[(&str, &str)] = &[
    ("Empty", "empty.sif"),
    ("EmptyID", "empty-id.sif"),
    ("EmptyLaunchScript", "empty-launch-script.sif"),
    ("OneObjectTime", "one-object-time.sif"),
    ("OneObjectGenericJSON", "one-object-generic-json.sif"),
    ("OneObjectCryptMessage", "one-object-crypt-message.sif"),
    ("OneObjectSBOM", "one-object-sbom.sif"),
    ("OneGroup", "one-group.sif"),
    ("OneGroupSigned", "one-group-signed.sif"),
    ("OneGroupSignedLegacy", "one-group-signed-legacy.sif"),
    ("OneGroupSignedLegacyAll", "one-group-signed-legacy-all.sif"),
    (
        "OneGroupSignedLegacyGroup",
        "one-group-signed-legacy-group.sif",
    ),
    ("TwoGroups", "two-groups.sif"),
    ("TwoGroupsSigned", "two-groups-signed.sif"),
    ("TwoGroupsSignedLegacy", "two-groups-signed-legacy.sif"),
    (
        "TwoGroupsSignedLegacyAll",
        "two-groups-signed-legacy-all.sif",
    ),
    (
        "TwoGroupsSignedLegacyGroup",
        "two-groups-signed-legacy-group.sif",
    ),
];

/// Golden file name -> (image, object id), as in siftool's TestApp_Info.
const INFO_GOLDENS: &[(&str, &str, u32)] = &[
    ("Time", "one-object-time.sif", 1),
    ("GenericJSON", "one-object-generic-json.sif", 1),
    ("CryptMessage", "one-object-crypt-message.sif", 1),
    ("SBOM", "one-object-sbom.sif", 1),
    ("DataPartitionRaw", "two-groups-signed.sif", 1),
    ("DataPartitionSquashFS", "two-groups-signed.sif", 2),
    ("DataPartitionEXT3", "two-groups-signed.sif", 3),
    ("DataSignature", "two-groups-signed.sif", 4),
];

/// Golden file name -> (image, object id), as in siftool's TestApp_Dump.
const DUMP_GOLDENS: &[(&str, &str, u32)] = &[
    ("One", "one-group-signed.sif", 1),
    ("Two", "one-group-signed.sif", 2),
    ("Three", "one-group-signed.sif", 3),
];

fn golden(kind: &str, name: &str) -> Vec<u8> {
    let p = golden_dir().join(kind).join(format!("{name}.golden"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn assert_text_eq(got: &str, want: &[u8], what: &str) {
    let want = String::from_utf8_lossy(want);
    assert_eq!(got, want, "{what}: rendering differs from siftool golden");
}

#[test]
fn every_corpus_image_loads() {
    let Some(dir) = corpus_dir() else { return };
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sif") {
            let img = Image::open(&path)
                .unwrap_or_else(|e| panic!("{} failed to load: {e}", path.display()));
            assert_eq!(img.header().version, "01");
            n += 1;
        }
    }
    assert!(
        n >= IMAGE_GOLDENS.len(),
        "only {n} images in {}",
        dir.display()
    );
}

#[test]
fn header_matches_siftool_goldens() {
    let Some(dir) = corpus_dir() else { return };
    for (name, file) in IMAGE_GOLDENS {
        let img = Image::open(dir.join(file)).unwrap();
        assert_text_eq(
            &render_header(img.header()),
            &golden("TestApp_Header", name),
            name,
        );
    }
}

#[test]
fn list_matches_siftool_goldens() {
    let Some(dir) = corpus_dir() else { return };
    for (name, file) in IMAGE_GOLDENS {
        let img = Image::open(dir.join(file)).unwrap();
        assert_text_eq(
            &render_list(img.descriptors()),
            &golden("TestApp_List", name),
            name,
        );
    }
}

#[test]
fn info_matches_siftool_goldens() {
    let Some(dir) = corpus_dir() else { return };
    for (name, file, id) in INFO_GOLDENS {
        let img = Image::open(dir.join(file)).unwrap();
        let d = img.descriptor(*id).unwrap();
        assert_text_eq(&render_info(d), &golden("TestApp_Info", name), name);
    }
}

#[test]
fn object_bytes_match_dump_goldens() {
    let Some(dir) = corpus_dir() else { return };
    for (name, file, id) in DUMP_GOLDENS {
        let mut img = Image::open(dir.join(file)).unwrap();
        let d = img.descriptor(*id).unwrap().clone();
        let want = golden("TestApp_Dump", name);
        assert_eq!(img.read_object(&d, 1 << 20).unwrap(), want, "{name}");
        let mut streamed = Vec::new();
        img.object_reader(&d)
            .unwrap()
            .read_to_end(&mut streamed)
            .unwrap();
        assert_eq!(streamed, want, "{name} (streamed)");
    }
}

#[test]
fn decoded_fields_of_two_groups_signed() {
    let Some(dir) = corpus_dir() else { return };
    let img = Image::open(dir.join("two-groups-signed.sif")).unwrap();
    let h = img.header();
    assert_eq!(h.arch, Arch::I386);
    assert_eq!(h.created, sif::GO_ZERO_TIME);
    assert_eq!((h.descriptors_free, h.descriptors_total), (43, 48));
    assert_eq!((h.data_offset, h.data_size), (32176, 272_837));
    let ids: Vec<u32> = img.descriptors().iter().map(|d| d.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(img.primary_partition().unwrap().id, 2);
    let p3 = img.descriptor(3).unwrap();
    assert_eq!(p3.group_id, Some(2));
    assert_eq!(p3.raw_group_id, 0xf000_0002);
    assert_eq!(p3.partition().unwrap().arch, Arch::Amd64);
    let sig = img.descriptor(5).unwrap();
    assert_eq!(sig.group_id, None);
    assert_eq!(sig.link, Link::Group(2));
    let fp = sig.signature().unwrap().fingerprint.unwrap();
    assert_eq!(fp[..4], [0x12, 0x04, 0x5c, 0x8c]);
    assert_eq!(img.find_by_type(DataType::Signature).count(), 2);
    assert_eq!(img.find_by_type(DataType::Partition).count(), 3);
    assert_eq!(img.group_min_id(sig), 4);
}

#[test]
fn legacy_layout_is_read_from_the_header() {
    let Some(dir) = corpus_dir() else { return };
    let img = Image::open(dir.join("one-group-signed-legacy-all.sif")).unwrap();
    assert_eq!(img.header().data_offset, 32768);
    assert_eq!(img.header().launch_script, sif::DEFAULT_LAUNCH_SCRIPT);
    let d = img.descriptor(3).unwrap();
    assert_eq!((d.uid, d.gid), (1000, 1000));
    assert_eq!(d.name, "part-signature");
    assert_eq!(d.link, Link::Object(1));
}

#[test]
fn no_primary_partition_in_empty_image() {
    let Some(dir) = corpus_dir() else { return };
    let img = Image::open(dir.join("empty.sif")).unwrap();
    assert!(matches!(
        img.primary_partition(),
        Err(Error::NoPrimaryPartition)
    ));
    assert!(img.descriptors().is_empty());
}

#[test]
fn object_reader_is_bounded_and_seekable() {
    let Some(dir) = corpus_dir() else { return };
    let mut img = Image::open(dir.join("two-groups.sif")).unwrap();
    let d = img.descriptor(1).unwrap().clone();
    let mut r = img.object_reader(&d).unwrap();
    assert_eq!(r.len(), 4);
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, [0xfa, 0xce, 0xfe, 0xed]);
    assert_eq!(r.seek(SeekFrom::End(-2)).unwrap(), 2);
    let mut two = [0u8; 8];
    assert_eq!(r.read(&mut two).unwrap(), 2);
    assert_eq!(&two[..2], &[0xfe, 0xed]);
    assert_eq!(r.seek(SeekFrom::Start(100)).unwrap(), 100);
    assert_eq!(r.read(&mut two).unwrap(), 0);
    assert!(r.seek(SeekFrom::Current(-101)).is_err());
    // Objects larger than the caller's bound are refused.
    let big = img.descriptor(3).unwrap().clone();
    assert!(matches!(
        img.read_object(&big, 1024),
        Err(Error::ObjectTooLarge {
            id: 3,
            size: 262_144,
            max: 1024
        })
    ));
}

/// Recreates `file` from its own objects with the header's id, time,
/// launch script and capacity, and returns the new bytes.
fn rebuild(dir: &Path, file: &str, out: &Path) -> Vec<u8> {
    let mut img = Image::open(dir.join(file)).unwrap();
    let h = img.header().clone();
    let ds = img.descriptors().to_vec();
    let inputs = ds.iter().map(|d| input_from(&mut img, d)).collect();
    let opts = CreateOptions {
        deterministic: true,
        launch_script: Some(h.launch_script.clone()),
        id: Some(h.id),
        time: Some(h.created),
        descriptor_capacity: Some(h.descriptors_total),
        progress: None,
    };
    create(out, inputs, &opts).unwrap();
    std::fs::read(out).unwrap()
}

#[test]
fn deterministic_images_are_rebuilt_byte_for_byte() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut rebuilt = 0;
    for (_, file) in IMAGE_GOLDENS {
        // Legacy images come from the pre-v2 writer (uid 1000, other layout).
        if file.contains("legacy") {
            continue;
        }
        let out = tmp.path().join(file);
        let got = rebuild(&dir, file, &out);
        let want = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(got.len(), want.len(), "{file}: length differs");
        assert!(got == want, "{file}: rebuilt bytes differ from reference");
        rebuilt += 1;
    }
    assert_eq!(rebuilt, 11);
}

#[test]
fn adding_signatures_reproduces_signed_images() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for (base, signed) in [
        ("one-group.sif", "one-group-signed.sif"),
        ("two-groups.sif", "two-groups-signed.sif"),
    ] {
        let work = tmp.path().join(base);
        std::fs::copy(dir.join(base), &work).unwrap();
        let mut reference = Image::open(dir.join(signed)).unwrap();
        let sigs: Vec<_> = reference
            .find_by_type(DataType::Signature)
            .cloned()
            .collect();
        for sig in &sigs {
            let input = input_from(&mut reference, sig);
            let opts = AddOptions {
                deterministic: true,
                ..Default::default()
            };
            assert_eq!(add_object(&work, input, &opts).unwrap(), sig.id);
        }
        let got = std::fs::read(&work).unwrap();
        assert!(
            got == std::fs::read(dir.join(signed)).unwrap(),
            "{base} + signatures differs from {signed}"
        );
    }
}

#[test]
fn compacting_deletes_reproduce_unsigned_images() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let opts = DeleteOptions {
        compact: true,
        deterministic: true,
        ..Default::default()
    };
    for (signed, ids, base) in [
        ("one-group-signed.sif", &[3u32][..], "one-group.sif"),
        ("two-groups-signed.sif", &[5, 4][..], "two-groups.sif"),
    ] {
        let work = tmp.path().join(signed);
        std::fs::copy(dir.join(signed), &work).unwrap();
        for id in ids {
            delete_object(&work, *id, &opts).unwrap();
        }
        assert!(
            std::fs::read(&work).unwrap() == std::fs::read(dir.join(base)).unwrap(),
            "{signed} minus signatures differs from {base}"
        );
    }
}

#[test]
fn compact_delete_of_inner_object_is_refused() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("x.sif");
    std::fs::copy(dir.join("two-groups.sif"), &work).unwrap();
    let opts = DeleteOptions {
        compact: true,
        ..Default::default()
    };
    assert!(matches!(
        delete_object(&work, 1, &opts),
        Err(Error::CompactNotLast { id: 1 })
    ));
    assert!(matches!(
        delete_object(&work, 9, &opts),
        Err(Error::ObjectNotFound(9))
    ));
}

#[test]
fn zeroing_delete_of_primary_partition() {
    let Some(dir) = corpus_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("x.sif");
    std::fs::copy(dir.join("two-groups.sif"), &work).unwrap();
    let before = std::fs::metadata(&work).unwrap().len();
    let opts = DeleteOptions {
        zero: true,
        time: Some(1_700_000_000),
        ..Default::default()
    };
    delete_object(&work, 2, &opts).unwrap();
    let bytes = std::fs::read(&work).unwrap();
    assert_eq!(bytes.len() as u64, before);
    assert!(bytes[36864..40960].iter().all(|&b| b == 0));
    let img = Image::open(&work).unwrap();
    assert!(img.descriptor(2).is_none());
    assert_eq!(img.header().arch, Arch::Unknown);
    assert_eq!(img.header().raw_arch, *b"00\0");
    assert_eq!(img.header().descriptors_free, 46);
    assert_eq!(img.header().modified, 1_700_000_000);
    assert!(matches!(
        img.primary_partition(),
        Err(Error::NoPrimaryPartition)
    ));
    assert!(img
        .descriptor(3)
        .unwrap()
        .is_partition_of_type(PartType::System));
}
