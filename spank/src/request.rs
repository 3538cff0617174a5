//! What the job asked for: the image and the `--container-*` options.
//!
//! Everything here comes from the job user and is treated as untrusted input:
//! it is only parsed and validated. Paths are resolved later, with the job
//! user's credentials, by the `sifrun` helper that builds the container.

use sifrun_runtime::container::cdi::QualifiedName;
use sifrun_runtime::container::env::is_valid_name;
use sifrun_runtime::container::image_env::scif::AppName;
use sifrun_runtime::container::mount::rootfs::{BindMount, TmpfsMount};
use sifrun_runtime::container::namespaces::Unshared;
use sifrun_runtime::node::site_hooks::is_hook_name;
use std::path::{Component, Path, PathBuf};

/// Plugin-owned image option, for sites where Slurm's `--container` cannot
/// be used (oci.conf installed, other Slurm versions). Not a prefix of any
/// Slurm or pyxis option.
pub const OPT_IMAGE: &str = "sif-image";
pub const OPT_MOUNTS: &str = "container-mounts";
pub const OPT_WORKDIR: &str = "container-workdir";
pub const OPT_ENV: &str = "container-env";
pub const OPT_WRITABLE: &str = "container-writable";
pub const OPT_MOUNT_HOME: &str = "container-mount-home";
pub const OPT_NO_MOUNT_HOME: &str = "no-container-mount-home";
/// Key of an encrypted image: a PEM RSA private key or a passphrase file.
pub const OPT_KEY_FILE: &str = "container-key-file";
/// SCIF app of an Apptainer image (`apptainer exec --app NAME`).
pub const OPT_APP: &str = "container-app";
/// The explicit opposite of `--container-writable` (pyxis).
pub const OPT_READONLY: &str = "container-readonly";
/// The job user appears as root inside the container (pyxis).
pub const OPT_REMAP_ROOT: &str = "container-remap-root";
pub const OPT_NO_REMAP_ROOT: &str = "no-container-remap-root";
/// Run the image's OCI entrypoint once per node before the tasks (pyxis).
pub const OPT_ENTRYPOINT: &str = "container-entrypoint";
pub const OPT_NO_ENTRYPOINT: &str = "no-container-entrypoint";
/// Namespaces of the container's own besides the mount namespace (pyxis).
pub const OPT_UNSHARE: &str = "container-unshare";
/// A container kept by name for the job's later steps (pyxis).
pub const OPT_NAME: &str = "container-name";
/// Save the container as a new SIF image once the step ends (pyxis).
pub const OPT_SAVE: &str = "container-save";
/// `sbatch`: the batch script itself runs in the container, with the
/// host's Slurm commands (pyxis' `sbatch_support`).
pub const OPT_BATCH: &str = "container-batch";
pub const OPT_NO_BATCH: &str = "no-container-batch";
/// CDI devices besides the step's GPUs, among those the admin allows.
pub const OPT_DEVICES: &str = "container-devices";
/// Site hooks, among those the admin allows (like Sarus annotations or
/// podman-hpc modules).
pub const OPT_HOOKS: &str = "container-hooks";

/// What `--container-name=NAME[:MODE]` asks for when a container of that
/// name exists (or not) in the job on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMode {
    /// Join it if it exists, else make it (pyxis' default).
    Auto,
    /// Make it; an error if it exists.
    Create,
    /// Join it; an error if it does not exist.
    Exec,
}

/// `--container-name`'s value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerName {
    pub name: String,
    pub mode: NameMode,
}

impl ContainerName {
    /// The longest name taken.
    pub const MAX_LEN: usize = 64;

    /// `NAME[:auto|create|exec]`; NAME is letters, digits, `_`, `-`, `.`
    /// (not first).
    pub fn parse(value: &str) -> Result<Self, String> {
        let (name, mode) = match value.split_once(':') {
            None => (value, NameMode::Auto),
            Some((name, "auto")) => (name, NameMode::Auto),
            Some((name, "create")) => (name, NameMode::Create),
            Some((name, "exec")) => (name, NameMode::Exec),
            Some((_, "no_exec")) => {
                return Err("the no_exec mode is not offered: a container's files live in its namespace, which later steps join".into())
            }
            Some((_, other)) => {
                return Err(format!("{other:?} is not a mode (auto, create, exec)"))
            }
        };
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(format!(
                "{name:?} is not a container name (up to {} letters, digits, '_', '-', '.'; not starting with '.')",
                Self::MAX_LEN
            ));
        }
        Ok(ContainerName {
            name: name.to_string(),
            mode,
        })
    }
}

/// Flag options (no value), for the plugin to ask Slurm about.
pub const FLAGS: &[&str] = &[
    OPT_WRITABLE,
    OPT_READONLY,
    OPT_MOUNT_HOME,
    OPT_NO_MOUNT_HOME,
    OPT_REMAP_ROOT,
    OPT_NO_REMAP_ROOT,
    OPT_ENTRYPOINT,
    OPT_NO_ENTRYPOINT,
    OPT_BATCH,
    OPT_NO_BATCH,
];

/// Environment variable that carries Slurm's built-in `--container` value.
pub const SLURM_CONTAINER_ENV: &str = "SLURM_CONTAINER";

/// For each option, the environment variable that gives its default.
pub fn env_default_for(option: &str) -> String {
    format!(
        "SIFRUN_{}",
        option
            .trim_start_matches("no-")
            .replace('-', "_")
            .to_uppercase()
    )
}

/// Mount flags pyxis users write that change nothing here: binds are
/// always recursive, `nosuid` and `nodev`, and never propagate back to the
/// host.
pub const IMPLIED_FLAGS: &[&str] = &[
    "bind", "rbind", "nosuid", "nodev", "private", "rprivate", "slave", "rslave",
];

/// One `SRC[:DST[:FLAGS]]` entry of `--container-mounts` without a working
/// directory to resolve a relative SRC against (see [`parse_mount_in`]).
pub fn parse_mount(spec: &str) -> Result<BindMount, RequestError> {
    parse_mount_in(spec, None)
}

/// One `SRC[:DST[:FLAGS]]` entry of `--container-mounts`, pyxis' grammar:
/// FLAGS joined with `+` (`ro`, `rw`, and flags that change nothing here,
/// [`IMPLIED_FLAGS`]); a relative SRC (`./data`) is taken from the job's
/// working directory `cwd`, and DST defaults to SRC made absolute. What
/// root code relies on afterwards: both paths absolute, without `..`; the
/// entry renders as `sifrun --bind`'s `SRC:DST:ro|rw`, which the helper
/// parses back with the same code.
pub fn parse_mount_in(spec: &str, cwd: Option<&str>) -> Result<BindMount, RequestError> {
    let bad = |why: String| RequestError::BadMount {
        spec: spec.to_string(),
        why,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, flags) = match parts.as_slice() {
        [src] => (*src, None, None),
        [src, dst] => (*src, Some(*dst), None),
        [src, dst, flags] => (*src, Some(*dst), Some(*flags)),
        _ => return Err(bad("expected SRC[:DST[:FLAGS]]".to_string())),
    };
    let mut read_only = None;
    for flag in flags
        .map(|f| f.split('+').collect())
        .unwrap_or_else(Vec::new)
    {
        match flag {
            "ro" | "rw" => {
                if read_only.is_some_and(|ro| ro != (flag == "ro")) {
                    return Err(bad("both ro and rw".to_string()));
                }
                read_only = Some(flag == "ro");
            }
            f if IMPLIED_FLAGS.contains(&f) => {}
            f => {
                return Err(bad(format!(
                    "unknown flag {f:?} (ro, rw, or one of {})",
                    IMPLIED_FLAGS.join(", ")
                )))
            }
        }
    }
    let source = match (Path::new(src).is_absolute(), cwd) {
        (false, Some(cwd)) if !src.is_empty() && cwd.starts_with('/') => {
            // components() drops the `./` of `./data`.
            Path::new(cwd)
                .join(src)
                .components()
                .collect::<PathBuf>()
                .display()
                .to_string()
        }
        _ => src.to_string(),
    };
    let canonical = format!(
        "{source}:{}:{}",
        dst.unwrap_or(&source),
        if read_only == Some(true) { "ro" } else { "rw" }
    );
    let mount =
        BindMount::parse_unresolved(&canonical).map_err(|e| bad(e.message().to_string()))?;
    for path in [&mount.source, &mount.destination] {
        if !path.is_absolute() {
            return Err(bad("paths must be absolute".to_string()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(bad("paths must not contain '..'".to_string()));
        }
    }
    Ok(mount)
}

/// A validated request to run the step in a SIF container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRequest {
    /// Absolute path of the image, as the job user names it.
    pub image: PathBuf,
    pub mounts: Vec<BindMount>,
    pub workdir: Option<PathBuf>,
    /// Variables whose host (job) value wins over the image's.
    pub host_env: Vec<String>,
    pub writable: bool,
    /// `None`: the admin's default.
    pub mount_home: Option<bool>,
    /// Key file of an encrypted image (absolute; opened by the helper with
    /// the job user's credentials, never read by the plugin).
    pub key_file: Option<PathBuf>,
    /// SCIF app whose environment the tasks get.
    pub app: Option<String>,
    /// Each task sees its user as root (a user namespace of its own).
    pub remap_root: bool,
    /// The image's OCI entrypoint runs once per node, before the tasks,
    /// which get the environment it leaves.
    pub entrypoint: bool,
    /// `net`, `ipc`, `uts`: namespaces the container gets of its own.
    pub unshare: Vec<String>,
    /// `--container-name`: kept by name for the job's later steps. With a
    /// name, `image` may be empty: the named container's.
    pub name: Option<ContainerName>,
    /// `tmpfs:DST[:OPTIONS]` entries of `--container-mounts` (checked,
    /// canonical).
    pub tmpfs: Vec<String>,
    /// `umount:DST` entries of `--container-mounts`.
    pub umounts: Vec<PathBuf>,
    /// `--container-save`: where the container goes as a new SIF image
    /// when the step ends (absolute: a relative path is the job's cwd's).
    pub save: Option<PathBuf>,
    /// `--container-batch`: the batch script runs in the container (only
    /// the batch step reads it; the job's other steps always do).
    pub batch: bool,
    /// `--container-devices`: CDI device names (`vendor.com/class=name`).
    pub devices: Vec<String>,
    /// `--container-hooks`: site hook names.
    pub hooks: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("--container-mounts entry {spec:?}: {why}")]
    BadMount { spec: String, why: String },
    #[error("--{option}: {why}")]
    BadValue { option: &'static str, why: String },
    #[error("--{0} and --{1} both given")]
    Conflicting(&'static str, &'static str),
    #[error("image path {0:?} is relative and the job's working directory is unknown")]
    RelativeImage(String),
    #[error("--container-key-file {0:?} is relative and the job's working directory is unknown")]
    RelativeKeyFile(String),
}

/// Where option values come from: the command line first, then the
/// `SIFRUN_*` environment defaults.
pub trait OptionSource {
    /// Value of a value-taking option, or `Some("")` for a set flag.
    fn option(&self, name: &str) -> Option<String>;
    /// Variable of the job's environment.
    fn env(&self, name: &str) -> Option<String>;

    fn option_or_env(&self, name: &str) -> Option<String> {
        self.option(name)
            .or_else(|| self.env(&env_default_for(name)).filter(|v| !v.is_empty()))
    }
}

pub use slurm_glue::names_sif_image;

fn parse_flag(src: &dyn OptionSource, name: &'static str) -> Result<Option<bool>, RequestError> {
    if src.option(name).is_some() {
        return Ok(Some(true));
    }
    match src.env(&env_default_for(name)).as_deref() {
        None | Some("") => Ok(None),
        Some("1" | "yes" | "true") => Ok(Some(true)),
        Some("0" | "no" | "false") => Ok(Some(false)),
        Some(other) => Err(RequestError::BadValue {
            option: name,
            why: format!(
                "{}={other:?}: expected 1/0, yes/no or true/false",
                env_default_for(name)
            ),
        }),
    }
}

/// A comma-separated option's entries (none when it is not given). An
/// empty value or an empty entry (`--container-env=`, `--container-env=A,`)
/// is refused, as pyxis does: it is a typo more often than a wish.
fn list(src: &dyn OptionSource, name: &'static str) -> Result<Vec<String>, RequestError> {
    let Some(value) = src.option_or_env(name) else {
        return Ok(Vec::new());
    };
    let entries: Vec<String> = value.split(',').map(str::to_string).collect();
    if entries.iter().any(String::is_empty) {
        return Err(RequestError::BadValue {
            option: name,
            why: if value.is_empty() {
                "empty value".to_string()
            } else {
                format!("empty entry in {value:?}")
            },
        });
    }
    Ok(entries)
}

/// A pair of opposite flags (`--X` / `--no-X`, `--container-writable` /
/// `--container-readonly`): the command line decides when either is given
/// (both is an error); otherwise `on`'s environment default, then `off`'s
/// (negated); otherwise `None`, the admin's or built-in default.
fn switch(
    src: &dyn OptionSource,
    on: &'static str,
    off: &'static str,
) -> Result<Option<bool>, RequestError> {
    match (src.option(on).is_some(), src.option(off).is_some()) {
        (true, true) => Err(RequestError::Conflicting(on, off)),
        (true, false) => Ok(Some(true)),
        (false, true) => Ok(Some(false)),
        (false, false) => match parse_flag(src, on)? {
            Some(value) => Ok(Some(value)),
            None => Ok(parse_flag(src, off)?.map(|v| !v)),
        },
    }
}

impl ContainerRequest {
    /// Build the request from the options, or `None` when the step does not
    /// ask for a SIF container. `use_builtin` says whether Slurm's own
    /// `--container` (seen as `SLURM_CONTAINER`) is honoured.
    pub fn from_source(
        src: &dyn OptionSource,
        use_builtin: bool,
    ) -> Result<Option<ContainerRequest>, RequestError> {
        // The command line first (--sif-image, then Slurm's --container,
        // seen as SLURM_CONTAINER), then the environment default.
        let image = src
            .option(OPT_IMAGE)
            .or_else(|| {
                if use_builtin {
                    src.env(SLURM_CONTAINER_ENV).filter(|v| names_sif_image(v))
                } else {
                    None
                }
            })
            .or_else(|| {
                src.env(&env_default_for(OPT_IMAGE))
                    .filter(|v| !v.is_empty())
            });
        let image = match image {
            Some(image) => absolute_image_path(image.trim(), src.env("PWD").as_deref())?,
            // A named container may be asked for by its name alone.
            None if src.option_or_env(OPT_NAME).is_some() => PathBuf::new(),
            None => return Ok(None),
        };
        let mut request = ContainerRequest::options_only(src)?;
        request.image = image;
        if let Some(save) = src.option_or_env(OPT_SAVE) {
            let save = save.trim();
            request.save = Some(absolute_path(save, src.env("PWD").as_deref()).ok_or_else(
                || RequestError::BadValue {
                    option: OPT_SAVE,
                    why: format!("{save:?} is relative and the job's working directory is unknown"),
                },
            )?);
        }
        if let Some(key) = src.option_or_env(OPT_KEY_FILE) {
            let key = key.trim();
            if key.is_empty() {
                return Err(RequestError::BadValue {
                    option: OPT_KEY_FILE,
                    why: "empty path".to_string(),
                });
            }
            request.key_file = Some(
                absolute_path(key, src.env("PWD").as_deref())
                    .ok_or_else(|| RequestError::RelativeKeyFile(key.to_string()))?,
            );
        }
        Ok(Some(request))
    }

    /// Parse and validate every option except the image. srun runs this
    /// before submitting, so a typo fails at once, with or without an image.
    pub fn options_only(src: &dyn OptionSource) -> Result<ContainerRequest, RequestError> {
        let cwd = src.env("PWD");
        let (mut mounts, mut tmpfs, mut umounts) = (Vec::new(), Vec::new(), Vec::new());
        for entry in list(src, OPT_MOUNTS)? {
            let bad = |why: String| RequestError::BadMount {
                spec: entry.clone(),
                why,
            };
            if let Some(rest) = entry.strip_prefix("tmpfs:") {
                let t = TmpfsMount::parse(rest).map_err(|e| bad(e.message().to_string()))?;
                tmpfs.push(t.to_spec());
            } else if let Some(dst) = entry.strip_prefix("umount:") {
                let dst = PathBuf::from(dst);
                if !dst.is_absolute()
                    || dst.components().any(|c| c == Component::ParentDir)
                    || dst == Path::new("/")
                {
                    return Err(bad(
                        "the path must be absolute, without '..', and not /".into()
                    ));
                }
                umounts.push(dst);
            } else {
                mounts.push(parse_mount_in(&entry, cwd.as_deref())?);
            }
        }

        let workdir = src
            .option_or_env(OPT_WORKDIR)
            .map(|dir| container_path(&dir));

        let host_env = list(src, OPT_ENV)?
            .into_iter()
            .map(|name| {
                if is_valid_name(&name) {
                    Ok(name)
                } else {
                    Err(RequestError::BadValue {
                        option: OPT_ENV,
                        why: format!("{name:?} is not a variable name"),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let app = src
            .option_or_env(OPT_APP)
            .map(|name| {
                if AppName::is_valid(&name) {
                    Ok(name)
                } else {
                    Err(RequestError::BadValue {
                        option: OPT_APP,
                        why: format!("{name:?} is not an app name ({})", AppName::ALLOWED),
                    })
                }
            })
            .transpose()?;
        let unshare = match src.option_or_env(OPT_UNSHARE) {
            None => Vec::new(),
            Some(list) => {
                let mut kinds: Vec<String> = Vec::new();
                for name in list.split(',') {
                    if Unshared::parse(name).is_none() {
                        return Err(RequestError::BadValue {
                            option: OPT_UNSHARE,
                            why: format!("{name:?} is not one of net, ipc, uts"),
                        });
                    }
                    if !kinds.iter().any(|k| k == name) {
                        kinds.push(name.to_string());
                    }
                }
                kinds
            }
        };
        let name = src
            .option_or_env(OPT_NAME)
            .map(|v| {
                ContainerName::parse(&v).map_err(|why| RequestError::BadValue {
                    option: OPT_NAME,
                    why,
                })
            })
            .transpose()?;
        let writable = switch(src, OPT_WRITABLE, OPT_READONLY)?.unwrap_or(false);
        let mount_home = switch(src, OPT_MOUNT_HOME, OPT_NO_MOUNT_HOME)?;
        let remap_root = switch(src, OPT_REMAP_ROOT, OPT_NO_REMAP_ROOT)?.unwrap_or(false);
        let entrypoint = switch(src, OPT_ENTRYPOINT, OPT_NO_ENTRYPOINT)?.unwrap_or(false);
        let batch = switch(src, OPT_BATCH, OPT_NO_BATCH)?.unwrap_or(false);
        let devices = list(src, OPT_DEVICES)?
            .into_iter()
            .map(|name| {
                QualifiedName::parse(&name)
                    .map(|q| q.to_string())
                    .map_err(|why| RequestError::BadValue {
                        option: OPT_DEVICES,
                        why,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hooks = list(src, OPT_HOOKS)?
            .into_iter()
            .map(|name| {
                if is_hook_name(&name) {
                    Ok(name)
                } else {
                    Err(RequestError::BadValue {
                        option: OPT_HOOKS,
                        why: format!("{name:?} is not a hook name"),
                    })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(ContainerRequest {
            image: PathBuf::new(),
            mounts,
            workdir,
            host_env,
            writable,
            mount_home,
            key_file: None,
            app,
            remap_root,
            entrypoint,
            unshare,
            name,
            save: None,
            tmpfs,
            umounts,
            batch,
            devices,
            hooks,
        })
    }
}

/// `--container-workdir` as pyxis takes it: a relative path is taken from
/// the container's `/`, and `..` never climbs above it (`../x` is `/x`).
/// The result is absolute and free of `.` and `..`.
pub fn container_path(dir: &str) -> PathBuf {
    let mut path = PathBuf::from("/");
    for component in Path::new(dir).components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::ParentDir => {
                path.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    path
}

/// A relative image path resolves against the job's working directory.
fn absolute_image_path(image: &str, cwd: Option<&str>) -> Result<PathBuf, RequestError> {
    absolute_path(image, cwd).ok_or_else(|| RequestError::RelativeImage(image.to_string()))
}

/// `path` made absolute against the job's working directory (`None` when
/// it is relative and the directory is unknown).
fn absolute_path(path: &str, cwd: Option<&str>) -> Option<PathBuf> {
    let path = Path::new(path);
    if path.is_absolute() {
        return Some(path.to_path_buf());
    }
    match cwd {
        Some(cwd) if cwd.starts_with('/') => Some(Path::new(cwd).join(path)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fake {
        options: HashMap<&'static str, &'static str>,
        env: HashMap<String, &'static str>,
    }
    impl OptionSource for Fake {
        fn option(&self, name: &str) -> Option<String> {
            self.options.get(name).map(|v| v.to_string())
        }
        fn env(&self, name: &str) -> Option<String> {
            self.env.get(name).map(|v| v.to_string())
        }
    }

    fn with_env(pairs: &[(&str, &'static str)]) -> Fake {
        Fake {
            env: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_container_value_must_name_a_sif_file() {
        let src = with_env(&[("SLURM_CONTAINER", "/bundles/oci-dir")]);
        assert_eq!(ContainerRequest::from_source(&src, true).unwrap(), None);
        let src = with_env(&[("SLURM_CONTAINER", "/img/app.SIF")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/img/app.SIF"));
        assert_eq!(ContainerRequest::from_source(&src, false).unwrap(), None);
    }

    #[test]
    fn relative_image_resolves_against_job_cwd() {
        let src = with_env(&[("SLURM_CONTAINER", "app.sif"), ("PWD", "/home/u/run")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/home/u/run/app.sif"));
        let src = with_env(&[("SLURM_CONTAINER", "app.sif")]);
        assert!(matches!(
            ContainerRequest::from_source(&src, true),
            Err(RequestError::RelativeImage(_))
        ));
    }

    #[test]
    fn plugin_option_wins_over_builtin_and_env_defaults_apply() {
        let mut src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_MOUNTS", "/data:/data:ro,/scratch"),
            ("SIFRUN_CONTAINER_WRITABLE", "yes"),
        ]);
        src.options.insert(OPT_IMAGE, "/b.sif");
        src.options.insert(OPT_WORKDIR, "/work");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/b.sif"));
        assert_eq!(req.workdir, Some(PathBuf::from("/work")));
        assert!(req.writable);
        assert_eq!(
            req.mounts,
            vec![
                BindMount {
                    source: "/data".into(),
                    destination: "/data".into(),
                    read_only: true
                },
                BindMount {
                    source: "/scratch".into(),
                    destination: "/scratch".into(),
                    read_only: false
                },
            ]
        );
        assert_eq!(req.mounts[0].to_spec(), "/data:/data:ro");
    }

    #[test]
    fn pyxis_mount_grammar_relative_sources_and_flags() {
        let m = parse_mount_in("./data:/data:ro+rprivate", Some("/home/u/run")).unwrap();
        assert_eq!(m.to_spec(), "/home/u/run/data:/data:ro");
        let m = parse_mount_in("file", Some("/home/u")).unwrap();
        assert_eq!(m.to_spec(), "/home/u/file:/home/u/file");
        let m = parse_mount_in("/a:/b:rbind+nosuid", None).unwrap();
        assert!(!m.read_only);
        for spec in ["/a:/b:ro+rw", "/a:/b:ro+exec", "../x:/x", "./x:/x"] {
            assert!(
                parse_mount_in(
                    spec,
                    if spec.starts_with("./") {
                        None
                    } else {
                        Some("/h")
                    }
                )
                .is_err(),
                "{spec} accepted"
            );
        }
    }

    #[test]
    fn tmpfs_and_umount_entries() {
        let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
        src.options.insert(
            OPT_MOUNTS,
            "/data:/d,tmpfs:/scratch:size=1g+mode=0700,umount:/home/u",
        );
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.mounts.len(), 1);
        assert_eq!(req.tmpfs, ["/scratch:size=1g+mode=700"]);
        assert_eq!(req.umounts, [PathBuf::from("/home/u")]);
        for bad in [
            "tmpfs:rel",
            "tmpfs:/t:size=big",
            "umount:rel",
            "umount:/a/../b",
            "umount:/",
        ] {
            let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
            src.options.insert(OPT_MOUNTS, bad);
            assert!(
                ContainerRequest::from_source(&src, true).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn bad_mounts_are_refused_with_the_entry_named() {
        for spec in ["data:/data", "/a:/b:rx", "/a:/b:ro:x", "/a/../etc:/e"] {
            let err = parse_mount(spec).unwrap_err();
            assert!(err.to_string().contains(spec), "{err}");
        }
    }

    #[test]
    fn env_names_and_home_flags_are_validated() {
        let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
        src.options.insert(OPT_ENV, "PATH,BAD-NAME");
        assert!(matches!(
            ContainerRequest::from_source(&src, true),
            Err(RequestError::BadValue {
                option: OPT_ENV,
                ..
            })
        ));
        let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
        src.options.insert(OPT_MOUNT_HOME, "");
        src.options.insert(OPT_NO_MOUNT_HOME, "");
        assert_eq!(
            ContainerRequest::from_source(&src, true),
            Err(RequestError::Conflicting(OPT_MOUNT_HOME, OPT_NO_MOUNT_HOME))
        );
        let src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_MOUNT_HOME", "0"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.mount_home, Some(false));
    }

    #[test]
    fn pyxis_switches_command_line_over_environment() {
        let image = ("SLURM_CONTAINER", "/a.sif");
        // Off unless asked for.
        let req = ContainerRequest::from_source(&with_env(&[image]), true)
            .unwrap()
            .unwrap();
        assert!(!req.writable && !req.remap_root && !req.entrypoint);
        // From the environment...
        let src = with_env(&[
            image,
            ("SIFRUN_CONTAINER_REMAP_ROOT", "1"),
            ("SIFRUN_CONTAINER_ENTRYPOINT", "yes"),
            ("SIFRUN_CONTAINER_WRITABLE", "1"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert!(req.writable && req.remap_root && req.entrypoint);
        // ...and the command line wins over it, in both directions.
        let mut src = src;
        src.options.insert(OPT_READONLY, "");
        src.options.insert(OPT_NO_REMAP_ROOT, "");
        src.options.insert(OPT_NO_ENTRYPOINT, "");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert!(!req.writable && !req.remap_root && !req.entrypoint);
        // The opposite's variable counts, negated, when the flag's is unset.
        let src = with_env(&[image, ("SIFRUN_CONTAINER_READONLY", "0")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert!(req.writable);
        // Both of a pair on the command line is an error naming both.
        let mut src = with_env(&[image]);
        src.options.insert(OPT_WRITABLE, "");
        src.options.insert(OPT_READONLY, "");
        let e = ContainerRequest::from_source(&src, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--container-writable and --container-readonly both given"
        );
        let src = with_env(&[image, ("SIFRUN_CONTAINER_REMAP_ROOT", "maybe")]);
        assert!(ContainerRequest::from_source(&src, true).is_err());
    }

    #[test]
    fn the_command_line_image_wins_over_the_environment_default() {
        let src = with_env(&[
            ("SIFRUN_SIF_IMAGE", "/env.sif"),
            ("SLURM_CONTAINER", "/cli.sif"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/cli.sif"));
        let mut src = with_env(&[
            ("SIFRUN_SIF_IMAGE", "/env.sif"),
            ("SLURM_CONTAINER", "/cli.sif"),
        ]);
        src.options.insert(OPT_IMAGE, "/opt.sif");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/opt.sif"));
        let src = with_env(&[("SIFRUN_SIF_IMAGE", "/env.sif")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::from("/env.sif"));
    }

    #[test]
    fn workdir_is_taken_from_the_container_root_and_never_leaves_it() {
        for (given, taken) in [
            ("/work", "/work"),
            ("sub/dir", "/sub/dir"),
            ("../", "/"),
            ("../../etc", "/etc"),
            ("/a/../../b/./c", "/b/c"),
            (".", "/"),
        ] {
            assert_eq!(container_path(given), PathBuf::from(taken), "{given}");
        }
    }

    #[test]
    fn empty_values_and_entries_are_refused() {
        for (option, value) in [
            (OPT_MOUNTS, ""),
            (OPT_MOUNTS, "/a,"),
            (OPT_ENV, ""),
            (OPT_ENV, "FOO,"),
            (OPT_ENV, ",FOO"),
        ] {
            let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
            src.options.insert(option, value);
            let e = ContainerRequest::from_source(&src, true).unwrap_err();
            assert!(e.to_string().contains("empty"), "{option}={value:?}: {e}");
        }
        // An empty variable is unset, not an error.
        let src = with_env(&[("SLURM_CONTAINER", "/a.sif"), ("SIFRUN_CONTAINER_ENV", "")]);
        assert!(ContainerRequest::from_source(&src, true).is_ok());
    }

    #[test]
    fn a_named_container_needs_no_image_and_a_plain_name() {
        let mut src = with_env(&[]);
        src.options.insert(OPT_NAME, "build-env:exec");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.image, PathBuf::new());
        assert_eq!(
            req.name,
            Some(ContainerName {
                name: "build-env".into(),
                mode: NameMode::Exec
            })
        );
        for bad in [
            "",
            ".x",
            "a/b",
            "../x",
            "x:no_exec",
            "x:later",
            &"n".repeat(65),
        ] {
            assert!(ContainerName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(ContainerName::parse("x").unwrap().mode, NameMode::Auto);
        assert_eq!(
            ContainerName::parse("x:create").unwrap().mode,
            NameMode::Create
        );
        // Without an image or a name, no container.
        assert_eq!(
            ContainerRequest::from_source(&with_env(&[]), true).unwrap(),
            None
        );
    }

    #[test]
    fn unshare_takes_pyxis_namespaces_only() {
        let image = ("SLURM_CONTAINER", "/a.sif");
        let mut src = with_env(&[image]);
        src.options.insert(OPT_UNSHARE, "net,uts,net");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.unshare, ["net", "uts"]);
        for bad in ["pid", "net,", "", "user"] {
            let mut src = with_env(&[image]);
            src.options.insert(OPT_UNSHARE, bad);
            assert!(
                ContainerRequest::from_source(&src, true).is_err(),
                "{bad:?} accepted"
            );
        }
        let src = with_env(&[image, ("SIFRUN_CONTAINER_UNSHARE", "ipc")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.unshare, ["ipc"]);
    }

    #[test]
    fn options_are_checked_without_an_image() {
        let mut src = Fake::default();
        src.options.insert(OPT_MOUNTS, "rel:/x");
        assert!(ContainerRequest::options_only(&src).is_err());
        assert_eq!(ContainerRequest::from_source(&src, true).unwrap(), None);
    }

    #[test]
    fn key_file_resolves_against_job_cwd_and_has_an_env_default() {
        let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif"), ("PWD", "/home/u")]);
        src.options.insert(OPT_KEY_FILE, "keys/priv.pem");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.key_file, Some(PathBuf::from("/home/u/keys/priv.pem")));
        let src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_KEY_FILE", "/k/pass.txt"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.key_file, Some(PathBuf::from("/k/pass.txt")));
        let src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_KEY_FILE", "pass.txt"),
        ]);
        assert!(matches!(
            ContainerRequest::from_source(&src, true),
            Err(RequestError::RelativeKeyFile(_))
        ));
        let src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.key_file, None);
    }

    #[test]
    fn app_is_one_name_from_the_option_or_its_env_default() {
        let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
        src.options.insert(OPT_APP, "hello");
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.app.as_deref(), Some("hello"));
        let src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_APP", "other"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.app.as_deref(), Some("other"));
        for bad in ["../etc", "a/b", ".x"] {
            let mut src = with_env(&[("SLURM_CONTAINER", "/a.sif")]);
            src.options.insert(OPT_APP, bad);
            let e = ContainerRequest::from_source(&src, true).unwrap_err();
            assert!(e.to_string().starts_with("--container-app: "), "{e}");
        }
    }

    #[test]
    fn env_default_names() {
        assert_eq!(env_default_for(OPT_MOUNTS), "SIFRUN_CONTAINER_MOUNTS");
        assert_eq!(
            env_default_for(OPT_NO_MOUNT_HOME),
            "SIFRUN_CONTAINER_MOUNT_HOME"
        );
        assert_eq!(env_default_for(OPT_IMAGE), "SIFRUN_SIF_IMAGE");
    }
}
