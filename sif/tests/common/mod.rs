//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// Builds the Go checker once per test binary; `None` when the toolchain or
/// sources are missing.
pub fn checker() -> Option<&'static Path> {
    static CHECKER: OnceLock<Result<(tempfile::TempDir, PathBuf), String>> = OnceLock::new();
    let built = CHECKER.get_or_init(|| {
        let skip = |why: String| Err(why);
        if !Path::new(SYLABS_SIF).join("pkg/sif/sif.go").is_file() {
            return skip(format!(
                "{SYLABS_SIF} missing (install golang-github-sylabs-sif-dev)"
            ));
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src/sifchecker");
        std::fs::create_dir_all(&src).unwrap();
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go-checker");
        // The go.mod makes Go's GOPATH mode resolve the /v2/ import path to
        // the Debian source tree ("minimal module compatibility").
        for entry in std::fs::read_dir(&here).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "go" || e == "mod") {
                std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
            }
        }
        let bin = tmp.path().join("go-checker");
        let gopath = format!("{}:/usr/share/gocode", tmp.path().display());
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&bin)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOCACHE", tmp.path().join("cache"))
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .output();
        match out {
            Err(e) => skip(format!("cannot run `go` ({e}); install golang-go")),
            Ok(o) if !o.status.success() => {
                panic!(
                    "go build of the checker failed:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            }
            Ok(_) => Ok((tmp, bin)),
        }
    });
    match built {
        Ok((_, bin)) => Some(bin.as_path()),
        Err(why) => {
            if std::env::var_os("SIF_REQUIRE_GO").is_some_and(|v| v == "1") {
                panic!("SIF_REQUIRE_GO=1 but the Go checker is unavailable: {why}");
            }
            eprintln!("SKIPPED: Go interoperability test: {why}");
            None
        }
    }
}

pub fn run_checker(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "go-checker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
