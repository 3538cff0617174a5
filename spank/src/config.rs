//! Admin settings: plugstack.conf arguments and an optional TOML file.
//!
//! plugstack.conf line, for example:
//! `required /usr/lib/sifrun/libsifrun_spank.so config=/etc/slurm/sifrun.toml`
//! Arguments of the form `key=value` override the same key from the file, so
//! a site can keep one file and tweak a partition's plugstack.

use serde::Deserialize;
use sifrun_runtime::node::helper::protocol;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the `sifrun` binary is expected when the admin does not say.
pub const DEFAULT_SIFRUN: &str = "/usr/local/bin/sifrun";

/// Settings that only the admin controls. Nothing here comes from the job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Root-owned `sifrun` binary that builds the per-node container.
    pub sifrun: PathBuf,
    /// Node-local state (locks, caches). Must not be on a shared filesystem.
    pub state_dir: PathBuf,
    /// Whether the job user's home directory is mounted by default.
    pub mount_home: bool,
    /// Binds added to every container (`SRC:DST[:ro]`), after the user's.
    pub default_binds: Vec<String>,
    /// Upper bound on building the container for a step, in seconds.
    pub setup_timeout_secs: u64,
    /// Honour Slurm's own `--container` when it names a SIF file.
    pub use_builtin_container_option: bool,
    /// Seconds an image stays mounted in the node cache after its last step
    /// ends; 0 turns the cache off (each step mounts its own copy).
    pub cache_idle_secs: u64,
    /// Keep a step's container for the job's later steps on the node that
    /// ask for the same one (see `node::kept_containers`).
    pub keep_containers: bool,
    /// Set PyTorch's distributed variables (RANK, WORLD_SIZE,
    /// MASTER_ADDR, ...) from Slurm's in every container task.
    pub pytorch_env: bool,
    /// Site file of per-partition execution control lists (see
    /// `sifrun ecl check`); none: any image the user can read runs.
    pub ecl_config: Option<PathBuf>,
    /// Slurm's configuration, read for `SlurmdSpoolDir` and `TmpFS` (the
    /// PMIx rendezvous directories bound into containers of PMIx steps).
    pub slurm_conf: PathBuf,
    /// Pass the step's GPUs (Slurm's allocation) and the host driver's
    /// files into containers.
    pub gpus: bool,
    /// Driver file list in Apptainer's nvliblist.conf format (root-owned);
    /// none: sifrun's built-in list.
    pub gpu_list: Option<PathBuf>,
    /// Pass the node's InfiniBand/RDMA devices into containers.
    pub rdma: bool,
    /// Under an ECL, images the user could still change are copied into
    /// `state_dir` (usually RAM) to be verified: the largest image copied,
    /// in MiB (0: only the space free limits it)...
    pub copy_limit_mib: u64,
    /// ...and the most one user's copies may take on a node, in MiB (0: no
    /// per-user share). 10% of the filesystem is always kept free.
    pub copy_quota_mib: u64,
    /// ...and where they go (empty: the cache entry in `state_dir`).
    pub copy_dir: PathBuf,
    /// Images the node cache keeps mounted (0: no limit); idle ones are
    /// unmounted, least recently used first, to make room...
    pub cache_max_images: usize,
    /// ...and images first mounted for one user (0: no limit).
    pub cache_max_images_per_user: usize,
    /// Largest overlay partition unpacked for a step, in MiB (0: images
    /// with an overlay partition are refused).
    pub overlay_max_mib: u64,
    /// Where the job's own mount namespace is, when Slurm gives each job
    /// one (its private /tmp and /dev/shm become the container's):
    /// `auto` (from slurm.conf and the namespace plugin's file), `none`,
    /// or a path template (`%j` job id, `%n` node name).
    pub job_namespace: String,
    /// Users may run a batch script in its container
    /// (`sbatch --container-batch`), with the host's Slurm commands bound
    /// in (see `batch_client`).
    pub batch_in_container: bool,
    /// Where the host's Slurm commands (srun, sbatch, squeue, ...) are.
    pub slurm_bin_dir: PathBuf,
    /// Further host paths Slurm's client needs at their own path in such a
    /// container (a configless cache, a site's auth socket); slurm.conf's
    /// directory, its plugin directories, plugstack.conf's plugins and
    /// munge's socket are found without being named.
    pub batch_client_paths: Vec<PathBuf>,
    /// CDI spec directories, lowest priority first (root-owned; empty:
    /// CDI off). The step's GPUs go through CDI when a spec of their kind
    /// exists, else through the built-in driver list.
    pub cdi_dirs: Vec<PathBuf>,
    /// CDI devices users may ask for with `--container-devices`:
    /// `vendor.com/class=name`, or `vendor.com/class=*` for a whole kind.
    pub cdi_user_devices: Vec<String>,
    /// Directory of the site's hooks (`NAME.sh`, root's).
    pub hooks_dir: PathBuf,
    /// Site hooks run for every container, in order.
    pub hooks: Vec<String>,
    /// Site hooks users may ask for with `--container-hooks`.
    pub user_hooks: Vec<String>,
    /// Site hooks run for the jobs of a partition (the partition is asked
    /// of slurmctld). TOML only: `[partition_hooks]` `gpu = ["nccl"]`.
    pub partition_hooks: std::collections::BTreeMap<String, Vec<String>>,
    /// Limit on each site hook, in seconds.
    pub hook_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sifrun: PathBuf::from(DEFAULT_SIFRUN),
            state_dir: PathBuf::from(sifrun_runtime::container::staging::STAGING_BASE),
            mount_home: true,
            default_binds: Vec::new(),
            setup_timeout_secs: 120,
            use_builtin_container_option: true,
            cache_idle_secs: protocol::DEFAULT_CACHE_IDLE_SECS,
            keep_containers: true,
            pytorch_env: false,
            ecl_config: None,
            slurm_conf: PathBuf::from("/etc/slurm/slurm.conf"),
            gpus: true,
            gpu_list: None,
            rdma: true,
            copy_limit_mib: protocol::DEFAULT_COPY_LIMIT_MIB,
            copy_dir: PathBuf::from(protocol::DEFAULT_COPY_DIR),
            copy_quota_mib: 0,
            cache_max_images: protocol::DEFAULT_CACHE_MAX_IMAGES,
            cache_max_images_per_user: protocol::DEFAULT_CACHE_MAX_IMAGES_PER_USER,
            overlay_max_mib: sifrun_runtime::container::overlay_partition::DEFAULT_MAX_MIB,
            job_namespace: "auto".to_string(),
            batch_in_container: true,
            slurm_bin_dir: PathBuf::from("/usr/bin"),
            batch_client_paths: Vec::new(),
            cdi_dirs: sifrun_runtime::container::cdi::DEFAULT_DIRS
                .iter()
                .map(PathBuf::from)
                .collect(),
            cdi_user_devices: Vec::new(),
            hooks_dir: PathBuf::from(sifrun_runtime::node::site_hooks::DEFAULT_DIR),
            hooks: Vec::new(),
            user_hooks: Vec::new(),
            partition_hooks: Default::default(),
            hook_timeout_secs: protocol::DEFAULT_HOOK_TIMEOUT_SECS,
        }
    }
}

/// Errors in the admin's configuration; they fail every container step with
/// a message that names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("plugstack.conf argument {0:?}: expected key=value")]
    BadArgument(String),
    #[error("plugstack.conf argument {key}: {message}")]
    BadValue { key: String, message: String },
    #[error("plugstack.conf argument {0:?}: unknown key")]
    UnknownKey(String),
}

impl Config {
    /// Build the configuration from the plugin's plugstack.conf arguments.
    pub fn from_plugin_args<S: AsRef<str>>(args: &[S]) -> Result<Config, ConfigError> {
        let mut pairs = Vec::new();
        for arg in args {
            let arg = arg.as_ref();
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| ConfigError::BadArgument(arg.to_string()))?;
            pairs.push((key.to_string(), value.to_string()));
        }
        let mut config = match pairs.iter().find(|(k, _)| k == "config") {
            Some((_, path)) => Config::from_file(Path::new(path))?,
            None => Config::default(),
        };
        for (key, value) in pairs.iter().filter(|(k, _)| k != "config") {
            config.set(key, value)?;
        }
        config.check()?;
        Ok(config)
    }

    /// Read a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |message: &str| ConfigError::BadValue {
            key: key.to_string(),
            message: message.to_string(),
        };
        let parse_bool = |v: &str| match v {
            "1" | "yes" | "true" => Ok(true),
            "0" | "no" | "false" => Ok(false),
            _ => Err(bad("expected yes or no")),
        };
        match key {
            "sifrun" => self.sifrun = PathBuf::from(value),
            "state_dir" => self.state_dir = PathBuf::from(value),
            "mount_home" => self.mount_home = parse_bool(value)?,
            "keep_containers" => self.keep_containers = parse_bool(value)?,
            "pytorch_env" => self.pytorch_env = parse_bool(value)?,
            "use_builtin_container_option" => {
                self.use_builtin_container_option = parse_bool(value)?
            }
            "default_binds" => {
                self.default_binds = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "setup_timeout_secs" => {
                self.setup_timeout_secs = value
                    .parse()
                    .map_err(|_| bad("expected a number of seconds"))?
            }
            "slurm_conf" => self.slurm_conf = PathBuf::from(value),
            "job_namespace" => self.job_namespace = value.to_string(),
            "batch_in_container" => self.batch_in_container = parse_bool(value)?,
            "slurm_bin_dir" => self.slurm_bin_dir = PathBuf::from(value),
            "cdi_dirs" => self.cdi_dirs = comma_list(value).map(PathBuf::from).collect(),
            "cdi_user_devices" => {
                self.cdi_user_devices = comma_list(value).map(str::to_string).collect()
            }
            "hooks_dir" => self.hooks_dir = PathBuf::from(value),
            "hooks" => self.hooks = comma_list(value).map(str::to_string).collect(),
            "user_hooks" => self.user_hooks = comma_list(value).map(str::to_string).collect(),
            "hook_timeout_secs" => {
                self.hook_timeout_secs = value
                    .parse()
                    .map_err(|_| bad("expected a number of seconds"))?
            }
            "partition_hooks" => return Err(bad("set it in the TOML file ([partition_hooks])")),
            "batch_client_paths" => {
                self.batch_client_paths = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }
            "gpus" => self.gpus = parse_bool(value)?,
            "rdma" => self.rdma = parse_bool(value)?,
            "gpu_list" => {
                self.gpu_list = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            "ecl_config" => {
                self.ecl_config = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            "copy_limit_mib" => {
                self.copy_limit_mib = value.parse().map_err(|_| bad("expected a number of MiB"))?
            }
            "copy_dir" => {
                let dir = PathBuf::from(value);
                if !(dir.as_os_str().is_empty() || dir.is_absolute()) {
                    return Err(bad("expected an absolute path, or nothing"));
                }
                self.copy_dir = dir
            }
            "copy_quota_mib" => {
                self.copy_quota_mib = value.parse().map_err(|_| bad("expected a number of MiB"))?
            }
            "overlay_max_mib" => {
                self.overlay_max_mib = value.parse().map_err(|_| bad("expected a number of MiB"))?
            }
            "cache_max_images" => {
                self.cache_max_images = value.parse().map_err(|_| bad("expected a number"))?
            }
            "cache_max_images_per_user" => {
                self.cache_max_images_per_user =
                    value.parse().map_err(|_| bad("expected a number"))?
            }
            "cache_idle_secs" => {
                self.cache_idle_secs = value
                    .parse()
                    .map_err(|_| bad("expected a number of seconds"))?
            }
            _ => return Err(ConfigError::UnknownKey(key.to_string())),
        }
        Ok(())
    }

    /// Checks what the plugin cannot leave to the helper: hook names.
    pub fn check(&self) -> Result<(), ConfigError> {
        use sifrun_runtime::node::site_hooks::is_hook_name;
        let all = self
            .hooks
            .iter()
            .chain(&self.user_hooks)
            .chain(self.partition_hooks.values().flatten());
        for name in all {
            if !is_hook_name(name) {
                return Err(ConfigError::BadValue {
                    key: "hooks".into(),
                    message: format!("{name:?} is not a hook name (a-z, 0-9, '-', '_')"),
                });
            }
        }
        Ok(())
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.setup_timeout_secs.max(1))
    }
}

/// The non-empty items of a comma-separated plugstack value.
fn comma_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_arguments() {
        let c = Config::from_plugin_args::<&str>(&[]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn arguments_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sifrun.toml");
        std::fs::write(
            &file,
            "sifrun = \"/opt/sifrun/bin/sifrun\"\nmount_home = false\nsetup_timeout_secs = 30\n",
        )
        .unwrap();
        let args = [
            format!("config={}", file.display()),
            "mount_home=yes".into(),
        ];
        let c = Config::from_plugin_args(&args).unwrap();
        assert_eq!(c.sifrun, PathBuf::from("/opt/sifrun/bin/sifrun"));
        assert!(c.mount_home);
        assert_eq!(c.setup_timeout(), Duration::from_secs(30));
        let c = Config::from_plugin_args(&["overlay_max_mib=0"]).unwrap();
        assert_eq!(c.overlay_max_mib, 0);
        assert!(Config::from_plugin_args(&["overlay_max_mib=lots"]).is_err());
        // Copies for verification: on the node's disk unless told otherwise.
        assert_eq!(
            Config::default().copy_dir,
            PathBuf::from(protocol::DEFAULT_COPY_DIR)
        );
        let c = Config::from_plugin_args(&["copy_dir="]).unwrap();
        assert_eq!(c.copy_dir, PathBuf::new());
        assert!(Config::from_plugin_args(&["copy_dir=relative/dir"]).is_err());
    }

    #[test]
    fn batch_client_settings_and_the_shipped_example_file() {
        let c = Config::from_plugin_args(&[
            "batch_in_container=no",
            "slurm_bin_dir=/opt/slurm/bin",
            "batch_client_paths=/run/slurm/conf,/var/run/auth",
        ])
        .unwrap();
        assert!(!c.batch_in_container);
        assert_eq!(c.slurm_bin_dir, PathBuf::from("/opt/slurm/bin"));
        assert_eq!(
            c.batch_client_paths,
            [PathBuf::from("/run/slurm/conf"), "/var/run/auth".into()]
        );
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/slurm/sifrun.toml");
        Config::from_file(&example).unwrap();
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "mount_hme = true\n").unwrap();
        let err = Config::from_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("mount_hme"),
            "{err}"
        );
    }

    #[test]
    fn malformed_arguments_are_refused() {
        assert!(matches!(
            Config::from_plugin_args(&["mount_home"]),
            Err(ConfigError::BadArgument(_))
        ));
        assert!(matches!(
            Config::from_plugin_args(&["mount_home=maybe"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            Config::from_plugin_args(&["colour=blue"]),
            Err(ConfigError::UnknownKey(_))
        ));
    }
}
