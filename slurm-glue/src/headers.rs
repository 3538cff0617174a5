//! The Slurm release a plugin is built against, for build scripts.
//!
//! The version comes from the `slurm/slurm_version.h` next to the headers
//! the plugin is compiled with: the `-I` directories of
//! `BINDGEN_EXTRA_CLANG_ARGS` (where `ci/slurm-versions` points at another
//! release's headers), then the system include directories.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The oldest Slurm sifrun supports (major.minor as 0xMMmm00).
pub const OLDEST_SUPPORTED: u32 = 0x160500;

/// The headers found: where, and Slurm's major.minor (0xMMmm00).
#[derive(Debug, Clone)]
pub struct SlurmHeaders {
    pub version_header: PathBuf,
    /// `SLURM_VERSION_NUMBER`: 0xMMmmuu (major, minor, micro).
    pub number: u32,
    /// Its major.minor, 0xMMmm00.
    pub major_minor: u32,
}

/// Finds the headers and checks the release is supported; the error is a
/// sentence for a build script's panic, prefixed with `who`.
pub fn find(who: &str) -> Result<SlurmHeaders, String> {
    let header = find_header().map_err(|searched| {
        format!(
            "{who}: slurm/slurm_version.h not found (searched {searched}); install Slurm's \
             development headers (Debian: libslurm-dev) or point \
             BINDGEN_EXTRA_CLANG_ARGS at them with -I"
        )
    })?;
    let text = fs::read_to_string(&header)
        .map_err(|e| format!("{who}: reading {}: {e}", header.display()))?;
    let number = version_number(&text)
        .ok_or_else(|| format!("{who}: no SLURM_VERSION_NUMBER in {}", header.display()))?;
    let major_minor = number & 0xffff00;
    if major_minor < OLDEST_SUPPORTED {
        return Err(format!(
            "{who}: Slurm {}.{:02} ({}) is older than the oldest supported, 22.05",
            major_minor >> 16,
            (major_minor >> 8) & 0xff,
            header.display()
        ));
    }
    Ok(SlurmHeaders {
        version_header: header,
        number,
        major_minor,
    })
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
pub fn version_number(header: &str) -> Option<u32> {
    header.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("#define")?.trim_start();
        let value = rest.strip_prefix("SLURM_VERSION_NUMBER")?.trim();
        u32::from_str_radix(value.strip_prefix("0x")?, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers() {
        let h = "#ifndef X\n#define SLURM_VERSION_NUMBER 0x1a0505\n#define SLURM_VERSION_MAJOR(a) ...\n";
        assert_eq!(version_number(h), Some(0x1a0505));
        assert_eq!(
            version_number("#define SLURM_VERSION_STRING \"26.05.5\"\n"),
            None
        );
    }
}
