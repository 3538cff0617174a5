//! Building the per-node container for a step through the `sifrun` helper.
//!
//! slurmstepd is multi-threaded, so the plugin never builds mounts itself
//! after a fork: it starts the root-owned `sifrun slurm-setup` program, which
//! opens the image with the job user's credentials, mounts it and builds the
//! container root in a new mount namespace, then reports one JSON line on
//! stdout and waits. The plugin opens `/proc/<pid>/ns/mnt` (that descriptor
//! pins the namespace for as long as slurmstepd lives: when slurmstepd exits,
//! even by SIGKILL, the namespace, its mounts and the loop device go away),
//! then closes the helper's stdin so it exits.

use crate::config::Config;
use crate::request::ContainerRequest;
use nix::fcntl::{Flock, FlockArg};
use sifrun_runtime::container::namespaces::{open_mount_namespace, open_namespace, Unshared};
use sifrun_runtime::node::helper::protocol::{SetupArgs, SetupReport, MAX_REPORT_LINE};
use sifrun_runtime::node::job_namespace::JobNamespace;
use sifrun_runtime::node::kept_containers::{KeptContainers, KeptLease};
use sifrun_runtime::phases::Phases;
use sifrun_runtime::process::wait_readable;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a step's container could not be built, as srun shows it (one line).
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The configured helper is missing or could be replaced by a non-root user.
    #[error("sifrun helper {}: {reason}", path.display())]
    Untrusted { path: PathBuf, reason: String },
    /// The helper could not be started.
    #[error("cannot start {}: {source}", path.display())]
    Start {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No report within the configured time (the helper is killed).
    #[error("container setup did not finish within {0} s")]
    Timeout(u64),
    /// The helper's own one-line error (the image, the ECL, a bind...).
    #[error("{0}")]
    Failed(String),
    /// The report was unreadable or named something it may not.
    #[error("reading helper report: {0}")]
    Report(String),
    /// The node cache entry the helper reported could not be held.
    #[error("{0}")]
    CacheLock(String),
    /// The container's namespace could not be pinned.
    #[error(transparent)]
    Namespace(#[from] sifrun_runtime::Error),
}
/// How much longer than the plugin's own wait the helper may live.
const HELPER_GRACE_SECS: u64 = 5;

/// The job identity the container is built for.
#[derive(Debug, Clone)]
pub struct JobUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The job's working directory (bound into the container).
    pub cwd: Option<String>,
    /// Job ID and restart count from slurmstepd (the helper asks
    /// slurmctld for the job's partition when an ECL is configured).
    pub job_id: u32,
    pub restart_count: u32,
    /// Host directories the step needs at the same path, decided by the
    /// plugin from the admin's configuration (PMIx rendezvous), as
    /// `SRC:SRC[:ro]` bind specs. The helper resolves them with the job
    /// user's credentials (they are bound for the user's sake).
    pub system_binds: Vec<String>,
    /// Host paths the plugin decided from the admin's settings and the
    /// node's files alone (Slurm's client for `--container-batch`), as
    /// `SRC:DST:ro` specs the helper resolves as root, like the admin's
    /// `default_binds`.
    pub root_binds: Vec<String>,
    /// The step's GPUs on this node (Slurm's `SLURM_STEP_GPUS`).
    pub gpus: Vec<u32>,
    /// The job's mount namespace file, when Slurm gives jobs one (decided
    /// by the plugin from the admin's configuration: [`crate::job_namespace`]).
    pub job_namespace: Option<JobNamespace>,
    /// The job's `SLURM_*` variables as `NAME=VALUE`, for the site's hooks
    /// (collected only when the site has hooks).
    pub slurm_env: Vec<String>,
}

/// A ready per-node container: the pinned mount namespace and the image's
/// environment, applied to each task.
#[derive(Debug)]
pub struct Container {
    pub mount_ns: File,
    /// The container's other namespaces (`--container-unshare`), joined
    /// after the mount namespace.
    pub other_ns: Vec<(Unshared, File)>,
    /// `--container-remap-root`: the step's user namespace, joined last,
    /// as the job user (see `remap_root`).
    pub user_ns: Option<File>,
    pub image_env: Vec<(String, String)>,
    /// Shared lock on the node cache entry: keeps the image mounted while
    /// the step runs, released by the kernel when slurmstepd exits (even if
    /// it is killed).
    pub cache_lease: Option<Flock<File>>,
    /// The same for the images bound beside the main one.
    pub extra_cache_leases: Vec<Flock<File>>,
    /// `(variable, directory)` to append in each task (driver libraries on
    /// `LD_LIBRARY_PATH`, tools on `PATH`).
    pub env_append: Vec<(String, String)>,
    /// Shared lock on the kept container the step runs in (see
    /// `node::kept_containers`): keeps it from being removed while the
    /// step runs; released by the kernel when slurmstepd exits.
    pub kept_lease: Option<KeptLease>,
    /// The step joined a container an earlier step of the job kept.
    pub reused: bool,
    /// The site's hooks that ran for this container (run again at the
    /// step's end).
    pub site_hooks: Vec<String>,
}

/// The helper's request for this step (rendered as its command line by
/// [`SetupArgs::to_args`]).
pub fn setup_request(req: &ContainerRequest, user: &JobUser, config: &Config) -> SetupArgs {
    let mut args = SetupArgs::new(req.image.clone(), user.uid, user.gid);
    args.groups = user.groups.clone();
    args.cwd = user.cwd.as_ref().map(PathBuf::from);
    args.binds = req.mounts.iter().map(|m| m.to_spec()).collect();
    args.admin_binds = config.default_binds.clone();
    args.admin_binds.extend(user.root_binds.iter().cloned());
    args.step_binds = user.system_binds.clone();
    args.workdir = req.workdir.clone();
    args.no_home = !req.mount_home.unwrap_or(config.mount_home);
    args.writable_tmpfs = req.writable;
    args.state_dir = config.state_dir.clone();
    args.cache_idle_secs = config.cache_idle_secs;
    args.cache_max_images = config.cache_max_images;
    args.cache_max_images_per_user = config.cache_max_images_per_user;
    args.overlay_max_mib = config.overlay_max_mib;
    args.job_id = Some(user.job_id);
    args.keep = config.keep_containers;
    if let Some(ecl) = &config.ecl_config {
        args.ecl_config = Some(ecl.clone());
        args.restart_count = user.restart_count;
        args.copy_limit_mib = config.copy_limit_mib;
        args.copy_quota_mib = config.copy_quota_mib;
        args.copy_dir = config.copy_dir.clone();
    }
    // The helper's own deadline, a little after ours: it never outlives
    // the step's setup, whatever it is blocked on.
    args.timeout_secs = config.setup_timeout().as_secs() + HELPER_GRACE_SECS;
    if config.gpus && !user.gpus.is_empty() {
        args.gpus = user.gpus.clone();
        args.gpu_list = config.gpu_list.clone();
    }
    args.rdma = config.rdma;
    // A path only: the helper opens it as the job user.
    args.key_file = req.key_file.clone();
    args.app = req.app.clone();
    args.entrypoint = req.entrypoint;
    args.unshare = req.unshare.clone();
    args.name = req.name.as_ref().map(|n| n.name.clone());
    args.tmpfs = req.tmpfs.clone();
    args.umount = req
        .umounts
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    args.set_job_namespace(user.job_namespace.clone());
    args.cdi_dirs = config.cdi_dirs.clone();
    args.cdi_devices = req.devices.clone();
    let hooks: Vec<String> =
        config
            .hooks
            .iter()
            .chain(&req.hooks)
            .fold(Vec::new(), |mut names, n| {
                if !names.contains(n) {
                    names.push(n.clone());
                }
                names
            });
    if !hooks.is_empty() || !config.partition_hooks.is_empty() {
        args.hooks_dir = Some(config.hooks_dir.clone());
        args.hooks = hooks;
        args.partition_hooks = config
            .partition_hooks
            .iter()
            .map(|(partition, names)| format!("{partition}={}", names.join(",")))
            .collect();
        args.hook_env = user.slurm_env.clone();
        args.hook_timeout_secs = config.hook_timeout_secs;
        args.scontrol = config.slurm_bin_dir.join("scontrol");
    }
    args
}

/// Refuses CDI devices and site hooks the admin does not offer users, in
/// one line that says what is offered.
pub fn check_allowed(req: &ContainerRequest, config: &Config) -> Result<(), String> {
    use sifrun_runtime::container::cdi::{self, QualifiedName};
    for name in &req.devices {
        let allowed = QualifiedName::parse(name)
            .map(|q| cdi::allowed(&q, &config.cdi_user_devices))
            .unwrap_or(false);
        if !allowed {
            return Err(format!(
                "--container-devices: {name} is not offered on this cluster{}",
                offered(&config.cdi_user_devices)
            ));
        }
    }
    for name in &req.hooks {
        if !config.user_hooks.contains(name) && !config.hooks.contains(name) {
            return Err(format!(
                "--container-hooks: {name} is not offered on this cluster{}",
                offered(&config.user_hooks)
            ));
        }
    }
    Ok(())
}

fn offered(list: &[String]) -> String {
    if list.is_empty() {
        " (none are)".to_string()
    } else {
        format!(" (offered: {})", list.join(", "))
    }
}

/// Start the helper and wait (bounded) for the container to be ready.
/// Whatever the helper wrote on stderr (details such as the ECL verdict
/// with its signers) goes to `log`, one call per line: it belongs in the
/// slurmd log, not on the user's terminal.
pub fn build_container(
    req: &ContainerRequest,
    user: &JobUser,
    config: &Config,
    log: &mut dyn FnMut(&str),
    phases: &mut Phases,
) -> Result<Container, HelperError> {
    check_helper(&config.sifrun)?;
    let mut child = Command::new(&config.sifrun)
        .args(setup_request(req, user, config).to_args())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HelperError::Start {
            path: config.sifrun.clone(),
            source,
        })?;
    phases.mark("helper started");

    let result = wait_ready(&mut child, config.setup_timeout());
    phases.mark("helper ready");
    let container = result.and_then(|report| {
        let kept_lease = match report.kept.as_deref() {
            Some(dir) => Some(take_kept_lease(dir, config)?),
            None => None,
        };
        let mount_ns = open_mount_namespace(child.id());
        let other_ns = req
            .unshare
            .iter()
            .filter_map(|name| Unshared::parse(name))
            .map(|kind| open_namespace(child.id(), kind).map(|ns| (kind, ns)))
            .collect::<Result<Vec<_>, _>>();
        if let Some(dir) = report
            .staging
            .as_deref()
            .filter(|d| Path::new(d).parent() == Some(config.state_dir.as_path()))
        {
            // Nothing is mounted on it in our namespace: it is empty.
            let _ = std::fs::remove_dir(dir);
        }
        let cache_lease = match report.cache_lock.as_deref() {
            Some(lock) => Some(take_cache_lease(lock, config)?),
            None => None,
        };
        let extra_cache_leases = report
            .extra_cache_locks
            .iter()
            .map(|lock| take_cache_lease(lock, config))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Container {
            mount_ns: mount_ns?,
            other_ns: other_ns?,
            user_ns: None,
            extra_cache_leases,
            image_env: report.env,
            cache_lease,
            env_append: report.env_append,
            reused: false,
            kept_lease,
            site_hooks: report.site_hooks,
        })
    });
    phases.mark("namespace pinned");
    // Closing stdin lets the helper exit; the namespace stays pinned by our fd.
    drop(child.stdin.take());
    // Waited for here: slurmstepd reaps any child it finds exited while
    // it waits for its tasks, and one that is not a task costs the step
    // 100 ms there (measured).
    let stderr = reap(&mut child, Duration::from_secs(5));
    phases.mark("helper reaped");
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        log(line);
    }
    container
}

/// Takes our own shared lock on the cache entry while the helper still
/// holds its lock, so the entry can never look unused in between.
fn take_cache_lease(lock: &str, config: &Config) -> Result<Flock<File>, HelperError> {
    let path = Path::new(lock);
    let cache_dir = config.state_dir.join("images");
    // Only a lock inside our own cache directory: the path comes from the
    // helper's report and we open it as root.
    let inside = path.parent().and_then(Path::parent) == Some(cache_dir.as_path())
        && path.file_name() == Some(std::ffi::OsStr::new("lock"));
    if !inside {
        return Err(HelperError::Report(format!("unexpected cache lock {lock}")));
    }
    let file =
        File::open(path).map_err(|e| HelperError::CacheLock(format!("cannot open {lock}: {e}")))?;
    Flock::lock(file, FlockArg::LockSharedNonblock)
        .map_err(|(_, e)| HelperError::CacheLock(format!("cannot lock {lock}: {e}")))
}

/// Takes our own shared lock on the kept container `dir` while the helper
/// still holds its own, as for the cache entry.
fn take_kept_lease(dir: &str, config: &Config) -> Result<KeptLease, HelperError> {
    let kept = KeptContainers::open(&config.state_dir)?;
    let dir = Path::new(dir);
    // A path from the helper's report, opened as root: only one of ours.
    if !kept.owns(dir) {
        return Err(HelperError::Report(format!(
            "unexpected kept container {}",
            dir.display()
        )));
    }
    kept.lease(dir)?.ok_or_else(|| {
        HelperError::CacheLock(format!("cannot lock the kept container {}", dir.display()))
    })
}

/// The helper runs as root: refuse one that someone else could have replaced.
fn check_helper(path: &Path) -> Result<(), HelperError> {
    let untrusted = |reason: String| HelperError::Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| untrusted(e.to_string()))?;
    if !sifrun_runtime::node::trusted::root_owned_not_writable(&meta) {
        return Err(untrusted(
            "must be owned by root and not group/other writable".into(),
        ));
    }
    Ok(())
}

fn wait_ready(child: &mut Child, timeout: Duration) -> Result<SetupReport, HelperError> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| HelperError::Report("no stdout".into()))?;
    let deadline = Instant::now() + timeout;
    if !wait_readable(&stdout, deadline) {
        let _ = child.kill();
        return Err(HelperError::Timeout(timeout.as_secs()));
    }
    let mut line = String::new();
    // The report is one line; cap it so a broken helper cannot make us
    // buffer without bound.
    BufReader::new(stdout.take(MAX_REPORT_LINE))
        .read_line(&mut line)
        .map_err(|e| HelperError::Report(e.to_string()))?;
    if line.trim().is_empty() {
        return Err(HelperError::Failed("container setup failed".into()));
    }
    let report = SetupReport::from_line(&line).map_err(HelperError::Report)?;
    if report.ok {
        Ok(report)
    } else {
        Err(HelperError::Failed(
            report
                .error
                .unwrap_or_else(|| "container setup failed".to_string()),
        ))
    }
}

/// Wait for the helper to exit (bounded), killing it if it does not, and
/// return what it wrote on stderr.
///
/// Its stderr reaching end-of-file is the exit signal: the helper holds
/// the only write end, so this wakes up the moment it exits instead of
/// polling `waitpid` (every millisecond here is on the step's start path).
fn reap(child: &mut Child, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut err = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        let mut chunk = [0u8; 4096];
        while err.len() < 64 * 1024 && wait_readable(&stderr, deadline) {
            match stderr.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => err.extend_from_slice(&chunk[..n]),
            }
        }
    }
    // End of file comes as the helper closes its files, a moment before it
    // has exited: its process handle says when it has.
    if let Ok(pidfd) = sifrun_runtime::pidfd::PidFd::open(child.id() as i32) {
        wait_readable(&pidfd, deadline);
    }
    if let Ok(None) = sifrun_runtime::process::wait_until(child, deadline, Duration::from_millis(1))
    {
        let _ = child.kill();
        let _ = child.wait();
    }
    String::from_utf8_lossy(&err).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse_mount;

    #[test]
    fn the_request_carries_identity_options_and_admin_settings() {
        let req = ContainerRequest {
            image: "/img/a.sif".into(),
            mounts: vec![parse_mount("/data:/in:ro").unwrap()],
            workdir: Some("/in".into()),
            host_env: vec![],
            writable: true,
            mount_home: Some(false),
            key_file: None,
            app: Some("hello".into()),
            remap_root: false,
            entrypoint: true,
            unshare: vec!["net".into()],
            name: None,
            save: None,
            tmpfs: vec![],
            umounts: vec![],
            batch: false,
            devices: vec!["vendor.example/nic=0".into()],
            hooks: vec!["mpi".into(), "pytorch".into()],
        };
        let user = JobUser {
            uid: 1001,
            gid: 1002,
            groups: vec![1002, 27],
            cwd: Some("/home/u".into()),
            job_id: 42,
            restart_count: 1,
            system_binds: vec!["/var/spool/slurmd:/var/spool/slurmd".into()],
            root_binds: vec![],
            gpus: vec![0, 1],
            job_namespace: Some(JobNamespace::File("/var/jc/42/.ns".into())),
            slurm_env: vec!["SLURM_JOB_NAME=x".into()],
        };
        let config = Config {
            default_binds: vec!["/etc/hosts:/etc/hosts:ro".into()],
            ecl_config: Some("/etc/slurm/ecl.toml".into()),
            hooks: vec!["pytorch".into()],
            partition_hooks: [("gpu".to_string(), vec!["nccl".to_string(), "mpi".into()])].into(),
            ..Config::default()
        };
        let mut expected = SetupArgs::new("/img/a.sif".into(), 1001, 1002);
        expected.groups = vec![1002, 27];
        expected.cwd = Some("/home/u".into());
        expected.binds = vec!["/data:/in:ro".into()];
        expected.admin_binds = vec!["/etc/hosts:/etc/hosts:ro".into()];
        expected.step_binds = vec!["/var/spool/slurmd:/var/spool/slurmd".into()];
        expected.workdir = Some("/in".into());
        expected.no_home = true;
        expected.writable_tmpfs = true;
        expected.ecl_config = Some("/etc/slurm/ecl.toml".into());
        expected.job_id = Some(42);
        expected.keep = true;
        expected.restart_count = 1;
        expected.timeout_secs = 125;
        expected.gpus = vec![0, 1];
        expected.rdma = true;
        expected.app = Some("hello".into());
        expected.entrypoint = true;
        expected.unshare = vec!["net".into()];
        expected.job_namespace = Some("/var/jc/42/.ns".into());
        expected.cdi_dirs = vec!["/etc/cdi".into(), "/var/run/cdi".into()];
        expected.cdi_devices = vec!["vendor.example/nic=0".into()];
        expected.hooks_dir = Some("/etc/sifrun/hooks.d".into());
        // The site's first, then the user's, each once.
        expected.hooks = vec!["pytorch".into(), "mpi".into()];
        expected.partition_hooks = vec!["gpu=nccl,mpi".into()];
        expected.hook_env = vec!["SLURM_JOB_NAME=x".into()];
        assert_eq!(setup_request(&req, &user, &config), expected);

        // What users may ask for is the admin's choice.
        let e = check_allowed(&req, &config).unwrap_err();
        assert_eq!(
            e,
            "--container-devices: vendor.example/nic=0 is not offered on this cluster (none are)"
        );
        let config = Config {
            cdi_user_devices: vec!["vendor.example/nic=*".into()],
            user_hooks: vec!["nccl".into()],
            ..config
        };
        let e = check_allowed(&req, &config).unwrap_err();
        assert_eq!(
            e,
            "--container-hooks: mpi is not offered on this cluster (offered: nccl)"
        );
        let config = Config {
            user_hooks: vec!["mpi".into()],
            ..config
        };
        check_allowed(&req, &config).unwrap();
    }

    #[test]
    fn a_helper_that_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("sifrun");
        std::fs::write(&helper, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_helper(&helper)
            .unwrap_err()
            .to_string()
            .contains("not group/other writable"));
        assert!(check_helper(Path::new("/nonexistent/sifrun")).is_err());
    }

    /// The helper ownership check wants a root-owned helper: only root can
    /// make one in a temporary directory.
    fn skip_unless_root() -> bool {
        let skip = nix::unistd::geteuid().as_raw() != 0;
        if skip {
            eprintln!("skipped: helper ownership check needs root");
        }
        skip
    }

    fn fake_helper(dir: &Path, script: &str) -> Config {
        use std::os::unix::fs::PermissionsExt;
        let helper = dir.join("sifrun");
        std::fs::write(&helper, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Config {
            sifrun: helper,
            setup_timeout_secs: 2,
            ..Config::default()
        }
    }

    fn any_request() -> (ContainerRequest, JobUser) {
        (
            ContainerRequest {
                image: "/img/a.sif".into(),
                mounts: vec![],
                workdir: None,
                host_env: vec![],
                writable: false,
                mount_home: None,
                key_file: None,
                app: None,
                remap_root: false,
                entrypoint: false,
                unshare: vec![],
                name: None,
                save: None,
                tmpfs: vec![],
                umounts: vec![],
                batch: false,
                devices: vec![],
                hooks: vec![],
            },
            JobUser {
                uid: 0,
                gid: 0,
                groups: vec![],
                cwd: None,
                job_id: 1,
                restart_count: 0,
                system_binds: vec![],
                root_binds: vec![],
                gpus: vec![],
                job_namespace: None,
                slurm_env: Vec::new(),
            },
        )
    }

    #[test]
    fn helper_error_report_becomes_the_error() {
        if skip_unless_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = fake_helper(
            dir.path(),
            r#"echo '{"ok":false,"error":"/img/a.sif: permission denied"}'"#,
        );
        let (req, user) = any_request();
        let err =
            build_container(&req, &user, &config, &mut |_| {}, &mut Phases::start()).unwrap_err();
        assert_eq!(err.to_string(), "/img/a.sif: permission denied");
    }

    #[test]
    fn a_hung_helper_times_out_and_is_killed() {
        if skip_unless_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = fake_helper(dir.path(), "exec sleep 30");
        let (req, user) = any_request();
        let started = Instant::now();
        let err =
            build_container(&req, &user, &config, &mut |_| {}, &mut Phases::start()).unwrap_err();
        assert!(matches!(err, HelperError::Timeout(2)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn ready_helper_gives_its_mount_namespace_and_env() {
        if skip_unless_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = fake_helper(
            dir.path(),
            r#"echo '{"ok":true,"env":[["PATH","/opt/bin"]]}'; read _"#,
        );
        let (req, user) = any_request();
        let c = build_container(&req, &user, &config, &mut |_| {}, &mut Phases::start()).unwrap();
        assert_eq!(c.image_env, vec![("PATH".into(), "/opt/bin".into())]);
        // The fake helper never unshared, so its namespace is ours.
        let ours = std::fs::metadata("/proc/self/ns/mnt").unwrap();
        let theirs = c.mount_ns.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(ours.ino(), theirs.ino());
    }
}
