//! GPU (and RDMA) passthrough: what of the host a step's GPU allocation
//! brings into its container.
//!
//! * [`devices`]: the device nodes: the vendor's control devices plus the
//!   GPUs Slurm allocated to the step on this node (`SLURM_STEP_GPUS`),
//!   InfiniBand/RDMA devices when the node has them;
//! * [`libs`]: the host driver's user-space libraries and tools, found in
//!   the `ldconfig` cache from an admin-editable list, bound under
//!   [`GPU_LIB_DIR`] / [`GPU_BIN_DIR`] (added to `LD_LIBRARY_PATH` / `PATH`);
//!   the image itself is never written.
//!
//! Which GPU each *task* uses stays Slurm's business: every task keeps the
//! `CUDA_VISIBLE_DEVICES` Slurm gave it; the container holds the union of
//! the step's GPUs on the node. Isolation between jobs is the device cgroup
//! Slurm applies (`ConstrainDevices=yes`): a device node in the container
//! is no more usable than the same node on the host.

pub mod devices;
pub mod libs;

use std::path::PathBuf;

pub use devices::{allocated_devices, rdma_devices, DeviceNode};
pub use libs::{
    find_driver_files, parse_ldconfig, DriverFiles, DEFAULT_BINARIES, DEFAULT_LIBRARIES,
};

/// Container directory holding the host's driver libraries.
pub const GPU_LIB_DIR: &str = "/.sifrun/gpu/lib";
/// Container directory holding the host's driver tools (`nvidia-smi`, ...).
pub const GPU_BIN_DIR: &str = "/.sifrun/gpu/bin";

/// Everything to bring in for one step on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuPlan {
    /// Device nodes, bound at the same path.
    pub devices: Vec<DeviceNode>,
    /// `(host file, container path)` read-only binds of driver files.
    pub files: Vec<(PathBuf, PathBuf)>,
}

impl GpuPlan {
    /// True when nothing is to be passed through.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.files.is_empty()
    }

    /// Whether the plan binds driver libraries (the task environment then
    /// needs [`GPU_LIB_DIR`] on `LD_LIBRARY_PATH`).
    pub fn has_libraries(&self) -> bool {
        self.files.iter().any(|(_, c)| c.starts_with(GPU_LIB_DIR))
    }

    /// Whether the plan binds driver tools (then [`GPU_BIN_DIR`] goes on `PATH`).
    pub fn has_binaries(&self) -> bool {
        self.files.iter().any(|(_, c)| c.starts_with(GPU_BIN_DIR))
    }

    /// `(variable, directory)` each process in the container needs appended
    /// to its environment for the files this plan binds.
    pub fn env_append(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if self.has_libraries() {
            env.push(("LD_LIBRARY_PATH".to_string(), GPU_LIB_DIR.to_string()));
        }
        if self.has_binaries() {
            env.push(("PATH".to_string(), GPU_BIN_DIR.to_string()));
        }
        env
    }
}

/// Read-only binds of the driver files `found` into [`GPU_LIB_DIR`] and
/// [`GPU_BIN_DIR`], as (host file, container path).
fn driver_binds(found: &DriverFiles) -> Vec<(PathBuf, PathBuf)> {
    let into = |dir: &str, files: &[PathBuf]| -> Vec<(PathBuf, PathBuf)> {
        files
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    PathBuf::from(dir).join(f.file_name().unwrap_or_default()),
                )
            })
            .collect()
    };
    let mut binds = into(GPU_LIB_DIR, &found.libraries);
    binds.extend(into(GPU_BIN_DIR, &found.binaries));
    binds
}

/// Which GPUs a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GpuSelection {
    /// None (no device, no driver file).
    #[default]
    None,
    /// These device numbers (Slurm's `SLURM_STEP_GPUS`, `exec --gpus 0,1`).
    Numbers(Vec<u32>),
    /// Every GPU of the machine (`sifrun exec --gpus all`).
    All,
}

impl GpuSelection {
    /// Parses `all`, `none` or a comma-separated list of numbers.
    pub fn parse(text: &str) -> crate::Result<Self> {
        match text.trim() {
            "all" => Ok(GpuSelection::All),
            "none" | "" => Ok(GpuSelection::None),
            list => {
                let numbers: Option<Vec<u32>> =
                    list.split(',').map(|n| n.trim().parse().ok()).collect();
                numbers.map(GpuSelection::Numbers).ok_or_else(|| {
                    crate::Error::usage(format!(
                        "--gpus {list}: expected all, none or GPU numbers like 0,1"
                    ))
                })
            }
        }
    }

    /// The device numbers, with `All` resolved against `/dev`.
    pub fn numbers(&self) -> Vec<u32> {
        match self {
            GpuSelection::None => Vec::new(),
            GpuSelection::Numbers(v) => v.clone(),
            GpuSelection::All => devices::all_gpu_numbers(std::path::Path::new("/dev")),
        }
    }
}

/// The admin's list of driver files (Apptainer's nvliblist.conf format:
/// one name per line, `#` comments; names containing `.so` are libraries,
/// others are tools). `None`: the built-in lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverList {
    pub libraries: Vec<String>,
    pub binaries: Vec<String>,
}

impl Default for DriverList {
    fn default() -> Self {
        DriverList {
            libraries: DEFAULT_LIBRARIES.iter().map(|s| s.to_string()).collect(),
            binaries: DEFAULT_BINARIES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl DriverList {
    /// Parses nvliblist.conf text; absolute data-file lines are ignored
    /// (sifrun binds libraries and tools only).
    pub fn parse(text: &str) -> Self {
        let mut list = DriverList {
            libraries: Vec::new(),
            binaries: Vec::new(),
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('/') {
                continue;
            }
            if line.contains(".so") {
                list.libraries.push(line.to_string());
            } else if !line.contains('/') {
                list.binaries.push(line.to_string());
            }
        }
        list
    }
}

/// Everything to pass through for `selection`: device nodes, plus (when
/// `driver` is given and an NVIDIA GPU is selected) the host driver files
/// from the ldconfig cache, plus RDMA devices when `rdma` and the node has
/// them.
pub fn passthrough(selection: &GpuSelection, driver: Option<&DriverList>, rdma: bool) -> GpuPlan {
    let dev = std::path::Path::new("/dev");
    let mut devices = allocated_devices(dev, &selection.numbers());
    // The ldconfig cache is read (a process) only for a container that
    // gets an NVIDIA GPU: every other step skips it.
    let has_nvidia = devices.iter().any(|d| d.vendor == devices::Vendor::Nvidia);
    let files = match driver.filter(|_| has_nvidia) {
        Some(list) => {
            let dirs: Vec<PathBuf> = libs::DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect();
            driver_binds(&find_driver_files(
                &libs::host_ldconfig_cache(),
                &list.libraries,
                &list.binaries,
                &dirs,
            ))
        }
        None => Vec::new(),
    };
    if rdma {
        devices.extend(rdma_devices(dev));
    }
    GpuPlan { devices, files }
}

/// Parses `SLURM_STEP_GPUS` (`"0,1"`, `""`) into GPU numbers; anything that
/// is not a small number is ignored (the value is Slurm's, but stay safe).
pub fn parse_step_gpus(value: &str) -> Vec<u32> {
    let mut out: Vec<u32> = value
        .split(',')
        .filter_map(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n < 4096)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The step's GPUs (`allocated`, from Slurm) narrowed by the job's
/// `NVIDIA_VISIBLE_DEVICES`, as the NVIDIA container toolkit reads it:
/// unset, empty or `all`: every allocated GPU; `none` or `void`: none (and
/// so no driver files); otherwise a comma-separated list of host GPU
/// indices, each of which must be allocated. It narrows, never widens: a
/// GPU outside the allocation is an error, as are names the toolkit takes
/// that this does not (UUIDs, MIG devices).
pub fn narrow_to_visible(allocated: &[u32], visible: Option<&str>) -> Result<Vec<u32>, String> {
    let value = visible.map(str::trim).unwrap_or("");
    if allocated.is_empty() {
        // Nothing to narrow: a step without GPUs is not refused over a
        // variable a module or profile left in the environment.
        return Ok(Vec::new());
    }
    match value {
        "" | "all" => return Ok(allocated.to_vec()),
        "none" | "void" => return Ok(Vec::new()),
        _ => {}
    }
    let mut chosen = Vec::new();
    for item in value.split(',').map(str::trim) {
        let index: u32 = item.parse().map_err(|_| {
            format!(
                "NVIDIA_VISIBLE_DEVICES={value}: {item:?} is not a GPU index (indices, all, none or void are taken)"
            )
        })?;
        if !allocated.contains(&index) {
            return Err(format!(
                "NVIDIA_VISIBLE_DEVICES={value}: GPU {index} is not in this step's allocation ({})",
                allocated
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if !chosen.contains(&index) {
            chosen.push(index);
        }
    }
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_visible_devices_narrows_and_never_widens() {
        let alloc = [1, 3];
        assert_eq!(narrow_to_visible(&alloc, None).unwrap(), [1, 3]);
        assert_eq!(narrow_to_visible(&alloc, Some("all")).unwrap(), [1, 3]);
        assert_eq!(
            narrow_to_visible(&alloc, Some("void")).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(
            narrow_to_visible(&alloc, Some("none")).unwrap(),
            Vec::<u32>::new()
        );
        assert_eq!(narrow_to_visible(&alloc, Some("3")).unwrap(), [3]);
        assert_eq!(narrow_to_visible(&alloc, Some("3,1,3")).unwrap(), [1, 3]);
        let e = narrow_to_visible(&alloc, Some("0")).unwrap_err();
        assert!(
            e.contains("GPU 0 is not in this step's allocation (1,3)"),
            "{e}"
        );
        assert!(narrow_to_visible(&alloc, Some("GPU-1234")).is_err());
        assert_eq!(
            narrow_to_visible(&[], Some("0")).unwrap(),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn step_gpus() {
        assert_eq!(parse_step_gpus("1,0,1"), vec![0, 1]);
        assert!(parse_step_gpus("").is_empty());
        assert_eq!(parse_step_gpus("3,x,../.."), vec![3]);
    }
}
