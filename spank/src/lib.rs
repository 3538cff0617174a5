//! sifrun's SPANK plugin: `srun --container=img.sif` runs the step inside a
//! SIF image.
//!
//! The plugin is thin glue. Per step and node, slurmstepd (root) starts the
//! root-owned `sifrun slurm-setup` helper, which opens the image as the job
//! user, mounts it and builds the container root in a new mount namespace
//! ([`helper`]). Each task then joins that namespace while still privileged
//! (`task_init_privileged`), sets `PR_SET_NO_NEW_PRIVS`, and Slurm drops to
//! the job user and execs the command as a native task: same PID, stdio,
//! signals, cgroup, exit status and PMI file descriptors.
//!
//! Errors: Slurm does not report failures of remote `init_post_opt` or
//! `user_init` to srun, so a setup error is kept and reported from
//! `task_init`, where the task's stderr is the user's srun stderr.

pub mod as_user;
pub mod batch_client;
pub mod config;
pub mod fake_ids;
pub mod helper;
pub mod job_namespace;
pub mod kept;
pub mod pytorch_env;
pub mod remap_root;
pub mod request;
pub mod save;
pub mod task_env;

use config::Config;
use helper::{Container, JobUser};
use request::{ContainerRequest, OptionSource};
use sifrun_runtime::container::namespaces::{join_mount_namespace, join_namespace};
use sifrun_runtime::node::helper::TIMING_PREFIX;
use sifrun_runtime::node::kept_containers::KeptContainers;
use sifrun_runtime::phases::Phases;
use slurm_spank::{
    spank_log_debug, spank_log_error, spank_log_info, spank_log_user, spank_log_verbose, Context,
    Plugin, SpankHandle, SpankOption, SPANK_PLUGIN,
};
use std::error::Error;
use task_env::EnvChange;

// slurmstepd only loads SPANK plugins whose major and minor match its own:
// `BUILT_FOR_SLURM` and the `SPANK_PLUGIN!` declaration come from the
// `slurm_version.h` of the headers the plugin is built against (build.rs);
// the test `built_for_installed_slurm` checks them against it.
include!(concat!(env!("OUT_DIR"), "/plugin_version.rs"));

/// State kept in slurmstepd (and inherited by each forked task).
#[derive(Default)]
struct SifrunPlugin {
    config: Option<Result<Config, String>>,
    request: Option<ContainerRequest>,
    /// `Some` once a container was asked for: the ready container or the
    /// one-line reason it could not be built.
    setup: Option<Result<Container, String>>,
    /// Tasks of the step that have ended on this node (`--container-save`
    /// waits for the last).
    tasks_ended: u32,
    /// This is the batch step, run in the container (`--container-batch`).
    batch_inside: bool,
}

/// Slurm's special step ids (slurm.h): the batch script, the extern step
/// (pam_slurm_adopt) and `salloc`'s interactive step run on the host.
const SLURM_BATCH_SCRIPT: u32 = 0xffff_fffb;
const SLURM_EXTERN_CONT: u32 = 0xffff_fffc;
const SLURM_INTERACTIVE_STEP: u32 = 0xffff_fffa;

fn runs_in_container(step_id: u32) -> bool {
    !matches!(
        step_id,
        SLURM_BATCH_SCRIPT | SLURM_EXTERN_CONT | SLURM_INTERACTIVE_STEP
    )
}

/// Options and their help text, registered in every context.
fn options() -> Vec<SpankOption> {
    use request::*;
    vec![
        SpankOption::new(OPT_IMAGE)
            .takes_value("IMAGE")
            .usage("run the step in SIF image IMAGE (same as --container=IMAGE.sif)"),
        SpankOption::new(OPT_MOUNTS)
            .takes_value("SRC[:DST[:ro]],...")
            .usage("[sifrun] bind host paths into the container"),
        SpankOption::new(OPT_WORKDIR)
            .takes_value("DIR")
            .usage("[sifrun] working directory inside the container"),
        SpankOption::new(OPT_ENV)
            .takes_value("NAME,...")
            .usage("[sifrun] keep the job's value of these variables over the image's"),
        SpankOption::new(OPT_WRITABLE)
            .usage("[sifrun] make the container root writable (changes kept in memory)"),
        SpankOption::new(OPT_MOUNT_HOME).usage("[sifrun] mount the user's home directory"),
        SpankOption::new(OPT_NO_MOUNT_HOME)
            .usage("[sifrun] do not mount the user's home directory"),
        SpankOption::new(OPT_KEY_FILE)
            .takes_value("FILE")
            .usage("[sifrun] key of an encrypted image: PEM private key or passphrase file"),
        SpankOption::new(OPT_APP)
            .takes_value("NAME")
            .usage("[sifrun] give the tasks the environment of the image's SCIF app NAME"),
        SpankOption::new(OPT_READONLY)
            .usage("[sifrun] keep the container root read-only (the default)"),
        SpankOption::new(OPT_REMAP_ROOT).usage(
            "[sifrun] appear as root inside the container (a user namespace: no privilege on the host)",
        ),
        SpankOption::new(OPT_NO_REMAP_ROOT)
            .usage("[sifrun] run as yourself inside the container (the default)"),
        SpankOption::new(OPT_ENTRYPOINT).usage(
            "[sifrun] run the image's OCI entrypoint once per node first; tasks get its environment",
        ),
        SpankOption::new(OPT_NO_ENTRYPOINT)
            .usage("[sifrun] do not run the image's entrypoint (the default)"),
        SpankOption::new(OPT_NAME)
            .takes_value("NAME[:auto|create|exec]")
            .usage("[sifrun] keep the container under NAME for the job's later steps, which join it"),
        SpankOption::new(OPT_SAVE)
            .takes_value("PATH.sif")
            .usage("[sifrun] once the step ends, save its container (the image and what the step wrote) as a new SIF image"),
        SpankOption::new(OPT_UNSHARE)
            .takes_value("NS,...")
            .usage("[sifrun] give the container its own namespaces: net (loopback only), ipc, uts"),
        SpankOption::new(OPT_DEVICES)
            .takes_value("VENDOR/CLASS=NAME,...")
            .usage("[sifrun] add these CDI devices (those the site offers) to the container"),
        SpankOption::new(OPT_HOOKS)
            .takes_value("NAME,...")
            .usage("[sifrun] run these site hooks (those the site offers) for the container, e.g. mpi"),
        SpankOption::new(OPT_BATCH).usage(
            "[sifrun] sbatch: run the batch script itself in the container, with the host's srun, squeue, ...",
        ),
        SpankOption::new(OPT_NO_BATCH)
            .usage("[sifrun] sbatch: run the batch script on the host (the default); its steps run in the container"),
    ]
}

/// Options from the command line, defaults from the job's environment.
struct SpankSource<'a, 'b> {
    spank: &'a SpankHandle<'b>,
    /// Flag options that were given (the crate reads them through `&mut`).
    set_flags: Vec<&'static str>,
    remote: bool,
}

impl OptionSource for SpankSource<'_, '_> {
    fn option(&self, name: &str) -> Option<String> {
        match self.spank.get_option_value(name) {
            Ok(Some(v)) => Some(v.into_owned()),
            _ if self.set_flags.contains(&name) => Some(String::new()),
            _ => None,
        }
    }
    fn env(&self, name: &str) -> Option<String> {
        if self.remote {
            self.spank.getenv(name).ok().flatten()
        } else {
            std::env::var(name).ok()
        }
    }
}

/// Binds a PMIx step needs (the server and client rendezvous directories,
/// see `pmix_compat`); none for other steps. `SLURM_MPI_TYPE` comes from the
/// job, but it only selects node directories the user can see outside the
/// container anyway; their paths come from the admin's slurm.conf.
fn pmix_binds(spank: &SpankHandle, config: &Config) -> Result<Vec<String>, String> {
    let mpi = spank.getenv("SLURM_MPI_TYPE").ok().flatten();
    if !pmix_compat::uses_pmix(mpi.as_deref()) {
        return Ok(Vec::new());
    }
    let host = node_name()?;
    let paths = pmix_compat::SlurmPaths::from_file(&config.slurm_conf, &host, &host)
        .map_err(|e| format!("reading {}: {e}", config.slurm_conf.display()))?;
    Ok(pmix_compat::binds(&paths)
        .into_iter()
        .map(|b| {
            let p = b.path.display();
            if b.read_only {
                format!("{p}:{p}:ro")
            } else {
                format!("{p}:{p}")
            }
        })
        .collect())
}

/// `--container-batch`: the host's Slurm client (see [`batch_client`]),
/// bound by root, all decided from the admin's settings and the node's
/// files.
fn batch_client_binds(config: &Config) -> Result<Vec<String>, String> {
    if !config.batch_in_container {
        return Err(
            "--container-batch: this site runs batch scripts on the host \
                    (batch_in_container = false); their srun steps still run in the image"
                .into(),
        );
    }
    let client = batch_client::HostClient::discover(
        &config.slurm_conf,
        &config.slurm_bin_dir,
        &config.batch_client_paths,
    )
    .map_err(|e| format!("--container-batch: Slurm's client: {e}"))?;
    let wrappers = config.state_dir.join("batch-client");
    client
        .write_wrappers(&wrappers)
        .map_err(|e| format!("--container-batch: {e}"))?;
    Ok(client.binds(&wrappers))
}

/// The batch script, which slurmstepd runs by its path in its spool
/// directory: bound at that path, with the job user's credentials (as the
/// user's own files are).
fn batch_script_bind(spank: &SpankHandle) -> Result<String, String> {
    let script = spank
        .job_argv()
        .ok()
        .and_then(|argv| argv.first().map(|s| s.to_string()))
        .filter(|s| s.starts_with('/') && !s.contains(':'))
        .ok_or("--container-batch: slurmstepd did not give the batch script's path")?;
    Ok(format!("{script}:{script}:ro"))
}

/// The node name, taken to be the host name (slurm.conf's %n and %h):
/// from the kernel, not from the job's environment.
fn node_name() -> Result<String, String> {
    Ok(nix::unistd::gethostname()
        .map_err(|e| format!("host name: {e}"))?
        .to_string_lossy()
        .into_owned())
}

fn job_user(spank: &SpankHandle) -> Result<JobUser, String> {
    let uid = spank.job_uid().map_err(|e| format!("job uid: {e}"))?;
    let gid = spank.job_gid().map_err(|e| format!("job gid: {e}"))?;
    let groups = spank.job_supplementary_gids().unwrap_or_default();
    let cwd = spank.getenv("PWD").ok().flatten();
    let job_id = spank.job_id().map_err(|e| format!("job id: {e}"))?;
    let restart_count = spank.slurm_restart_count().unwrap_or(0);
    Ok(JobUser {
        uid,
        gid,
        groups,
        cwd,
        job_id,
        restart_count,
        system_binds: Vec::new(),
        root_binds: Vec::new(),
        // Slurm's allocation: slurmstepd sets (and clears) this itself; a
        // value the user put in the environment does not survive.
        // The job's NVIDIA_VISIBLE_DEVICES may narrow it, never widen it.
        gpus: sifrun_runtime::container::gpu::narrow_to_visible(
            &spank
                .getenv("SLURM_STEP_GPUS")
                .ok()
                .flatten()
                .map(|v| sifrun_runtime::container::gpu::parse_step_gpus(&v))
                .unwrap_or_default(),
            spank
                .getenv("NVIDIA_VISIBLE_DEVICES")
                .ok()
                .flatten()
                .as_deref(),
        )?,
        job_namespace: None,
        slurm_env: Vec::new(),
    })
}

/// The job's `SLURM_*` variables, for the site's hooks (data they must
/// not trust: the job sets its environment); at most 256, each at most
/// 4 KiB.
fn slurm_variables(spank: &SpankHandle) -> Vec<String> {
    spank
        .job_env()
        .unwrap_or_default()
        .into_iter()
        .filter(|kv| kv.starts_with("SLURM_") && kv.len() <= 4096)
        .take(256)
        .map(str::to_string)
        .collect()
}

/// The site's hooks that set up this step's container, run again now that
/// its tasks are gone (`SIFRUN_HOOK_POINT=step-end`, on the host, as root).
/// The step is over: failures go to the slurmd log only.
fn run_step_end_hooks(spank: &SpankHandle, config: &Config, names: &[String]) {
    let mut env = vec![format!(
        "SIFRUN_JOB_ID={}",
        spank.job_id().unwrap_or_default()
    )];
    env.extend(slurm_variables(spank));
    let failures = sifrun_runtime::node::site_hooks::run_step_end(
        &config.hooks_dir,
        names,
        &env,
        std::time::Duration::from_secs(config.hook_timeout_secs.max(1)),
        &config.state_dir,
    );
    for failure in failures {
        spank_log_error!("sifrun: {failure}");
    }
}

/// One stderr line of the helper into the slurmd log: its phase timing
/// at debug level, anything else (the ECL verdict, overlay and environment
/// summaries) at info.
fn log_helper_line(line: &str) {
    match line.strip_prefix(TIMING_PREFIX) {
        Some(timing) => spank_log_debug!("sifrun: helper timing: {timing}"),
        None => spank_log_info!("sifrun: helper: {line}"),
    }
}

/// Ends the task that asked for a container but cannot have it, before it
/// runs anything: the user's one error line goes to the task's stderr
/// (srun's), and the task exits with status 1.
///
/// Returning an error instead would not be enough: under `optional` in
/// plugstack.conf, Slurm ignores a plugin's errors and would run the
/// command on the host, with the host's libraries, where the user asked
/// for the image. Whatever fails, a step that asked for a SIF container
/// never runs on the host.
fn fail_task(msg: &str) -> ! {
    // fd 2 is the task's stderr now: this line reaches srun.
    eprintln!("sifrun: error: {msg}");
    // SAFETY: _exit ends this forked task at once, running nothing of
    // slurmstepd's (a multi-threaded parent) on the way out.
    unsafe { libc::_exit(1) }
}

/// [`fail_task`] without the line (another task of the node says it).
fn fail_task_quietly() -> ! {
    // SAFETY: as in fail_task: ends this forked task at once.
    unsafe { libc::_exit(1) }
}

// SAFETY: the plugin starts no thread in slurmstepd: the callbacks that
// run in forked tasks (task_init_privileged, task_init) find only the
// state slurmstepd itself set up, and take no lock another thread could
// hold. All multi-threaded or mount work runs in the separate helper.
unsafe impl Plugin for SifrunPlugin {
    // The crate's default installs a tracing subscriber; we log through
    // Slurm directly and keep slurmstepd free of extra global state.
    fn setup(&self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        Ok(())
    }

    fn init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let context = spank.context()?;
        if matches!(
            context,
            Context::Local | Context::Remote | Context::Allocator
        ) {
            for opt in options() {
                spank.register_option(opt)?;
            }
        }
        if context == Context::Remote {
            let args = spank.plugin_argv().unwrap_or_default();
            self.config = Some(Config::from_plugin_args(&args).map_err(|e| e.to_string()));
        }
        Ok(())
    }

    fn init_post_opt(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let remote = spank.context()? == Context::Remote;
        let set_flags = request::FLAGS
            .iter()
            .copied()
            .filter(|f| spank.is_option_set(f))
            .collect();
        let source = SpankSource {
            spank: &*spank,
            set_flags,
            remote,
        };
        let use_builtin = match &self.config {
            Some(Ok(c)) => c.use_builtin_container_option,
            _ => true,
        };
        if !remote {
            // srun/sbatch/salloc: refuse bad options before anything runs,
            // with or without an image (each option is parsed once).
            let checked = match ContainerRequest::from_source(&source, use_builtin) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => ContainerRequest::options_only(&source).map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                spank_log_error!("sifrun: {e}");
                return Err(e.into());
            }
            return Ok(());
        }
        let request = match ContainerRequest::from_source(&source, use_builtin) {
            Ok(r) => r,
            Err(e) => {
                self.setup = Some(Err(e.to_string()));
                return Ok(());
            }
        };
        let Some(request) = request else {
            return Ok(());
        };
        if let Ok(step) = spank.job_stepid() {
            // `--container-batch`: sbatch's script, or salloc's shell (the
            // interactive step), runs in the container too.
            self.batch_inside =
                request.batch && matches!(step, SLURM_BATCH_SCRIPT | SLURM_INTERACTIVE_STEP);
            if !runs_in_container(step) && !self.batch_inside {
                // `sbatch --container=img.sif`: the batch script runs on the
                // host unless it asked for the container; its `srun` steps
                // inherit the image and run in it. The extern step never
                // runs user code.
                spank_log_verbose!("sifrun: step {step:#x} runs on the host");
                return Ok(());
            }
        }
        let batch_inside = self.batch_inside;
        // Never fail here: Slurm would drain the node and hide the reason
        // from the user. The outcome is reported in task_init.
        let mut phases = Phases::start();
        let setup = match &self.config {
            Some(Ok(config)) => job_user(spank).and_then(|mut user| {
                helper::check_allowed(&request, config)?;
                user.system_binds = pmix_binds(spank, config)?;
                if !config.hooks.is_empty()
                    || !config.partition_hooks.is_empty()
                    || !request.hooks.is_empty()
                {
                    user.slurm_env = slurm_variables(spank);
                }
                if batch_inside {
                    user.root_binds = batch_client_binds(config)?;
                    if spank.job_stepid().is_ok_and(|s| s == SLURM_BATCH_SCRIPT) {
                        user.system_binds.push(batch_script_bind(spank)?);
                    }
                }
                user.job_namespace = job_namespace::locate(
                    &config.job_namespace,
                    &config.slurm_conf,
                    user.job_id,
                    &node_name()?,
                )?;
                phases.mark("job and node settings");
                // The batch step's container (with Slurm's client) is its
                // own: never kept, never one kept by a step, never named.
                let batch_config;
                let config = if batch_inside {
                    batch_config = Config {
                        keep_containers: false,
                        ..config.clone()
                    };
                    &batch_config
                } else {
                    config
                };
                let kept = match &request.name {
                    _ if batch_inside => None,
                    Some(_) => {
                        kept::join_named(&request, &user, config, &node_name()?, &mut phases)?
                    }
                    None => kept::join(&request, &user, config, &node_name()?, &mut phases),
                };
                if kept.is_none() {
                    phases.mark("no kept container");
                }
                let c = match kept {
                    Some(container) => Ok(container),
                    None => helper::build_container(
                        &request,
                        &user,
                        config,
                        &mut log_helper_line,
                        &mut phases,
                    )
                    .map_err(|e| e.to_string()),
                };
                // Made by root for the user (see remap_root): tasks join it
                // last.
                let c = c.and_then(|mut c| {
                    if request.remap_root {
                        let ns = remap_root::user_namespace(user.uid, user.gid)
                            .map_err(|e| format!("--container-remap-root: {e}"))?;
                        c.user_ns = Some(ns);
                    }
                    Ok(c)
                });
                spank_log_verbose!(
                    "sifrun: container for {} ready in {} ms{}",
                    request.image.display(),
                    phases.total().as_millis(),
                    match &c {
                        Ok(c) if c.reused => " (kept by an earlier step of the job)",
                        _ => "",
                    }
                );
                spank_log_debug!("sifrun: step setup timing: {}", phases.line());
                // Rendered here: this line is what srun shows.
                c
            }),
            Some(Err(e)) => Err(format!("plugin configuration: {e}")),
            None => Err("plugin configuration missing".to_string()),
        };
        let image = request.image.display().to_string();
        self.setup = Some(setup.map_err(|e| {
            // Most helper errors already start with the image path.
            let msg = if e.starts_with(&image) {
                e
            } else {
                format!("{image}: {e}")
            };
            spank_log_error!("sifrun: {msg}");
            msg
        }));
        self.request = Some(request);
        Ok(())
    }

    fn task_init_privileged(&mut self, _spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        let Some(Ok(container)) = &self.setup else {
            // No container, or a failed one (reported in task_init).
            return Ok(());
        };
        // Still root here: a mount namespace created by root can only be
        // joined with CAP_SYS_ADMIN. After setns the task's root and cwd are
        // the container's; Slurm then chdirs to the job's cwd as the user.
        if let Err(e) = join_mount_namespace(&container.mount_ns) {
            fail_task(&format!("joining the container failed: {e}"));
        }
        for (kind, ns) in &container.other_ns {
            if let Err(e) = join_namespace(ns, *kind) {
                fail_task(&format!("joining the container failed: {e}"));
            }
        }
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            fail_task(&format!("PR_SET_NO_NEW_PRIVS failed: {}", e.desc()));
        }
        Ok(())
    }

    fn task_init(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        match &self.setup {
            None => Ok(()),
            // One line per node, not per task: with 1,000 ranks the user
            // would get 1,000 copies. The node's first task says it; the
            // others end without a word (srun counts them all).
            Some(Err(_)) if spank.task_id().is_ok_and(|id| id != 0) => fail_task_quietly(),
            Some(Err(msg)) => fail_task(msg),
            Some(Ok(container)) => {
                let job_env = |name: &str| spank.getenv(name).ok().flatten();
                let job_vars: Vec<(String, String)> = spank
                    .job_env()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let changes = task_env::task_changes(
                    &container.image_env,
                    self.request.as_ref(),
                    &job_env,
                    &job_vars,
                );
                for change in changes {
                    match change {
                        EnvChange::Set(k, v) => spank.setenv(k, v, true)?,
                        EnvChange::Unset(k) => spank.unsetenv(k)?,
                    }
                }
                // PMIx variables exist only now (Slurm sets them per task).
                let pmix_env: Vec<(String, String)> = pmix_compat::env::MAPPED_NAMES
                    .iter()
                    .filter_map(|n| job_env(n).map(|v| (n.to_string(), v)))
                    .collect();
                for (k, v) in pmix_compat::compat_env(&pmix_env) {
                    spank.setenv(k, v, false)?;
                }
                for (name, dir) in &container.env_append {
                    let value = match job_env(name).filter(|v| !v.is_empty()) {
                        Some(v) => format!("{v}:{dir}"),
                        None => dir.clone(),
                    };
                    spank.setenv(name, value, true)?;
                }
                spank.setenv("SIFRUN_CONTAINER", "1", true)?;
                if self.batch_inside {
                    // The host's Slurm commands come first.
                    let path = job_env("PATH").filter(|p| !p.is_empty());
                    let path = match path {
                        Some(p) => format!("{}:{p}", batch_client::BIN_DIR),
                        None => batch_client::BIN_DIR.to_string(),
                    };
                    spank.setenv("PATH", path, true)?;
                }
                if matches!(&self.config, Some(Ok(c)) if c.pytorch_env) {
                    for (k, v) in pytorch_env::pytorch_vars(&job_env) {
                        spank.setenv(k, v, false)?;
                    }
                }
                if let Some(dir) = self.request.as_ref().and_then(|r| r.workdir.as_ref()) {
                    // As the job user, inside the container: the helper has
                    // checked that the directory exists in the image.
                    if let Err(e) = std::env::set_current_dir(dir) {
                        fail_task(&format!("--container-workdir {}: {e}", dir.display()));
                    }
                    spank.setenv("PWD", dir.as_os_str(), true)?;
                }
                if let Some(userns) = &container.user_ns {
                    // Last, as the job user (Slurm dropped root already).
                    // Package managers running as this "root" then find
                    // their chown/setuid calls succeed (without effect).
                    if let Err(e) = remap_root::join(userns).and_then(|()| fake_ids::install()) {
                        fail_task(&format!("--container-remap-root: {e}"));
                    }
                }
                Ok(())
            }
        }
    }

    fn job_epilog(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // The job has ended on this node: its partition record goes (a job
        // ID slurmctld hands out again must be asked about afresh). Slurm
        // runs the epilog in a process of its own without calling `init`,
        // so the configuration is read here.
        let args = spank.plugin_argv().unwrap_or_default();
        let config = match Config::from_plugin_args(&args) {
            Ok(c) => c,
            Err(e) => {
                spank_log_error!("sifrun: epilog: plugin configuration: {e}");
                return Ok(());
            }
        };
        let job = spank.job_id().ok().or_else(|| {
            std::env::var("SLURM_JOB_ID")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if let Some(job) = job {
            sifrun_runtime::node::ecl::partition::forget_job(
                job,
                &sifrun_runtime::node::ecl::partition::records_dir(&config.state_dir),
            );
            // Its kept containers go too (the namespace goes with the last
            // process left in it).
            let kept = KeptContainers::open(&config.state_dir).and_then(|k| k.forget_job(job));
            match kept {
                Ok(n) => spank_log_verbose!(
                    "sifrun: epilog: job {job}: partition record and {n} kept container(s) removed"
                ),
                Err(e) => spank_log_error!("sifrun: epilog: job {job}: {}", e.message()),
            }
        }
        Ok(())
    }

    fn task_exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        // --container-save: after the last task of the step on its first
        // node (in slurmstepd, as root; the build runs as the user).
        let (Some(Ok(container)), Some(request), Some(Ok(config))) =
            (&self.setup, &self.request, &self.config)
        else {
            return Ok(());
        };
        let Some(dest) = &request.save else {
            return Ok(());
        };
        self.tasks_ended += 1;
        let last = self.tasks_ended >= spank.job_local_task_count().unwrap_or(u32::MAX);
        if !last || spank.job_nodeid().unwrap_or(1) != 0 {
            return Ok(());
        }
        let saved = job_user(spank).and_then(|user| {
            save::save_container(
                &container.mount_ns,
                &user,
                &config.sifrun,
                &config.state_dir,
                dest,
            )
        });
        match saved {
            Ok(()) => spank_log_user!("sifrun: saved the container to {}", dest.display()),
            Err(e) => {
                spank_log_user!("sifrun: error: --container-save={}: {e}", dest.display());
                spank_log_error!("sifrun: --container-save={}: {e}", dest.display());
            }
        }
        Ok(())
    }

    fn exit(&mut self, spank: &mut SpankHandle) -> Result<(), Box<dyn Error>> {
        if let (Some(Ok(container)), Some(Ok(config))) = (&self.setup, &self.config) {
            if !container.site_hooks.is_empty() && !container.reused {
                run_step_end_hooks(spank, config, &container.site_hooks);
            }
        }
        if let Some(Ok(container)) = &self.setup {
            let started = std::time::Instant::now();
            // The step is over: whatever is still in its container escaped
            // Slurm's process tracking (a double fork under
            // proctrack/linuxproc) and would keep the image mounted, and an
            // encrypted one decrypted, after the job. A kept container may
            // have other steps of the job in it: what is left there is
            // ended when it is removed (at the job's end at the latest),
            // off the step's path.
            let swept = if container.kept_lease.is_none() {
                sifrun_runtime::node::namespace_sweep::end_members(&container.mount_ns)
            } else {
                Default::default()
            };
            if swept.killed > 0 || swept.remaining {
                spank_log_info!(
                    "sifrun: step end: killed {} process(es) left in the container{}",
                    swept.killed,
                    if swept.remaining {
                        " (some kept forking and remain)"
                    } else {
                        ""
                    }
                );
            }
            spank_log_debug!(
                "sifrun: step end: namespace sweep {:.2} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        // Dropping the namespace fd lets the kernel tear the container down
        // once the last task has left it.
        self.setup = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_extern_and_interactive_steps_run_on_the_host() {
        assert!(super::runs_in_container(0));
        assert!(super::runs_in_container(41));
        for step in [0xffff_fffb, 0xffff_fffc, 0xffff_fffa] {
            assert!(!super::runs_in_container(step));
        }
    }

    #[test]
    fn built_for_installed_slurm() {
        let Ok(header) = std::fs::read_to_string("/usr/include/slurm/slurm_version.h") else {
            eprintln!("skipped: slurm_version.h not installed");
            return;
        };
        let line = header
            .lines()
            .find(|l| l.starts_with("#define SLURM_VERSION_NUMBER"))
            .expect("SLURM_VERSION_NUMBER in slurm_version.h");
        let hex = line.rsplit("0x").next().unwrap().trim();
        let installed = u32::from_str_radix(hex, 16).unwrap();
        assert_eq!(installed & 0xffff00, super::BUILT_FOR_SLURM & 0xffff00);
        assert_eq!(super::plugin_version & 0xffff00, super::BUILT_FOR_SLURM);
    }
}
