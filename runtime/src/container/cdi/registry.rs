//! The CDI specs of a node: every `*.json`, `*.yaml` and `*.yml` file in
//! the admin's spec directories (by default `/etc/cdi`, then
//! `/var/run/cdi`, where `nvidia-ctk cdi generate` and the toolkit's
//! refresh service write). A later directory's device replaces an earlier
//! one's of the same name, as in the CDI reference registry; two files of
//! one directory defining the same device are an error.
//!
//! Root applies what these files say (device nodes, binds, hooks it runs),
//! so a directory or file that anyone but root could have written is
//! refused, never skipped: a step must not quietly lose its GPU's setup.

use super::spec::{self, Edits, Spec};
use crate::error::{Error, Result};
use crate::node::trusted;
use std::path::{Path, PathBuf};

/// Largest spec file read.
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// The specs found, in priority order (lowest first).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    specs: Vec<(usize, Spec)>,
}

/// `vendor.com/class=name`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub kind: String,
    pub device: String,
}

impl QualifiedName {
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        let (kind, device) = name
            .split_once('=')
            .filter(|(k, d)| k.contains('/') && spec::is_device_name(d))
            .ok_or_else(|| format!("{name:?} is not a CDI device name (vendor.com/class=name)"))?;
        Ok(QualifiedName {
            kind: kind.to_string(),
            device: device.to_string(),
        })
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.device)
    }
}

impl Registry {
    /// Reads every spec of `dirs`; a directory that does not exist is
    /// skipped.
    pub fn load(dirs: &[PathBuf]) -> Result<Self> {
        let mut specs = Vec::new();
        for (priority, dir) in dirs.iter().enumerate() {
            if !dir.exists() {
                continue;
            }
            trusted::check_config_dir(dir).map_err(|why| {
                Error::usage(format!("CDI spec directory {}: {why}", dir.display()))
            })?;
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::system(format!("reading {}: {e}", dir.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("json" | "yaml" | "yml")
                    )
                })
                .collect();
            files.sort();
            for file in files {
                let spec = read_spec(&file)?;
                for (name, _) in &spec.devices {
                    let clash = specs.iter().find(|(p, s): &&(usize, Spec)| {
                        *p == priority
                            && s.kind == spec.kind
                            && s.devices.iter().any(|(n, _)| n == name)
                    });
                    if let Some((_, other)) = clash {
                        return Err(Error::usage(format!(
                            "CDI device {}={name} is defined in both {} and {}",
                            spec.kind,
                            other.file.display(),
                            file.display()
                        )));
                    }
                }
                specs.push((priority, spec));
            }
        }
        Ok(Registry { specs })
    }

    /// The spec and edits of device `name`, from the highest-priority spec
    /// that has it.
    pub fn device(&self, name: &QualifiedName) -> Option<(&Spec, &Edits)> {
        self.specs.iter().rev().find_map(|(_, s)| {
            (s.kind == name.kind)
                .then(|| s.devices.iter().find(|(n, _)| *n == name.device))
                .flatten()
                .map(|(_, e)| (s, e))
        })
    }

    /// The edits for `names`: each device's, and each spec's common edits
    /// once, in the order the devices are given. Device nodes and mounts
    /// are each applied once per container path.
    pub fn edits_for(&self, names: &[QualifiedName]) -> Result<Edits> {
        let mut out = Edits::default();
        let mut specs_used: Vec<&Path> = Vec::new();
        for name in names {
            let (spec, edits) = self.device(name).ok_or_else(|| {
                Error::usage(format!(
                    "no CDI device {name} in this node's specs{}",
                    self.kinds_line()
                ))
            })?;
            if !specs_used.contains(&spec.file.as_path()) {
                specs_used.push(&spec.file);
                out.extend(&spec.common);
            }
            out.extend(edits);
        }
        dedup_by(&mut out.device_nodes, |d| d.container.clone());
        dedup_by(&mut out.mounts, |m| m.container.clone());
        Ok(out)
    }

    /// Whether any spec is of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.specs.iter().any(|(_, s)| s.kind == kind)
    }

    fn kinds_line(&self) -> String {
        let mut kinds: Vec<&str> = self.specs.iter().map(|(_, s)| s.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() {
            " (there are none)".to_string()
        } else {
            format!(" (kinds: {})", kinds.join(", "))
        }
    }
}

fn read_spec(file: &Path) -> Result<Spec> {
    trusted::check_config_file(file)
        .map_err(|why| Error::usage(format!("CDI spec {}: {why}", file.display())))?;
    let meta = std::fs::metadata(file)
        .map_err(|e| Error::system(format!("reading {}: {e}", file.display())))?;
    if meta.len() > MAX_SPEC_BYTES {
        return Err(Error::usage(format!(
            "CDI spec {}: larger than {} MiB",
            file.display(),
            MAX_SPEC_BYTES >> 20
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::system(format!("reading {}: {e}", file.display())))?;
    spec::parse(&text, file.to_path_buf())
        .map_err(|why| Error::usage(format!("CDI spec {}: {why}", file.display())))
}

/// Keeps the first of the entries with the same key.
fn dedup_by<T, K: PartialEq>(items: &mut Vec<T>, key: impl Fn(&T) -> K) {
    let mut seen: Vec<K> = Vec::new();
    items.retain(|item| {
        let k = key(item);
        if seen.contains(&k) {
            false
        } else {
            seen.push(k);
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn spec_text(kind: &str, device: &str, node: &str) -> String {
        format!(
            "cdiVersion: 0.5.0\nkind: {kind}\ncontainerEdits:\n  env: [FROM={node}]\ndevices:\n- name: \"{device}\"\n  containerEdits:\n    deviceNodes:\n    - path: {node}\n"
        )
    }

    fn q(name: &str) -> QualifiedName {
        QualifiedName::parse(name).unwrap()
    }

    /// A root-owned spec directory (the tests run as root, as CI does),
    /// under /run: every directory above a spec directory must be root's
    /// and closed to others, which /tmp is not.
    fn dir_with(files: &[(&str, String)]) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("sifrun-cdi-test")
            .tempdir_in("/run")
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        dir
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn later_directories_win_and_common_edits_come_once() {
        if !is_root() {
            return eprintln!("skipped: needs root (spec files must be root's)");
        }
        let etc = dir_with(&[
            ("a.yaml", spec_text("nvidia.com/gpu", "0", "/dev/nvidia0")),
            ("b.json", spec_text("nvidia.com/gpu", "1", "/dev/nvidia1")),
            ("ignored.txt", "not a spec".into()),
        ]);
        let run = dir_with(&[("c.yml", spec_text("nvidia.com/gpu", "1", "/dev/other1"))]);
        let reg = Registry::load(&[
            etc.path().to_path_buf(),
            run.path().to_path_buf(),
            "/nonexistent/cdi".into(),
        ])
        .unwrap();
        let e = reg
            .edits_for(&[q("nvidia.com/gpu=0"), q("nvidia.com/gpu=1")])
            .unwrap();
        let nodes: Vec<_> = e.device_nodes.iter().map(|d| d.host.clone()).collect();
        assert_eq!(nodes, [PathBuf::from("/dev/nvidia0"), "/dev/other1".into()]);
        // Each spec's common edits once: two specs, two values.
        assert_eq!(e.env.len(), 2);
        let err = reg.edits_for(&[q("nvidia.com/gpu=7")]).unwrap_err();
        assert!(
            err.message().contains("no CDI device nvidia.com/gpu=7")
                && err.message().contains("kinds: nvidia.com/gpu"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn specs_anyone_else_could_write_are_refused_not_skipped() {
        if !is_root() {
            return eprintln!("skipped: needs root (spec files must be root's)");
        }
        let dir = dir_with(&[("a.yaml", spec_text("nvidia.com/gpu", "0", "/dev/nvidia0"))]);
        let file = dir.path().join("a.yaml");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Registry::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            e.message().contains("not writable by group or others"),
            "{}",
            e.message()
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Registry::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            e.message().contains("CDI spec directory"),
            "{}",
            e.message()
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // A symlinked spec is refused (its target could be anywhere).
        std::os::unix::fs::symlink(&file, dir.path().join("link.yaml")).unwrap();
        let e = Registry::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(e.message().contains("symlink"), "{}", e.message());
    }

    #[test]
    fn one_device_twice_in_one_directory_is_an_error_naming_both_files() {
        if !is_root() {
            return eprintln!("skipped: needs root (spec files must be root's)");
        }
        let dir = dir_with(&[
            ("a.yaml", spec_text("nvidia.com/gpu", "0", "/dev/nvidia0")),
            ("b.yaml", spec_text("nvidia.com/gpu", "0", "/dev/nvidia9")),
        ]);
        let e = Registry::load(&[dir.path().to_path_buf()]).unwrap_err();
        assert!(
            e.message().contains("a.yaml") && e.message().contains("b.yaml"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            QualifiedName::parse("nvidia.com/gpu=0:1").unwrap().device,
            "0:1"
        );
        for bad in ["gpu=0", "nvidia.com/gpu", "nvidia.com/gpu=", "a.com/b=../x"] {
            assert!(QualifiedName::parse(bad).is_err(), "{bad}");
        }
    }
}
