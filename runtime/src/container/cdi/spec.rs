//! One CDI spec file (Container Device Interface, the format NVIDIA's
//! `nvidia-ctk cdi generate`, AMD's and CSCS's tools write): its kind
//! (`vendor.com/class`), its devices, and the container edits each device
//! (and the spec as a whole) asks for. JSON or YAML, CDI versions 0.3.0 to
//! 1.0.x.
//!
//! Only the admin's files are read (see [`super::registry`]), yet the
//! parser still refuses what it cannot apply faithfully, in one line that
//! names the file: an edit silently dropped could leave a device half
//! set up, or run a device without the hook its vendor asked for. Groups
//! (`additionalGids`) are the one exception: never granted, since the
//! tasks are the job user's with the job's groups (a device node the user
//! may not open stays closed, as on the host).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The oldest and newest CDI versions read (`cdiVersion`).
pub const MIN_VERSION: (u32, u32) = (0, 3);
pub const MAX_VERSION: (u32, u32) = (1, 0);

/// How long a hook runs when its spec gives no `timeout`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// A spec file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecFile {
    pub cdi_version: String,
    pub kind: String,
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
    #[serde(default)]
    pub container_edits: EditsEntry,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceEntry {
    pub name: String,
    #[serde(default)]
    pub container_edits: EditsEntry,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditsEntry {
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub device_nodes: Vec<DeviceNodeEntry>,
    #[serde(default)]
    pub mounts: Vec<MountEntry>,
    #[serde(default)]
    pub hooks: Vec<HookEntry>,
    /// Groups added to the container's process: not applied (the tasks
    /// are the job user's, with the job's groups; granting a group the
    /// user does not have is not the runtime's to do).
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
    #[serde(default)]
    pub intel_rdt: Option<serde_json::Value>,
    #[serde(default)]
    pub net_devices: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNodeEntry {
    pub path: String,
    #[serde(default)]
    pub host_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MountEntry {
    pub host_path: String,
    pub container_path: String,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookEntry {
    pub hook_name: String,
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub timeout: Option<i64>,
}

/// A checked spec: what [`super::registry::Registry`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `vendor.com/class`.
    pub kind: String,
    /// The file it came from, for messages.
    pub file: PathBuf,
    /// Edits every device of the spec brings along (once per step).
    pub common: Edits,
    /// `(name, edits)` of each device.
    pub devices: Vec<(String, Edits)>,
}

/// What a device (or a spec as a whole) changes in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// `(name, value)`.
    pub env: Vec<(String, String)>,
    pub device_nodes: Vec<DeviceNodeEdit>,
    pub mounts: Vec<MountEdit>,
    pub hooks: Vec<HookEdit>,
}

/// A host device node bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNodeEdit {
    /// On the host (`hostPath`, else `path`).
    pub host: PathBuf,
    /// In the container, under `/dev`.
    pub container: PathBuf,
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEdit {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

/// A program run as root while the container is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEdit {
    pub path: PathBuf,
    /// Its whole argument vector, `argv[0]` included (as OCI hooks have it).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Duration,
}

impl Edits {
    /// Adds `other`'s edits after this one's.
    pub fn extend(&mut self, other: &Edits) {
        self.env.extend(other.env.iter().cloned());
        self.device_nodes.extend(other.device_nodes.iter().cloned());
        self.mounts.extend(other.mounts.iter().cloned());
        self.hooks.extend(other.hooks.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.device_nodes.is_empty()
            && self.mounts.is_empty()
            && self.hooks.is_empty()
    }
}

/// Parses spec text (YAML, of which JSON is a part) from `file`.
pub fn parse(text: &str, file: PathBuf) -> Result<Spec, String> {
    let raw: SpecFile = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    check_version(&raw.cdi_version)?;
    check_kind(&raw.kind)?;
    let common = edits(&raw.container_edits).map_err(|e| format!("containerEdits: {e}"))?;
    let mut devices: Vec<(String, Edits)> = Vec::new();
    for d in &raw.devices {
        if !is_device_name(&d.name) {
            return Err(format!("device name {:?} is not valid", d.name));
        }
        if devices.iter().any(|(n, _)| *n == d.name) {
            return Err(format!("device {:?} is defined twice", d.name));
        }
        let e = edits(&d.container_edits).map_err(|e| format!("device {:?}: {e}", d.name))?;
        devices.push((d.name.clone(), e));
    }
    Ok(Spec {
        kind: raw.kind,
        file,
        common,
        devices,
    })
}

fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(format!("cdiVersion {version:?} is not a version"));
    };
    if (major, minor) < MIN_VERSION || (major, minor) > MAX_VERSION {
        return Err(format!(
            "cdiVersion {version} is not read (versions {}.{}.0 to {}.{}.x are)",
            MIN_VERSION.0, MIN_VERSION.1, MAX_VERSION.0, MAX_VERSION.1
        ));
    }
    Ok(())
}

/// `vendor.com/class`: a vendor of DNS-name characters with a dot, a class
/// of letters, digits, `-`, `_`, `.`.
fn check_kind(kind: &str) -> Result<(), String> {
    let valid = kind.split_once('/').is_some_and(|(vendor, class)| {
        vendor.contains('.')
            && !vendor.starts_with(['.', '-'])
            && vendor
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            && !class.is_empty()
            && class
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    });
    if valid {
        Ok(())
    } else {
        Err(format!("kind {kind:?} is not vendor.com/class"))
    }
}

/// Device names: letters, digits, `-`, `_`, `.`, `:` (MIG devices are
/// `0:1`), starting with a letter or digit.
pub fn is_device_name(name: &str) -> bool {
    name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn absolute(p: &str, what: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(p);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(format!(
            "{what} {p:?} must be an absolute path without '..'"
        ));
    }
    Ok(path)
}

fn edits(raw: &EditsEntry) -> Result<Edits, String> {
    if raw.intel_rdt.is_some() {
        return Err("intelRdt is not applied".into());
    }
    if !raw.net_devices.is_empty() {
        return Err("netDevices is not applied (containers share the node's network)".into());
    }
    let mut out = Edits::default();
    for kv in &raw.env {
        let (k, v) = kv
            .split_once('=')
            .filter(|(k, _)| crate::container::env::is_valid_name(k))
            .ok_or_else(|| format!("env entry {kv:?} is not NAME=VALUE"))?;
        out.env.push((k.to_string(), v.to_string()));
    }
    for d in &raw.device_nodes {
        let container = absolute(&d.path, "deviceNodes path")?;
        if !container.starts_with("/dev") {
            return Err(format!("deviceNodes path {:?} is not under /dev", d.path));
        }
        let host = match &d.host_path {
            Some(h) => absolute(h, "deviceNodes hostPath")?,
            None => container.clone(),
        };
        out.device_nodes.push(DeviceNodeEdit { host, container });
    }
    for m in &raw.mounts {
        if !matches!(m.kind.as_deref(), None | Some("bind") | Some("")) {
            return Err(format!(
                "mount of {:?}: type {:?} is not applied (bind mounts are)",
                m.container_path,
                m.kind.as_deref().unwrap_or("")
            ));
        }
        let host = absolute(&m.host_path, "mounts hostPath")?;
        let container = absolute(&m.container_path, "mounts containerPath")?;
        if container == std::path::Path::new("/") {
            return Err("a mount over the container's / is not applied".into());
        }
        out.mounts.push(MountEdit {
            host,
            container,
            read_only: m.options.iter().any(|o| o == "ro"),
        });
    }
    for h in &raw.hooks {
        // createRuntime and createContainer (prestart, their old name) run
        // once the container's filesystem is ready, before any task: here,
        // as the runtime does. The others would run in the tasks' life
        // cycle, which belongs to Slurm.
        if !matches!(
            h.hook_name.as_str(),
            "createRuntime" | "createContainer" | "prestart"
        ) {
            return Err(format!(
                "hook {:?} ({}) is not run (createRuntime, createContainer and prestart hooks are)",
                h.path, h.hook_name
            ));
        }
        let path = absolute(&h.path, "hook path")?;
        let timeout = match h.timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(t) if t > 0 => Duration::from_secs(t as u64),
            Some(t) => return Err(format!("hook {:?}: timeout {t} is not positive", h.path)),
        };
        let args = if h.args.is_empty() {
            vec![h.path.clone()]
        } else {
            h.args.clone()
        };
        out.hooks.push(HookEdit {
            path,
            args,
            env: h.env.clone(),
            timeout,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape `nvidia-ctk cdi generate` writes (abridged), as YAML.
    pub const NVIDIA_YAML: &str = r#"---
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args:
    - nvidia-cdi-hook
    - create-symlinks
    - --link
    - libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    options:
    - ro
    - nosuid
    - nodev
    - bind
"#;

    #[test]
    fn nvidia_ctk_yaml_and_the_same_as_json() {
        let spec = parse(NVIDIA_YAML, "/etc/cdi/nvidia.yaml".into()).unwrap();
        assert_eq!(spec.kind, "nvidia.com/gpu");
        assert_eq!(
            spec.devices
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["0", "1", "all"]
        );
        assert_eq!(
            spec.common.env,
            [("NVIDIA_VISIBLE_DEVICES".into(), "void".into())]
        );
        let hook = &spec.common.hooks[0];
        assert_eq!(hook.path, PathBuf::from("/usr/bin/nvidia-cdi-hook"));
        assert_eq!(hook.args[0], "nvidia-cdi-hook");
        assert_eq!(hook.timeout, DEFAULT_HOOK_TIMEOUT);
        assert!(spec.common.mounts[0].read_only);
        assert_eq!(
            spec.devices[1].1.device_nodes[0],
            DeviceNodeEdit {
                host: "/dev/nvidia1".into(),
                container: "/dev/nvidia1".into()
            }
        );

        let json = r#"{"cdiVersion":"1.0.0","kind":"vendor.example/net","devices":[
            {"name":"a","containerEdits":{"deviceNodes":[{"path":"/dev/x","hostPath":"/dev/y"}],
             "mounts":[{"hostPath":"/opt/lib","containerPath":"/usr/lib/net","options":["rw","rbind"]}],
             "hooks":[{"hookName":"createRuntime","path":"/bin/true","timeout":5}]}}]}"#;
        let spec = parse(json, "/etc/cdi/net.json".into()).unwrap();
        let e = &spec.devices[0].1;
        assert_eq!(e.device_nodes[0].host, PathBuf::from("/dev/y"));
        assert!(!e.mounts[0].read_only);
        assert_eq!(e.hooks[0].args, ["/bin/true"]);
        assert_eq!(e.hooks[0].timeout, Duration::from_secs(5));
    }

    #[test]
    fn additional_groups_are_never_granted() {
        let text = "cdiVersion: 0.7.0\nkind: v.example/c\ndevices:\n- name: d\n  containerEdits:\n    additionalGids: [0, 44]\n    env: [A=1]\n";
        let spec = parse(text, "f".into()).unwrap();
        // Nothing in the edits carries a group: tasks keep the job's.
        assert_eq!(spec.devices[0].1.env, [("A".into(), "1".into())]);
    }

    #[test]
    fn what_cannot_be_applied_faithfully_is_refused_in_words() {
        let spec = |edits: &str| {
            format!(
                "cdiVersion: 0.6.0\nkind: v.example/c\ndevices:\n- name: d\n  containerEdits:\n{edits}"
            )
        };
        let refused = |text: String, words: &str| {
            let e = parse(&text, "f".into()).unwrap_err();
            assert!(e.contains(words), "{e} (wanted {words})");
        };
        refused(
            spec("    netDevices:\n    - hostInterfaceName: eth1\n      name: eth0\n"),
            "netDevices",
        );
        refused(
            spec("    hooks:\n    - hookName: poststop\n      path: /bin/true\n"),
            "poststop",
        );
        refused(
            spec("    mounts:\n    - hostPath: none\n      containerPath: /x\n      type: tmpfs\n"),
            "tmpfs",
        );
        refused(
            spec("    deviceNodes:\n    - path: /etc/shadow\n"),
            "not under /dev",
        );
        refused(
            spec("    mounts:\n    - hostPath: /opt\n      containerPath: ../x\n"),
            "absolute",
        );
        refused(spec("    env: [\"no equals sign\"]\n"), "NAME=VALUE");
        refused(
            "cdiVersion: 2.0.0\nkind: v.example/c\n".into(),
            "cdiVersion 2.0.0 is not read",
        );
        refused(
            "cdiVersion: 0.2.0\nkind: v.example/c\n".into(),
            "is not read",
        );
        refused(
            "cdiVersion: 0.5.0\nkind: nokind\n".into(),
            "vendor.com/class",
        );
        refused(
            "cdiVersion: 0.5.0\nkind: v.example/c\ndevices:\n- name: a\n- name: a\n".into(),
            "defined twice",
        );
        refused(
            "cdiVersion: 0.5.0\nkind: v.example/c\ndevices:\n- name: ../a\n".into(),
            "not valid",
        );
        // Hostile bytes give an error, never a panic.
        for text in ["", "\0\u{1}", "[", "cdiVersion: [1]", "{{{{"] {
            assert!(parse(text, "f".into()).is_err());
        }
    }
}
