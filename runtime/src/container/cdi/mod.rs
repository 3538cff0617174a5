//! CDI (Container Device Interface): devices described by their vendor's
//! spec files instead of sifrun's own lists.
//!
//! * [`spec`]: one spec file, parsed and checked;
//! * [`registry`]: the node's spec directories, trusted only when nobody
//!   but root could have written them, and the edits for a set of device
//!   names.
//!
//! The helper maps the step's GPUs (Slurm's allocation) to CDI names with
//! [`gpu_names`], and applies the edits of those devices, and of those the
//! user asked for and the admin allows, to the container: device nodes,
//! binds, environment, and `createContainer`-style hooks run as root once
//! the root is built (see [`crate::container::hooks`]).

pub mod apply;
pub mod registry;
pub mod spec;

pub use apply::{plan, AppliedEnv, DevicePlan};
pub use registry::{QualifiedName, Registry};
pub use spec::{DeviceNodeEdit, Edits, HookEdit, MountEdit};

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// Where specs are looked for unless the admin says otherwise (the CDI
/// default, lowest priority first).
pub const DEFAULT_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// The CDI names of GPUs `numbers` under `dev` (normally `/dev`), as the
/// vendors' generators name them: `nvidia.com/gpu=N` for `/dev/nvidiaN`,
/// `amd.com/gpu=N` for the render node `/dev/dri/renderDN`. Numbers with
/// neither device are left out.
pub fn gpu_names(dev: &Path, numbers: &[u32]) -> Vec<QualifiedName> {
    let is_char = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.file_type().is_char_device())
            .unwrap_or(false)
    };
    numbers
        .iter()
        .filter_map(|n| {
            let kind = if is_char(&dev.join(format!("nvidia{n}"))) {
                "nvidia.com/gpu"
            } else if is_char(&dev.join(format!("dri/renderD{n}"))) {
                "amd.com/gpu"
            } else {
                return None;
            };
            Some(QualifiedName {
                kind: kind.to_string(),
                device: n.to_string(),
            })
        })
        .collect()
}

/// Whether `name` is allowed by one of the admin's `patterns`: a full
/// name, or `vendor.com/class=*` for every device of a kind.
pub fn allowed(name: &QualifiedName, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix("=*") {
        Some(kind) => kind == name.kind,
        None => *p == name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admins_patterns_allow_names_or_whole_kinds() {
        let name = QualifiedName::parse("vendor.example/nic=mlx5_0").unwrap();
        assert!(allowed(&name, &["vendor.example/nic=*".into()]));
        assert!(allowed(&name, &["vendor.example/nic=mlx5_0".into()]));
        assert!(!allowed(&name, &["vendor.example/nic=mlx5_1".into()]));
        assert!(!allowed(
            &name,
            &["vendor.example/gpu=*".into(), "*".into()]
        ));
    }

    #[test]
    fn gpus_without_device_nodes_have_no_cdi_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(gpu_names(dir.path(), &[0, 1]).is_empty());
    }
}
