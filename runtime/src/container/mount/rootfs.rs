//! Assembling the container root filesystem.
//!
//! Layout inside the staging directory (a private tmpfs):
//!
//! ```text
//! <staging>/image   the image's SquashFS: from the loop device (root) or
//!                   served through FUSE (unprivileged), ro,nosuid,nodev
//! <staging>/upper   overlay upper dir  } on the staging tmpfs, so mount
//! <staging>/work    overlay work dir   } points can be created without
//! <staging>/root    overlay = the container root   writing to the image
//! ```
//!
//! The root is remounted read-only at the end unless `writable_tmpfs` is
//! set; then writes land in the tmpfs and vanish with the container.
//!
//! This module is the reusable part: `sifrun exec` calls it in a forked
//! child, the SPANK plugin calls it once per node in a holder process and
//! lets every task join the resulting mount namespace.
//!
//! One builder, two ways to get the image's files: [`mount_image`] (kernel
//! SquashFS on a loop device, root) and [`mount_image_fuse`] (a FUSE
//! connection, in an unprivileged user namespace). [`build_rootfs`] does
//! the rest the same way for both; where the kernel refuses an operation in
//! a user namespace, [`ContainerSpec::unprivileged`] selects the equivalent
//! that it allows (see the field's documentation).

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::fuse::FuseMount;
use super::upper::{self, Needed};
use super::{
    bind, create_dir_in_root, create_mount_point, mount_fs, remount_bind, resolve_in_root,
    HostBinds,
};
use crate::container::identity::{merge_group, merge_passwd, Identity};
use crate::error::{Context, Error, Result};

/// Default size of the tmpfs holding the overlay upper layer.
pub const DEFAULT_TMPFS_SIZE_MIB: u64 = 64;

/// Host paths that are never bound as the current working directory: they
/// would shadow the image's own system directories.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr", "var",
];

/// A `--bind SRC[:DST[:ro|rw]]` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (canonicalised by [`BindMount::parse`]).
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

impl BindMount {
    /// Parses `SRC[:DST[:ro|rw]]`, checks that SRC exists and canonicalises it.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut bind = Self::parse_unresolved(spec)?;
        bind.source = fs::canonicalize(&bind.source).map_err(|e| {
            Error::usage(format!(
                "bind source {}: {}",
                bind.source.display(),
                io_reason(&e)
            ))
        })?;
        Ok(bind)
    }

    /// The `SRC:DST[:ro]` form [`BindMount::parse`] reads back.
    pub fn to_spec(&self) -> String {
        let mut spec = format!("{}:{}", self.source.display(), self.destination.display());
        if self.read_only {
            spec.push_str(":ro");
        }
        spec
    }

    /// Parses `SRC[:DST[:ro|rw]]` without looking at the filesystem (the
    /// caller resolves SRC, for example with the job user's credentials).
    pub fn parse_unresolved(spec: &str) -> Result<Self> {
        let parts: Vec<&str> = spec.split(':').collect();
        let (src, dst, mode) = match parts.as_slice() {
            [src] => (*src, *src, None),
            [src, dst] => (*src, *dst, None),
            [src, dst, mode] => (*src, *dst, Some(*mode)),
            _ => {
                return Err(Error::usage(format!(
                    "invalid bind '{spec}' (expected SRC[:DST[:ro]])"
                )))
            }
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => {
                return Err(Error::usage(format!(
                    "invalid bind option '{other}' in '{spec}' (expected ro or rw)"
                )))
            }
        };
        if src.is_empty() || dst.is_empty() {
            return Err(Error::usage(format!("invalid bind '{spec}' (empty path)")));
        }
        let destination = PathBuf::from(dst);
        if !destination.is_absolute() {
            return Err(Error::usage(format!(
                "bind destination must be an absolute path: {dst}"
            )));
        }
        Ok(BindMount {
            source: PathBuf::from(src),
            destination,
            read_only,
        })
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    }
}

/// What gets an empty tmpfs when the host's are not bound.
const PRIVATE_TMP_DIRS: &[&str] = &["/tmp", "/var/tmp"];

/// The host files that make names resolve inside the container.
pub const HOST_NETWORK_FILES: &[&str] = &["/etc/hosts", "/etc/resolv.conf"];

/// Everything needed to assemble a container root, independent of how the
/// image got mounted and of the process that will run in it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Empty directory on the host used as the staging mount point. A tmpfs
    /// is mounted on it in the (private) namespace; the host only ever sees
    /// the empty directory.
    pub staging_dir: PathBuf,
    /// The user the command will run as (passwd/group entries, home dir).
    pub identity: Identity,
    /// Bind the user's home directory (if it exists on the host).
    pub mount_home: bool,
    /// Bind the host's /tmp and /var/tmp; when false, each gets an empty
    /// private tmpfs instead (`--contain`).
    pub mount_tmp: bool,
    /// Bind the host's name resolution files ([`HOST_NETWORK_FILES`])
    /// read-only, as Apptainer does: images built from Docker layers ship
    /// them empty.
    pub host_network_files: bool,
    /// Host directory to bind at the same path (normally the cwd); skipped
    /// for `/` and top-level system directories.
    pub cwd: Option<PathBuf>,
    /// What to bind at `cwd` when it is not `cwd` itself: a `/proc/self/fd`
    /// link to the directory as opened with the job user's credentials, so
    /// root never re-resolves a path the user controls.
    pub cwd_source: Option<PathBuf>,
    /// User requested binds, applied last (they win over home/tmp/cwd).
    pub binds: Vec<BindMount>,
    /// Keep the root writable (changes go to the tmpfs and are discarded).
    pub writable_tmpfs: bool,
    /// Size of the overlay's tmpfs in MiB.
    pub tmpfs_size_mib: u64,
    /// Built inside an unprivileged user namespace (no PID or network
    /// namespace of its own). The kernel then refuses fresh proc and sysfs
    /// mounts (they belong to the host's PID and network namespaces), so
    /// the host's `/proc` and `/sys` are bound instead: the same view a
    /// fresh mount gives the privileged path, which shares those namespaces
    /// too. The devpts instance gets no `gid=tty` (that group is not mapped).
    pub unprivileged: bool,
    /// Host device nodes bound at the same path under `/dev` (GPUs, RDMA:
    /// see [`crate::container::gpu`]). Usable only as far as the job's device cgroup
    /// allows, exactly as on the host.
    pub devices: Vec<PathBuf>,
    /// Host files bound read-only at container paths (GPU driver libraries
    /// and tools, under `/.sifrun/gpu`), as (host file, container path).
    pub host_files: Vec<(PathBuf, PathBuf)>,
    /// Host device nodes bound at container paths under `/dev`, as (host
    /// node, container path): those of CDI devices, whose spec may name
    /// another host node than the container path.
    pub device_binds: Vec<(PathBuf, PathBuf)>,
    /// Programs run as root once the root is complete, before it is made
    /// read-only (CDI devices' hooks, the site's hooks): see
    /// [`crate::container::hooks`].
    pub root_hooks: Vec<crate::container::hooks::RootHook>,
    /// The image's overlay partition, unpacked as the user and laid over
    /// the image ([`crate::container::overlay_partition`]).
    pub overlay: Option<crate::container::overlay_partition::OverlaySource>,
    /// The job's private directories (`/tmp`, `/var/tmp`, `/dev/shm`) when
    /// Slurm gives the job its own mount namespace
    /// ([`crate::node::job_namespace`]): mounted at the same paths in place
    /// of the node's (for `/dev/shm`, over the step's fresh tmpfs).
    pub job_dirs: Vec<super::DetachedMount>,
    /// Fresh tmpfs mounts at container paths (`tmpfs:/dst` in pyxis'
    /// `--container-mounts`), after the binds.
    pub tmpfs_mounts: Vec<TmpfsMount>,
    /// Container paths to unmount once everything is mounted (`umount:/dst`):
    /// what was mounted there (a default bind, a tmpfs) is removed, and the
    /// image's own content shows again.
    pub unmounts: Vec<PathBuf>,
}

/// `tmpfs:DST[:size=SIZE+mode=MODE]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub destination: PathBuf,
    /// `1024k`, `64m`, `2g` or bytes; none: the kernel's default (half the
    /// memory, charged to the job's cgroup as it is written).
    pub size: Option<String>,
    /// Permission bits of its root; none: 1777, like /tmp.
    pub mode: Option<u32>,
}

impl TmpfsMount {
    /// Parses `DST[:OPTIONS]`, OPTIONS `size=..` and `mode=..` joined with
    /// `+` (commas separate `--container-mounts` entries).
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: &str| Error::usage(format!("tmpfs mount {spec:?}: {why}"));
        let (dst, options) = spec.split_once(':').unwrap_or((spec, ""));
        let destination = PathBuf::from(dst);
        if !destination.is_absolute() {
            return Err(bad("the destination must be an absolute path"));
        }
        let mut mount = TmpfsMount {
            destination,
            size: None,
            mode: None,
        };
        for option in options.split('+').filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some(("size", v)) if valid_size(v) => mount.size = Some(v.to_string()),
                Some(("mode", v)) => {
                    mount.mode = Some(
                        u32::from_str_radix(v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| bad("mode must be octal, at most 7777"))?,
                    )
                }
                _ => {
                    return Err(bad(
                        "options are size=N[k|m|g] and mode=OCTAL, joined with '+'",
                    ))
                }
            }
        }
        Ok(mount)
    }

    /// Back to `DST[:OPTIONS]`.
    pub fn to_spec(&self) -> String {
        let mut options = Vec::new();
        if let Some(size) = &self.size {
            options.push(format!("size={size}"));
        }
        if let Some(mode) = self.mode {
            options.push(format!("mode={mode:o}"));
        }
        let dst = self.destination.display();
        if options.is_empty() {
            dst.to_string()
        } else {
            format!("{dst}:{}", options.join("+"))
        }
    }

    /// The tmpfs mount data.
    fn data(&self) -> String {
        let mut data = format!("mode={:o}", self.mode.unwrap_or(0o1777));
        if let Some(size) = &self.size {
            data.push_str(&format!(",size={size}"));
        }
        data
    }
}

/// A tmpfs size: digits, then at most one of `k`, `m`, `g`.
fn valid_size(v: &str) -> bool {
    let digits = v.strip_suffix(['k', 'm', 'g']).unwrap_or(v);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

impl ContainerSpec {
    /// A spec with the usual defaults: home, /tmp and `cwd` bound, read-only root.
    pub fn new(staging_dir: PathBuf, identity: Identity) -> Self {
        ContainerSpec {
            staging_dir,
            identity,
            mount_home: true,
            mount_tmp: true,
            host_network_files: true,
            cwd: None,
            cwd_source: None,
            binds: Vec::new(),
            writable_tmpfs: false,
            tmpfs_size_mib: DEFAULT_TMPFS_SIZE_MIB,
            unprivileged: false,
            devices: Vec::new(),
            host_files: Vec::new(),
            device_binds: Vec::new(),
            root_hooks: Vec::new(),
            overlay: None,
            job_dirs: Vec::new(),
            tmpfs_mounts: Vec::new(),
            unmounts: Vec::new(),
        }
    }
}

/// An assembled (not yet entered) container root.
#[derive(Debug, Clone)]
pub struct Rootfs {
    /// Host-side path of the container root (the overlay mount).
    pub root: PathBuf,
    /// Variables the site's hooks left for the tasks.
    pub hook_env: Vec<(String, String)>,
}

impl Rootfs {
    /// `pivot_root`s into the container; see [`crate::container::namespaces::enter_root`].
    pub fn enter(&self) -> Result<()> {
        crate::container::namespaces::enter_root(&self.root)
    }
}

/// Mounts the staging tmpfs that holds the overlay's upper layer (and,
/// for [`mount_image`], the image mount point).
pub fn mount_staging(spec: &ContainerSpec) -> Result<()> {
    mount_fs(
        "tmpfs",
        &spec.staging_dir,
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&format!("mode=700,size={}m", spec.tmpfs_size_mib.max(1))),
    )
}

/// Mounts the staging tmpfs and the SquashFS from `device` (e.g. the loop
/// device) read-only at `<staging>/image`; returns that directory.
pub fn mount_image(spec: &ContainerSpec, device: &Path) -> Result<PathBuf> {
    mount_staging(spec)?;
    let image_dir = spec.staging_dir.join("image");
    fs::create_dir(&image_dir).with_context(|| format!("creating {}", image_dir.display()))?;
    super::mount_squashfs(device, &image_dir)?;
    Ok(image_dir)
}

/// Mounts the staging tmpfs and the FUSE connection behind `device` (its
/// server reads the image's SquashFS) read-only at `<staging>/image`;
/// returns that directory. The FUSE mount belongs to `spec.identity`.
pub fn mount_image_fuse(spec: &ContainerSpec, device: &fs::File) -> Result<PathBuf> {
    mount_staging(spec)?;
    let image_dir = spec.staging_dir.join("image");
    fs::create_dir(&image_dir).with_context(|| format!("creating {}", image_dir.display()))?;
    FuseMount {
        name: "squashfuse",
        uid: spec.identity.uid,
        gid: spec.identity.gid,
        allow_other: false,
        what: "the image through squashfuse",
    }
    .mount(device, &image_dir)?;
    Ok(image_dir)
}

/// Builds the container root on top of the mounted image (`image_dir`, from
/// [`mount_image`] or [`mount_image_fuse`]) and, above it, the unpacked
/// overlay partition (`overlay_layer`), in the current mount namespace.
/// Must run inside a private mount namespace, as root or (with
/// [`ContainerSpec::unprivileged`]) in the user namespace owning it.
pub fn build_rootfs(
    spec: &ContainerSpec,
    image_dir: &Path,
    overlay_layer: Option<&Path>,
) -> Result<Rootfs> {
    let root = mount_overlay(spec, image_dir, overlay_layer)?;
    // First, while the root holds nothing but the image and its tmpfs upper
    // layer: root writes these files, and a later bind (or an image symlink
    // pointing into one) must never be able to redirect that write onto a
    // host file.
    write_identity_files(&root, &spec.identity)?;
    if spec.writable_tmpfs && !spec.unprivileged && !spec.identity.is_root() {
        // Also before any bind: only the container's own layers are walked.
        give_directories_to(&root, spec.identity.uid, spec.identity.gid)?;
    }

    mount_proc_sys(spec, &root)?;
    super::dev::mount_dev(&root, spec.unprivileged)?;
    for device in &spec.devices {
        super::dev::bind_device(&root, device)?;
    }
    for (host, container) in &spec.device_binds {
        super::dev::bind_device_at(&root, host, container)?;
    }

    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    // Mount points are never created inside what is bound from the host.
    let mut host = HostBinds::default();
    for job_dir in &spec.job_dirs {
        let target = create_mount_point(&root, &job_dir.path, &job_dir.path, &host)?;
        job_dir.attach(&target, nosuid_nodev)?;
        host.record(&target)?;
    }
    for (source, dest) in host_dir_binds(spec) {
        // Root's home is never writable from an image root runs.
        let flags = if spec.identity.is_root() && dest == spec.identity.home {
            nosuid_nodev | MsFlags::MS_RDONLY
        } else {
            nosuid_nodev
        };
        bind_host_dir(&root, source, dest, flags, &mut host)?;
    }
    if !spec.mount_tmp {
        for dir in PRIVATE_TMP_DIRS {
            let target = create_mount_point(&root, Path::new(dir), Path::new("/"), &host)?;
            let size = format!("size={}m,mode=1777", spec.tmpfs_size_mib);
            mount_fs("tmpfs", &target, "tmpfs", nosuid_nodev, Some(&size))?;
        }
    }
    for file in network_files(spec) {
        // Best effort, like Apptainer: an image whose file cannot take the
        // bind (a symlink into a host directory) keeps its own.
        if let Ok(target) = create_mount_point(&root, file, file, &host) {
            bind(file, &target, false, MsFlags::MS_RDONLY | nosuid_nodev)?;
            host.record(&target)?;
        }
    }
    for b in &spec.binds {
        bind_into_root(&root, b, &mut host)?;
    }
    for t in &spec.tmpfs_mounts {
        let target = create_mount_point(&root, &t.destination, Path::new("/"), &host)?;
        mount_fs("tmpfs", &target, "tmpfs", nosuid_nodev, Some(&t.data()))?;
        host.record(&target)?;
    }
    for path in &spec.unmounts {
        // Resolved inside the root: an image symlink cannot point this at
        // anything outside it.
        let target = resolve_in_root(&root, path)?;
        if target == root {
            return Err(Error::usage(format!(
                "umount:{}: that is the container's root, which cannot be unmounted",
                path.display()
            )));
        }
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
            if e == nix::errno::Errno::EINVAL {
                Error::usage(format!(
                    "umount:{}: nothing is mounted there in the container",
                    path.display()
                ))
            } else {
                Error::system(format!("unmounting {}: {}", path.display(), e.desc()))
            }
        })?;
    }
    // Last, so that no user bind can cover them; created in the overlay's
    // tmpfs upper layer (the image is not written).
    for (source, dest) in &spec.host_files {
        let target = create_mount_point(&root, dest, source, &host)?;
        bind(source, &target, false, MsFlags::MS_RDONLY | nosuid_nodev)?;
        host.record(&target)?;
    }

    // Last, with everything in place: what they add is the container's.
    let hooked =
        crate::container::hooks::run_all(&spec.root_hooks, &root, &spec.staging_dir.join("hooks"))?;
    // What they asked to have bound, under the rules of every bind.
    for b in &hooked.binds {
        bind_into_root(&root, b, &mut host)?;
    }
    let hook_env = hooked.env;

    if !spec.writable_tmpfs {
        remount_bind(&root, MsFlags::MS_RDONLY | nosuid_nodev)?;
    }
    Ok(Rootfs { root, hook_env })
}

/// Binds `b` into `root`, nosuid and nodev, recording it as the host's.
/// Recursive, flags on every submount: what is mounted under the source
/// stays mounted (nothing hidden on the host shows), and a `:ro` bind is
/// read-only all the way down.
fn bind_into_root(root: &Path, b: &BindMount, host: &mut HostBinds) -> Result<()> {
    let target = create_mount_point(root, &b.destination, &b.source, host)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if b.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    bind(&b.source, &target, true, flags)?;
    host.record(&target)
}

/// A writable root the job user can use, as pyxis users expect (enroot
/// unpacks images as the user): every directory of the image becomes the
/// user's in the container's in-memory upper layer, so the user may create,
/// rename and remove files anywhere (package managers replace files by
/// renaming new ones over them). Files keep their owner. Only directories
/// are copied up (their entries, not their files' data), and symlinks are
/// neither followed nor changed: nothing outside the container's own
/// layers is reached, and the image itself is not written.
fn give_directories_to(root: &Path, uid: u32, gid: u32) -> Result<()> {
    use nix::fcntl::AtFlags;
    use nix::unistd::{fchownat, Gid, Uid};
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        fchownat(
            None,
            &dir,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("giving {} to the job user", dir.display()))?;
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// The host files of [`HOST_NETWORK_FILES`] this spec binds (those the
/// host has).
fn network_files(spec: &ContainerSpec) -> Vec<&'static Path> {
    if !spec.host_network_files {
        return Vec::new();
    }
    HOST_NETWORK_FILES
        .iter()
        .map(Path::new)
        .filter(|f| f.is_file())
        .collect()
}

/// The host directories bound at the same path: /tmp, /var/tmp, home, cwd
/// (in that order), as (source, container path).
fn host_dir_binds(spec: &ContainerSpec) -> Vec<(&Path, &Path)> {
    let mut binds = Vec::new();
    if spec.mount_tmp {
        for dir in ["/tmp", "/var/tmp"] {
            if Path::new(dir).is_dir() && !spec.job_dirs.iter().any(|j| j.path == Path::new(dir)) {
                binds.push((Path::new(dir), Path::new(dir)));
            }
        }
    }
    if spec.mount_home && spec.identity.home.is_dir() && spec.identity.home != Path::new("/") {
        binds.push((spec.identity.home.as_path(), spec.identity.home.as_path()));
    }
    if let Some(cwd) = spec.cwd.as_deref().filter(|c| cwd_is_bindable(spec, c)) {
        binds.push((spec.cwd_source.as_deref().unwrap_or(cwd), cwd));
    }
    binds
}

/// Everything [`build_rootfs`] creates or rewrites in the root, for
/// [`upper::prepare`] (unprivileged builds).
fn needed_paths(spec: &ContainerSpec) -> Vec<Needed> {
    let mut needed = vec![
        Needed::Rewritten("/etc/passwd".into()),
        Needed::Rewritten("/etc/group".into()),
        Needed::Dir("/proc".into()),
        Needed::Dir("/sys".into()),
        Needed::Dir("/dev".into()),
    ];
    for (source, dest) in host_dir_binds(spec) {
        if source.is_dir() {
            needed.push(Needed::Dir(dest.to_path_buf()));
        }
    }
    if !spec.mount_tmp {
        for dir in PRIVATE_TMP_DIRS {
            needed.push(Needed::Dir(dir.into()));
        }
    }
    for file in network_files(spec) {
        needed.push(Needed::File(file.to_path_buf()));
    }
    for b in &spec.binds {
        needed.push(if b.source.is_dir() {
            Needed::Dir(b.destination.clone())
        } else {
            Needed::File(b.destination.clone())
        });
    }
    for (_, dest) in &spec.host_files {
        needed.push(Needed::File(dest.clone()));
    }
    needed
}

/// `/proc` and a read-only `/sys`: fresh mounts as root, recursive binds of
/// the host's in a user namespace (see [`ContainerSpec::unprivileged`];
/// recursive because the kernel will not bind them without the submounts
/// that hide parts of them).
fn mount_proc_sys(spec: &ContainerSpec, root: &Path) -> Result<()> {
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let sys_flags = proc_flags | MsFlags::MS_RDONLY;
    let proc_dir = create_dir_in_root(root, Path::new("/proc"))?;
    let sys_dir = create_dir_in_root(root, Path::new("/sys"))?;
    if spec.unprivileged {
        bind(Path::new("/proc"), &proc_dir, true, proc_flags)?;
        bind(Path::new("/sys"), &sys_dir, true, sys_flags)?;
    } else {
        mount_fs("proc", &proc_dir, "proc", proc_flags, None)?;
        mount_fs("sysfs", &sys_dir, "sysfs", sys_flags, None)?;
    }
    Ok(())
}

/// Overlay: lower = the overlay partition's files over the image,
/// upper/work on the staging tmpfs.
fn mount_overlay(
    spec: &ContainerSpec,
    image_dir: &Path,
    overlay_layer: Option<&Path>,
) -> Result<PathBuf> {
    let staging = &spec.staging_dir;
    let (upper, work, root) = (
        staging.join("upper"),
        staging.join("work"),
        staging.join("root"),
    );
    for dir in [&upper, &work, &root] {
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The container root directory itself must be traversable by the target user.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", upper.display()))?;
    if spec.unprivileged {
        upper::prepare(image_dir, &upper, &needed_paths(spec))?;
    }
    let lower = match overlay_layer {
        Some(layer) => format!("{}:{}", layer.display(), image_dir.display()),
        None => image_dir.display().to_string(),
    };
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    mount_fs(
        "overlay",
        &root,
        "overlay",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&data),
    )?;
    Ok(root)
}

/// Binds host directory `source` at container path `dest`, with its
/// submounts (a non-recursive bind would show what they hide).
fn bind_host_dir(
    root: &Path,
    source: &Path,
    dest: &Path,
    flags: MsFlags,
    host: &mut HostBinds,
) -> Result<()> {
    if !source.is_dir() {
        return Ok(());
    }
    let target = create_mount_point(root, dest, source, host)?;
    bind(source, &target, true, flags)?;
    host.record(&target)
}

/// The cwd is bound unless it is `/`, a system directory (it would shadow
/// the image's), or already visible through the home or /tmp bind.
fn cwd_is_bindable(spec: &ContainerSpec, cwd: &Path) -> bool {
    let first = cwd.components().nth(1).and_then(|c| c.as_os_str().to_str());
    let Some(first) = first else {
        return false; // "/"
    };
    let depth = cwd.components().count() - 1;
    // A top-level system directory itself, or anything under the ones that
    // hold the image's software, would shadow the image. /var/tmp/job or
    // /run/user/N are fine.
    if SYSTEM_DIRS.contains(&first) && (depth == 1 || !matches!(first, "var" | "run")) {
        return false;
    }
    if spec.mount_tmp && cwd.starts_with("/tmp") {
        return false;
    }
    // The job's own directory of that name is there instead.
    if spec.job_dirs.iter().any(|j| cwd.starts_with(&j.path)) {
        return false;
    }
    if spec.mount_home && spec.identity.home.is_dir() && cwd.starts_with(&spec.identity.home) {
        return false;
    }
    cwd.is_dir()
}

/// Writes passwd/group with the user's entries into the overlay (i.e. into
/// the tmpfs, never into the image).
fn write_identity_files(root: &Path, identity: &Identity) -> Result<()> {
    create_dir_in_root(root, Path::new("/etc"))?;
    let passwd = resolve_in_root(root, Path::new("/etc/passwd"))?;
    let group = resolve_in_root(root, Path::new("/etc/group"))?;
    let image_passwd = read_image_identity_file(&passwd, "/etc/passwd")?;
    let image_group = read_image_identity_file(&group, "/etc/group")?;
    fs::write(&passwd, merge_passwd(&image_passwd, identity))
        .context("writing /etc/passwd in the container")?;
    fs::write(&group, merge_group(&image_group, identity))
        .context("writing /etc/group in the container")?;
    Ok(())
}

/// Largest `/etc/passwd` or `/etc/group` read from an image.
const MAX_IDENTITY_FILE: u64 = 8 << 20;

/// The image's own `/etc/passwd` or `/etc/group` at `path` (resolved in
/// the root), read by root from bytes the image's author chose: a regular
/// file of bounded size, opened without blocking (a FIFO would hang the
/// helper) and without following a last symlink. Missing: empty.
fn read_image_identity_file(path: &Path, name: &str) -> Result<String> {
    use std::io::Read;
    let file = match crate::node::credentials::open_regular_file_with(path, libc::O_NOFOLLOW) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::EISDIR)) => {
            return Err(Error::image(format!(
                "the image's {name} is not a regular file"
            )))
        }
        Err(e) => return Err(Error::image(format!("the image's {name}: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::image(format!("the image's {name}: {e}")))?;
    if meta.len() > MAX_IDENTITY_FILE {
        return Err(Error::image(format!(
            "the image's {name} is larger than {} MiB",
            MAX_IDENTITY_FILE >> 20
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IDENTITY_FILE)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::image(format!("reading the image's {name}: {e}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tmpfs_tests {
    use super::*;

    #[test]
    fn tmpfs_specs_round_trip_and_refuse_odd_options() {
        let t = TmpfsMount::parse("/scratch:size=64m+mode=700").unwrap();
        assert_eq!(t.size.as_deref(), Some("64m"));
        assert_eq!(t.mode, Some(0o700));
        assert_eq!(TmpfsMount::parse(&t.to_spec()).unwrap(), t);
        assert_eq!(t.data(), "mode=700,size=64m");
        assert_eq!(TmpfsMount::parse("/t").unwrap().data(), "mode=1777");
        for bad in [
            "rel",
            "/t:size=",
            "/t:size=1x",
            "/t:size=m",
            "/t:mode=9",
            "/t:mode=17777",
            "/t:uid=0",
            "/t:size=1m,mode=1",
        ] {
            assert!(TmpfsMount::parse(bad).is_err(), "{bad} accepted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_identity_files_are_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_image_identity_file(&fifo, "/etc/passwd").unwrap_err();
        assert!(
            e.message().contains("not a regular file"),
            "{}",
            e.message()
        );
        let big = dir.path().join("big");
        fs::File::create(&big).unwrap().set_len(3 << 30).unwrap();
        let e = read_image_identity_file(&big, "/etc/passwd").unwrap_err();
        assert!(e.message().contains("larger than"), "{}", e.message());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(read_image_identity_file(&link, "/etc/passwd").is_err());
        assert_eq!(
            read_image_identity_file(&dir.path().join("none"), "/etc/passwd").unwrap(),
            ""
        );
        fs::write(dir.path().join("ok"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert!(
            read_image_identity_file(&dir.path().join("ok"), "/etc/passwd")
                .unwrap()
                .starts_with("root:")
        );
    }

    #[test]
    fn parse_bind_specs() {
        let b = BindMount::parse("/tmp:/data:ro").unwrap();
        assert_eq!(b.destination, Path::new("/data"));
        assert!(b.read_only);
        let b = BindMount::parse("/tmp").unwrap();
        assert_eq!(b.destination, Path::new("/tmp"));
        assert!(!b.read_only);
        assert!(BindMount::parse("/tmp:/x:zz").is_err());
        assert!(BindMount::parse("/tmp:rel").is_err());
        let e = BindMount::parse("/no/such/dir:/x").unwrap_err();
        assert_eq!(e.message(), "bind source /no/such/dir: does not exist");
    }
}
