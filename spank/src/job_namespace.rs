//! Which file holds the job's mount namespace, when Slurm gives each job
//! one and slurmstepd runs outside it (see
//! `sifrun_runtime::node::job_namespace` for what is taken from it).
//!
//! `job_namespace` in sifrun.toml:
//! - `"auto"` (default): from the admin's Slurm configuration. slurm.conf's
//!   `JobContainerType=job_container/tmpfs` (Slurm up to 25.11) or
//!   `NamespaceType=namespace/tmpfs` (26.05) keep the namespace at
//!   `<BasePath>/<job id>/.ns`, BasePath from `job_container.conf`. With
//!   `EntireStepInNS=yes` there, or with `NamespaceType=namespace/linux`
//!   (26.05, always so), slurmd starts slurmstepd inside the job's
//!   namespace (Slurm's `_forkexec_slurmstepd`): the helper is already
//!   there and nothing is taken. No such plugin: none.
//! - `"none"`: never (the container gets the /tmp of slurmstepd's
//!   namespace).
//! - a path template (`%j` job id, `%n` node name), for layouts auto does
//!   not know.
//!
//! Only admin-owned files are read, never anything from the job.

use std::path::{Path, PathBuf};

use pmix_compat::slurm_conf;
use sifrun_runtime::node::job_namespace::{expand_template, JobNamespace};

/// Where job `job_id`'s mount namespace is on node `node`, as `setting`
/// (the config value) and the Slurm configuration at `slurm_conf_path`
/// say; `None` when jobs have no namespace of their own.
pub fn locate(
    setting: &str,
    slurm_conf_path: &Path,
    job_id: u32,
    node: &str,
) -> Result<Option<JobNamespace>, String> {
    match setting {
        "none" => Ok(None),
        "auto" => auto(slurm_conf_path, job_id, node),
        template => expand_template(template, job_id, node)
            .map(|p| Some(JobNamespace::File(p)))
            .map_err(|e| e.to_string()),
    }
}

fn auto(slurm_conf_path: &Path, job_id: u32, node: &str) -> Result<Option<JobNamespace>, String> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let slurm_conf = read(slurm_conf_path)?;
    let etc = slurm_conf_path.parent().unwrap_or(Path::new("/"));
    let plugin = ["NamespaceType", "JobContainerType"]
        .iter()
        .find_map(|k| slurm_conf::value(&slurm_conf, k))
        .map(|v| v.to_ascii_lowercase());
    let base = match plugin.as_deref() {
        None | Some("") | Some("job_container/none") | Some("namespace/none") => return Ok(None),
        // slurmstepd runs in the job's namespace already.
        Some("namespace/linux") => return Ok(Some(JobNamespace::Current)),
        Some("job_container/tmpfs") | Some("namespace/tmpfs") => {
            let conf = etc.join("job_container.conf");
            let settings = job_container_settings(&read(&conf)?, node);
            if settings.entire_step_in_ns {
                return Ok(Some(JobNamespace::Current));
            }
            settings
                .base_path
                .ok_or_else(|| format!("{}: no BasePath for node {node}", conf.display()))?
        }
        Some(other) => {
            return Err(format!(
                "{}: job namespace plugin {other} is not known to sifrun; set job_namespace in sifrun.toml to the path of the job's mount namespace file (%j: job id), or to \"none\"",
                slurm_conf_path.display()
            ))
        }
    };
    if base.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let host = node; // The plugin runs where node name = host name (%h).
    let base = slurm_conf::expand_node(&base, node, host);
    let base = base.trim_end_matches('/');
    if !base.starts_with('/') {
        return Err(format!("job namespace base path {base:?} is not absolute"));
    }
    // A Slurm built with --enable-multiple-slurmd (Debian's is) appends the
    // node name to the base path; which one a build does is not visible
    // from outside, so the layout whose file exists is taken.
    let plain = PathBuf::from(format!("{base}/{job_id}/.ns"));
    let per_node = PathBuf::from(format!("{base}/{node}/{job_id}/.ns"));
    Ok(Some(JobNamespace::File(
        if per_node.symlink_metadata().is_ok() && plain.symlink_metadata().is_err() {
            per_node
        } else {
            plain
        },
    )))
}

/// What job_container.conf says for one node.
#[derive(Debug, Default, PartialEq)]
struct JobContainerSettings {
    base_path: Option<String>,
    entire_step_in_ns: bool,
}

/// job_container.conf for `node`: a `NodeName=LIST ...` line naming it wins
/// over the global settings, key by key.
fn job_container_settings(text: &str, node: &str) -> JobContainerSettings {
    let mut global = JobContainerSettings::default();
    let mut for_node = JobContainerSettings::default();
    let yes = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "1");
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut nodes = None;
        let mut base_path = None;
        let mut entire = None;
        for pair in line.split_whitespace() {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"');
            match k.to_ascii_lowercase().as_str() {
                "nodename" => nodes = Some(v.to_string()),
                "basepath" => base_path = Some(v.to_string()),
                "entirestepinns" => entire = Some(yes(v)),
                _ => {}
            }
        }
        let target = match &nodes {
            Some(list) if hostlist_contains(list, node) => &mut for_node,
            Some(_) => continue,
            None => &mut global,
        };
        if base_path.is_some() {
            target.base_path = base_path;
        }
        if let Some(e) = entire {
            target.entire_step_in_ns = e;
        }
    }
    JobContainerSettings {
        base_path: for_node.base_path.or(global.base_path),
        entire_step_in_ns: for_node.entire_step_in_ns || global.entire_step_in_ns,
    }
}

/// Whether Slurm host list `list` (`node1,gpu[01-04,07]`) names `name`.
fn hostlist_contains(list: &str, name: &str) -> bool {
    split_top_level(list)
        .iter()
        .any(|item| match item.split_once('[') {
            None => *item == name,
            Some((prefix, rest)) => {
                let Some((ranges, suffix)) = rest.split_once(']') else {
                    return false;
                };
                let Some(number) = name
                    .strip_prefix(prefix)
                    .and_then(|n| n.strip_suffix(suffix))
                else {
                    return false;
                };
                ranges.split(',').any(|r| in_range(r, number))
            }
        })
}

/// The items of a host list: commas inside brackets do not split.
fn split_top_level(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `number` (digits as in the node name) is in `range` (`7`,
/// `01-04`); a zero-padded range matches only names of its width.
fn in_range(range: &str, number: &str) -> bool {
    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
    let (Ok(lo_n), Ok(hi_n), Ok(n)) = (lo.parse::<u64>(), hi.parse::<u64>(), number.parse::<u64>())
    else {
        return false;
    };
    let padded = lo.len() > 1 && lo.starts_with('0');
    (!padded || number.len() == lo.len())
        && number.bytes().all(|b| b.is_ascii_digit())
        && (lo_n..=hi_n).contains(&n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(slurm_conf: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("slurm.conf"), slurm_conf).unwrap();
        for (name, text) in extra {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn resolve(
        dir: &tempfile::TempDir,
        setting: &str,
        node: &str,
    ) -> Result<Option<JobNamespace>, String> {
        locate(setting, &dir.path().join("slurm.conf"), 42, node)
    }

    fn file(path: impl Into<PathBuf>) -> Option<JobNamespace> {
        Some(JobNamespace::File(path.into()))
    }

    #[test]
    fn no_namespace_plugin_means_none() {
        let d = setup("ClusterName=c\nJobContainerType=job_container/none\n", &[]);
        assert_eq!(resolve(&d, "auto", "n1").unwrap(), None);
        let d = setup("ClusterName=c\n", &[]);
        assert_eq!(resolve(&d, "auto", "n1").unwrap(), None);
    }

    #[test]
    fn job_container_tmpfs_global_and_per_node_base_paths() {
        let jc = "AutoBasePath=true\nBasePath=/var/jc/%n\nNodeName=gpu[01-04] BasePath=/nvme/jc\n";
        let d = setup(
            "JobContainerType=job_container/tmpfs\nPrologFlags=Contain\n",
            &[("job_container.conf", jc)],
        );
        assert_eq!(
            resolve(&d, "auto", "cpu7").unwrap(),
            file("/var/jc/cpu7/42/.ns")
        );
        assert_eq!(
            resolve(&d, "auto", "gpu03").unwrap(),
            file("/nvme/jc/42/.ns")
        );
        let d = setup(
            "NamespaceType=namespace/tmpfs\n",
            &[("job_container.conf", jc)],
        );
        assert_eq!(
            resolve(&d, "auto", "gpu3").unwrap(),
            file("/var/jc/gpu3/42/.ns")
        );
    }

    #[test]
    fn slurmstepd_inside_the_job_namespace_needs_no_file_name() {
        let d = setup("NamespaceType=namespace/linux\n", &[]);
        assert_eq!(
            resolve(&d, "auto", "n1").unwrap(),
            Some(JobNamespace::Current)
        );
        let jc = "BasePath=/var/jc\nNodeName=n[1-2] EntireStepInNS=yes\n";
        let d = setup(
            "JobContainerType=job_container/tmpfs\n",
            &[("job_container.conf", jc)],
        );
        assert_eq!(
            resolve(&d, "auto", "n1").unwrap(),
            Some(JobNamespace::Current)
        );
        assert_eq!(resolve(&d, "auto", "n3").unwrap(), file("/var/jc/42/.ns"));
    }

    #[test]
    fn missing_or_unknown_configuration_is_one_clear_error() {
        let d = setup("JobContainerType=job_container/tmpfs\n", &[]);
        let e = resolve(&d, "auto", "n1").unwrap_err();
        assert!(e.contains("job_container.conf"), "{e}");
        let d = setup("NamespaceType=namespace/other\n", &[]);
        let e = resolve(&d, "auto", "n1").unwrap_err();
        assert!(e.contains("set job_namespace"), "{e}");
        let d = setup(
            "JobContainerType=job_container/tmpfs\n",
            &[("job_container.conf", "AutoBasePath=yes\n")],
        );
        assert!(resolve(&d, "auto", "n1")
            .unwrap_err()
            .contains("no BasePath"));
    }

    #[test]
    fn a_base_path_with_the_node_name_appended_is_found() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("jc");
        std::fs::create_dir_all(base.join("n1/42")).unwrap();
        std::fs::write(base.join("n1/42/.ns"), "").unwrap();
        let jc = format!("BasePath={}\n", base.display());
        let d = setup(
            "JobContainerType=job_container/tmpfs\n",
            &[("job_container.conf", &jc)],
        );
        assert_eq!(
            resolve(&d, "auto", "n1").unwrap(),
            file(base.join("n1/42/.ns"))
        );
        assert_eq!(
            resolve(&d, "auto", "n2").unwrap(),
            file(base.join("42/.ns"))
        );
    }

    #[test]
    fn explicit_settings() {
        let d = setup("NamespaceType=namespace/linux\n", &[]);
        assert_eq!(resolve(&d, "none", "n1").unwrap(), None);
        assert_eq!(
            resolve(&d, "/ns/%n/%j/.ns", "n1").unwrap(),
            file("/ns/n1/42/.ns")
        );
        assert!(resolve(&d, "relative/%j", "n1").is_err());
    }

    #[test]
    fn host_lists() {
        assert!(hostlist_contains("node1,node2", "node2"));
        assert!(hostlist_contains("node[1-3,7]", "node7"));
        assert!(hostlist_contains("a,gpu[01-04],b", "gpu02"));
        assert!(!hostlist_contains("gpu[01-04]", "gpu2"));
        assert!(!hostlist_contains("node[1-3]", "node4"));
        assert!(!hostlist_contains("node[1-3]", "node"));
        assert!(!hostlist_contains("node[1-3]", "nodex1"));
        assert!(hostlist_contains("rack[1-2]-n", "rack2-n"));
    }
}
