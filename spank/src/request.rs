//! What the job asked for: the image and the `--container-*` options.
//!
//! Everything here comes from the job user and is treated as untrusted input:
//! it is only parsed and validated. Paths are resolved later, with the job
//! user's credentials, by the `sifrun` helper that builds the container.

use sifrun_runtime::container::env::is_valid_name;
use sifrun_runtime::container::image_env::scif::AppName;
use sifrun_runtime::container::mount::rootfs::BindMount;
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

/// One `SRC[:DST[:ro|rw]]` entry of `--container-mounts`: the grammar of
/// `sifrun --bind` (the helper parses it back with the same code), plus what
/// root code must be able to rely on: both paths absolute, without `..`.
pub fn parse_mount(spec: &str) -> Result<BindMount, RequestError> {
    let bad = |why: String| RequestError::BadMount {
        spec: spec.to_string(),
        why,
    };
    let mount = BindMount::parse_unresolved(spec).map_err(|e| bad(e.message().to_string()))?;
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
        let image = src.option_or_env(OPT_IMAGE).or_else(|| {
            if use_builtin {
                src.env(SLURM_CONTAINER_ENV).filter(|v| names_sif_image(v))
            } else {
                None
            }
        });
        let Some(image) = image else {
            return Ok(None);
        };
        let image = absolute_image_path(image.trim(), src.env("PWD").as_deref())?;
        let mut request = ContainerRequest::options_only(src)?;
        request.image = image;
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
        let mounts = src
            .option_or_env(OPT_MOUNTS)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(parse_mount)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

        let workdir = match src.option_or_env(OPT_WORKDIR) {
            None => None,
            Some(dir) if dir.starts_with('/') => Some(PathBuf::from(dir)),
            Some(dir) => {
                return Err(RequestError::BadValue {
                    option: OPT_WORKDIR,
                    why: format!("{dir:?} is not an absolute path"),
                })
            }
        };

        let host_env = src
            .option_or_env(OPT_ENV)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|name| {
                        if is_valid_name(name) {
                            Ok(name.to_string())
                        } else {
                            Err(RequestError::BadValue {
                                option: OPT_ENV,
                                why: format!("{name:?} is not a variable name"),
                            })
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

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
        let writable = switch(src, OPT_WRITABLE, OPT_READONLY)?.unwrap_or(false);
        let mount_home = switch(src, OPT_MOUNT_HOME, OPT_NO_MOUNT_HOME)?;
        let remap_root = switch(src, OPT_REMAP_ROOT, OPT_NO_REMAP_ROOT)?.unwrap_or(false);
        let entrypoint = switch(src, OPT_ENTRYPOINT, OPT_NO_ENTRYPOINT)?.unwrap_or(false);

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
        })
    }
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
