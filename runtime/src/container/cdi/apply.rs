//! A container's devices, decided once for the Slurm helper and for
//! `sifrun exec`: GPUs through CDI when the node has a spec of their kind,
//! through sifrun's own driver list otherwise, plus the CDI devices asked
//! for by name; then applied to the container's spec.

use super::{gpu_names, Edits, QualifiedName, Registry};
use crate::container::gpu::{self, DriverList, GpuPlan, GpuSelection};
use crate::container::hooks::{Protocol, RootHook};
use crate::container::mount::rootfs::{BindMount, ContainerSpec};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What devices bring into a container.
#[derive(Debug, Default)]
pub struct DevicePlan {
    /// sifrun's own passthrough: GPUs without a CDI spec, RDMA devices.
    pub gpu: GpuPlan,
    /// The edits of the CDI devices: the GPUs, when the node has a spec
    /// of their kind, and the devices asked for by name.
    pub cdi: Edits,
}

/// The plan for GPUs `selection`, CDI specs in `dirs` (none: CDI off),
/// further CDI devices `wanted`, the built-in `driver` list for GPUs
/// without a spec, and the node's RDMA devices when `rdma`.
///
/// A spec of the GPUs' kind that lacks one of them is an error (a stale
/// spec), not a quiet fallback to the built-in list.
pub fn plan(
    selection: &GpuSelection,
    dirs: &[PathBuf],
    wanted: &[QualifiedName],
    driver: Option<&DriverList>,
    rdma: bool,
) -> Result<DevicePlan> {
    let numbers = selection.numbers();
    if dirs.is_empty() || (numbers.is_empty() && wanted.is_empty()) {
        if !wanted.is_empty() {
            return Err(Error::usage(
                "CDI devices were asked for, but this node reads no CDI specs",
            ));
        }
        return Ok(DevicePlan {
            gpu: gpu::passthrough(selection, driver, rdma),
            cdi: Edits::default(),
        });
    }
    let registry = Registry::load(dirs)?;
    let gpus = gpu_names(Path::new("/dev"), &numbers);
    let by_cdi = !gpus.is_empty()
        && gpus.len() == numbers.len()
        && gpus.iter().all(|n| registry.has_kind(&n.kind));
    let mut names = wanted.to_vec();
    let gpu = if by_cdi {
        // To the log (the Slurm plugin logs the helper's stderr).
        eprintln!(
            "GPUs {} through CDI",
            gpus.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        names.splice(0..0, gpus);
        gpu::passthrough(&GpuSelection::None, driver, rdma)
    } else {
        gpu::passthrough(selection, driver, rdma)
    };
    Ok(DevicePlan {
        gpu,
        cdi: registry.edits_for(&names)?,
    })
}

impl DevicePlan {
    /// Puts the plan into `spec`: device nodes, driver files, the CDI
    /// devices' binds (after the binds `spec` has) and hooks (each a
    /// program nobody but root could have changed). Returns the variables
    /// to set in the container (the CDI devices') and those to append to
    /// (driver directories on `PATH` and `LD_LIBRARY_PATH`).
    pub fn apply(self, spec: &mut ContainerSpec) -> Result<AppliedEnv> {
        let append = self.gpu.env_append();
        spec.devices = self.gpu.devices.iter().map(|d| d.path.clone()).collect();
        spec.host_files = self.gpu.files;
        spec.device_binds = self
            .cdi
            .device_nodes
            .iter()
            .map(|d| (d.host.clone(), d.container.clone()))
            .collect();
        for m in &self.cdi.mounts {
            // The admin's spec names it: resolved as root, like default_binds.
            let source = std::fs::canonicalize(&m.host)
                .map_err(|e| Error::usage(format!("CDI mount {}: {e}", m.host.display())))?;
            spec.binds.push(BindMount {
                source,
                destination: m.container.clone(),
                read_only: m.read_only,
            });
        }
        for h in &self.cdi.hooks {
            // Run as root: only a program nobody else could have changed.
            crate::node::trusted::check_program(&h.path)
                .map_err(|why| Error::usage(format!("CDI hook {}: {why}", h.path.display())))?;
            spec.root_hooks.push(RootHook {
                label: format!("CDI hook {}", h.path.display()),
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                timeout: h.timeout,
                protocol: Protocol::Oci,
            });
        }
        Ok(AppliedEnv {
            set: self.cdi.env,
            append,
        })
    }
}

/// The variables a [`DevicePlan`] gives the container.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppliedEnv {
    /// Set (over the image's): the CDI devices' variables.
    pub set: Vec<(String, String)>,
    /// `(variable, directory)` appended: driver directories.
    pub append: Vec<(String, String)>,
}
