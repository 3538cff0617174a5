//! Hostile and malformed input: every case must produce its specific error,
//! never a panic or an allocation sized by an untrusted field. Also covers
//! the writer's input validation.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sif::{
    add_object, create, create_to_writer, Arch, CreateOptions, DataType, Error, FsType, Image,
    ObjectInput, PartType, DESCRIPTOR_SIZE,
};

// Layout of the base image: capacity 2, table at 4096..5266,
// object 1 (generic, 10 bytes) at 5266, object 2 (PrimSys partition,
// 100 bytes) aligned to 8192, file length 8292.
const TABLE: usize = 4096;
const OBJ1_OFFSET: i64 = 5266;
const OBJ2_OFFSET: i64 = 8192;
const FILE_LEN: usize = 8292;

// Header field offsets.
const H_VERSION: usize = 42;
const H_FREE: usize = 80;
const H_TOTAL: usize = 88;
const H_DESC_OFF: usize = 96;
const H_DESC_SIZE: usize = 104;
const H_DATA_OFF: usize = 112;

// Descriptor field offsets.
const D_TYPE: usize = 0;
const D_ID: usize = 5;
const D_OFFSET: usize = 17;
const D_SIZE: usize = 25;
const D_EXTRA: usize = 201;

fn base() -> Vec<u8> {
    let mut cur = Cursor::new(Vec::new());
    create_to_writer(
        &mut cur,
        vec![
            ObjectInput::new(DataType::Generic, b"0123456789"),
            ObjectInput::new(DataType::Partition, vec![0x5a; 100]).partition(
                FsType::Squashfs,
                PartType::PrimSys,
                Arch::Amd64,
            ),
        ],
        &CreateOptions {
            deterministic: true,
            descriptor_capacity: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let b = cur.into_inner();
    assert_eq!(b.len(), FILE_LEN);
    b
}

fn set_i64(b: &mut [u8], off: usize, v: i64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn set_i32(b: &mut [u8], off: usize, v: i32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn desc(slot: usize, field: usize) -> usize {
    TABLE + slot * DESCRIPTOR_SIZE + field
}

fn load(b: Vec<u8>) -> Result<Image<Cursor<Vec<u8>>>, Error> {
    Image::from_reader(Cursor::new(b))
}

#[test]
fn base_image_is_valid() {
    let img = load(base()).unwrap();
    assert_eq!(img.descriptors().len(), 2);
    assert_eq!(img.descriptor(1).unwrap().offset, OBJ1_OFFSET as u64);
    assert_eq!(img.descriptor(2).unwrap().offset, OBJ2_OFFSET as u64);
    assert_eq!(img.header().arch, Arch::Amd64);
    assert_eq!(img.primary_partition().unwrap().id, 2);
}

#[test]
fn empty_file() {
    assert!(matches!(
        load(Vec::new()),
        Err(Error::Truncated {
            what: "global header",
            needed: 128,
            available: 0
        })
    ));
}

#[test]
fn truncated_header() {
    let mut b = base();
    b.truncate(100);
    assert!(matches!(
        load(b),
        Err(Error::Truncated {
            what: "global header",
            available: 100,
            ..
        })
    ));
}

#[test]
fn wrong_magic() {
    let mut b = base();
    b[32] = b'X';
    assert!(matches!(load(b), Err(Error::BadMagic)));
}

#[test]
fn wrong_version() {
    let mut b = base();
    b[H_VERSION..H_VERSION + 3].copy_from_slice(b"02\0");
    match load(b) {
        Err(Error::UnsupportedVersion(v)) => assert_eq!(v, "02"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn negative_descriptor_total() {
    let mut b = base();
    set_i64(&mut b, H_TOTAL, -1);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "descriptors total",
            value: -1
        })
    ));
}

#[test]
fn absurd_descriptor_total() {
    let mut b = base();
    set_i64(&mut b, H_TOTAL, i64::MAX);
    set_i64(&mut b, H_FREE, 0);
    assert!(matches!(
        load(b),
        Err(Error::TooManyDescriptors {
            total: i64::MAX,
            ..
        })
    ));
}

#[test]
fn descriptor_table_beyond_eof() {
    let mut b = base();
    // 60000 slots pass the count limit but not the file length: must fail
    // before anything of that size is allocated.
    set_i64(&mut b, H_TOTAL, 60_000);
    set_i64(&mut b, H_DESC_SIZE, 60_000 * DESCRIPTOR_SIZE as i64);
    assert!(matches!(
        load(b),
        Err(Error::Truncated {
            what: "descriptor table",
            ..
        })
    ));
}

#[test]
fn file_cut_inside_descriptor_table() {
    let mut b = base();
    b.truncate(5000);
    assert!(matches!(
        load(b),
        Err(Error::Truncated {
            what: "descriptor table",
            needed: 5266,
            available: 5000
        })
    ));
}

#[test]
fn descriptor_size_smaller_than_table() {
    let mut b = base();
    set_i64(&mut b, H_DESC_SIZE, 100);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "descriptors size",
            value: 100
        })
    ));
}

#[test]
fn descriptor_table_inside_header() {
    let mut b = base();
    set_i64(&mut b, H_DESC_OFF, 64);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "descriptors offset",
            value: 64
        })
    ));
}

#[test]
fn negative_descriptor_offset() {
    let mut b = base();
    set_i64(&mut b, H_DESC_OFF, -4096);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "descriptors offset",
            ..
        })
    ));
}

#[test]
fn huge_descriptor_offset() {
    let mut b = base();
    set_i64(&mut b, H_DESC_OFF, i64::MAX);
    assert!(matches!(
        load(b),
        Err(Error::Truncated {
            what: "descriptor table",
            ..
        })
    ));
}

#[test]
fn more_free_than_total() {
    let mut b = base();
    set_i64(&mut b, H_FREE, 3);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "descriptors free",
            value: 3
        })
    ));
}

#[test]
fn negative_data_offset() {
    let mut b = base();
    set_i64(&mut b, H_DATA_OFF, -1);
    assert!(matches!(
        load(b),
        Err(Error::InvalidHeaderField {
            field: "data offset",
            value: -1
        })
    ));
}

#[test]
fn object_beyond_eof() {
    let mut b = base();
    b.truncate(8200);
    assert!(matches!(
        load(b),
        Err(Error::ObjectOutOfBounds {
            id: 2,
            offset: 8192,
            size: 100,
            file_len: 8200
        })
    ));
}

#[test]
fn object_size_overflows() {
    let mut b = base();
    set_i64(&mut b, desc(1, D_OFFSET), i64::MAX);
    set_i64(&mut b, desc(1, D_SIZE), i64::MAX);
    assert!(matches!(
        load(b),
        Err(Error::ObjectOutOfBounds { id: 2, .. })
    ));
}

#[test]
fn negative_object_offset() {
    let mut b = base();
    set_i64(&mut b, desc(0, D_OFFSET), -5);
    assert!(matches!(
        load(b),
        Err(Error::NegativeObjectField {
            id: 1,
            field: "offset",
            value: -5
        })
    ));
}

#[test]
fn negative_object_size() {
    let mut b = base();
    set_i64(&mut b, desc(0, D_SIZE), -1);
    assert!(matches!(
        load(b),
        Err(Error::NegativeObjectField {
            id: 1,
            field: "size",
            value: -1
        })
    ));
}

#[test]
fn overlapping_objects() {
    let mut b = base();
    set_i64(&mut b, desc(1, D_OFFSET), OBJ1_OFFSET + 5);
    assert!(matches!(
        load(b),
        Err(Error::ObjectsOverlap { id: 2, other: 1 })
    ));
}

#[test]
fn object_overlapping_descriptor_table() {
    let mut b = base();
    set_i64(&mut b, desc(0, D_OFFSET), 4200);
    assert!(matches!(
        load(b),
        Err(Error::ObjectOverlapsMetadata {
            id: 1,
            offset: 4200,
            metadata_end: 5266
        })
    ));
}

#[test]
fn object_overlapping_header() {
    let mut b = base();
    set_i64(&mut b, desc(0, D_OFFSET), 0);
    assert!(matches!(
        load(b),
        Err(Error::ObjectOverlapsMetadata {
            id: 1,
            offset: 0,
            ..
        })
    ));
}

#[test]
fn used_slot_with_id_zero() {
    let mut b = base();
    set_i32(&mut b, desc(1, D_ID), 0);
    assert!(matches!(load(b), Err(Error::InvalidObjectId { slot: 1 })));
}

#[test]
fn duplicate_object_ids() {
    let mut b = base();
    set_i32(&mut b, desc(1, D_ID), 1);
    assert!(matches!(load(b), Err(Error::DuplicateObjectId { id: 1 })));
}

#[test]
fn unknown_data_type_still_loads() {
    let mut b = base();
    set_i32(&mut b, desc(0, D_TYPE), 0x7777);
    let img = load(b).unwrap();
    let d = img.descriptor(1).unwrap();
    assert_eq!(d.data_type, DataType::Unknown(0x7777));
    assert_eq!(d.data_type.to_raw(), 0x7777);
    assert!(sif::display::render_list(img.descriptors()).contains("|Unknown\n"));
}

#[test]
fn unknown_partition_codes_still_load() {
    let mut b = base();
    set_i32(&mut b, desc(1, D_EXTRA), 99);
    b[desc(1, D_EXTRA + 8)..desc(1, D_EXTRA + 11)].copy_from_slice(b"77\0");
    let img = load(b).unwrap();
    let p = img.descriptor(2).unwrap().partition().unwrap();
    assert_eq!(p.fs_type, FsType::Unknown(99));
    assert_eq!(p.arch, Arch::Unknown);
    assert!(sif::display::render_info(img.descriptor(2).unwrap()).contains("Unknown"));
}

#[test]
fn two_primary_partitions() {
    let mut b = base();
    set_i32(&mut b, desc(0, D_TYPE), DataType::Partition.to_raw());
    set_i32(&mut b, desc(0, D_EXTRA), 1);
    set_i32(&mut b, desc(0, D_EXTRA + 4), 2);
    let img = load(b).unwrap();
    assert!(matches!(
        img.primary_partition(),
        Err(Error::MultiplePrimaryPartitions {
            first: 1,
            second: 2
        })
    ));
}

#[test]
fn foreign_descriptor_is_refused() {
    let mut img = load(base()).unwrap();
    let mut d = img.descriptor(1).unwrap().clone();
    d.size = 1 << 40;
    assert!(matches!(
        img.object_reader(&d),
        Err(Error::ObjectNotFound(1))
    ));
    assert!(matches!(
        img.read_object(&d, u64::MAX),
        Err(Error::ObjectNotFound(1))
    ));
}

#[test]
fn read_object_respects_limit() {
    let mut img = load(base()).unwrap();
    let d = img.descriptor(2).unwrap().clone();
    assert!(matches!(
        img.read_object(&d, 99),
        Err(Error::ObjectTooLarge {
            id: 2,
            size: 100,
            max: 99
        })
    ));
    assert_eq!(img.read_object(&d, 100).unwrap(), vec![0x5a; 100]);
}

#[test]
fn metadata_accessor_on_wrong_type() {
    let img = load(base()).unwrap();
    assert!(matches!(
        img.descriptor(1).unwrap().partition(),
        Err(Error::WrongDataType {
            id: 1,
            expected: DataType::Partition,
            actual: DataType::Generic
        })
    ));
    assert!(matches!(
        img.descriptor(2).unwrap().oci_digest(),
        Err(Error::WrongDataType { id: 2, .. })
    ));
}

#[test]
fn error_messages_are_single_lower_case_lines_with_ids() {
    let mut b = base();
    b.truncate(8200);
    let msg = load(b).unwrap_err().to_string();
    assert!(msg.contains("object 2"), "{msg}");
    assert!(!msg.contains('\n'));
    assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
}

fn create_err(objects: Vec<ObjectInput>, opts: &CreateOptions) -> Error {
    create_to_writer(&mut Cursor::new(Vec::new()), objects, opts).unwrap_err()
}

#[test]
fn launch_script_too_long() {
    let opts = CreateOptions {
        launch_script: Some("x".repeat(32)),
        ..Default::default()
    };
    assert!(matches!(
        create_err(vec![], &opts),
        Error::LaunchScriptTooLong { len: 32 }
    ));
}

#[test]
fn object_name_too_long() {
    let o = ObjectInput::new(DataType::Generic, b"x").name(&"n".repeat(129));
    assert!(matches!(
        create_err(vec![o], &CreateOptions::default()),
        Error::NameTooLong { len: 129 }
    ));
}

#[test]
fn group_and_link_zero_are_invalid() {
    let o = ObjectInput::new(DataType::Generic, b"x").group(0);
    assert!(matches!(
        create_err(vec![o], &CreateOptions::default()),
        Error::InvalidGroupId
    ));
    let o = ObjectInput::new(DataType::Generic, b"x").link_object(0);
    assert!(matches!(
        create_err(vec![o], &CreateOptions::default()),
        Error::InvalidLinkId
    ));
}

#[test]
fn metadata_for_wrong_type() {
    let o = ObjectInput::new(DataType::Generic, b"x").sbom(sif::SbomFormat::SpdxJson);
    assert!(matches!(
        create_err(vec![o], &CreateOptions::default()),
        Error::MetadataTypeMismatch {
            expected: DataType::Sbom,
            actual: DataType::Generic
        }
    ));
}

#[test]
fn partition_with_unknown_arch() {
    let o = ObjectInput::new(DataType::Partition, b"x").partition(
        FsType::Squashfs,
        PartType::System,
        Arch::Unknown,
    );
    assert!(matches!(
        create_err(vec![o], &CreateOptions::default()),
        Error::UnknownArchitecture
    ));
}

#[test]
fn capacity_limits() {
    let opts = CreateOptions {
        descriptor_capacity: Some(1),
        ..Default::default()
    };
    let objs = vec![
        ObjectInput::new(DataType::Generic, b"a"),
        ObjectInput::new(DataType::Generic, b"b"),
    ];
    assert!(matches!(
        create_err(objs, &opts),
        Error::InsufficientCapacity { capacity: 1 }
    ));
    let opts = CreateOptions {
        descriptor_capacity: Some(-1),
        ..Default::default()
    };
    assert!(matches!(
        create_err(vec![], &opts),
        Error::InvalidCapacity(-1)
    ));
}

fn primsys(arch: Arch) -> ObjectInput {
    ObjectInput::new(DataType::Partition, b"fs").partition(
        FsType::Squashfs,
        PartType::PrimSys,
        arch,
    )
}

#[test]
fn second_primary_partition_is_refused() {
    assert!(matches!(
        create_err(
            vec![primsys(Arch::Amd64), primsys(Arch::Arm64)],
            &CreateOptions::default()
        ),
        Error::PrimaryPartitionExists
    ));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a.sif");
    create(&path, vec![primsys(Arch::Amd64)], &CreateOptions::default()).unwrap();
    assert!(matches!(
        add_object(&path, primsys(Arch::Arm64), &Default::default()),
        Err(Error::PrimaryPartitionExists)
    ));
}

#[test]
fn add_to_full_image() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("full.sif");
    let opts = CreateOptions {
        descriptor_capacity: Some(1),
        ..Default::default()
    };
    create(
        &path,
        vec![ObjectInput::new(DataType::Generic, b"a")],
        &opts,
    )
    .unwrap();
    assert!(matches!(
        add_object(
            &path,
            ObjectInput::new(DataType::Generic, b"b"),
            &Default::default()
        ),
        Err(Error::InsufficientCapacity { capacity: 1 })
    ));
}

#[test]
fn failed_create_removes_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gone.sif");
    let missing = tmp.path().join("does-not-exist");
    let o = ObjectInput::new(DataType::Partition, missing.as_path()).partition(
        FsType::Squashfs,
        PartType::PrimSys,
        Arch::Amd64,
    );
    assert!(matches!(
        create(&path, vec![o], &CreateOptions::default()),
        Err(Error::Io(_))
    ));
    assert!(!path.exists());
}

#[test]
fn streamed_partition_and_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.squashfs");
    let len: u64 = (20 << 20) + 123;
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let calls = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let (c, l) = (calls.clone(), last.clone());
    let opts = CreateOptions {
        progress: Some(Arc::new(move |written, total| {
            assert_eq!(total, len);
            c.fetch_add(1, Ordering::Relaxed);
            l.store(written, Ordering::Relaxed);
        })),
        ..Default::default()
    };
    let path = tmp.path().join("big.sif");
    let part = ObjectInput::new(DataType::Partition, src.as_path()).partition(
        FsType::Squashfs,
        PartType::PrimSys,
        Arch::host(),
    );
    create(&path, vec![part], &opts).unwrap();
    assert_eq!(last.load(Ordering::Relaxed), len);
    assert!(
        calls.load(Ordering::Relaxed) >= 3,
        "progress reported per chunk"
    );
    let img = Image::open(&path).unwrap();
    let d = img.primary_partition().unwrap();
    assert_eq!((d.offset % 4096, d.size), (0, len));
    assert_eq!(img.header().arch, Arch::host());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), d.offset + len);
}
