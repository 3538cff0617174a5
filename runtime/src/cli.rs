//! Command line definition (clap derive). Kept free of logic: each
//! subcommand converts its arguments into the library's options struct.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sifrun_runtime::container::gpu::GpuSelection;

use crate::commands::build::{BuildOptions, DEFAULT_COMPRESSOR};
use crate::commands::exec::{ExecOptions, VerifyPolicy};
use crate::commands::target::Target;
use sifrun_runtime::crypt::KeySource;

/// Build, inspect and run SIF container images.
#[derive(Debug, Parser)]
#[command(name = "sifrun", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a SIF image from a root filesystem directory or a tar archive.
    ///
    /// The root filesystem becomes a SquashFS primary partition (made with
    /// mksquashfs). The image is written to a temporary file next to IMAGE
    /// and renamed on success, so a failed build leaves nothing behind.
    #[command(after_help = "Examples:\n  \
        sifrun build rootfs/ -o app.sif\n  \
        sifrun build rootfs.tar.gz -o app.sif --label org.example.version=1.2 --env LANG=C.UTF-8\n  \
        SOURCE_DATE_EPOCH=0 sifrun build rootfs/ -o app.sif --deterministic")]
    Build(BuildArgs),

    /// Show the header and objects of a SIF image.
    #[command(
        after_help = "Examples:\n  sifrun inspect app.sif\n  sifrun inspect --json app.sif | jq '.objects[] | select(.type == \"partition\")'\n  sifrun inspect --labels --runscript app.sif\n  sifrun inspect --list-apps app.sif\n  sifrun inspect --app hello --runscript --json app.sif"
    )]
    Inspect(InspectArgs),

    /// Run a command inside a SIF image.
    ///
    /// As root, the image's SquashFS partition is mounted read-only from a
    /// loop device in the node's image cache (the one Slurm steps use,
    /// under $SIFRUN_STATE_DIR/images, default /run/sifrun/images) and kept
    /// there $SIFRUN_CACHE_IDLE_SECS (default 300) after the last run, so
    /// later runs start warm; SIFRUN_CACHE_IDLE_SECS=0 mounts privately for
    /// the one run instead (as for encrypted images and the private copies
    /// --verify makes). As any other user, sifrun
    /// uses an unprivileged user namespace and serves the partition through
    /// FUSE (squashfuse). Either way /proc, /sys, a minimal /dev, /tmp, the
    /// user's home and the current directory are made available. The
    /// command's exit status is returned (128+N if killed by signal N);
    /// sifrun's own failures exit with 255, a command that is not found
    /// with 127 and one that cannot be executed with 126.
    #[command(after_help = "Examples:\n  \
        sifrun exec app.sif cat /etc/os-release\n  \
        sifrun exec --user alice --bind /data:/data:ro app.sif python3 train.py\n  \
        sifrun exec --writable-tmpfs --env DEBUG=1 --workdir /opt app.sif sh\n  \
        sifrun exec --verify --keyring trusted.asc app.sif ./check")]
    Exec(ExecArgs),

    /// Start an interactive shell inside a SIF image.
    ///
    /// Runs $SHELL if the image has it, else /bin/sh. Same options and
    /// modes (root or unprivileged) as `sifrun exec`.
    #[command(
        after_help = "Examples:\n  sifrun shell app.sif\n  sifrun shell --bind /data app.sif"
    )]
    Shell(ShellArgs),

    /// Run the image's runscript with ARGS.
    ///
    /// The runscript is /.singularity.d/runscript in the image (as
    /// Apptainer and Singularity store it), else the %runscript section of
    /// the definition file stored in the SIF. Same options and modes as
    /// `sifrun exec`.
    #[command(
        after_help = "Examples:\n  sifrun run app.sif\n  sifrun run app.sif --input data.csv"
    )]
    Run(RunArgs),

    /// Sign a SIF image with an OpenPGP key (in place).
    ///
    /// Each object group gets one signature object: a clear-signed JSON
    /// document with SHA-256 digests of the header, of each object's
    /// descriptor and of its data, linked to the group and recording the
    /// key's fingerprint. The format is that of `apptainer sign` and
    /// `singularity sign` (SIF pkg/integrity). A passphrase-protected key
    /// is unlocked from --passphrase-file, or asked for on the terminal.
    #[command(after_help = "Examples:\n  \
        sifrun sign --key ~/.keys/me-private.asc app.sif\n  \
        sifrun sign --key signer.asc --passphrase-file /run/secrets/pass app.sif\n  \
        sifrun sign --key signer.asc --group 1 app.sif")]
    Sign(SignCliArgs),

    /// Verify the signatures of a SIF image.
    ///
    /// Exits 0 only when every object group is signed and every signature
    /// checks out against the given keys. Otherwise exits 1 and prints one
    /// line naming the verdict: unsigned, signed by unknown key, tampered
    /// header, tampered descriptor, tampered object, fingerprint mismatch,
    /// object added or removed after signing, malformed signature. OpenPGP
    /// signatures are checked with --keyring, DSSE signatures (made with
    /// PEM keys) with --key-pem. Legacy signatures (Singularity < 3.6) cover
    /// only object data and are checked only with --legacy.
    #[command(after_help = "Examples:\n  \
        sifrun verify --keyring trusted.asc app.sif\n  \
        sifrun verify --key-pem cosign.pub --json app.sif | jq .verdict\n  \
        sifrun verify --keyring old-keys.asc --legacy old.sif")]
    Verify(VerifyCliArgs),

    /// Build one Slurm step's container on this node (used by the SPANK plugin).
    ///
    /// Run by slurmstepd as root. Opens IMAGE, user binds and the working
    /// directory with the job user's credentials, mounts the image and
    /// builds the container root in a new mount namespace, prints one JSON
    /// line on stdout ({"ok":true,"env":[...]} or {"ok":false,"error":...}),
    /// then waits until stdin is closed. Not meant to be run by hand.
    #[command(name = "slurm-setup")]
    SlurmSetup(Box<sifrun_runtime::node::helper::protocol::SetupArgs>),

    /// Show or clean this node's cache of mounted images (admins).
    ///
    /// The SPANK plugin mounts each image once per node under
    /// STATE_DIR/images and shares that mount between steps and jobs; an
    /// unused image is unmounted after the configured idle time.
    #[command(after_help = "Examples:\n  \
        sifrun cache list\n  \
        sifrun cache list --json --state-dir /run/sifrun\n  \
        sifrun cache clean")]
    Cache(CacheArgs),

    /// Execution control lists (admins): test a site ECL configuration.
    #[command(after_help = "Examples:\n  \
        sifrun ecl check --config /etc/slurm/sifrun-ecl.toml --partition gpu app.sif\n  \
        sifrun ecl check --config /etc/slurm/sifrun-ecl.toml --partition gpu --json app.sif")]
    Ecl(EclArgs),
    /// Staged catalogue (admins): verify an image once for every node.
    ///
    /// Under an execution control list every node otherwise hashes (or
    /// copies) the whole image before it starts. An image staged into a
    /// catalogue directory named in the site ECL file is verified once,
    /// here; nodes then trust the record written beside it and read only
    /// the pages the job touches.
    #[command(after_help = "Examples:\n  \
        sifrun catalogue stage --config /etc/slurm/sifrun-ecl.toml app.sif /shared/sif-catalogue\n  \
        sifrun catalogue check --config /etc/slurm/sifrun-ecl.toml /shared/sif-catalogue/*.sif\n  \
        sifrun catalogue check --config /etc/slurm/sifrun-ecl.toml --verify --json /shared/sif-catalogue/app.sif")]
    Catalogue(CatalogueArgs),
    /// Write the man pages (sifrun.1, sifrun-exec.1, ...) into DIR.
    #[command(hide = true)]
    Manpages {
        /// Output directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct EclArgs {
    #[command(subcommand)]
    pub action: EclAction,
}

#[derive(Debug, Subcommand)]
pub enum EclAction {
    /// Decide, as the plugin would, whether IMAGE may run in PARTITION.
    ///
    /// Exit status: 0 allowed, 1 refused (with the rule and the reason),
    /// 2 the configuration, a keyring or the image cannot be read.
    Check {
        /// Site ECL file (the plugin's `ecl_config`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Slurm partition whose list applies.
        #[arg(long)]
        partition: String,
        /// Print the decision, the rule and the verified signers as JSON.
        #[arg(long)]
        json: bool,
        /// Developer option (benchmarks, tests): keep verification records
        /// under DIR the way the plugin keeps them per cache entry, and
        /// print the decision time on stderr. DIR must be private to root.
        #[arg(long, value_name = "DIR", hide = true)]
        record_dir: Option<PathBuf>,
        /// The SIF image.
        image: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CatalogueArgs {
    #[command(subcommand)]
    pub action: CatalogueAction,
}

#[derive(Debug, Subcommand)]
pub enum CatalogueAction {
    /// Copy IMAGE into the catalogue directory DIR, read-only, verify the
    /// copy against every activated list's keyrings and write the record
    /// beside it (NAME.json).
    ///
    /// Run it as the account that owns DIR (the site file's
    /// `[catalogue] owner`). Staging again under the same name replaces
    /// the entry; steps already running keep the old file. Exit status: 0
    /// staged (whatever the lists decide: see the summary), 1 an error.
    Stage {
        /// Site ECL file (the plugin's `ecl_config`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The name in DIR (default: IMAGE's file name).
        #[arg(long)]
        name: Option<String>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// The SIF image to stage.
        image: PathBuf,
        /// A catalogue directory.
        dir: PathBuf,
    },
    /// Say what a node would conclude about each IMAGE: trusted (decided
    /// from its record), unrecorded (verified in full, in place), untrusted
    /// or not staged, and what each activated list decides.
    ///
    /// The images are opened as the caller. Exit status: 0 every image is
    /// trusted (and, with --verify, matches its record), 1 otherwise, 2 an
    /// error.
    Check {
        /// Site ECL file (the plugin's `ecl_config`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Also hash and verify each trusted image again and compare with
        /// its record (reads the whole file).
        #[arg(long)]
        verify: bool,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
        /// Staged images.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Node-local state directory (the plugin's `state_dir`).
    #[arg(long, global = true, default_value = sifrun_runtime::container::staging::STAGING_BASE)]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// List cached images: key, mounted, in use, idle seconds, image file.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Unmount every cached image that no step uses, now.
    Clean,
    /// Unmount images idle for IDLE_SECS until none is left (started by slurm-setup).
    #[command(hide = true)]
    Keeper {
        /// Idle time before an unused image is unmounted.
        #[arg(long)]
        idle_secs: u64,
        /// Return at once and keep running in the background.
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Root filesystem directory or tar archive (plain, gzip, xz, zstd or bzip2).
    pub source: PathBuf,
    /// Output image path.
    #[arg(short, long, value_name = "IMAGE")]
    pub output: PathBuf,
    /// Overwrite IMAGE if it exists.
    #[arg(short, long)]
    pub force: bool,
    /// SquashFS compressor (gzip, lzo, lz4, xz, zstd, ...).
    #[arg(long, default_value = DEFAULT_COMPRESSOR, value_name = "NAME")]
    pub compressor: String,
    /// Reproducible output: file times fixed to SOURCE_DATE_EPOCH (or 0),
    /// zero image UUID and SIF times.
    #[arg(long)]
    pub deterministic: bool,
    /// Store FILE as the image's definition file.
    #[arg(long, value_name = "FILE")]
    pub deffile: Option<PathBuf>,
    /// Add a label (repeatable); stored as a JSON object.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Add a variable to the image's own environment (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Encrypt the root filesystem (LUKS2, as Apptainer's encrypted SIF)
    /// with --pem-path (public key), --passphrase-file, or a passphrase
    /// asked for on the terminal. Any of those flags implies --encrypt.
    #[arg(short = 'e', long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Key of an encrypted image (the same flags on build and exec).
#[derive(Debug, Args, Default)]
pub struct KeyArgs {
    /// RSA key in PEM: public to build, private to run an encrypted image.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["passphrase_file", "passphrase"])]
    pub pem_path: Option<PathBuf>,
    /// File holding the passphrase (one trailing newline is ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase")]
    pub passphrase_file: Option<PathBuf>,
    /// Ask for the passphrase on the terminal.
    #[arg(long)]
    pub passphrase: bool,
}

impl KeyArgs {
    /// The key source named, if any.
    pub fn source(&self) -> Option<KeySource> {
        if let Some(p) = &self.pem_path {
            Some(KeySource::Pem(p.clone()))
        } else if let Some(p) = &self.passphrase_file {
            Some(KeySource::PassphraseFile(p.clone()))
        } else if self.passphrase {
            Some(KeySource::Prompt)
        } else {
            None
        }
    }
}

impl From<BuildArgs> for BuildOptions {
    fn from(a: BuildArgs) -> Self {
        BuildOptions {
            source: a.source,
            output: a.output,
            force: a.force,
            compressor: a.compressor,
            deterministic: a.deterministic,
            deffile: a.deffile,
            labels: a.labels,
            env: a.env,
            // A key flag alone implies --encrypt (as in Apptainer).
            encrypt: match a.key.source() {
                Some(k) => Some(k),
                None => a.encrypt.then_some(KeySource::Prompt),
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// SIF image.
    pub image: PathBuf,
    /// Print JSON (stable keys, see runtime/README.md) instead of a table;
    /// with the metadata flags, the `apptainer inspect --json` document.
    #[arg(long)]
    pub json: bool,
    /// Show the image's labels (as `apptainer inspect --labels`).
    #[arg(short = 'l', long)]
    pub labels: bool,
    /// Show the definition file the image was built from.
    #[arg(short = 'd', long)]
    pub deffile: bool,
    /// Show the runscript.
    #[arg(short = 'r', long)]
    pub runscript: bool,
    /// Show the start script.
    #[arg(short = 's', long)]
    pub startscript: bool,
    /// Show the environment scripts.
    #[arg(short = 'e', long)]
    pub environment: bool,
    /// Show the help (`%help`).
    #[arg(short = 'H', long)]
    pub helpfile: bool,
    /// Show all of the above.
    #[arg(long)]
    pub all: bool,
    /// List the image's SCIF apps (with --json: all their attributes).
    #[arg(long)]
    pub list_apps: bool,
    /// Show the attributes of SCIF app NAME instead of the image's (its
    /// labels unless other flags are given).
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
}

impl InspectArgs {
    /// What to show of the image's metadata.
    pub fn selection(&self) -> crate::commands::inspect::Selection {
        crate::commands::inspect::Selection {
            attributes: self.attributes(),
            list_apps: self.list_apps,
            app: self.app.clone(),
        }
    }

    /// The metadata asked for, in a fixed order; empty for the header and
    /// object table.
    fn attributes(&self) -> Vec<sifrun_runtime::image::metadata::Attribute> {
        use sifrun_runtime::image::metadata::Attribute::*;
        [
            (self.labels, Labels),
            (self.deffile, Deffile),
            (self.runscript, Runscript),
            (self.startscript, Startscript),
            (self.environment, Environment),
            (self.helpfile, Helpfile),
        ]
        .into_iter()
        .filter(|(on, _)| *on || self.all)
        .map(|(_, a)| a)
        .collect()
    }
}

/// Options shared by `exec`, `shell` and `run`.
#[derive(Debug, Args)]
pub struct ContainerArgs {
    /// Run as this user (name or UID; root only). Default: the invoking user.
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,
    /// Bind a host path into the container (repeatable); DST defaults to SRC.
    #[arg(
        short = 'B',
        short_alias = 'b',
        long = "bind",
        value_name = "SRC[:DST[:ro]]"
    )]
    pub binds: Vec<String>,
    /// Set an environment variable (repeatable); wins over the host and image environment.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Set the variables of a file of NAME=VALUE lines (repeatable; `#`
    /// comments and `export ` allowed), below --env.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
    /// Pass no host variable but TERM and the proxy settings (LANG=C).
    #[arg(short = 'e', long)]
    pub cleanenv: bool,
    /// Working directory inside the container. Default: the current
    /// directory if it exists there, else the home directory, else /.
    #[arg(long, value_name = "DIR")]
    pub pwd: Option<PathBuf>,
    /// Host directory holding the container's /tmp and /var/tmp (as
    /// DIR/tmp and DIR/var_tmp, created if missing).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Bind no host /tmp, /var/tmp, home or current directory: empty private
    /// /tmp and /var/tmp instead.
    #[arg(short = 'c', long)]
    pub contain: bool,
    /// --contain and --cleanenv.
    #[arg(short = 'C', long)]
    pub containall: bool,
    /// Home directory: bind SRC at DST (default: SRC) and make it $HOME.
    #[arg(short = 'H', long, value_name = "SRC[:DST]")]
    pub home: Option<String>,
    /// Do not bind the home directory.
    #[arg(long)]
    pub no_home: bool,
    /// Pass all GPUs (same as --gpus all).
    #[arg(long)]
    pub nv: bool,
    /// Refused: SIF images are read-only (use --writable-tmpfs).
    #[arg(short = 'w', long, hide = true)]
    pub writable: bool,
    /// Run SCIF app NAME: its environment (PATH, LD_LIBRARY_PATH, its
    /// variables) and, for `run`, its runscript.
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// Make the root filesystem writable; changes go to a tmpfs and are discarded.
    #[arg(long)]
    pub writable_tmpfs: bool,
    /// Verify the image's signatures before running (default with
    /// SIFRUN_VERIFY=1); refuses to run unless every object group is signed
    /// by one of the keys.
    #[arg(long)]
    pub verify: bool,
    /// OpenPGP public keyring for --verify (repeatable; also SIFRUN_KEYRING, `:`-separated).
    #[arg(long = "keyring", value_name = "PUBLIC.asc")]
    pub keyrings: Vec<PathBuf>,
    /// PEM public key for --verify (repeatable; also SIFRUN_KEY_PEM, `:`-separated).
    #[arg(long = "key-pem", value_name = "PUBLIC.pem")]
    pub pem_keys: Vec<PathBuf>,
    /// Pass GPUs through: `all`, or device numbers like `0,1` (/dev/nvidiaN),
    /// with the host driver's libraries and tools (nvidia-smi). Default: none.
    #[arg(long, value_name = "all|N,...", value_parser = parse_gpus, default_value = "none")]
    pub gpus: GpuSelection,
    /// Read CDI specs from DIR (repeatable, lowest priority first; as
    /// root only, and only root's files): the --gpus GPUs then come
    /// through their spec (`nvidia.com/gpu=N`) when one of their kind
    /// exists, and --device names more devices.
    #[arg(long = "cdi-dir", value_name = "DIR")]
    pub cdi_dirs: Vec<PathBuf>,
    /// Add CDI device NAME (`vendor.com/class=name`; repeatable; needs
    /// --cdi-dir).
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    /// Key of an encrypted image (asked for on the terminal if none given).
    #[command(flatten)]
    pub key: KeyArgs,
}

fn parse_gpus(text: &str) -> Result<GpuSelection, String> {
    GpuSelection::parse(text).map_err(|e| e.message().to_string())
}

impl ContainerArgs {
    fn into_options(self, image: PathBuf, target: Target) -> ExecOptions {
        let contain = self.contain || self.containall;
        ExecOptions {
            image,
            target,
            user: self.user,
            binds: self.binds,
            env: self.env,
            env_files: self.env_files,
            cleanenv: self.cleanenv || self.containall,
            workdir: self.pwd,
            tmp_dir: self.workdir,
            contain,
            home: self.home,
            no_home: self.no_home || contain,
            writable: self.writable,
            app: self.app,
            writable_tmpfs: self.writable_tmpfs,
            verify: VerifyPolicy::from_args_and_env(self.verify, self.keyrings, self.pem_keys),
            gpus: if self.nv {
                GpuSelection::All
            } else {
                self.gpus
            },
            cdi_dirs: self.cdi_dirs,
            devices: self.devices,
            key: self.key.source(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub container: ContainerArgs,
    /// SIF image.
    pub image: PathBuf,
    /// Command to run (resolved with the container's PATH) and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl From<ExecArgs> for ExecOptions {
    fn from(a: ExecArgs) -> Self {
        a.container
            .into_options(a.image, Target::Command(a.command))
    }
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    #[command(flatten)]
    pub container: ContainerArgs,
    /// SIF image.
    pub image: PathBuf,
}

impl From<ShellArgs> for ExecOptions {
    fn from(a: ShellArgs) -> Self {
        let preferred = std::env::var_os("SHELL").map(PathBuf::from);
        a.container
            .into_options(a.image, Target::Shell { preferred })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub container: ContainerArgs,
    /// SIF image.
    pub image: PathBuf,
    /// Arguments for the runscript.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<String>,
}

impl From<RunArgs> for ExecOptions {
    fn from(a: RunArgs) -> Self {
        a.container.into_options(
            a.image,
            Target::Runscript {
                args: a.args,
                deffile_script: None,
            },
        )
    }
}

#[derive(Debug, Args)]
pub struct SignCliArgs {
    /// OpenPGP secret key (armored, e.g. from `gpg --export-secret-keys --armor`).
    #[arg(short, long, value_name = "PRIVATE.asc")]
    pub key: PathBuf,
    /// Sign only this object group.
    #[arg(long, value_name = "N", conflicts_with = "object")]
    pub group: Option<u32>,
    /// Sign only this object (the signature is linked to its group).
    #[arg(long, value_name = "N")]
    pub object: Option<u32>,
    /// Read the key's passphrase from the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// SIF image, modified in place.
    pub image: PathBuf,
}

impl From<SignCliArgs> for crate::commands::sign::SignArgs {
    fn from(a: SignCliArgs) -> Self {
        use sif::integrity::SignTarget;
        Self {
            image: a.image,
            key: a.key,
            target: match (a.group, a.object) {
                (Some(g), _) => SignTarget::Group(g),
                (None, Some(o)) => SignTarget::Object(o),
                (None, None) => SignTarget::AllGroups,
            },
            passphrase_file: a.passphrase_file,
        }
    }
}

#[derive(Debug, Args)]
pub struct VerifyCliArgs {
    /// OpenPGP public keyring (armored or binary; repeatable).
    #[arg(long = "keyring", value_name = "PUBLIC.asc")]
    pub keyrings: Vec<PathBuf>,
    /// PEM public key (Ed25519, RSA, ECDSA P-256/P-384) for DSSE signatures (repeatable).
    #[arg(long = "key-pem", value_name = "PUBLIC.pem")]
    pub pem_keys: Vec<PathBuf>,
    /// Check legacy (Singularity < 3.6) signatures; they do not protect the header or descriptors.
    #[arg(long)]
    pub legacy: bool,
    /// Print a JSON report (signers, groups, signatures, verdict).
    #[arg(long)]
    pub json: bool,
    /// SIF image.
    pub image: PathBuf,
}

impl From<&VerifyCliArgs> for crate::commands::verify::VerifyArgs {
    fn from(a: &VerifyCliArgs) -> Self {
        Self {
            image: a.image.clone(),
            keys: sifrun_runtime::image::signatures::Keys {
                keyrings: a.keyrings.clone(),
                pem_keys: a.pem_keys.clone(),
            },
            legacy: a.legacy,
        }
    }
}
