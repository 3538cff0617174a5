//! `sifrun slurm-setup`: build one Slurm step's container on this node.
//!
//! Started by the SPANK plugin from inside slurmstepd (as root, with a
//! cleared environment). The sequence:
//!
//! 0. shed the job user's groups and tie this process's life to
//!    slurmstepd's and to its own deadline (`become_root_only`);
//! 1. open the image **as the job user** (a file the user cannot read is
//!    refused; only a regular file, never through a `/proc` magic link),
//!    and resolve user-named bind sources and the working directory as the
//!    user too; root only ever uses the resulting descriptors
//!    (`/proc/self/fd/N`), never the user's paths again;
//! 2. find the image in the node's cache ([`crate::node::image_cache`]), or attach
//!    its primary partition to a read-only autoclear loop device and mount
//!    it `ro,nosuid,nodev` there (and start the cache keeper); with the cache
//!    off (`--cache-idle-secs 0`) the mount is private to this step instead.
//!    Under an execution control list, an image the user could still change
//!    is first copied into the cache entry ([`crate::node::ecl::copy`]) and from
//!    then on the copy alone is parsed, verified, mounted and read for the
//!    environment; the list decides before anything is mounted;
//! 3. in a new mount namespace: build the container root over the image,
//!    `pivot_root` (this process is now inside);
//! 4. print one JSON line on stdout, a [`protocol::SetupReport`]:
//!    `{"ok":true,"env":[[NAME,VALUE],...],"staging":DIR,"cache_lock":FILE}`
//!    or `{"ok":false,"error":"..."}`;
//!
//! Encrypted images (see docs/encryption.md) take another step 2: the key
//! file (`--key-file`) is opened as the job user, the LUKS2 volume is
//! unlocked in user space (a wrong key fails here, before any mount), a
//! forked `crypt-serve` process serves the decrypted SquashFS as one FUSE
//! file, and a loop device private to this step is attached over it. Such
//! images never enter the node cache: a decrypted mount is never shared
//! with a step that did not present the key.
//!
//! 5. wait for stdin to close (the plugin has then opened
//!    `/proc/<pid>/ns/mnt`, which keeps the namespace alive, and taken its
//!    own shared lock on `cache_lock`, which keeps the image mounted) and
//!    exit.

use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::container;
use crate::container::cdi;
use crate::container::gpu::{DriverList, GpuSelection};
use crate::container::identity::{group_entry, Identity};
use crate::container::image_env::{self, scif::AppName};
use crate::container::loop_device::LoopAttachment;
use crate::container::mount::mount_squashfs_partition;
use crate::container::mount::rootfs::{BindMount, ContainerSpec, TmpfsMount};
use crate::container::namespaces::Unshared;
use crate::container::overlay_partition::OverlaySource;
use crate::container::staging::StagingDir;
use crate::crypt;
use crate::error::Context;
use crate::error::{Error, Result};
use crate::image::RunnableImage;
use crate::node::credentials::{PathHandle, UserCredentials};
use crate::node::ecl::catalogue::Lookup;
use crate::node::ecl::copy::{copy_image_objects, CopyLimits, CopyRecord};
use crate::node::ecl::enforce::{EclCheck, ImageSource};
use crate::node::image_cache::{
    prepare_copy_destination, record_owner, remove_copy, same_file_identity, CacheKey,
    FileIdentity, ImageCache, Lease, COPY_FILE, COPY_RECORD,
};
use crate::node::kept_containers::{self, KeptContainers, KeptLease};
use crate::node::site_hooks;

pub mod protocol;

use crate::phases::Phases;
use protocol::{SetupArgs, SetupReport};

/// Starts the stderr line with the helper's per-phase timing (the plugin
/// logs it at debug level, every other stderr line at info).
pub const TIMING_PREFIX: &str = "timing: ";

/// Runs the whole sequence and returns the process exit status.
pub fn run(opts: &SetupArgs) -> i32 {
    let mut stdout = std::io::stdout().lock();
    let mut phases = Phases::start();
    let outcome = become_root_only(opts.timeout_secs).and_then(|()| setup(opts, &mut phases));
    // To the slurmd log at debug level (the plugin logs our stderr).
    eprintln!("{TIMING_PREFIX}{}", phases.line());
    match outcome {
        Ok(ready) => {
            let report = SetupReport {
                ok: true,
                error: None,
                env: ready.env.clone(),
                staging: ready.staging.as_ref().map(|s| s.display().to_string()),
                cache_lock: ready
                    .lease
                    .as_ref()
                    .map(|l| l.lock_path().display().to_string()),
                env_append: ready.env_append.clone(),
                kept: ready.kept.as_ref().map(|k| k.dir().display().to_string()),
                extra_cache_locks: ready
                    .extra_leases
                    .iter()
                    .map(|l| l.lock_path().display().to_string())
                    .collect(),
                site_hooks: ready.site_hooks.clone(),
            };
            if write_report(&mut stdout, &report).is_err() {
                return 1;
            }
            // Bounded by the plugin: it closes our stdin right after opening
            // the namespace and locking the cache entry, or dies, which
            // closes it too. Our lease (if any) is held until then.
            let mut sink = [0u8; 64];
            while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
            drop(ready);
            0
        }
        Err(e) => {
            let _ = write_report(&mut stdout, &SetupReport::failed(e.message()));
            1
        }
    }
}

/// Sheds what this root process inherited from slurmstepd that it must
/// not have: the job user's group IDs (files it creates would belong to
/// the user's group, and group permissions would apply to root's reads),
/// and a life of its own. It dies with its parent (`PR_SET_PDEATHSIG`: a
/// killed slurmstepd cannot leave it holding a cache entry and the job in
/// completing state) and at its own deadline (`alarm`), whatever it is
/// blocked on. Neither is inherited by the processes it starts (the cache
/// keeper, the FUSE server of an encrypted image outlive it on purpose).
fn become_root_only(timeout_secs: u64) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::usage("sifrun slurm-setup must run as root"));
    }
    let root = nix::unistd::Gid::from_raw(0);
    nix::unistd::setgroups(&[]).context("dropping the job user's groups")?;
    nix::unistd::setresgid(root, root, root).context("setting root's group ID")?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("PR_SET_PDEATHSIG")?;
    if nix::unistd::getppid().as_raw() == 1 {
        // The parent died before the line above took effect.
        return Err(Error::system("slurmstepd is gone"));
    }
    if timeout_secs > 0 {
        let secs = u32::try_from(timeout_secs).unwrap_or(u32::MAX);
        // SAFETY: alarm(2) has no memory effects; SIGALRM's default action
        // ends the process.
        unsafe { libc::alarm(secs) };
    }
    Ok(())
}

fn write_report(out: &mut impl Write, report: &SetupReport) -> std::io::Result<()> {
    writeln!(out, "{}", report.to_line())?;
    out.flush()
}

struct Ready {
    env: Vec<(String, String)>,
    env_append: Vec<(String, String)>,
    /// None for a kept container (nothing was built).
    staging: Option<PathBuf>,
    /// Keeps the cached image mounted until the plugin holds its own lock.
    lease: Option<Lease>,
    /// The same for the images bound beside it (`data.sif:/data`).
    extra_leases: Vec<Lease>,
    /// The container, built now, kept for the job's later steps (its lock
    /// held until the plugin holds its own).
    kept: Option<KeptLease>,
    /// The site's hooks that ran at setup.
    site_hooks: Vec<String>,
}

/// The kinds of `--unshare`, checked.
fn unshared(opts: &SetupArgs) -> Result<Vec<Unshared>> {
    opts.unshare
        .iter()
        .map(|name| {
            Unshared::parse(name).ok_or_else(|| {
                Error::usage(format!(
                    "--container-unshare: {name:?} is not one of net, ipc, uts"
                ))
            })
        })
        .collect()
}

/// What [`build_in_new_namespace`] leaves for the report.
struct Built {
    /// Host staging directory (the plugin removes it).
    staging: PathBuf,
    /// Environment additions for the GPU driver files bound.
    env_append: Vec<(String, String)>,
    /// What the image's `/.singularity.d/env` scripts export, then the
    /// CDI devices' variables, then what the site's hooks left (a later
    /// one wins).
    added_env: Vec<(String, String)>,
    /// The site's hooks that ran (they run again at the step's end).
    site_hooks: Vec<String>,
    /// The node cache leases of the images bound beside the main one.
    data_leases: Vec<Lease>,
}

/// The setup proper; [`run`] has made this process root-only first.
fn setup(opts: &SetupArgs, phases: &mut Phases) -> Result<Ready> {
    phases.mark("start");
    let user = UserCredentials {
        uid: opts.uid,
        gid: opts.gid,
        groups: opts.groups.clone(),
    };

    let image_file = user.open_file(&opts.image)?;
    let image_fd_path = fd_path(&image_file);
    let image = RunnableImage::open_maybe_encrypted(&image_fd_path)
        .map_err(|e| e.shown_as(&image_fd_path, &opts.image))?;
    phases.mark("image opened");

    let mut identity = Identity::lookup(&opts.uid.to_string())?;
    identity.gid = opts.gid;
    if !opts.groups.is_empty() {
        identity.groups = opts
            .groups
            .iter()
            .map(|g| group_entry(nix::unistd::Gid::from_raw(*g)))
            .collect();
    }

    let ecl = match (&opts.ecl_config, opts.job_id) {
        (Some(config), Some(job)) => {
            EclCheck::for_job(config, job, opts.restart_count, opts.uid, &opts.state_dir)?
        }
        (Some(_), None) => return Err(Error::usage("--ecl-config needs --job-id")),
        _ => None,
    };
    phases.mark("identity and list");
    if let Some(name) = &opts.name {
        check_named(opts, name, &image, ecl.is_some())?;
    }
    if image.encryption.is_some() {
        if ecl.is_some() {
            return Err(Error::image(format!(
                "{}: encrypted images cannot run under an execution control list yet",
                opts.image.display()
            )));
        }
        let device = unlock_encrypted(opts, &user, &image, &image_fd_path)?;
        let overlay = overlay_source(opts, &image_file, &image)?;
        return setup_uncached(opts, &user, identity, image, device, overlay, phases);
    }
    if ecl.is_none() && opts.cache_idle_secs == 0 {
        let device =
            LoopAttachment::attach(&image_fd_path, image.partition_offset, image.partition_size)
                .map_err(|e| e.shown_as(&image_fd_path, &opts.image))?;
        let overlay = overlay_source(opts, &image_file, &image)?;
        return setup_uncached(opts, &user, identity, image, device, overlay, phases);
    }
    setup_cached(opts, &user, identity, &image_file, image, ecl, phases)
}

/// `/proc/self/fd/N` for an open file: what this process reads it through,
/// never the path the user named it by.
fn fd_path(file: &std::fs::File) -> PathBuf {
    PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(file)
    ))
}

/// An image bound into the container beside the main one
/// (`--container-mounts=data.sif:/data`), mounted through the node cache.
struct DataImage {
    lease: Lease,
    destination: PathBuf,
}

/// The `--container-mounts` entries whose source is a SIF image: each
/// opened as the job user and mounted through the node cache under the
/// same rules as the main image (the partition's list, the verified copy,
/// the catalogue), to be bound read-only at its destination.
fn mount_data_images(
    opts: &SetupArgs,
    user: &UserCredentials,
    ecl: Option<&EclCheck>,
) -> Result<Vec<DataImage>> {
    let mut data = Vec::new();
    for spec in opts.binds.iter().filter(|b| SetupArgs::is_image_bind(b)) {
        let bind = BindMount::parse_unresolved(spec)?;
        let shown = &bind.source;
        if opts.cache_idle_secs == 0 {
            return Err(Error::usage(format!(
                "--container-mounts {spec}: images are mounted through the node's image cache, which is off here (cache_idle_secs = 0)"
            )));
        }
        let file = user.open_file(shown)?;
        let image_fd_path = fd_path(&file);
        let image =
            RunnableImage::open(&image_fd_path).map_err(|e| e.shown_as(&image_fd_path, shown))?;
        let (lease, _) = mount_checked(opts, shown, &file, &image, ecl)?;
        data.push(DataImage {
            lease,
            destination: bind.destination,
        });
    }
    Ok(data)
}

/// Refuses, in one line, a named container (`--container-name`) that
/// could not be kept for the job's later steps.
fn check_named(opts: &SetupArgs, name: &str, image: &RunnableImage, ecl: bool) -> Result<()> {
    let why = kept_containers::why_not_kept(opts)
        .or_else(|| {
            image
                .encryption
                .is_some()
                .then_some("encrypted images are decrypted for one step at a time")
        })
        .or_else(|| {
            ecl.then_some(
                "not available on a partition with an execution control list yet (the list decides at every step)",
            )
        });
    match why {
        Some(why) => Err(Error::usage(format!("--container-name={name}: {why}"))),
        None => Ok(()),
    }
}

/// The key of the container this step asks for, when it may be kept for
/// the job's later steps ([`kept_containers::request_key`]).
fn kept_key(opts: &SetupArgs, image_file: &std::fs::File) -> Result<Option<String>> {
    if !kept_containers::may_keep(opts) {
        return Ok(None);
    }
    let node = nix::unistd::gethostname()
        .context("reading the host name")?
        .to_string_lossy()
        .into_owned();
    let meta = image_file.metadata().context("reading image metadata")?;
    Ok(kept_containers::request_key(
        opts,
        &node,
        &FileIdentity::of(&meta),
    ))
}

/// One image through the node cache ([`ImageCache`]): checked against the
/// partition's list (if any) before anything of it is mounted, mounted
/// once per node, and leased for the step. `shown` is the image as the
/// user named it (for messages). Returns the lease and where the mounted
/// bytes come from (for a copy, read everything else from it too).
fn mount_checked(
    opts: &SetupArgs,
    shown: &Path,
    image_file: &std::fs::File,
    image: &RunnableImage,
    ecl: Option<&EclCheck>,
) -> Result<(Lease, ImageSource)> {
    let image_fd_path = fd_path(image_file);
    // An image staged in the site's catalogue (ecl::catalogue) is decided
    // from its record: no hashing, no copy, pages read on demand.
    let staged = match &ecl {
        Some(check) => check.catalogue_lookup(image_file),
        None => Lookup::NotStaged,
    };
    match &staged {
        Lookup::Unrecorded { reason } | Lookup::Untrusted { reason } => {
            eprintln!("sifrun slurm-setup: catalogue record not used: {reason}");
        }
        Lookup::NotStaged | Lookup::Trusted { .. } => {}
    }
    // Under an ECL, bytes the user could still change are copied first
    // (see ecl::enforce and ecl::copy): from then on the copy alone says
    // what is verified, mounted and applied. Catalogue files can change
    // only by its owner's hand, as root-owned files by root's.
    let source = match (&ecl, &staged) {
        (Some(_), Lookup::Trusted { .. } | Lookup::Unrecorded { .. }) => ImageSource::File,
        (Some(_), _) => ImageSource::for_checked_image(
            &image_file.metadata().context("reading image metadata")?,
        ),
        (None, _) => ImageSource::File,
    };
    // The real directory of the opened file, for the list's dirpath rules:
    // established in this process's own mount namespace, never from a name
    // the user's namespace gave the file (empty: no directory rule applies).
    // Only a list has directory rules: no work for steps without one.
    let image_dir = match &ecl {
        Some(_) => crate::node::credentials::real_parent_dir(image_file).unwrap_or_default(),
        None => PathBuf::new(),
    };
    let backing = |entry: &Path| match source {
        ImageSource::File => image_fd_path.clone(),
        ImageSource::Copy => entry.join(COPY_FILE),
    };
    let enforce = |entry: &Path| -> Result<()> {
        let Some(check) = &ecl else { return Ok(()) };
        let verdict = match &staged {
            Lookup::Trusted {
                record_path,
                record,
            } => check.decide_staged(record_path, record, &image_dir)?,
            _ => check.check(&backing(entry), &image_dir, Some(entry))?,
        };
        // The slurmd log gets everything (the plugin logs our stderr).
        eprintln!(
            "sifrun slurm-setup: ECL verdict for {}: {}",
            shown.display(),
            serde_json::to_string(&verdict).unwrap_or_default()
        );
        if verdict.decision.allowed {
            Ok(())
        } else {
            Err(Error::image(format!(
                "{}: {}",
                shown.display(),
                verdict.refusal()
            )))
        }
    };

    let cache = ImageCache::open(&opts.state_dir)?;
    let key = match source {
        // Offsets from the live file mean nothing for a copy: the key is
        // the file's identity (and never shared while it is racy).
        ImageSource::Copy => {
            CacheKey::for_copy(image_file, std::time::SystemTime::now(), source.tag())?
        }
        ImageSource::File => CacheKey::for_partition(
            image_file,
            image.partition_offset,
            image.partition_size,
            source.tag(),
        )?,
    };
    let lease = cache
        .acquire(&key, |dir| {
            let entry = dir.parent().unwrap_or(dir);
            let result = (|| {
                // Before any work: one user cannot pin the node's memory
                // with thousands of mounted images.
                cache.make_room(opts.uid, &opts.cache_limits())?;
                if source == ImageSource::Copy {
                    copy_for_verification(opts, shown, &cache, image_file, entry)?;
                }
                // Nothing of the image is mounted before the list allows it.
                enforce(entry)?;
                // Where the partition is: for a copy, read again from the
                // copy (never from the live file); a file that cannot change
                // (or runs under no list) was read once, and the key says so.
                let (offset, size) = match source {
                    ImageSource::File => (image.partition_offset, image.partition_size),
                    ImageSource::Copy => {
                        let copy = RunnableImage::open(&backing(entry))
                            .map_err(|e| e.shown_as(&backing(entry), shown))?;
                        (copy.partition_offset, copy.partition_size)
                    }
                };
                mount_squashfs_partition(&backing(entry), offset, size, dir)?;
                record_owner(entry, opts.uid)
            })();
            if result.is_err() && source == ImageSource::Copy {
                remove_copy(entry);
            }
            result
        })
        .map_err(|e| e.shown_as(&image_fd_path, shown))?;
    if lease.mounted_now {
        // This step's list already decided, inside the mount function.
        // Here, before we leave the node's mount namespace: the keeper
        // unmounts entries there.
        crate::node::image_cache::start_keeper(&opts.state_dir, opts.cache_idle_secs);
    } else {
        // Already mounted (by another step, maybe under another
        // partition's list or none): this step's list decides too, from
        // the node's record of the verified bytes when there is one.
        enforce(lease.entry_dir()).map_err(|e| e.shown_as(&image_fd_path, shown))?;
    }
    Ok((lease, source))
}

/// The usual path: the image mounted once per node in the cache
/// ([`ImageCache`]), checked against the partition's list (if any) before
/// anything of it is mounted, and bound as the lower layer of the step's
/// root.
fn setup_cached(
    opts: &SetupArgs,
    user: &UserCredentials,
    identity: Identity,
    image_file: &std::fs::File,
    image: RunnableImage,
    ecl: Option<EclCheck>,
    phases: &mut Phases,
) -> Result<Ready> {
    let (lease, source) = mount_checked(opts, &opts.image, image_file, &image, ecl.as_ref())?;
    phases.mark(if lease.mounted_now {
        "image mounted"
    } else {
        "image found mounted"
    });
    // The image's environment and overlay partition from the same bytes as
    // what runs.
    let (env, overlay) = match source {
        ImageSource::File => {
            let overlay = overlay_source(opts, image_file, &image)?;
            (image.env, overlay)
        }
        ImageSource::Copy => {
            let path = lease.entry_dir().join(COPY_FILE);
            let copy = RunnableImage::open(&path).map_err(|e| e.shown_as(&path, &opts.image))?;
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let overlay = overlay_source(opts, &file, &copy)?;
            (copy.env, overlay)
        }
    };
    // Kept for later steps: made here, while the state directory is still
    // in reach. Not where a list applies (it decides at every step), nor,
    // unless asked for by name, for an image with an overlay partition
    // (what one step changes there must not reach the next).
    let pending = match (kept_key(opts, image_file)?, &overlay, &ecl) {
        (Some(key), overlay, None) if overlay.is_none() || opts.name.is_some() => {
            let pending = KeptContainers::open(&opts.state_dir)?.prepare(&key)?;
            if let (None, Some(name)) = (&pending, &opts.name) {
                return Err(Error::usage(format!(
                    "--container-name={name}: another step of the job is making that container on this node (or the job keeps {} containers here already); try again",
                    kept_containers::MAX_PER_JOB
                )));
            }
            if pending.is_some() {
                if !lease.mounted_now {
                    // It removes the job's containers once unused.
                    crate::node::image_cache::start_keeper_unless_running(
                        &opts.state_dir,
                        opts.cache_idle_secs,
                    );
                }
                // The holder forked from us must outlive the step: out of
                // the step's cgroup, which Slurm kills when the step ends.
                crate::process::leave_job_cgroup();
            }
            pending
        }
        _ => None,
    };
    let built = build_in_new_namespace(
        opts,
        user,
        identity,
        container::ImageSource::Mounted(&lease.mount_dir()),
        overlay,
        ecl.as_ref(),
        phases,
    )?;
    let env = [env, built.added_env].concat();
    let named_image = opts.name.as_ref().map(|_| opts.image.clone());
    let kept = match pending {
        None => None,
        // Asked for by name, a container that is not kept is an error.
        Some(p) if named_image.is_some() => {
            Some(p.finish(env.clone(), built.env_append.clone(), named_image)?)
        }
        // Otherwise not fatal: the step runs, the container is just not kept.
        Some(p) => p
            .finish(env.clone(), built.env_append.clone(), None)
            .inspect_err(|e| eprintln!("not keeping the container: {}", e.message()))
            .ok(),
    };
    Ok(Ready {
        env,
        env_append: built.env_append,
        staging: Some(built.staging),
        lease: Some(lease),
        extra_leases: built.data_leases,
        kept,
        site_hooks: built.site_hooks,
    })
}

/// Copies what verification covers of the user's `image_file` into the
/// cache `entry` (root-only), within the node's limits, and refuses a copy
/// of a file that changed while it was read.
fn copy_for_verification(
    opts: &SetupArgs,
    shown: &Path,
    cache: &ImageCache,
    image_file: &std::fs::File,
    entry: &Path,
) -> Result<()> {
    let before = image_file.metadata().context("reading image metadata")?;
    let limits = CopyLimits {
        per_image: opts.copy_limit_mib << 20,
        per_user: opts.copy_quota_mib << 20,
        used_by_user: cache.copies_held_by(opts.uid),
    };
    let dest = prepare_copy_destination(entry, &opts.copy_dir)?;
    let bytes = copy_image_objects(image_file, shown, &dest, &limits)?;
    let after = image_file.metadata().context("reading image metadata")?;
    if !same_file_identity(&before, &after) {
        return Err(Error::image(format!(
            "{}: the image changed while it was being copied for verification; try again once it is no longer being written",
            shown.display()
        )));
    }
    let record = serde_json::to_vec(&CopyRecord {
        uid: opts.uid,
        bytes,
    })
    .map_err(|e| Error::system(e.to_string()))?;
    std::fs::write(entry.join(COPY_RECORD), record).context("recording the image copy")
}

/// The key of an encrypted image, opened and read as the job user.
fn unlock_encrypted(
    opts: &SetupArgs,
    user: &UserCredentials,
    image: &RunnableImage,
    image_fd_path: &Path,
) -> Result<LoopAttachment> {
    let Some(enc) = &image.encryption else {
        return Err(Error::image("not an encrypted image"));
    };
    let Some(key_path) = &opts.key_file else {
        return Err(Error::usage(format!(
            "{}: the image is encrypted: give its key with --container-key-file=FILE (PEM private key or passphrase file)",
            opts.image.display()
        )));
    };
    if !opts.state_dir.is_absolute() {
        return Err(Error::usage("--state-dir must be an absolute path"));
    }
    // As the user: a key the user cannot read is refused like an image.
    let mut key_file = user
        .open_file(key_path)
        .map_err(|e| Error::usage(format!("--container-key-file {}", e.message())))?;
    let passphrase =
        crypt::key::passphrase_from_key_file(&mut key_file, key_path, enc.wrapped_key.as_deref())?;
    drop(key_file);
    // The key is checked here, in user space, before anything is mounted.
    let volume = crypt::open_volume(image, &passphrase)
        .map_err(|e| e.shown_as(image_fd_path, &opts.image))?;
    drop(passphrase);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&opts.state_dir)
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    let size = volume.size();
    // Forked before this process leaves the host's mount namespace; the
    // server holds only the connection and the key, and exits once the
    // loop device lets the file go (see fuse_file::mount_and_fork_server).
    // The server lives no longer than our parent, slurmstepd: the step.
    let step = crate::pidfd::PidFd::parent()
        .map_err(|e| Error::system(format!("a handle on the step's process: {e}")))?;
    let mounted = crypt::fuse_file::mount_and_fork_server(volume, &opts.state_dir, step)?;
    let device = LoopAttachment::attach(&mounted.file(), 0, size);
    // The loop device holds the file; the mount leaves every mount table.
    mounted.detach();
    device
}

/// The cache is off, or the image is encrypted: this step mounts its own
/// `device`, which lives and dies with its namespace.
fn setup_uncached(
    opts: &SetupArgs,
    user: &UserCredentials,
    identity: Identity,
    image: RunnableImage,
    device: LoopAttachment,
    overlay: Option<OverlaySource>,
    phases: &mut Phases,
) -> Result<Ready> {
    // From here on this process is in its own mount namespace: paths are
    // resolved (as the user) in it, so bind sources belong to it (the kernel
    // refuses to bind a mount of another namespace). On any error the
    // process exits, the namespace dies, and the device is detached.
    let result = build_in_new_namespace(
        opts,
        user,
        identity,
        container::ImageSource::Device(device.path()),
        overlay,
        None,
        phases,
    );
    match result {
        Ok(built) => {
            // Our mount holds the device now; autoclear detaches it with
            // the namespace.
            drop(device);
            Ok(Ready {
                env: [image.env, built.added_env].concat(),
                env_append: built.env_append,
                staging: Some(built.staging),
                lease: None,
                extra_leases: built.data_leases,
                kept: None,
                site_hooks: built.site_hooks,
            })
        }
        Err(e) => {
            let _ = device.detach();
            Err(e)
        }
    }
}

/// Everything after the image is available: a new mount namespace, the
/// user's paths resolved in it with the job user's permissions, then the
/// container over `image` ([`container::build`]). Returns the host staging
/// directory.
fn build_in_new_namespace(
    opts: &SetupArgs,
    user: &UserCredentials,
    identity: Identity,
    image: container::ImageSource,
    overlay: Option<OverlaySource>,
    ecl: Option<&EclCheck>,
    phases: &mut Phases,
) -> Result<Built> {
    if !opts.state_dir.is_absolute() {
        return Err(Error::usage("--state-dir must be an absolute path"));
    }
    // Still in the node's namespace: the job's own /tmp (and /dev/shm)
    // when Slurm gave the job a namespace of its own.
    let job_dirs = match opts.job_namespace() {
        Some(job_ns) => crate::node::job_namespace::capture(&job_ns)?,
        None => Vec::new(),
    };
    // Images bound beside the main one, under the same rules, mounted in
    // the node's cache while we are still in the node's namespace.
    let data = mount_data_images(opts, user, ecl)?;
    let site_hook_names = site_hook_names(opts)?;
    let staging = StagingDir::create_in(&opts.state_dir)?;
    phases.mark("staging");
    container::enter_namespaces(&image, &identity)?;
    container::namespaces::unshare_others(&unshared(opts)?)?;
    phases.mark("namespace");

    // Handles must stay open until the binds are made (they are the sources).
    let mut handles: Vec<PathHandle> = Vec::new();
    let mut binds = Vec::new();
    // Images in --container-mounts are mounted already (mount_data_images).
    let path_binds: Vec<&String> = opts
        .binds
        .iter()
        .filter(|b| !SetupArgs::is_image_bind(b))
        .collect();
    let as_user = [
        (path_binds, "--container-mounts"),
        (
            opts.step_binds.iter().collect(),
            "the step's PMIx directory",
        ),
    ];
    for (specs, what) in as_user {
        for spec in specs {
            let mut bind = BindMount::parse_unresolved(spec)?;
            let handle = user
                .open_path(&bind.source)
                .map_err(|e| Error::usage(format!("{what} {spec}: {}", e.message())))?;
            bind.source = handle.proc_path();
            handles.push(handle);
            binds.push(bind);
        }
    }
    for spec in &opts.admin_binds {
        binds.push(BindMount::parse(spec)?);
    }
    // Mounted by root in the node cache: bound read-only, as the image is.
    for d in &data {
        binds.push(BindMount {
            source: d.lease.mount_dir(),
            destination: d.destination.clone(),
            read_only: true,
        });
    }

    let mut spec = ContainerSpec::new(staging.path().to_path_buf(), identity);
    spec.binds = binds;
    let devices = device_plan(opts)?;
    let cdi_env = devices.apply(&mut spec)?;
    let env_append = cdi_env.append;
    if let Some(dir) = &opts.hooks_dir {
        spec.root_hooks.extend(site_hooks::setup_hooks(
            dir,
            &site_hook_names,
            &site_hook_env(opts),
            std::time::Duration::from_secs(opts.hook_timeout_secs.max(1)),
        )?);
    }
    spec.mount_home = !opts.no_home;
    spec.writable_tmpfs = opts.writable_tmpfs;
    spec.overlay = overlay;
    spec.job_dirs = job_dirs;
    spec.tmpfs_mounts = opts
        .tmpfs
        .iter()
        .map(|t| TmpfsMount::parse(t))
        .collect::<Result<_>>()?;
    spec.unmounts = opts.umount.iter().map(PathBuf::from).collect();
    if let Some(cwd) = &opts.cwd {
        // An unreachable cwd is not fatal: Slurm falls back to /tmp, as it
        // does outside containers.
        if let Ok(handle) = user.open_path(cwd) {
            spec.cwd = Some(handle.canonical.clone());
            spec.cwd_source = Some(handle.proc_path());
            handles.push(handle);
        }
    }

    phases.mark("paths resolved");
    let outcome = container::build(&spec, image)?;
    drop(handles);
    phases.mark("root built");
    if let Some(o) = outcome.overlay {
        // To the slurmd log (the plugin logs the helper's stderr).
        eprintln!(
            "overlay partition: {} files, {} directories, {} symlinks, {} whiteouts, {} skipped, {:.1} MiB unpacked in {} ms",
            o.files,
            o.dirs,
            o.symlinks,
            o.whiteouts,
            o.skipped,
            o.bytes as f64 / (1u64 << 20) as f64,
            o.millis
        );
    }

    if let Some(dir) = &opts.workdir {
        // We are inside the container root now, whose /proc is the host's
        // PID namespace: checked as the job user, never through /proc
        // links, so the answer says nothing about the host's files.
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        let found = user.run_as(|| crate::node::credentials::open_no_magiclinks(dir, flags))?;
        if found.is_err() {
            return Err(Error::usage(format!(
                "--container-workdir {}: no such directory in the image",
                dir.display()
            )));
        }
    }

    // Apptainer images keep their environment in scripts: evaluated once
    // for the step, here, as the job user (every task gets the result).
    let app = opts
        .app
        .as_deref()
        .map(|a| AppName::parse(a, "--container-app"))
        .transpose()?;
    // With --container-entrypoint the image's entrypoint runs after them,
    // in the same child, and what it exports is the tasks' (pyxis' rule).
    let mut added_env = if image_env::has_scripts() || app.is_some() || opts.entrypoint {
        let started = std::time::Instant::now();
        let vars = image_env::evaluate(&spec, app.as_ref(), opts.entrypoint)?;
        // To the slurmd log (the plugin logs the helper's stderr).
        eprintln!(
            "image environment: {} variables from {}{} in {:.1} ms",
            vars.len(),
            image_env::ENV_DIR,
            if opts.entrypoint {
                " and the entrypoint"
            } else {
                ""
            },
            started.elapsed().as_secs_f64() * 1000.0
        );
        vars
    } else {
        Vec::new()
    };
    // The devices' variables and the site's hooks' win over the image's.
    added_env.extend(cdi_env.set);
    added_env.extend(outcome.hook_env);

    phases.mark("checks and environment");
    let staging_path = staging.path().to_path_buf();
    // The staging directory lives in the host's namespace; we are no longer
    // there, so the plugin removes it (dropping here would look for it in
    // the container).
    std::mem::forget(staging);
    Ok(Built {
        staging: staging_path,
        env_append,
        added_env,
        site_hooks: site_hook_names,
        data_leases: data.into_iter().map(|d| d.lease).collect(),
    })
}

/// The overlay partition of `image` (read from `file`, the same bytes),
/// if it has one, with this node's size limit.
fn overlay_source(
    opts: &SetupArgs,
    file: &std::fs::File,
    image: &RunnableImage,
) -> Result<Option<OverlaySource>> {
    let Some(extent) = image.overlay else {
        return Ok(None);
    };
    let file = file
        .try_clone()
        .context("duplicating the image's file handle")?;
    Ok(Some(OverlaySource {
        file: std::sync::Arc::new(file),
        extent,
        max_mib: opts.overlay_max_mib,
    }))
}

/// The step's devices: Slurm's GPUs, through CDI when the node has a spec
/// of their kind, and the CDI devices the user asked for (see
/// [`cdi::plan`]).
fn device_plan(opts: &SetupArgs) -> Result<cdi::DevicePlan> {
    let wanted: Vec<cdi::QualifiedName> = opts
        .cdi_devices
        .iter()
        .map(|n| cdi::QualifiedName::parse(n).map_err(Error::usage))
        .collect::<Result<_>>()?;
    cdi::plan(
        &GpuSelection::Numbers(opts.gpus.clone()),
        &opts.cdi_dirs,
        &wanted,
        driver_list(opts)?.as_ref(),
        opts.rdma,
    )
}

/// The site's hooks for this step: the ones the plugin names (the
/// admin's, then those the user asked for), then those of the job's
/// partition (asked of slurmctld), each once.
fn site_hook_names(opts: &SetupArgs) -> Result<Vec<String>> {
    let mut names = opts.hooks.clone();
    if opts.hooks_dir.is_some() && !opts.partition_hooks.is_empty() {
        let job = opts
            .job_id
            .ok_or_else(|| Error::usage("partition hooks need a job"))?;
        let partition = crate::node::ecl::partition::job_partition(
            job,
            opts.restart_count,
            opts.uid,
            &crate::node::ecl::partition::records_dir(&opts.state_dir),
            &opts.scontrol,
        )?;
        names.extend(site_hooks::for_partition(&opts.partition_hooks, &partition));
    }
    let mut unique: Vec<String> = Vec::new();
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    Ok(unique)
}

/// What a site hook learns about the step (see [`site_hooks`]).
pub fn site_hook_env(opts: &SetupArgs) -> Vec<String> {
    let mut env = vec![
        format!("SIFRUN_IMAGE={}", opts.image.display()),
        format!("SIFRUN_UID={}", opts.uid),
        format!("SIFRUN_GID={}", opts.gid),
        format!(
            "SIFRUN_GPUS={}",
            opts.gpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    ];
    if let Some(job) = opts.job_id {
        env.push(format!("SIFRUN_JOB_ID={job}"));
    }
    // The settings a hook may need to fit in.
    env.push(format!("SIFRUN_STATE_DIR={}", opts.state_dir.display()));
    env.push(format!("SIFRUN_WRITABLE={}", u8::from(opts.writable_tmpfs)));
    env.push(format!("SIFRUN_CDI_DEVICES={}", opts.cdi_devices.join(",")));
    env.extend(
        opts.hook_env
            .iter()
            .filter(|kv| kv.starts_with("SLURM_") && !kv.contains('\0'))
            .cloned(),
    );
    env
}

/// The admin's driver list for GPUs without a CDI spec (read only for a
/// step that has GPUs).
fn driver_list(opts: &SetupArgs) -> Result<Option<DriverList>> {
    Ok(match &opts.gpu_list {
        _ if opts.gpus.is_empty() || opts.no_gpu_driver => None,
        Some(path) => {
            crate::node::trusted::check_config_file(path)
                .map_err(|reason| Error::usage(format!("GPU list {}: {reason}", path.display())))?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading GPU list {}", path.display()))?;
            Some(DriverList::parse(&text))
        }
        None => Some(DriverList::default()),
    })
}
