//! The one contract between the SPANK plugin and `sifrun slurm-setup`,
//! written once for both ends:
//!
//! * the request is the helper's command line: the plugin fills a
//!   [`SetupArgs`] and renders it with [`SetupArgs::to_args`], the helper
//!   parses the same struct with clap (`sifrun slurm-setup --help` lists
//!   it); a round-trip test keeps the two in step;
//! * the answer is one [`SetupReport`] as a JSON line on the helper's
//!   stdout, serialized and read by the same struct.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::node::image_cache::CacheLimits;
use crate::node::job_namespace::JobNamespace;

/// Defaults of `--cache-idle-secs` and the cache limits, as clap applies
/// them, [`SetupArgs::new`] starts from and the plugin's configuration
/// (`cache_idle_secs`, `cache_max_images`, `cache_max_images_per_user`)
/// takes when the admin sets none. `--state-dir` defaults to
/// [`crate::container::staging::STAGING_BASE`].
pub const DEFAULT_CACHE_IDLE_SECS: u64 = 300;
pub const DEFAULT_CACHE_MAX_IMAGES: usize = 512;
pub const DEFAULT_CACHE_MAX_IMAGES_PER_USER: usize = 64;
/// Default of `--copy-limit-mib` and the plugin's `copy_limit_mib`: under
/// an ECL, images the user could change are copied whole into the node's
/// state directory (usually RAM) before verification, on every node of a
/// job (docs/scale.md): bounded unless the admin says otherwise.
pub const DEFAULT_COPY_LIMIT_MIB: u64 = 4096;
/// Default of `--copy-dir` and the plugin's `copy_dir`: where those copies
/// go, on the node's disk rather than in `state_dir` (a tmpfs, so RAM, on
/// most nodes). Empty: in the cache entry under `state_dir`.
pub const DEFAULT_COPY_DIR: &str = "/var/lib/sifrun/copies";
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 30;

/// The request: what one step's container needs on this node.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SetupArgs {
    /// Job user ID.
    #[arg(long)]
    pub uid: u32,
    /// Job primary group ID.
    #[arg(long)]
    pub gid: u32,
    /// Job supplementary group IDs, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// Job working directory (bound at the same path if the user can reach it).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// User bind `SRC[:DST[:ro]]` (resolved with the job user's credentials).
    #[arg(long = "bind", value_name = "SPEC")]
    pub binds: Vec<String>,
    /// Admin bind `SRC[:DST[:ro]]` from the plugin configuration.
    #[arg(long = "admin-bind", value_name = "SPEC")]
    pub admin_binds: Vec<String>,
    /// Node directory the step needs (PMIx), `SRC[:DST[:ro]]`, resolved with
    /// the job user's credentials.
    #[arg(long = "step-bind", value_name = "SPEC")]
    pub step_binds: Vec<String>,
    /// Directory that must exist inside the container.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Do not bind the user's home directory.
    #[arg(long)]
    pub no_home: bool,
    /// Writable root (changes kept in memory).
    #[arg(long)]
    pub writable_tmpfs: bool,
    /// Node-local state directory (staging mount points live here).
    #[arg(long, default_value = crate::container::staging::STAGING_BASE)]
    pub state_dir: PathBuf,
    /// Keep the image mounted in the node cache for this many idle seconds
    /// (0: no cache, the step mounts its own copy).
    #[arg(long, default_value_t = DEFAULT_CACHE_IDLE_SECS)]
    pub cache_idle_secs: u64,
    /// Site ECL file: the job's partition decides which list applies.
    #[arg(long, value_name = "FILE", requires = "job_id")]
    pub ecl_config: Option<PathBuf>,
    /// The job (its partition is asked from slurmctld under an ECL; kept
    /// containers belong to it).
    #[arg(long)]
    pub job_id: Option<u32>,
    /// Keep this container for the job's later steps on this node, or join
    /// one an earlier step kept (see `node::kept_containers`).
    #[arg(long, requires = "job_id")]
    pub keep: bool,
    /// The job's restart count (a requeued job may change partition).
    #[arg(long, default_value_t = 0)]
    pub restart_count: u32,
    /// The step's GPUs on this node (Slurm's SLURM_STEP_GPUS numbers).
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub gpus: Vec<u32>,
    /// Do not bind the host GPU driver's libraries and tools.
    #[arg(long)]
    pub no_gpu_driver: bool,
    /// Driver file list in nvliblist.conf format (root-owned).
    #[arg(long, value_name = "FILE")]
    pub gpu_list: Option<PathBuf>,
    /// Bind the node's InfiniBand/RDMA devices (/dev/infiniband/*).
    #[arg(long)]
    pub rdma: bool,
    /// Key of an encrypted image (PEM private key or passphrase file),
    /// opened with the job user's credentials.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Under an ECL: largest image (its objects) copied for verification,
    /// in MiB (0: only free space limits it).
    #[arg(long, default_value_t = DEFAULT_COPY_LIMIT_MIB, value_name = "MIB")]
    pub copy_limit_mib: u64,
    /// Under an ECL: all copies one user may hold on the node, in MiB (0:
    /// no share).
    #[arg(long, default_value_t = 0, value_name = "MIB")]
    pub copy_quota_mib: u64,
    /// A fresh tmpfs at a container path: `DST[:size=N+mode=OCTAL]`
    /// (repeatable; pyxis' `tmpfs:` mounts).
    #[arg(long, value_name = "DST[:OPTIONS]")]
    pub tmpfs: Vec<String>,
    /// A container path to unmount once everything is mounted (repeatable;
    /// pyxis' `umount:` mounts).
    #[arg(long, value_name = "DST")]
    pub umount: Vec<String>,
    /// Keep the container for the job's later steps on this node under
    /// this name (`--container-name`): they join it whatever they ask
    /// for, and what one step writes in it (`--writable-tmpfs`) the next
    /// sees.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Namespaces the container gets of its own besides the mount
    /// namespace: net, ipc, uts (`--container-unshare`).
    #[arg(long, value_delimiter = ',', value_name = "NS,...")]
    pub unshare: Vec<String>,
    /// Run the image's OCI entrypoint once, before the tasks, and give them
    /// the environment it leaves (`--container-entrypoint`).
    #[arg(long)]
    pub entrypoint: bool,
    /// Under an ECL: the directory for those copies (root-owned, created
    /// 0700 when missing); empty: the cache entry under --state-dir.
    #[arg(long, default_value = DEFAULT_COPY_DIR, value_name = "DIR")]
    pub copy_dir: PathBuf,
    /// Give up (the process kills itself) after this many seconds (0: never).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub timeout_secs: u64,
    /// Images the node cache keeps mounted (0: no limit).
    #[arg(long, default_value_t = DEFAULT_CACHE_MAX_IMAGES, value_name = "N")]
    pub cache_max_images: usize,
    /// Images the node cache keeps mounted for one user (0: no limit).
    #[arg(long, default_value_t = DEFAULT_CACHE_MAX_IMAGES_PER_USER, value_name = "N")]
    pub cache_max_images_per_user: usize,
    /// Largest overlay partition unpacked, in MiB (0: refuse images that
    /// have one).
    #[arg(long, default_value_t = crate::container::overlay_partition::DEFAULT_MAX_MIB, value_name = "MIB")]
    pub overlay_max_mib: u64,
    /// SCIF app whose environment the tasks get (`--container-app`).
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// The job's mount namespace file, from Slurm's namespace plugin
    /// (`job_container/tmpfs`, `namespace/linux`): the job's private /tmp,
    /// /var/tmp and /dev/shm are taken from it.
    #[arg(long, value_name = "FILE", conflicts_with = "in_job_namespace")]
    pub job_namespace: Option<PathBuf>,
    /// slurmstepd runs inside the job's mount namespace already
    /// (`namespace/linux`): the job's /dev/shm is taken from there.
    #[arg(long)]
    pub in_job_namespace: bool,
    /// CDI spec directories, lowest priority first (none: CDI is off and
    /// GPUs get the built-in driver list).
    #[arg(long = "cdi-dir", value_name = "DIR")]
    pub cdi_dirs: Vec<PathBuf>,
    /// CDI devices the user asked for (`vendor.com/class=name`), already
    /// allowed by the admin's list.
    #[arg(long = "cdi-device", value_name = "NAME")]
    pub cdi_devices: Vec<String>,
    /// Directory of the site's hooks (`NAME.sh`).
    #[arg(long, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,
    /// Site hooks to run, in order: the admin's, then those the user
    /// asked for and the admin allows.
    #[arg(long = "hook", value_name = "NAME")]
    pub hooks: Vec<String>,
    /// `PARTITION=NAME,...`: site hooks for the jobs of a partition (asked
    /// of slurmctld, never taken from the job).
    #[arg(long = "partition-hooks", value_name = "PARTITION=NAME,...")]
    pub partition_hooks: Vec<String>,
    /// `NAME=VALUE`: the job's Slurm variables, for site hooks (data only:
    /// the job chose them).
    #[arg(long = "hook-env", value_name = "NAME=VALUE")]
    pub hook_env: Vec<String>,
    /// Limit on each site hook, in seconds.
    #[arg(long, default_value_t = DEFAULT_HOOK_TIMEOUT_SECS, value_name = "SECS")]
    pub hook_timeout_secs: u64,
    /// Slurm's `scontrol`, to ask for the job's partition
    /// (`--partition-hooks`).
    #[arg(long, default_value = "/usr/bin/scontrol", value_name = "FILE")]
    pub scontrol: PathBuf,
    /// The SIF image.
    pub image: PathBuf,
}

impl SetupArgs {
    /// Whether a `--bind` entry's source is an image to mount beside the
    /// main one (`data.sif:/data`) rather than a path to bind: its name
    /// ends in `.sif`.
    pub fn is_image_bind(spec: &str) -> bool {
        let source = spec.split(':').next().unwrap_or_default();
        Path::new(source)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("sif"))
    }

    /// Whether the request binds an image beside the main one.
    pub fn has_image_binds(&self) -> bool {
        self.binds.iter().any(|b| Self::is_image_bind(b))
    }
}

impl SetupArgs {
    /// A request for `image` as user `uid`/`gid` with every other field at
    /// its command-line default.
    pub fn new(image: PathBuf, uid: u32, gid: u32) -> Self {
        SetupArgs {
            uid,
            gid,
            groups: Vec::new(),
            cwd: None,
            binds: Vec::new(),
            admin_binds: Vec::new(),
            step_binds: Vec::new(),
            workdir: None,
            no_home: false,
            writable_tmpfs: false,
            state_dir: PathBuf::from(crate::container::staging::STAGING_BASE),
            cache_idle_secs: DEFAULT_CACHE_IDLE_SECS,
            ecl_config: None,
            job_id: None,
            keep: false,
            restart_count: 0,
            gpus: Vec::new(),
            no_gpu_driver: false,
            gpu_list: None,
            rdma: false,
            key_file: None,
            copy_limit_mib: DEFAULT_COPY_LIMIT_MIB,
            copy_quota_mib: 0,
            copy_dir: PathBuf::from(DEFAULT_COPY_DIR),
            entrypoint: false,
            unshare: Vec::new(),
            name: None,
            tmpfs: Vec::new(),
            umount: Vec::new(),
            overlay_max_mib: crate::container::overlay_partition::DEFAULT_MAX_MIB,
            app: None,
            job_namespace: None,
            in_job_namespace: false,
            timeout_secs: 0,
            cache_max_images: DEFAULT_CACHE_MAX_IMAGES,
            cache_max_images_per_user: DEFAULT_CACHE_MAX_IMAGES_PER_USER,
            cdi_dirs: Vec::new(),
            cdi_devices: Vec::new(),
            hooks_dir: None,
            hooks: Vec::new(),
            partition_hooks: Vec::new(),
            hook_env: Vec::new(),
            hook_timeout_secs: DEFAULT_HOOK_TIMEOUT_SECS,
            scontrol: PathBuf::from("/usr/bin/scontrol"),
            image,
        }
    }

    /// The helper's argument vector (after the program name): every value
    /// as `--name=value`, so that no value is ever taken for an option, and
    /// the image after `--`.
    pub fn to_args(&self) -> Vec<String> {
        fn list<T: ToString>(items: &[T]) -> String {
            items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        let path = |p: &PathBuf| p.display().to_string();
        let mut args = vec![
            "slurm-setup".to_string(),
            format!("--uid={}", self.uid),
            format!("--gid={}", self.gid),
        ];
        let mut opt = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                args.push(format!("--{name}={v}"));
            }
        };
        opt(
            "groups",
            (!self.groups.is_empty()).then(|| list(&self.groups)),
        );
        opt("cwd", self.cwd.as_ref().map(path));
        for b in &self.binds {
            opt("bind", Some(b.clone()));
        }
        for b in &self.admin_binds {
            opt("admin-bind", Some(b.clone()));
        }
        for b in &self.step_binds {
            opt("step-bind", Some(b.clone()));
        }
        opt("workdir", self.workdir.as_ref().map(path));
        opt("state-dir", Some(path(&self.state_dir)));
        opt("cache-idle-secs", Some(self.cache_idle_secs.to_string()));
        opt("cache-max-images", Some(self.cache_max_images.to_string()));
        opt(
            "cache-max-images-per-user",
            Some(self.cache_max_images_per_user.to_string()),
        );
        opt("ecl-config", self.ecl_config.as_ref().map(path));
        opt("job-id", self.job_id.map(|j| j.to_string()));
        opt("restart-count", Some(self.restart_count.to_string()));
        opt("copy-limit-mib", Some(self.copy_limit_mib.to_string()));
        opt("copy-quota-mib", Some(self.copy_quota_mib.to_string()));
        opt("copy-dir", Some(path(&self.copy_dir)));
        opt("name", self.name.clone());
        for t in &self.tmpfs {
            opt("tmpfs", Some(t.clone()));
        }
        for u in &self.umount {
            opt("umount", Some(u.clone()));
        }
        opt(
            "unshare",
            (!self.unshare.is_empty()).then(|| self.unshare.join(",")),
        );
        opt("overlay-max-mib", Some(self.overlay_max_mib.to_string()));
        opt("timeout-secs", Some(self.timeout_secs.to_string()));
        opt("gpus", (!self.gpus.is_empty()).then(|| list(&self.gpus)));
        opt("gpu-list", self.gpu_list.as_ref().map(path));
        opt("key-file", self.key_file.as_ref().map(path));
        opt("app", self.app.clone());
        opt("job-namespace", self.job_namespace.as_ref().map(path));
        for d in &self.cdi_dirs {
            opt("cdi-dir", Some(path(d)));
        }
        for d in &self.cdi_devices {
            opt("cdi-device", Some(d.clone()));
        }
        opt("hooks-dir", self.hooks_dir.as_ref().map(path));
        for h in &self.hooks {
            opt("hook", Some(h.clone()));
        }
        for h in &self.partition_hooks {
            opt("partition-hooks", Some(h.clone()));
        }
        for kv in &self.hook_env {
            opt("hook-env", Some(kv.clone()));
        }
        opt(
            "hook-timeout-secs",
            Some(self.hook_timeout_secs.to_string()),
        );
        opt("scontrol", Some(path(&self.scontrol)));
        for (flag, set) in [
            ("--no-home", self.no_home),
            ("--writable-tmpfs", self.writable_tmpfs),
            ("--no-gpu-driver", self.no_gpu_driver),
            ("--entrypoint", self.entrypoint),
            ("--rdma", self.rdma),
            ("--in-job-namespace", self.in_job_namespace),
            ("--keep", self.keep),
        ] {
            if set {
                args.push(flag.to_string());
            }
        }
        args.push("--".to_string());
        args.push(path(&self.image));
        args
    }
}

impl SetupArgs {
    /// Where the job's own mount namespace is, if it has one.
    pub fn job_namespace(&self) -> Option<JobNamespace> {
        match (&self.job_namespace, self.in_job_namespace) {
            (Some(file), _) => Some(JobNamespace::File(file.clone())),
            (None, true) => Some(JobNamespace::Current),
            (None, false) => None,
        }
    }

    /// Records `job_ns` in the two arguments that carry it.
    pub fn set_job_namespace(&mut self, job_ns: Option<JobNamespace>) {
        self.job_namespace = None;
        self.in_job_namespace = false;
        match job_ns {
            Some(JobNamespace::File(file)) => self.job_namespace = Some(file),
            Some(JobNamespace::Current) => self.in_job_namespace = true,
            None => {}
        }
    }

    /// The node cache's limits on mounted images.
    pub fn cache_limits(&self) -> CacheLimits {
        CacheLimits {
            per_node: self.cache_max_images,
            per_user: self.cache_max_images_per_user,
        }
    }
}

/// The answer: one JSON line on the helper's stdout once the container
/// root is ready (`ok`), or why not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupReport {
    pub ok: bool,
    /// One line for the user's srun, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The image's environment, applied to each task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
    /// Empty host directory the helper used as a mount point; the plugin
    /// removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<String>,
    /// Lock file of the node cache entry the container uses: the plugin
    /// holds a shared lock on it for the step's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_lock: Option<String>,
    /// `(variable, directory)` to append to each task's environment
    /// (driver libraries on `LD_LIBRARY_PATH`, tools on `PATH`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_append: Vec<(String, String)>,
    /// Directory of the container built for this step and kept for the
    /// job's later steps (its holder started): the plugin holds a shared
    /// lock on its `lock` for the step's lifetime. Later steps join it
    /// without the helper (`spank/src/kept.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
    /// Lock files of the cache entries of the images bound beside the
    /// main one (`--container-mounts=data.sif:/data`): held like
    /// `cache_lock`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_cache_locks: Vec<String>,
    /// The site's hooks that ran while the container was set up: the
    /// plugin runs them again when the step ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_hooks: Vec<String>,
}

/// Longest report line the plugin reads.
pub const MAX_REPORT_LINE: u64 = 1 << 20;

impl SetupReport {
    /// A failure report.
    pub fn failed(error: impl Into<String>) -> Self {
        SetupReport {
            ok: false,
            error: Some(error.into()),
            ..SetupReport::default()
        }
    }

    /// The report as one line (no newline).
    pub fn to_line(&self) -> String {
        // Strings and pairs of strings only: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"ok":false}"#.to_string())
    }

    /// Reads a report line.
    pub fn from_line(line: &str) -> Result<Self, String> {
        serde_json::from_str(line.trim())
            .map_err(|e| format!("unreadable helper report {line:?}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Helper {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        SlurmSetup(SetupArgs),
    }

    fn parse(args: &[String]) -> SetupArgs {
        let argv = std::iter::once("sifrun".to_string()).chain(args.iter().cloned());
        match Helper::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{e}"))
            .command
        {
            Command::SlurmSetup(a) => a,
        }
    }

    #[test]
    fn defaults_are_the_command_line_defaults() {
        let minimal = ["slurm-setup", "--uid", "1", "--gid", "2", "/i.sif"].map(String::from);
        assert_eq!(parse(&minimal), SetupArgs::new("/i.sif".into(), 1, 2));
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let mut a = SetupArgs::new("-odd image.sif".into(), 1001, 1002);
        a.groups = vec![1002, 27];
        a.cwd = Some("/home/u dir".into());
        a.binds = vec!["/data:/in:ro".into(), "-x:/y".into()];
        a.admin_binds = vec!["/etc/hosts:/etc/hosts:ro".into()];
        a.step_binds = vec!["/var/spool/slurmd:/var/spool/slurmd".into()];
        a.workdir = Some("/in".into());
        a.no_home = true;
        a.writable_tmpfs = true;
        a.state_dir = "/run/other".into();
        a.cache_idle_secs = 7;
        a.ecl_config = Some("/etc/slurm/ecl.toml".into());
        a.job_id = Some(42);
        a.keep = true;
        a.restart_count = 3;
        a.gpus = vec![0, 1];
        a.no_gpu_driver = true;
        a.entrypoint = true;
        a.name = Some("build-env".into());
        a.tmpfs = vec!["/scratch:size=1g".into()];
        a.umount = vec!["/home/u".into()];
        a.unshare = vec!["net".into(), "uts".into()];
        a.gpu_list = Some("/etc/nvliblist.conf".into());
        a.rdma = true;
        a.key_file = Some("/home/u/key.pem".into());
        a.copy_limit_mib = 64;
        a.copy_quota_mib = 128;
        a.app = Some("hello".into());
        a.job_namespace = Some("/var/spool/jobns/42/.ns".into());
        a.overlay_max_mib = 7;
        a.timeout_secs = 125;
        a.cache_max_images = 9;
        a.cache_max_images_per_user = 4;
        a.cdi_dirs = vec!["/etc/cdi".into(), "/var/run/cdi".into()];
        a.cdi_devices = vec!["vendor.example/nic=0".into()];
        a.hooks_dir = Some("/etc/sifrun/hooks.d".into());
        a.hooks = vec!["pytorch".into(), "mpi".into()];
        a.partition_hooks = vec!["gpu=nccl,mpi".into()];
        a.hook_env = vec!["SLURM_JOB_NAME=--odd=x".into()];
        a.hook_timeout_secs = 9;
        a.scontrol = "/opt/slurm/bin/scontrol".into();
        assert_eq!(parse(&a.to_args()), a);
        a.set_job_namespace(Some(JobNamespace::Current));
        assert_eq!(parse(&a.to_args()), a);
        assert_eq!(a.job_namespace(), Some(JobNamespace::Current));
    }

    #[test]
    fn reports_round_trip_and_stay_small() {
        let ready = SetupReport {
            ok: true,
            env: vec![("PATH".into(), "/opt/bin".into())],
            staging: Some("/run/sifrun/.stage-1".into()),
            cache_lock: Some("/run/sifrun/images/k/lock".into()),
            env_append: vec![("LD_LIBRARY_PATH".into(), "/.sifrun/gpu/lib".into())],
            kept: Some("/run/sifrun/containers/42-0123".into()),
            ..SetupReport::default()
        };
        assert_eq!(SetupReport::from_line(&ready.to_line()).unwrap(), ready);
        let failed = SetupReport::failed("/img/a.sif: permission denied");
        assert_eq!(
            failed.to_line(),
            r#"{"ok":false,"error":"/img/a.sif: permission denied"}"#
        );
        assert_eq!(SetupReport::from_line(&failed.to_line()).unwrap(), failed);
        assert!(SetupReport::from_line("not json").is_err());
    }
}
