//! Replays saved fuzzing inputs (tests/fuzz_regressions/*.bin): each must be
//! rejected with an error, and nothing reachable from it may panic.

use std::io::{Cursor, Read};
use std::path::Path;

#[test]
fn saved_fuzz_inputs_are_rejected_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        match sif::Image::from_reader(Cursor::new(data)) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    !msg.is_empty() && !msg.contains('\n'),
                    "{}: {msg}",
                    path.display()
                );
            }
            Ok(mut img) => {
                // Exercise what the fuzz target exercises before failing, so a
                // regression shows up as the panic it used to be.
                let _ = sif::display::render_header(img.header());
                let _ = sif::display::render_list(img.descriptors());
                for d in img.descriptors().to_vec() {
                    let _ = sif::display::render_info(&d);
                    let mut buf = Vec::new();
                    img.object_reader(&d)
                        .unwrap()
                        .read_to_end(&mut buf)
                        .unwrap();
                }
                panic!("{} unexpectedly loaded", path.display());
            }
        }
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
