//! `sifrun build` and `sifrun inspect`. Building needs no root, but the
//! tar/exec round trips do, so those parts skip without it.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sifrun-build-test-")
        .tempdir()
        .unwrap()
}

fn inspect_json(image: &std::path::Path) -> serde_json::Value {
    let out = run_sifrun(&["inspect", "--json", image.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("inspect --json output is JSON")
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tmp();
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let out_path = dir.path().join("x.sif");
    fs::write(&out_path, b"precious").unwrap();
    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "--force");
    assert_eq!(fs::read(&out_path).unwrap(), b"precious");

    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(fs::read(&out_path).unwrap(), b"precious");
    // One summary line, no leftovers next to the output.
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".sifrun")), "{names:?}");
}

#[test]
fn failed_build_leaves_nothing_behind() {
    let dir = tmp();
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let out_path = dir.path().join("x.sif");
    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--compressor",
        "no-such-compressor",
    ]);
    assert_one_line_error(&out, "mksquashfs failed");
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["rootfs".to_string()]);
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tmp();
    let out_path = dir.path().join("x.sif");
    let missing = dir.path().join("missing");
    let out = run_sifrun(&[
        "build",
        missing.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "does not exist");
    let junk = dir.path().join("junk.bin");
    fs::write(&junk, b"not a tar").unwrap();
    let out = run_sifrun(&[
        "build",
        junk.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "neither a directory nor a (compressed) tar archive");
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--label",
        "novalue",
    ]);
    assert_one_line_error(&out, "invalid label");
    assert!(!out_path.exists());
}

#[test]
fn deterministic_builds_are_identical() {
    let dir = tmp();
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let a = dir.path().join("a.sif");
    let b = dir.path().join("b.sif");
    for out_path in [&a, &b] {
        let out = sifrun_command()
            .args(["build", "--deterministic", "--label", "k=v"])
            .arg(&root)
            .arg("-o")
            .arg(out_path)
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        // Touch the source between builds: times must not leak in.
        filetime_bump(&root.join("opt/only-in-image.sh"));
    }
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let json = inspect_json(&a);
    assert_eq!(json["header"]["id"], "00000000-0000-0000-0000-000000000000");
}

fn filetime_bump(path: &std::path::Path) {
    let data = fs::read(path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(path, data).unwrap();
}

#[test]
fn labels_deffile_env_objects_and_inspect() {
    let dir = tmp();
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let def = dir.path().join("app.def");
    fs::write(&def, "Bootstrap: scratch\n").unwrap();
    let image = dir.path().join("x.sif");
    let out = run_sifrun(&[
        "build",
        root.to_str().unwrap(),
        "-o",
        image.to_str().unwrap(),
        "--deffile",
        def.to_str().unwrap(),
        "--label",
        "org.example.a=1",
        "--label",
        "b=two",
        "--env",
        "A=1",
        "--compressor",
        "gzip",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json = inspect_json(&image);
    assert_eq!(json["header"]["version"], "01");
    assert_eq!(json["header"]["arch"], sif::Arch::host().to_string());
    let objects = json["objects"].as_array().unwrap();
    let types: Vec<&str> = objects
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    for t in ["deffile", "labels", "envvar", "partition"] {
        assert!(types.contains(&t), "{types:?}");
    }
    let part = objects.iter().find(|o| o["type"] == "partition").unwrap();
    assert_eq!(part["partition"]["fstype"], "squashfs");
    assert_eq!(part["partition"]["parttype"], "primsys");
    assert_eq!(part["group"], 1);
    for key in ["id", "group", "link", "offset", "size", "name"] {
        assert!(part.get(key).is_some(), "missing {key}");
    }

    // The objects hold what was asked for.
    let mut img = sif::Image::open(&image).unwrap();
    let labels = img
        .find_by_type(sif::DataType::Labels)
        .next()
        .unwrap()
        .clone();
    let labels: serde_json::Value =
        serde_json::from_slice(&img.read_object(&labels, 4096).unwrap()).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"org.example.a": "1", "b": "two"})
    );
    let d = img
        .find_by_type(sif::DataType::Deffile)
        .next()
        .unwrap()
        .clone();
    assert_eq!(img.read_object(&d, 4096).unwrap(), b"Bootstrap: scratch\n");
    let e = img
        .find_by_type(sif::DataType::EnvVar)
        .next()
        .unwrap()
        .clone();
    assert_eq!(img.read_object(&e, 4096).unwrap(), b"A=1\n");

    // Human output mentions the partition.
    let out = run_sifrun(&["inspect", image.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Squashfs"), "{}", stdout(&out));
}

#[test]
fn inspect_errors() {
    let dir = tmp();
    let out = run_sifrun(&["inspect", dir.path().join("nope.sif").to_str().unwrap()]);
    assert_one_line_error(&out, "image not found");
    let junk = dir.path().join("junk.sif");
    fs::write(&junk, b"hello").unwrap();
    let out = run_sifrun(&["inspect", "--json", junk.to_str().unwrap()]);
    assert_one_line_error(&out, "not a valid SIF image");
}

/// tar input (plain and gzip) → image → run a file from it.
#[test]
fn tar_sources_plain_and_gzip() {
    let dir = tmp();
    let root = dir.path().join("rootfs");
    make_rootfs(&root);
    let tar = dir.path().join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("gzip").arg("-k").arg(&tar).status().unwrap();
    assert!(st.success());
    for (src, name) in [
        (tar.clone(), "plain.sif"),
        (dir.path().join("rootfs.tar.gz"), "gz.sif"),
    ] {
        let image = dir.path().join(name);
        let out = run_sifrun(&[
            "build",
            src.to_str().unwrap(),
            "-o",
            image.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}: {}", name, stderr(&out));
        if nix::unistd::geteuid().is_root() {
            let out = run_sifrun(&["exec", image.to_str().unwrap(), "/opt/only-in-image.sh"]);
            assert_eq!(stdout(&out), "only-in-image\n", "{}", stderr(&out));
        } else {
            eprintln!("skipped exec part: needs root");
        }
    }
}
