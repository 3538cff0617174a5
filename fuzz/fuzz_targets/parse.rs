//! Fuzzes the SIF loader and everything reachable from a loaded image:
//! metadata accessors, siftool renderings and bounded object reads.
#![no_main]

use std::io::{Cursor, Read, Seek, SeekFrom};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut img) = sif::Image::from_reader(Cursor::new(data)) else {
        return;
    };
    let _ = sif::display::render_header(img.header());
    let _ = sif::display::render_list(img.descriptors());
    let _ = img.primary_partition();
    let descriptors = img.descriptors().to_vec();
    for d in &descriptors {
        let _ = sif::display::render_info(d);
        let _ = d.partition();
        let _ = d.signature();
        let _ = d.crypto_message();
        let _ = d.sbom_format();
        let _ = d.oci_digest();
        let _ = img.group_min_id(d);
        let bytes = img
            .read_object(d, 1 << 20)
            .expect("validated object must be readable");
        assert_eq!(bytes.len() as u64, d.size);
        let mut r = img.object_reader(d).expect("own descriptor");
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).expect("bounded read");
        assert_eq!(buf, bytes);
        let _ = r.seek(SeekFrom::End(-1));
        let _ = r.seek(SeekFrom::Current(i64::MIN));
    }
});
