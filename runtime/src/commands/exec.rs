//! `sifrun exec` / `shell` / `run`: the whole run as one straight sequence.
//!
//! parent: open image → (verify) → resolve user/env/binds → privileged:
//!         attach loop device → fork; unprivileged: fork, then start the
//!         FUSE server on the device the child hands over
//! child:  privileged: new mount namespace → mount image → build rootfs →
//!         pivot_root → drop privileges; unprivileged: new user + mount
//!         namespace → mount FUSE → the same rootfs → pivot_root → drop the
//!         namespace's capabilities; both: chdir → resolve the command in
//!         the container PATH → exec
//! parent: forward signals, wait, propagate exit status.

use std::convert::Infallible;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::{getpid, getppid, Pid};

use crate::commands::cached_image;
use crate::commands::target::{deffile_runscript, Target};
use sifrun_runtime::container::cdi::{self, QualifiedName};
use sifrun_runtime::container::env::{parse_assignment, parse_env_object, EnvPlan};
use sifrun_runtime::container::gpu::{DriverList, GpuSelection};
use sifrun_runtime::container::identity::Identity;
use sifrun_runtime::container::image_env;
use sifrun_runtime::container::image_env::scif::AppName;
use sifrun_runtime::container::loop_device::LoopAttachment;
use sifrun_runtime::container::mount::rootfs::{BindMount, ContainerSpec};
use sifrun_runtime::container::overlay_partition::{self, OverlaySource};
use sifrun_runtime::container::staging::{StagingDir, STAGING_BASE};
use sifrun_runtime::container::{self, ImageSource, Workdir};
use sifrun_runtime::crypt::{self, KeySource};
use sifrun_runtime::error::{Context, Error, Result};
use sifrun_runtime::image::pinned::PinnedImage;
use sifrun_runtime::image::signatures::{self, Keys};
use sifrun_runtime::image::RunnableImage;
use sifrun_runtime::process;
use sifrun_runtime::unprivileged::squashfuse;

/// `SIFRUN_VERIFY=1`: verify signatures before every run (like `--verify`).
pub const VERIFY_ENV: &str = "SIFRUN_VERIFY";
/// Default OpenPGP keyrings for verification, `:`-separated.
pub const KEYRING_ENV: &str = "SIFRUN_KEYRING";
/// Default PEM public keys for verification, `:`-separated.
pub const KEY_PEM_ENV: &str = "SIFRUN_KEY_PEM";

/// Options of `sifrun exec` (and `shell`, `run`), already split from the
/// command line.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Path of the SIF image.
    pub image: PathBuf,
    /// What to run.
    pub target: Target,
    /// Target user (name or UID); default: the invoking user.
    pub user: Option<String>,
    /// `SRC[:DST[:ro]]` bind specifications.
    pub binds: Vec<String>,
    /// `NAME=VALUE` environment overrides.
    pub env: Vec<String>,
    /// Files of `NAME=VALUE` lines, below `env`.
    pub env_files: Vec<PathBuf>,
    /// Pass no host variable but TERM and the proxy settings.
    pub cleanenv: bool,
    /// Working directory inside the container.
    pub workdir: Option<PathBuf>,
    /// Host directory for the container's /tmp and /var/tmp.
    pub tmp_dir: Option<PathBuf>,
    /// Bind nothing from the host by default; private /tmp and /var/tmp.
    pub contain: bool,
    /// `SRC[:DST]`: the home directory to bind, and $HOME.
    pub home: Option<String>,
    /// Do not bind the home directory.
    pub no_home: bool,
    /// Asked for a writable image (refused).
    pub writable: bool,
    /// A SCIF app: its environment, and its runscript for `run`.
    pub app: Option<String>,
    /// Keep the root filesystem writable (on a throw-away tmpfs).
    pub writable_tmpfs: bool,
    /// Signature check before running.
    pub verify: VerifyPolicy,
    /// GPUs passed through (`--gpus`), with the host driver's files; the
    /// same code the SPANK plugin drives from Slurm's allocation.
    pub gpus: GpuSelection,
    /// CDI spec directories (`--cdi-dir`) and devices (`--device`).
    pub cdi_dirs: Vec<PathBuf>,
    pub devices: Vec<String>,
    /// Key of an encrypted image; `None` asks on the terminal if needed.
    pub key: Option<KeySource>,
}

/// Whether and against which keys the image is verified before it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Verify (`--verify`, or `SIFRUN_VERIFY=1`).
    pub enabled: bool,
    /// The keys (OpenPGP keyrings, PEM public keys).
    pub keys: Keys,
}

impl VerifyPolicy {
    /// The policy from the command line, completed by the environment
    /// defaults: `SIFRUN_VERIFY=1` turns verification on, `SIFRUN_KEYRING`
    /// and `SIFRUN_KEY_PEM` add keys (`:`-separated paths).
    pub fn from_args_and_env(flag: bool, keyrings: Vec<PathBuf>, pem_keys: Vec<PathBuf>) -> Self {
        Self::from_args_and_vars(flag, keyrings, pem_keys, |name| std::env::var_os(name))
    }

    fn from_args_and_vars(
        flag: bool,
        mut keyrings: Vec<PathBuf>,
        mut pem_keys: Vec<PathBuf>,
        var: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Self {
        let env_on = var(VERIFY_ENV)
            .map(|v| !matches!(v.to_str(), Some("" | "0" | "no" | "false")))
            .unwrap_or(false);
        if let Some(list) = var(KEYRING_ENV) {
            keyrings.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
        }
        if let Some(list) = var(KEY_PEM_ENV) {
            pem_keys.extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
        }
        VerifyPolicy {
            enabled: flag || env_on,
            keys: Keys { keyrings, pem_keys },
        }
    }

    /// Verifies `image` when enabled: every object group signed, every
    /// signature valid against the keys. One-line error otherwise.
    pub fn check(&self, image: &Path) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.keys.is_empty() {
            return Err(Error::usage(format!(
                "--verify needs keys: --keyring / --key-pem, or {KEYRING_ENV} / {KEY_PEM_ENV}"
            )));
        }
        let report = signatures::verify(image, &self.keys.load(false)?)?;
        if report.verdict.is_ok() {
            Ok(())
        } else {
            Err(Error::image(format!(
                "refusing to run: {}",
                signatures::verdict_line(image, &report).trim_end()
            )))
        }
    }
}

/// Runs the target in the container and returns the exit status to use
/// (the command's, 128+N for a signal death). As root the image is mounted
/// by the kernel from a loop device; as any other user, in an unprivileged
/// user namespace through FUSE.
pub fn run(opts: &ExecOptions) -> Result<i32> {
    let unprivileged = !nix::unistd::geteuid().is_root();
    if let Target::Command(cmd) = &opts.target {
        if cmd.is_empty() {
            return Err(Error::usage("no command given"));
        }
    }
    if opts.writable {
        return Err(Error::usage(
            "--writable: sifrun uses SIF images read-only (an overlay partition too); use --writable-tmpfs for a throw-away writable root",
        ));
    }
    let app = opts
        .app
        .as_deref()
        .map(|a| AppName::parse(a, "--app"))
        .transpose()?;
    // Cheap host checks first, so a host without FUSE says so at once.
    let server = if unprivileged {
        container::mount::fuse::check_device()?;
        Some(squashfuse::find_server()?)
    } else {
        None
    };

    // Opened once: what is parsed, verified and run is one file (or a
    // private copy of it, when someone else could change it under us).
    let copy_base = if unprivileged {
        std::env::temp_dir()
    } else {
        PathBuf::from(STAGING_BASE)
    };
    if !unprivileged {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&copy_base)
            .with_context(|| format!("creating {}", copy_base.display()))?;
    }
    let pinned = PinnedImage::open(&opts.image, opts.verify.enabled, &copy_base)?;
    let image =
        RunnableImage::open_maybe_encrypted(pinned.path()).map_err(|e| pinned.name_in(e))?;
    opts.verify
        .check(pinned.path())
        .map_err(|e| pinned.name_in(e))?;
    // Unlock before anything is set up: a wrong key leaves nothing behind.
    let unlocked = unlock(&image, opts.key.as_ref()).map_err(|e| pinned.name_in(e))?;
    let mut identity = resolve_identity(opts.user.as_deref(), unprivileged)?;
    let mut binds = opts
        .binds
        .iter()
        .map(|b| BindMount::parse(b))
        .collect::<Result<Vec<_>>>()?;
    if let Some(home) = &opts.home {
        let bind = home_bind(home)?;
        identity.home.clone_from(&bind.destination);
        binds.insert(0, bind);
    }
    if let Some(dir) = &opts.tmp_dir {
        binds.splice(0..0, tmp_dir_binds(dir)?);
    }
    let mut overrides = Vec::new();
    for file in &opts.env_files {
        let text = fs::read(file)
            .map_err(|e| Error::usage(format!("--env-file {}: {e}", file.display())))?;
        overrides.extend(parse_env_object(&text));
    }
    for e in &opts.env {
        overrides.push(parse_assignment(e)?);
    }
    if unprivileged && !opts.cdi_dirs.is_empty() {
        return Err(Error::usage(
            "--cdi-dir: CDI devices are passed by root only (their hooks run as root)",
        ));
    }
    let wanted = opts
        .devices
        .iter()
        .map(|n| QualifiedName::parse(n).map_err(|e| Error::usage(format!("--device: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let devices = cdi::plan(
        &opts.gpus,
        &opts.cdi_dirs,
        &wanted,
        Some(&DriverList::default()),
        true,
    )?;
    // The devices' variables win over the image's, as --env does.
    overrides.extend(devices.cdi.env.iter().cloned());
    let mut env = EnvPlan::new(std::env::vars_os(), &image.env, &overrides);
    if opts.cleanenv {
        env.keep_only_always_passed();
    }
    env.container = Some(std::path::absolute(pinned.named()).unwrap_or(pinned.named().into()));
    env.app = app.as_ref().map(|a| a.to_string());
    let cwd = std::env::current_dir().ok().filter(|_| !opts.contain);
    let target = with_deffile_runscript(&opts.target, &image);

    let staging = if unprivileged {
        StagingDir::create_private()?
    } else {
        StagingDir::create()?
    };
    let mut spec = ContainerSpec::new(staging.path().to_path_buf(), identity);
    spec.cwd.clone_from(&cwd);
    spec.binds = binds;
    spec.writable_tmpfs = opts.writable_tmpfs;
    spec.mount_home = !opts.no_home && opts.home.is_none();
    spec.mount_tmp = !opts.contain;
    spec.unprivileged = unprivileged;
    env.append = devices.apply(&mut spec)?.append;
    spec.overlay = overlay_source(&image, pinned.path())?;

    let launch = Launch {
        spec: &spec,
        target,
        app,
        env,
        workdir: Workdir {
            explicit: opts.workdir.clone(),
            preferred: cwd,
        },
        parent: getpid(),
    };
    match server {
        Some(server) => run_unprivileged(launch, &image, &server, staging, unlocked),
        None => {
            // Encrypted images and private copies never enter the cache.
            let idle = cached_image::idle_secs()?;
            match pinned
                .file_itself()
                .filter(|_| unlocked.is_none() && idle > 0)
            {
                Some(file) => run_cached(launch, &image, file, idle, staging),
                None => run_privileged(launch, &image, staging, unlocked),
            }
        }
    }
    .map_err(|e| pinned.name_in(e))
}

/// `SIFRUN_OVERLAY_MAX_MIB`: the largest overlay partition unpacked.
pub const OVERLAY_MAX_ENV: &str = "SIFRUN_OVERLAY_MAX_MIB";

/// The image's overlay partition, read from the file that runs, with the
/// size limit (`SIFRUN_OVERLAY_MAX_MIB`, default 1024 MiB).
fn overlay_source(image: &RunnableImage, path: &Path) -> Result<Option<OverlaySource>> {
    let Some(extent) = image.overlay else {
        return Ok(None);
    };
    let max_mib = match std::env::var(OVERLAY_MAX_ENV) {
        Ok(v) => v.trim().parse().map_err(|_| {
            Error::usage(format!("{OVERLAY_MAX_ENV}={v:?}: expected a number of MiB"))
        })?,
        Err(_) => overlay_partition::DEFAULT_MAX_MIB,
    };
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(OverlaySource {
        file: std::sync::Arc::new(file),
        extent,
        max_mib,
    }))
}

/// An encrypted image, unlocked: the verified passphrase (for the kernel
/// path) and the user-space view of the container.
struct Unlocked {
    passphrase: zeroize::Zeroizing<Vec<u8>>,
    volume: luks2::Volume,
}

/// Unlocks an encrypted image (`None` for a plain one). The key is
/// checked here, in user space, on every path, so a wrong key is one
/// clear error before any device or mount exists.
fn unlock(image: &RunnableImage, key: Option<&KeySource>) -> Result<Option<Unlocked>> {
    let Some(enc) = &image.encryption else {
        if key.is_some() {
            return Err(Error::usage(format!(
                "{} is not encrypted: --pem-path / --passphrase-file / --passphrase apply only to encrypted images",
                image.path.display()
            )));
        }
        return Ok(None);
    };
    let key = key.cloned().unwrap_or(KeySource::Prompt);
    let passphrase = key.for_run(enc.wrapped_key.as_deref())?;
    let volume = crypt::open_volume(image, &passphrase)?;
    Ok(Some(Unlocked { passphrase, volume }))
}

/// The block device to mount for a privileged run, and what keeps it
/// alive: a loop device over the partition, over the decrypted FUSE file
/// (user-space path), or a dm-crypt mapping over the partition's loop
/// device (kernel path, where device-mapper exists).
fn privileged_device(
    image: &RunnableImage,
    unlocked: Option<Unlocked>,
) -> Result<(LoopAttachment, Option<crypt::dmcrypt::Mapping>)> {
    let Some(unlocked) = unlocked else {
        let dev =
            LoopAttachment::attach(&image.path, image.partition_offset, image.partition_size)?;
        return Ok((dev, None));
    };
    if let Some(cryptsetup) = crypt::dmcrypt::available() {
        let dev =
            LoopAttachment::attach(&image.path, image.partition_offset, image.partition_size)?;
        let name = format!("sifrun-{}-{}", getpid(), unlocked.volume.uuid());
        let mapping =
            crypt::dmcrypt::Mapping::open(&cryptsetup, dev.path(), &name, &unlocked.passphrase);
        return match mapping {
            Ok(m) => Ok((dev, Some(m))),
            Err(e) => {
                let _ = dev.detach();
                Err(e)
            }
        };
    }
    let size = unlocked.volume.size();
    let mounted = crypt::fuse_file::mount_and_serve(unlocked.volume, Path::new(STAGING_BASE))?;
    let dev = LoopAttachment::attach(&mounted.file(), 0, size);
    // The loop device holds the file open; the mount itself can go now.
    mounted.detach();
    Ok((dev?, None))
}

/// The invoking user; `--user` needs root, except naming oneself.
fn resolve_identity(user: Option<&str>, unprivileged: bool) -> Result<Identity> {
    let current = Identity::current()?;
    match user {
        None => Ok(current),
        Some(u) if unprivileged => {
            let wanted = Identity::lookup(u)?;
            if wanted.uid == current.uid {
                Ok(current)
            } else {
                Err(Error::usage(format!(
                    "--user {u} needs root: without it sifrun runs the container as the invoking user ({})",
                    current.name
                )))
            }
        }
        Some(u) => Identity::lookup(u),
    }
}

/// `sifrun run` on an image without a runscript file falls back to the
/// `%runscript` section of the definition file stored in the SIF.
fn with_deffile_runscript(target: &Target, image: &RunnableImage) -> Target {
    match target {
        Target::Runscript {
            args,
            deffile_script: None,
        } => Target::Runscript {
            args: args.clone(),
            deffile_script: image.deffile.as_deref().and_then(deffile_runscript),
        },
        other => other.clone(),
    }
}

/// Root: loop device, kernel SquashFS.
fn run_privileged(
    launch: Launch<'_>,
    image: &RunnableImage,
    staging: StagingDir,
    unlocked: Option<Unlocked>,
) -> Result<i32> {
    let (loop_dev, mapping) = privileged_device(image, unlocked)?;
    let device = match &mapping {
        Some(m) => m.path(),
        None => loop_dev.path().to_path_buf(),
    };
    match process::spawn(Box::new(move || launch.run_privileged(&device))) {
        Ok(child) => {
            // The mount in the child's namespace now holds the device;
            // closing our fd lets autoclear detach it when that namespace dies.
            drop(loop_dev);
            drop(mapping);
            drop(staging);
            child.wait()
        }
        Err(e) => {
            // The child is reaped, its namespace (and any mount) is gone.
            drop(mapping);
            let _ = loop_dev.detach();
            Err(e)
        }
    }
}

/// Root, with the node's image cache: the image's mount is shared and stays
/// after the run ([`cached_image`]).
fn run_cached(
    launch: Launch<'_>,
    image: &RunnableImage,
    file: &fs::File,
    idle_secs: u64,
    staging: StagingDir,
) -> Result<i32> {
    let lease = cached_image::acquire(&cached_image::state_dir(), file, image, idle_secs)?;
    let mounted = lease.mount_dir();
    let child = process::spawn(Box::new(move || launch.run(ImageSource::Mounted(&mounted))));
    drop(staging);
    // The lease (a shared lock) keeps the image mounted until the run ends.
    let status = child?.wait();
    drop(lease);
    status
}

/// Not root: user namespace, FUSE. The child mounts the FUSE connection
/// and sends us its device; we start the server here, outside the
/// container's namespaces (see [`sifrun_runtime::unprivileged::squashfuse`] for why).
fn run_unprivileged(
    launch: Launch<'_>,
    image: &RunnableImage,
    server_program: &Path,
    staging: StagingDir,
    unlocked: Option<Unlocked>,
) -> Result<i32> {
    if unlocked.is_some() {
        return Err(Error::usage(
            "encrypted images need root for now (the decrypting FUSE file is mounted in the host namespace); run sifrun exec as root",
        ));
    }
    let (ours, theirs) = UnixStream::pair().context("creating the FUSE hand-over socket")?;
    let mut server: Option<squashfuse::Server> = None;
    let hook = |_child: Pid| -> Result<()> {
        if let Some(device) = squashfuse::receive_device(&ours)? {
            server = Some(squashfuse::Server::start(
                server_program,
                &image.path,
                image.partition_offset,
                device,
            )?);
        }
        Ok(())
    };
    let spawned = process::spawn_with(
        Box::new(move || launch.run_unprivileged(theirs)),
        Box::new(hook),
    );
    drop(staging);
    match spawned {
        Ok(child) => {
            let status = child.wait();
            if let Some(server) = server {
                server.wait_for_exit();
            }
            status
        }
        Err(e) => {
            if let Some(server) = server {
                server.kill();
            }
            Err(e)
        }
    }
}

/// What the child needs; everything was resolved in the parent so the
/// child only performs system calls.
struct Launch<'a> {
    spec: &'a ContainerSpec,
    target: Target,
    app: Option<AppName>,
    /// Completed in the container, with what the image's scripts export.
    env: EnvPlan,
    workdir: Workdir,
    parent: Pid,
}

impl Launch<'_> {
    fn run_privileged(self, device: &Path) -> Result<Infallible> {
        self.run(ImageSource::Device(device))
    }

    fn run_unprivileged(self, server_socket: UnixStream) -> Result<Infallible> {
        self.run(ImageSource::Fuse(server_socket))
    }

    fn run(self, image: ImageSource<'_>) -> Result<Infallible> {
        die_with_parent(self.parent)?;
        container::create(self.spec, image)?;
        let mut env = self.env;
        if image_env::has_scripts() || self.app.is_some() {
            env.image
                .extend(image_env::evaluate(self.spec, self.app.as_ref(), false)?);
        }
        let env = env.build(&self.spec.identity);
        let argv = self.target.argv(self.app.as_ref())?;
        // The privilege drop keeps the parent-death signal across setuid.
        Err(container::exec_command(
            self.spec,
            &self.workdir,
            &argv,
            env,
        ))
    }
}

/// `--home SRC[:DST]`: SRC bound at DST (default SRC), both absolute.
fn home_bind(spec: &str) -> Result<BindMount> {
    let (source, dest) = spec.split_once(':').unwrap_or((spec, spec));
    BindMount::parse(&format!("{source}:{dest}"))
        .map_err(|e| Error::usage(format!("--home {spec}: {}", e.message())))
}

/// `--workdir DIR`: DIR/tmp and DIR/var_tmp (created, as the caller) bound
/// at /tmp and /var/tmp.
fn tmp_dir_binds(dir: &Path) -> Result<Vec<BindMount>> {
    let dir = std::path::absolute(dir)
        .map_err(|e| Error::usage(format!("--workdir {}: {e}", dir.display())))?;
    let mut binds = Vec::new();
    for (sub, dest) in [("tmp", "/tmp"), ("var_tmp", "/var/tmp")] {
        let source = dir.join(sub);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o1777)
            .create(&source)
            .map_err(|e| Error::usage(format!("--workdir: creating {}: {e}", source.display())))?;
        binds.push(BindMount::parse(&format!("{}:{dest}", source.display()))?);
    }
    Ok(binds)
}

/// If sifrun dies (even by SIGKILL) the container command goes with it, so
/// the mount namespace and the loop device cannot outlive the run.
fn die_with_parent(parent: Pid) -> Result<()> {
    nix::sys::prctl::set_pdeathsig(Some(Signal::SIGKILL)).context("setting parent-death signal")?;
    if getppid() != parent {
        return Err(Error::system("sifrun exited during container setup"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn verify_policy_env_defaults() {
        let vars = |name: &str| -> Option<OsString> {
            match name {
                VERIFY_ENV => Some("1".into()),
                KEYRING_ENV => Some("/a.asc:/b.asc".into()),
                _ => None,
            }
        };
        let p = VerifyPolicy::from_args_and_vars(false, vec!["/c.asc".into()], vec![], vars);
        assert!(p.enabled);
        assert_eq!(
            p.keys.keyrings,
            vec![
                PathBuf::from("/c.asc"),
                PathBuf::from("/a.asc"),
                PathBuf::from("/b.asc")
            ]
        );
        let off = VerifyPolicy::from_args_and_vars(false, vec![], vec![], |n| {
            (n == VERIFY_ENV).then(|| OsString::from("0"))
        });
        assert!(!off.enabled);
    }

    #[test]
    fn verify_without_keys_is_a_usage_error() {
        let p = VerifyPolicy {
            enabled: true,
            ..VerifyPolicy::default()
        };
        let e = p.check(Path::new("/nonexistent.sif")).unwrap_err();
        assert!(e.message().starts_with("--verify needs keys"));
    }
}
