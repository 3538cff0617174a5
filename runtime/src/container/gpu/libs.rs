//! Finding the host GPU driver's user-space files.
//!
//! The driver's libraries must match the kernel module exactly, so they
//! come from the host, never from the image. They are found the way the
//! host's own loader finds them, in the `ldconfig` cache (`ldconfig -p`),
//! by name prefix from a list the admin can edit (like Apptainer's
//! nvliblist.conf), keeping only entries for this machine's ABI.

use std::path::PathBuf;

/// Driver libraries to look for (name prefixes, as in nvliblist.conf).
pub const DEFAULT_LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-opencl.so",
    "libnvidia-cfg.so",
    "libnvidia-allocator.so",
    "libnvidia-compiler.so",
    "libnvidia-fatbinaryloader.so",
    "libnvidia-encode.so",
    "libnvidia-opticalflow.so",
    "libnvcuvid.so",
    "libnvidia-eglcore.so",
    "libnvidia-glcore.so",
    "libnvidia-glsi.so",
    "libnvidia-tls.so",
    "libnvidia-glvkspirv.so",
    "libnvidia-rtcore.so",
    "libnvoptix.so",
    "libEGL_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libGLESv2_nvidia.so",
    "libGLX_nvidia.so",
];

/// Driver tools to look for on the host.
pub const DEFAULT_BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// Where driver tools are looked for (in order).
pub const DEFAULT_BIN_DIRS: &[&str] = &[
    "/usr/local/nvidia/bin",
    "/usr/bin",
    "/usr/local/bin",
    "/bin",
];

/// One `ldconfig -p` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The name the loader looks up (`libcuda.so.1`).
    pub name: String,
    /// The ABI tag (`libc6,x86-64`).
    pub abi: String,
    pub path: PathBuf,
}

/// Parses `ldconfig -p` output; lines it does not understand are skipped.
pub fn parse_ldconfig(text: &str) -> Vec<CacheEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, path) = line.trim().split_once(" => ")?;
            let (name, rest) = left.split_once(" (")?;
            let abi = rest.split(')').next()?;
            Some(CacheEntry {
                name: name.trim().to_string(),
                abi: abi.to_string(),
                path: PathBuf::from(path.trim()),
            })
        })
        .collect()
}

/// The ABI tag of this build in `ldconfig -p` terms.
fn native_abi() -> Option<&'static str> {
    if cfg!(target_arch = "x86_64") {
        Some("x86-64")
    } else if cfg!(target_arch = "aarch64") {
        Some("AArch64")
    } else if cfg!(target_arch = "powerpc64") {
        Some("64bit")
    } else {
        None
    }
}

/// The host driver files to bind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverFiles {
    /// One path per loader name (`libcuda.so.1`, `libcuda.so`), existing.
    pub libraries: Vec<PathBuf>,
    pub binaries: Vec<PathBuf>,
}

/// Picks, from the ldconfig `cache`, every entry of this machine's ABI
/// whose name starts with one of `wanted` (first entry per name wins, as
/// for the loader), and the first of `binaries` found in `bin_dirs`.
pub fn find_driver_files(
    cache: &[CacheEntry],
    wanted: &[String],
    binaries: &[String],
    bin_dirs: &[PathBuf],
) -> DriverFiles {
    let abi = native_abi();
    let mut names = std::collections::BTreeSet::new();
    let mut libraries = Vec::new();
    for entry in cache {
        let abi_ok = abi.is_none_or(|a| entry.abi.split(',').any(|t| t == a));
        let listed = wanted.iter().any(|w| entry.name.starts_with(w.as_str()));
        if abi_ok && listed && entry.path.exists() && names.insert(entry.name.clone()) {
            // The cache path's file name is the loader name; binding it
            // binds the file a host symlink points to, under that name.
            libraries.push(entry.path.clone());
        }
    }
    let binaries = binaries
        .iter()
        .filter_map(|b| bin_dirs.iter().map(|d| d.join(b)).find(|p| p.is_file()))
        .collect();
    DriverFiles {
        libraries,
        binaries,
    }
}

/// Runs `ldconfig -p` on the host (bounded output).
pub fn host_ldconfig_cache() -> Vec<CacheEntry> {
    for ldconfig in ["/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = std::process::Command::new(ldconfig)
            .arg("-p")
            .env_clear()
            .output()
        {
            if out.status.success() {
                return parse_ldconfig(&String::from_utf8_lossy(&out.stdout));
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldconfig_lines() {
        let text = "42 libs found in cache `/etc/ld.so.cache'\n\
            \tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1\n\
            \tlibcuda.so.1 (libc6) => /usr/lib/i386-linux-gnu/libcuda.so.1\n\
            \tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1\n\
            garbage\n";
        let e = parse_ldconfig(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "libcuda.so.1");
        assert_eq!(e[0].abi, "libc6,x86-64");
        assert_eq!(e[1].abi, "libc6");
    }

    /// A fake driver tree: the right ABI, the listed names, existing files,
    /// the first entry per name, tools from the first directory that has them.
    #[test]
    fn fake_library_tree() {
        let dir = tempfile::tempdir().unwrap();
        let lib64 = dir.path().join("lib64");
        let lib32 = dir.path().join("lib32");
        let bin = dir.path().join("bin");
        for d in [&lib64, &lib32, &bin] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(lib64.join("libcuda.so.550.54"), "elf").unwrap();
        std::os::unix::fs::symlink("libcuda.so.550.54", lib64.join("libcuda.so.1")).unwrap();
        std::fs::write(lib64.join("libnvidia-ml.so.1"), "elf").unwrap();
        std::fs::write(lib64.join("libz.so.1"), "elf").unwrap();
        std::fs::write(lib32.join("libcuda.so.1"), "elf").unwrap();
        std::fs::write(bin.join("nvidia-smi"), "#!/bin/sh\n").unwrap();
        let text = format!(
            "\tlibcuda.so.1 (libc6,x86-64) => {l64}/libcuda.so.1\n\
             \tlibcuda.so.1 (libc6) => {l32}/libcuda.so.1\n\
             \tlibnvidia-ml.so.1 (libc6,x86-64) => {l64}/libnvidia-ml.so.1\n\
             \tlibnvidia-ml.so.1 (libc6,x86-64) => /elsewhere/libnvidia-ml.so.1\n\
             \tlibnvidia-nvvm.so.4 (libc6,x86-64) => {l64}/missing.so.4\n\
             \tlibz.so.1 (libc6,x86-64) => {l64}/libz.so.1\n",
            l64 = lib64.display(),
            l32 = lib32.display()
        );
        let cache = parse_ldconfig(&text);
        let wanted: Vec<String> = DEFAULT_LIBRARIES.iter().map(|s| s.to_string()).collect();
        let bins: Vec<String> = DEFAULT_BINARIES.iter().map(|s| s.to_string()).collect();
        let found = find_driver_files(
            &cache,
            &wanted,
            &bins,
            &[dir.path().join("none"), bin.clone()],
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                found.libraries,
                vec![lib64.join("libcuda.so.1"), lib64.join("libnvidia-ml.so.1")],
                "x86-64 only, listed only, existing only, first per name"
            );
        }
        assert_eq!(found.binaries, vec![bin.join("nvidia-smi")]);
    }
}
