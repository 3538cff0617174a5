//! `sbatch --container-batch`: the batch script runs in the container, and
//! the Slurm commands it finds there (srun, sbatch, squeue, ...) are the
//! host's.
//!
//! An image seldom has Slurm, and never the site's release, configuration
//! and plugins, so the host's commands are used. Their programs need the
//! host's C library, for which the image's (older, newer, or musl) cannot
//! stand in: each command in [`BIN_DIR`] is a short `sh` script that starts
//! the host's program through the host's dynamic loader, with the host's
//! library directories (bound read-only under [`HOST_ROOT`]) and without a
//! library cache (the image's `/etc/ld.so.cache` names the image's
//! libraries). Slurm itself opens some files by absolute path: slurm.conf
//! and plugstack.conf, its plugins, the SPANK plugins plugstack.conf names,
//! munge's socket. Those are bound at their own path.
//!
//! Everything bound is decided here, by root, from the admin's settings and
//! the node's own files; nothing comes from the job. It is all what the job
//! user may read on the host anyway, bound read-only, nosuid, nodev (a bind
//! never changes a permission check).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the host's library and program directories appear in the
/// container.
pub const HOST_ROOT: &str = "/.sifrun/host";
/// Where the batch script finds the host's commands (first on its `PATH`).
pub const BIN_DIR: &str = "/.sifrun/bin";
/// The client commands offered, those the host has.
pub const COMMANDS: &[&str] = &[
    "srun", "sbatch", "salloc", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sstat",
    "sattach", "sbcast", "sprio", "sshare",
];

#[cfg(target_arch = "x86_64")]
const LOADER_AND_MULTIARCH: Option<(&str, &str)> =
    Some(("/lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu"));
#[cfg(target_arch = "aarch64")]
const LOADER_AND_MULTIARCH: Option<(&str, &str)> =
    Some(("/lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu"));
#[cfg(target_arch = "powerpc64")]
const LOADER_AND_MULTIARCH: Option<(&str, &str)> =
    Some(("/lib64/ld64.so.2", "powerpc64le-linux-gnu"));
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "powerpc64"
)))]
const LOADER_AND_MULTIARCH: Option<(&str, &str)> = None;

/// munge's socket directory when slurm.conf's `AuthInfo` names none.
const MUNGE_SOCKET_DIR: &str = "/run/munge";
/// How deep `include` lines are followed (ld.so.conf, plugstack.conf).
const MAX_INCLUDE_DEPTH: u32 = 8;

/// The host's Slurm client, as a container needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostClient {
    /// The host's dynamic loader (real path).
    pub loader: PathBuf,
    /// Where the loader looks for libraries, in order (real paths): Slurm's
    /// plugin directories (libslurmfull lives there), ld.so.conf's, then
    /// the loader's built-in ones.
    pub library_dirs: Vec<PathBuf>,
    /// The commands the host has, with the real path of each program.
    pub commands: Vec<(String, PathBuf)>,
    /// Host paths bound at their own path, none inside another.
    pub same_path: Vec<PathBuf>,
}

impl HostClient {
    /// Finds the host's client from slurm.conf (`slurm_conf`), the
    /// directory of the commands (`bin_dir`), and further paths the admin
    /// names (`extra_paths`).
    pub fn discover(
        slurm_conf: &Path,
        bin_dir: &Path,
        extra_paths: &[PathBuf],
    ) -> Result<Self, String> {
        let (loader, multiarch) = LOADER_AND_MULTIARCH
            .ok_or("not available on this architecture (its dynamic loader is not known)")?;
        let loader = real_path(Path::new(loader))?;
        let conf = fs::read_to_string(slurm_conf)
            .map_err(|e| format!("reading {}: {e}", slurm_conf.display()))?;
        let conf_dir = slurm_conf.parent().unwrap_or(Path::new("/"));

        let commands: Vec<(String, PathBuf)> = COMMANDS
            .iter()
            .filter_map(|name| {
                let p = bin_dir.join(name);
                let real = fs::canonicalize(&p).ok().filter(|r| r.is_file())?;
                Some((name.to_string(), real))
            })
            .collect();
        if !commands.iter().any(|(name, _)| name == "srun") {
            return Err(format!(
                "no srun in {} (the plugin's slurm_bin_dir setting)",
                bin_dir.display()
            ));
        }

        let plugin_dirs: Vec<PathBuf> = match pmix_compat::slurm_conf::value(&conf, "PluginDir") {
            Some(list) => list.split(':').map(PathBuf::from).collect(),
            None => default_plugin_dirs(multiarch),
        };
        let mut library_dirs = plugin_dirs.clone();
        ld_so_conf_dirs(Path::new("/etc/ld.so.conf"), 0, &mut library_dirs);
        for dir in ["/lib", "/usr/lib", "/lib64", "/usr/lib64"] {
            library_dirs.push(PathBuf::from(format!("{dir}/{multiarch}")));
            library_dirs.push(PathBuf::from(dir));
        }
        let library_dirs = unique_real_dirs(&library_dirs);

        let mut same_path = vec![conf_dir.to_path_buf()];
        same_path.extend(plugin_dirs);
        let plugstack = pmix_compat::slurm_conf::value(&conf, "PlugStackConfig")
            .map(PathBuf::from)
            .unwrap_or_else(|| conf_dir.join("plugstack.conf"));
        plugstack_plugins(&plugstack, 0, &mut same_path);
        same_path.push(auth_socket_dir(&conf).unwrap_or_else(|| PathBuf::from(MUNGE_SOCKET_DIR)));
        same_path.extend(extra_paths.iter().cloned());
        let same_path = outermost(
            same_path
                .into_iter()
                .filter(|p| p.is_absolute() && p.exists())
                .collect(),
        );

        let client = HostClient {
            loader,
            library_dirs,
            commands,
            same_path,
        };
        // Bind specs are `SRC:DST[:ro]`, and the wrappers quote every path.
        if let Some(p) = client
            .all_paths()
            .find(|p| p.to_string_lossy().contains(':'))
        {
            return Err(format!("{}: a path with ':' cannot be bound", p.display()));
        }
        Ok(client)
    }

    fn all_paths(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.loader)
            .chain(&self.library_dirs)
            .chain(self.commands.iter().map(|(_, p)| p))
            .chain(&self.same_path)
    }

    /// Host directories bound under [`HOST_ROOT`]: the library
    /// directories, the loader's and the programs', none inside another.
    pub fn host_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.library_dirs.clone();
        dirs.extend(self.loader.parent().map(Path::to_path_buf));
        dirs.extend(
            self.commands
                .iter()
                .filter_map(|(_, p)| p.parent().map(Path::to_path_buf)),
        );
        outermost(dirs)
    }

    /// The bind specs (`SRC:DST:ro`) that make the client usable in the
    /// container, with the commands' scripts from `wrapper_dir`.
    pub fn binds(&self, wrapper_dir: &Path) -> Vec<String> {
        let mut binds: Vec<String> = self
            .host_dirs()
            .iter()
            .map(|d| format!("{}:{}:ro", d.display(), in_host_root(d).display()))
            .collect();
        binds.extend(
            self.same_path
                .iter()
                .map(|p| format!("{}:{}:ro", p.display(), p.display())),
        );
        binds.push(format!("{}:{BIN_DIR}:ro", wrapper_dir.display()));
        binds
    }

    /// The script that runs the host's `program` in the container.
    pub fn wrapper(&self, name: &str, program: &Path) -> String {
        let library_path = self
            .library_dirs
            .iter()
            .map(|d| in_host_root(d).display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        format!(
            "#!/bin/sh\n\
             # {name} from the host (sifrun, sbatch --container-batch): the host's\n\
             # program, run by the host's loader with the host's libraries only.\n\
             unset LD_PRELOAD LD_AUDIT\n\
             exec {} --inhibit-cache --library-path {} {} \"$@\"\n",
            sh_quote(&in_host_root(&self.loader).display().to_string()),
            sh_quote(&library_path),
            sh_quote(&in_host_root(program).display().to_string()),
        )
    }

    /// Writes the commands' scripts into `dir` (root's, readable by all),
    /// each replaced whole, and removes any other file there. The scripts
    /// depend only on the node, so every batch step shares them.
    pub fn write_wrappers(&self, dir: &Path) -> Result<(), String> {
        let fail = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| fail("creating", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("chmod", dir, e))?;
        for (name, program) in &self.commands {
            let tmp = dir.join(format!(".{name}.{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&tmp)
                .map_err(|e| fail("creating", &tmp, e))?;
            f.write_all(self.wrapper(name, program).as_bytes())
                .map_err(|e| fail("writing", &tmp, e))?;
            fs::rename(&tmp, dir.join(name)).map_err(|e| fail("renaming", &tmp, e))?;
        }
        let entries = fs::read_dir(dir).map_err(|e| fail("reading", dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = self.commands.iter().any(|(n, _)| name == n.as_str());
            let in_progress = name.to_string_lossy().starts_with('.');
            if !ours && !in_progress {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

/// `path` as it appears in the container under [`HOST_ROOT`].
pub fn in_host_root(path: &Path) -> PathBuf {
    Path::new(HOST_ROOT).join(path.strip_prefix("/").unwrap_or(path))
}

fn real_path(p: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Where Slurm's packages put their plugins, when slurm.conf does not say:
/// Debian's, then the RPMs', then a source build's.
fn default_plugin_dirs(multiarch: &str) -> Vec<PathBuf> {
    [
        format!("/usr/lib/{multiarch}/slurm-wlm"),
        "/usr/lib64/slurm".into(),
        "/usr/lib/slurm".into(),
        "/usr/local/lib/slurm".into(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .filter(|p| p.is_dir())
    .take(1)
    .collect()
}

/// The directories of ld.so.conf and the files it includes, in order.
fn ld_so_conf_dirs(path: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            if depth < MAX_INCLUDE_DEPTH && pattern.starts_with(char::is_whitespace) {
                for file in expand(pattern.trim(), Path::new("/etc")) {
                    ld_so_conf_dirs(&file, depth + 1, out);
                }
            }
        } else if !line.is_empty() && !line.starts_with("hwcap") {
            // Directories are separated by white space, ':' or ','.
            out.extend(
                line.split(|c: char| c.is_whitespace() || c == ':' || c == ',')
                    .filter(|d| d.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
    }
}

/// The plugins plugstack.conf (and the files it includes) names by
/// absolute path; those named by file name are in a plugin directory.
fn plugstack_plugins(path: &Path, depth: u32, out: &mut Vec<PathBuf>) {
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let mut words = line.split('#').next().unwrap_or("").split_whitespace();
        match (words.next(), words.next()) {
            (Some("include"), Some(pattern)) if depth < MAX_INCLUDE_DEPTH => {
                for file in expand(pattern, base) {
                    plugstack_plugins(&file, depth + 1, out);
                }
            }
            (Some("required" | "optional"), Some(plugin)) if plugin.starts_with('/') => {
                out.push(PathBuf::from(plugin))
            }
            _ => {}
        }
    }
}

/// The files a glob `pattern` names (relative ones from `base`), sorted.
fn expand(pattern: &str, base: &Path) -> Vec<PathBuf> {
    let full = base.join(pattern);
    let Ok(paths) = glob::glob(&full.to_string_lossy()) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = paths.flatten().filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// The directory of the socket slurm.conf's `AuthInfo` names
/// (`socket=PATH`), if any.
fn auth_socket_dir(conf: &str) -> Option<PathBuf> {
    let info = pmix_compat::slurm_conf::value(conf, "AuthInfo")?;
    let socket = info
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("socket="))?;
    Path::new(socket).parent().map(Path::to_path_buf)
}

/// The existing directories of `dirs`, by real path, each once, in order.
fn unique_real_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen = Vec::new();
    for dir in dirs {
        if let Ok(real) = fs::canonicalize(dir) {
            if real.is_dir() && !seen.contains(&real) {
                seen.push(real);
            }
        }
    }
    seen
}

/// `paths` less those inside another one (a mount point is never created
/// inside what is bound from the host), each once, in order.
fn outermost(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut kept: Vec<PathBuf> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let inside_another = paths
            .iter()
            .enumerate()
            .any(|(j, q)| j != i && p.starts_with(q) && (p != q || j < i));
        if !inside_another && !kept.contains(p) {
            kept.push(p.clone());
        }
    }
    kept
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_repeated_paths_are_bound_once_at_the_outermost() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            outermost(p(&[
                "/usr/lib/x/slurm",
                "/usr/lib",
                "/usr/lib",
                "/usr/bin",
                "/usr/libexec",
                "/etc/slurm",
                "/etc/slurm/plugins/a.so",
            ])),
            p(&["/usr/lib", "/usr/bin", "/usr/libexec", "/etc/slurm"])
        );
    }

    #[test]
    fn conf_files_give_plugins_sockets_and_library_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("plugstack.conf.d")).unwrap();
        fs::write(
            d.join("plugstack.conf"),
            "# comment\ninclude plugstack.conf.d/*.conf\noptional relative.so\n",
        )
        .unwrap();
        fs::write(
            d.join("plugstack.conf.d/a.conf"),
            "required /opt/a/spank_a.so arg=1 # a\n  optional   /opt/b/b.so\n",
        )
        .unwrap();
        // A file that includes itself stops at the depth limit.
        fs::write(
            d.join("plugstack.conf.d/loop.conf"),
            format!("include {}/plugstack.conf.d/loop.conf\n", d.display()),
        )
        .unwrap();
        let mut plugins = Vec::new();
        plugstack_plugins(&d.join("plugstack.conf"), 0, &mut plugins);
        assert_eq!(
            plugins,
            [PathBuf::from("/opt/a/spank_a.so"), "/opt/b/b.so".into()]
        );

        fs::write(
            d.join("ld.so.conf"),
            format!(
                "include {0}/ld.d/*.conf\n/opt/x/lib:/opt/y/lib # two\nhwcap 0 nosegneg\n",
                d.display()
            ),
        )
        .unwrap();
        fs::create_dir(d.join("ld.d")).unwrap();
        fs::write(d.join("ld.d/b.conf"), "/opt/b/lib\n").unwrap();
        fs::write(d.join("ld.d/a.conf"), "/opt/a/lib\n").unwrap();
        let mut dirs = Vec::new();
        ld_so_conf_dirs(&d.join("ld.so.conf"), 0, &mut dirs);
        assert_eq!(
            dirs,
            ["/opt/a/lib", "/opt/b/lib", "/opt/x/lib", "/opt/y/lib"].map(PathBuf::from)
        );

        assert_eq!(
            auth_socket_dir("AuthType=auth/munge\nAuthInfo=cred_expire=100,socket=/var/run/m2/s\n"),
            Some(PathBuf::from("/var/run/m2"))
        );
        assert_eq!(auth_socket_dir("AuthInfo=cred_expire=100\n"), None);
    }

    #[test]
    fn wrappers_run_the_hosts_program_with_the_hosts_loader_and_libraries_only() {
        let client = HostClient {
            loader: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2".into(),
            library_dirs: vec![
                "/usr/lib/x86_64-linux-gnu/slurm-wlm".into(),
                "/usr/lib".into(),
            ],
            commands: vec![("srun".into(), "/usr/bin/srun".into())],
            same_path: vec!["/etc/slurm".into(), "/run/munge".into()],
        };
        let script = client.wrapper("srun", Path::new("/usr/bin/sr'un"));
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(
            script.ends_with(
                "exec '/.sifrun/host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2' --inhibit-cache \
                 --library-path '/.sifrun/host/usr/lib/x86_64-linux-gnu/slurm-wlm:/.sifrun/host/usr/lib' \
                 '/.sifrun/host/usr/bin/sr'\\''un' \"$@\"\n"
            ),
            "{script}"
        );
        assert_eq!(
            client.binds(Path::new("/run/sifrun/batch-client")),
            [
                "/usr/lib:/.sifrun/host/usr/lib:ro",
                "/usr/bin:/.sifrun/host/usr/bin:ro",
                "/etc/slurm:/etc/slurm:ro",
                "/run/munge:/run/munge:ro",
                "/run/sifrun/batch-client:/.sifrun/bin:ro",
            ]
        );
    }

    #[test]
    fn wrappers_are_written_whole_and_strays_removed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        fs::write(bin.join("stray"), "x").unwrap();
        let client = HostClient {
            loader: "/lib/ld.so".into(),
            library_dirs: vec!["/lib".into()],
            commands: vec![
                ("srun".into(), "/usr/bin/srun".into()),
                ("squeue".into(), "/usr/bin/squeue".into()),
            ],
            same_path: vec![],
        };
        client.write_wrappers(&bin).unwrap();
        let mut names: Vec<String> = fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["squeue", "srun"]);
        let mode = fs::metadata(bin.join("srun")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_to_string(bin.join("squeue")).unwrap(),
            client.wrapper("squeue", Path::new("/usr/bin/squeue"))
        );
    }

    #[test]
    fn this_hosts_client_is_found_when_slurm_is_installed() {
        let conf = Path::new("/etc/slurm/slurm.conf");
        if !conf.is_file() || !Path::new("/usr/bin/srun").is_file() {
            eprintln!("skipped: no Slurm client on this machine");
            return;
        }
        let client = HostClient::discover(conf, Path::new("/usr/bin"), &[]).unwrap();
        assert!(client.loader.is_file());
        assert!(client.commands.iter().any(|(n, _)| n == "srun"));
        assert!(client.same_path.contains(&PathBuf::from("/etc/slurm")));
        let e = HostClient::discover(conf, Path::new("/nonexistent"), &[]).unwrap_err();
        assert!(e.contains("no srun in /nonexistent"), "{e}");
    }
}
