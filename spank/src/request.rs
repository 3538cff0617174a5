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
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("--container-mounts entry {spec:?}: {why}")]
    BadMount { spec: String, why: String },
    #[error("--{option}: {why}")]
    BadValue { option: &'static str, why: String },
    #[error("--container-mount-home and --no-container-mount-home both given")]
    ConflictingHome,
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
        let writable = parse_flag(src, OPT_WRITABLE)?.unwrap_or(false);
        let mount_home = match (
            src.option(OPT_MOUNT_HOME).is_some(),
            src.option(OPT_NO_MOUNT_HOME).is_some(),
        ) {
            (true, true) => return Err(RequestError::ConflictingHome),
            (true, false) => Some(true),
            (false, true) => Some(false),
            (false, false) => parse_flag(src, OPT_MOUNT_HOME)?,
        };

        Ok(ContainerRequest {
            image: PathBuf::new(),
            mounts,
            workdir,
            host_env,
            writable,
            mount_home,
            key_file: None,
            app,
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
            Err(RequestError::ConflictingHome)
        );
        let src = with_env(&[
            ("SLURM_CONTAINER", "/a.sif"),
            ("SIFRUN_CONTAINER_MOUNT_HOME", "0"),
        ]);
        let req = ContainerRequest::from_source(&src, true).unwrap().unwrap();
        assert_eq!(req.mount_home, Some(false));
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
