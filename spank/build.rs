//! Declares the Slurm version the plugin is built against.
//!
//! slurmstepd loads a SPANK plugin only when its `plugin_version` has
//! slurmstepd's own major.minor, so the version cannot be fixed in the
//! source: it is read from the `slurm_version.h` next to the `spank.h` the
//! bindings are generated from (the `slurm-spank` crate runs bindgen over
//! `<slurm/spank.h>`, found on the same include path), and the
//! `SPANK_PLUGIN!` declaration is generated with it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The oldest Slurm sifrun supports (major.minor as 0xMMmm00).
const OLDEST_SUPPORTED: u32 = 0x160500;

fn main() {
    let header = find_header().unwrap_or_else(|searched| {
        panic!(
            "sifrun-spank: slurm/slurm_version.h not found (searched {searched}); install Slurm's \
             development headers (Debian: libslurm-dev) or point \
             BINDGEN_EXTRA_CLANG_ARGS at them with -I"
        )
    });
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=BINDGEN_EXTRA_CLANG_ARGS");
    let text = fs::read_to_string(&header)
        .unwrap_or_else(|e| panic!("sifrun-spank: reading {}: {e}", header.display()));
    let number = version_number(&text).unwrap_or_else(|| {
        panic!(
            "sifrun-spank: no SLURM_VERSION_NUMBER in {}",
            header.display()
        )
    });
    let major_minor = number & 0xffff00;
    if major_minor < OLDEST_SUPPORTED {
        panic!(
            "sifrun-spank: Slurm {}.{:02} ({}) is older than the oldest supported, 22.05",
            major_minor >> 16,
            (major_minor >> 8) & 0xff,
            header.display()
        );
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let code = format!(
        "/// Slurm major.minor this plugin is built for (0xMMmm00), from\n\
         /// `{}`.\n\
         pub const BUILT_FOR_SLURM: u32 = {major_minor:#08x};\n\
         SPANK_PLUGIN!(b\"sifrun\", {major_minor:#08x}, SifrunPlugin);\n",
        header.display()
    );
    fs::write(out.join("plugin_version.rs"), code).expect("writing plugin_version.rs");
}

/// `slurm/slurm_version.h` on the `-I` directories of
/// `BINDGEN_EXTRA_CLANG_ARGS`, then the system include directories.
fn find_header() -> Result<PathBuf, String> {
    let extra = env::var("BINDGEN_EXTRA_CLANG_ARGS").unwrap_or_default();
    let dirs: Vec<PathBuf> = extra
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("-I"))
        .map(PathBuf::from)
        .chain(["/usr/local/include", "/usr/include"].map(PathBuf::from))
        .collect();
    dirs.iter()
        .map(|d| d.join("slurm/slurm_version.h"))
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| {
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
}

/// The value of `#define SLURM_VERSION_NUMBER 0x160508`.
fn version_number(header: &str) -> Option<u32> {
    header.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define")?.trim_start();
        let value = rest.strip_prefix("SLURM_VERSION_NUMBER")?.trim();
        u32::from_str_radix(value.strip_prefix("0x")?, 16).ok()
    })
}
