//! Device nodes for a GPU allocation.
//!
//! Slurm's `SLURM_STEP_GPUS` lists the allocated GPUs by device number (the
//! number in gres.conf's `File=`), so GPU `N` is `/dev/nvidiaN` (NVIDIA) or
//! `/dev/dri/renderDN` (AMD, whose gres files are render nodes). Each vendor
//! also has control devices every process using a GPU needs.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Whose device it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Nvidia,
    Amd,
    Rdma,
}

/// A character device to bind into the container at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path under the host's `/dev` (also the container path).
    pub path: PathBuf,
    pub vendor: Vendor,
}

/// NVIDIA devices every CUDA process opens, when present.
const NVIDIA_CONTROL: &[&str] = &["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];
/// Directory of NVIDIA capability devices (MIG), bound entry by entry.
const NVIDIA_CAPS_DIR: &str = "nvidia-caps";

/// The device nodes for GPUs `allocated` under `dev` (normally `/dev`):
/// nothing when nothing is allocated.
pub fn allocated_devices(dev: &Path, allocated: &[u32]) -> Vec<DeviceNode> {
    let mut nvidia = Vec::new();
    let mut amd = Vec::new();
    for n in allocated {
        let nv = dev.join(format!("nvidia{n}"));
        let render = dev.join(format!("dri/renderD{n}"));
        if is_char_device(&nv) {
            nvidia.push(nv);
        } else if is_char_device(&render) {
            amd.push(render);
        }
    }
    let mut out = Vec::new();
    if !nvidia.is_empty() {
        for name in NVIDIA_CONTROL {
            push_if_char(&mut out, dev.join(name), Vendor::Nvidia);
        }
        for cap in sorted_entries(&dev.join(NVIDIA_CAPS_DIR)) {
            push_if_char(&mut out, cap, Vendor::Nvidia);
        }
        for path in nvidia {
            out.push(DeviceNode {
                path,
                vendor: Vendor::Nvidia,
            });
        }
    }
    if !amd.is_empty() {
        push_if_char(&mut out, dev.join("kfd"), Vendor::Amd);
        for path in amd {
            out.push(DeviceNode {
                path,
                vendor: Vendor::Amd,
            });
        }
    }
    out
}

/// Every NVIDIA GPU number present under `dev` (`/dev/nvidiaN`).
pub fn all_gpu_numbers(dev: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = sorted_entries(dev)
        .iter()
        .filter(|p| is_char_device(p))
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .strip_prefix("nvidia")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// InfiniBand/RDMA devices (`/dev/infiniband/*`: uverbs, rdma_cm, umad)
/// when the node has them. Not tied to a Slurm allocation: like the
/// network, they are the node's.
pub fn rdma_devices(dev: &Path) -> Vec<DeviceNode> {
    let mut out = Vec::new();
    for entry in sorted_entries(&dev.join("infiniband")) {
        push_if_char(&mut out, entry, Vendor::Rdma);
    }
    out
}

fn push_if_char(out: &mut Vec<DeviceNode>, path: PathBuf, vendor: Vendor) {
    if is_char_device(&path) {
        out.push(DeviceNode { path, vendor });
    }
}

fn is_char_device(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /dev with real character devices needs root (mknod); regular
    /// files must be ignored, which needs nothing.
    #[test]
    fn regular_files_are_not_devices() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvidia0"), "").unwrap();
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        assert!(allocated_devices(dir.path(), &[0]).is_empty());
        assert!(rdma_devices(dir.path()).is_empty());
    }

    #[test]
    fn allocation_maps_to_nodes_with_control_devices() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mk = |name: &str, minor: u64| {
            let p = d.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            nix::sys::stat::mknod(
                &p,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(195, minor),
            )
            .unwrap();
        };
        for (n, m) in [
            ("nvidia0", 0),
            ("nvidia1", 1),
            ("nvidiactl", 255),
            ("nvidia-uvm", 2),
        ] {
            mk(n, m);
        }
        mk("nvidia-caps/nvidia-cap1", 3);
        mk("infiniband/uverbs0", 4);
        mk("infiniband/rdma_cm", 5);
        let names = |v: Vec<DeviceNode>| -> Vec<String> {
            v.iter()
                .map(|n| n.path.strip_prefix(d).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            names(allocated_devices(d, &[1])),
            [
                "nvidiactl",
                "nvidia-uvm",
                "nvidia-caps/nvidia-cap1",
                "nvidia1"
            ]
        );
        assert!(allocated_devices(d, &[]).is_empty());
        assert!(
            allocated_devices(d, &[7]).is_empty(),
            "no such GPU: nothing"
        );
        assert_eq!(
            names(rdma_devices(d)),
            ["infiniband/rdma_cm", "infiniband/uverbs0"]
        );
    }
}
