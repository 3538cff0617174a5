//! The site's ECL configuration: one execution control list per Slurm
//! partition (and a default), each in Apptainer's `ecl.toml` schema, plus
//! the keyrings signatures are checked against.
//!
//! ```toml
//! keyrings = ["/etc/slurm/sifrun/keyring.asc"]   # for every partition
//!
//! [default]                                       # partitions not listed
//! activated = true
//! [[default.execgroup]]
//! tagname = "site"
//! mode = "whitelist"
//! dirpath = ""
//! keyfp = ["7064B1D6EFF01B1262FED3F03581D99FE87EAFD1"]
//!
//! scontrol = "/usr/bin/scontrol"                 # asks slurmctld for a job's partition
//!
//! [partitions.debug]
//! activated = false                               # anything readable runs
//!
//! [partitions.secure]
//! file = "/etc/apptainer/ecl.toml"                # an Apptainer ecl.toml as is
//! keyrings = ["/etc/slurm/sifrun/secure.asc"]     # replaces the global list
//!
//! [catalogue]                                     # images verified once for all nodes
//! dirs = ["/shared/sif-catalogue"]                # as the nodes see them
//! owner = "sifrun-stage"                          # the account that stages (or a uid)
//! ```
//!
//! Every file named here is read by root and decides what may run, so each
//! must be a regular file owned by root and not writable by group or others
//! (as Apptainer requires of its own configuration). Validation follows
//! Apptainer's: it runs even for lists that are not activated, and any error
//! refuses every container run rather than running unchecked.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::catalogue::Catalogue;
use crate::error::{Error, Result};

/// How an execution group judges an image's signers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// At least one listed key signed every group.
    Whitelist,
    /// Every listed key signed every group.
    Whitestrict,
    /// No listed key signed anything.
    Blacklist,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Whitelist => "whitelist",
            Mode::Whitestrict => "whitestrict",
            Mode::Blacklist => "blacklist",
        }
    }
}

/// One `[[execgroup]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecGroup {
    pub tagname: String,
    pub mode: Mode,
    /// Directory the image must be in (exact, symlinks resolved); `""`
    /// makes this the group for images anywhere else.
    #[serde(default)]
    pub dirpath: String,
    /// OpenPGP v4 fingerprints (40 hex digits).
    #[serde(default)]
    pub keyfp: Vec<String>,
}

/// One execution control list, Apptainer's `ecl.toml` schema.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ecl {
    /// `false`: the list is validated but every image may run.
    #[serde(default)]
    pub activated: bool,
    /// Check only legacy signatures (they do not cover header/descriptors).
    #[serde(default)]
    pub legacyinsecure: bool,
    #[serde(default)]
    pub execgroup: Vec<ExecGroup>,
}

/// A partition's entry: the list inline, or `file = ` an ecl.toml, and
/// optionally its own keyrings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionEntry {
    file: Option<PathBuf>,
    keyrings: Option<Vec<PathBuf>>,
    activated: Option<bool>,
    legacyinsecure: Option<bool>,
    execgroup: Option<Vec<ExecGroup>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    #[serde(default)]
    keyrings: Vec<PathBuf>,
    /// Slurm's `scontrol`; `squeue` beside it asks slurmctld for a job's partition.
    scontrol: Option<PathBuf>,
    default: Option<PartitionEntry>,
    #[serde(default)]
    partitions: BTreeMap<String, PartitionEntry>,
    catalogue: Option<CatalogueEntry>,
}

/// `[catalogue]`: see [`super::catalogue`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogueEntry {
    dirs: Vec<PathBuf>,
    /// A user name or a uid.
    owner: String,
}

/// The policy that applies to one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPolicy {
    /// Where the list came from (for messages): the site file or an ecl.toml.
    pub source: PathBuf,
    pub ecl: Ecl,
    /// Public keys signatures are checked against (never the user's).
    pub keyrings: Vec<PathBuf>,
}

/// The whole site configuration, validated.
#[derive(Debug, Clone)]
pub struct EclConfig {
    path: PathBuf,
    /// Slurm's `scontrol` (default `/usr/bin/scontrol`).
    pub scontrol: PathBuf,
    default: Option<PartitionPolicy>,
    partitions: BTreeMap<String, PartitionPolicy>,
    /// Where staged images live, and who stages them.
    pub catalogue: Option<Catalogue>,
}

impl EclConfig {
    /// Loads and validates the site file and every file it names.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_trusted(path)?;
        let site: SiteFile =
            toml::from_str(&text).map_err(|e| bad(path, &e.message().replace('\n', " ")))?;
        let resolve = |entry: &PartitionEntry| -> Result<PartitionPolicy> {
            let (source, ecl) = match &entry.file {
                Some(file) => {
                    if entry.activated.is_some()
                        || entry.legacyinsecure.is_some()
                        || entry.execgroup.is_some()
                    {
                        return Err(bad(
                            path,
                            "an entry with `file` must not also list activated, legacyinsecure or execgroup",
                        ));
                    }
                    (file.clone(), load_ecl_file(file)?)
                }
                None => (
                    path.to_path_buf(),
                    Ecl {
                        activated: entry.activated.unwrap_or(false),
                        legacyinsecure: entry.legacyinsecure.unwrap_or(false),
                        execgroup: entry.execgroup.clone().unwrap_or_default(),
                    },
                ),
            };
            validate(&ecl).map_err(|m| bad(&source, &m))?;
            let keyrings = entry
                .keyrings
                .clone()
                .unwrap_or_else(|| site.keyrings.clone());
            for ring in &keyrings {
                check_trusted(ring)?;
            }
            if ecl.activated && keyrings.is_empty() {
                return Err(bad(
                    &source,
                    "an activated list needs at least one keyring (`keyrings = [...]`)",
                ));
            }
            Ok(PartitionPolicy {
                source,
                ecl,
                keyrings,
            })
        };
        let default = site.default.as_ref().map(resolve).transpose()?;
        let mut partitions = BTreeMap::new();
        for (name, entry) in &site.partitions {
            partitions.insert(name.clone(), resolve(entry)?);
        }
        Ok(EclConfig {
            path: path.to_path_buf(),
            scontrol: site
                .scontrol
                .clone()
                .unwrap_or_else(|| PathBuf::from("/usr/bin/scontrol")),
            default,
            partitions,
            catalogue: site
                .catalogue
                .as_ref()
                .map(|c| resolve_catalogue(path, c))
                .transpose()?,
        })
    }

    /// Every activated list, by the partition it applies to (`default`
    /// for the default entry's).
    pub fn activated_policies(&self) -> Vec<(String, &PartitionPolicy)> {
        self.default
            .iter()
            .map(|p| ("default".to_string(), p))
            .chain(self.partitions.iter().map(|(n, p)| (n.clone(), p)))
            .filter(|(_, p)| p.ecl.activated)
            .collect()
    }

    /// True when some partition (or the default) has an activated list;
    /// when none has, the job's partition need not even be looked up.
    pub fn any_activated(&self) -> bool {
        self.default
            .iter()
            .chain(self.partitions.values())
            .any(|p| p.ecl.activated)
    }

    /// The site file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The policy for `partition`: its own entry, else the default, else
    /// none (no ECL: every readable image runs there).
    pub fn for_partition(&self, partition: &str) -> Option<&PartitionPolicy> {
        self.partitions.get(partition).or(self.default.as_ref())
    }
}

/// `[catalogue]`, checked: absolute plain directory paths, an owner that
/// exists. The directories themselves are checked at each use (a node
/// without the shared filesystem mounted must still run other images).
fn resolve_catalogue(path: &Path, entry: &CatalogueEntry) -> Result<Catalogue> {
    for dir in &entry.dirs {
        let plain = dir.is_absolute()
            && dir
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !plain {
            return Err(bad(
                path,
                &format!(
                    "catalogue dir {:?} must be an absolute path without . or ..",
                    dir.display()
                ),
            ));
        }
    }
    let owner_uid = match entry.owner.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => match nix::unistd::User::from_name(&entry.owner) {
            Ok(Some(user)) => user.uid.as_raw(),
            _ => {
                return Err(bad(
                    path,
                    &format!("catalogue owner {:?} is not a known user", entry.owner),
                ))
            }
        },
    };
    Ok(Catalogue {
        dirs: entry.dirs.clone(),
        owner_uid,
    })
}

/// Reads an Apptainer `ecl.toml`.
pub fn load_ecl_file(path: &Path) -> Result<Ecl> {
    let text = read_trusted(path)?;
    let ecl: Ecl = toml::from_str(&text).map_err(|e| bad(path, &e.message().replace('\n', " ")))?;
    validate(&ecl).map_err(|m| bad(path, &m))?;
    Ok(ecl)
}

/// Apptainer's rules: one group per dirpath (at most one `""`), a dirpath
/// must exist and already be absolute and symlink-free, fingerprints are
/// 40 hex digits.
fn validate(ecl: &Ecl) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for g in &ecl.execgroup {
        if !seen.insert(g.dirpath.as_str()) {
            return Err(format!(
                "execgroup {:?}: another group already uses dirpath {:?}",
                g.tagname, g.dirpath
            ));
        }
        if !g.dirpath.is_empty() {
            let dir = Path::new(&g.dirpath);
            match dir.canonicalize() {
                Ok(real) if real == dir => {}
                Ok(real) => {
                    return Err(format!(
                        "execgroup {:?}: dirpath {:?} must be written as its real path {:?}",
                        g.tagname,
                        g.dirpath,
                        real.display()
                    ))
                }
                Err(e) => {
                    return Err(format!(
                        "execgroup {:?}: dirpath {:?}: {e}",
                        g.tagname, g.dirpath
                    ))
                }
            }
        }
        for fp in &g.keyfp {
            if fp.len() != 40 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "execgroup {:?}: keyfp {fp:?} is not a 40-digit hex fingerprint",
                    g.tagname
                ));
            }
        }
    }
    Ok(())
}

/// Reads a file that decides what root allows: regular, root-owned, not
/// group/other writable, not a symlink.
fn read_trusted(path: &Path) -> Result<String> {
    check_trusted(path)?;
    std::fs::read_to_string(path).map_err(|e| bad(path, &e.to_string()))
}

/// See `read_trusted`.
pub fn check_trusted(path: &Path) -> Result<()> {
    crate::node::trusted::check_config_file(path).map_err(|reason| bad(path, &reason))
}

fn bad(path: &Path, message: &str) -> Error {
    Error::usage(format!("ECL configuration {}: {message}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "7064B1D6EFF01B1262FED3F03581D99FE87EAFD1";

    fn group(tag: &str, dirpath: &str, keyfp: &[&str]) -> ExecGroup {
        ExecGroup {
            tagname: tag.into(),
            mode: Mode::Whitelist,
            dirpath: dirpath.into(),
            keyfp: keyfp.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn apptainer_schema_parses() {
        let ecl: Ecl = toml::from_str(&format!(
            "activated = true\n[[execgroup]]\ntagname = \"g\"\nmode = \"whitestrict\"\ndirpath = \"\"\nkeyfp = [\"{FP}\"]\n"
        ))
        .unwrap();
        assert!(ecl.activated && !ecl.legacyinsecure);
        assert_eq!(ecl.execgroup[0].mode, Mode::Whitestrict);
        assert!(toml::from_str::<Ecl>("activated = true\nbogus = 1\n").is_err());
        assert!(
            toml::from_str::<Ecl>("[[execgroup]]\ntagname = \"g\"\nmode = \"greylist\"\n").is_err()
        );
    }

    #[test]
    fn validation_rules() {
        let ok = Ecl {
            activated: true,
            legacyinsecure: false,
            execgroup: vec![group("a", "", &[FP]), group("b", "/", &[])],
        };
        assert_eq!(validate(&ok), Ok(()));
        let two_fallbacks = Ecl {
            execgroup: vec![group("a", "", &[]), group("b", "", &[])],
            ..ok.clone()
        };
        assert!(validate(&two_fallbacks)
            .unwrap_err()
            .contains("another group"));
        let short_fp = Ecl {
            execgroup: vec![group("a", "", &["ABCD"])],
            ..ok.clone()
        };
        assert!(validate(&short_fp).unwrap_err().contains("40-digit"));
        let missing_dir = Ecl {
            execgroup: vec![group("a", "/nonexistent/dir", &[])],
            ..ok.clone()
        };
        assert!(validate(&missing_dir).is_err());
        let unclean = Ecl {
            execgroup: vec![group("a", "/usr/../usr", &[])],
            ..ok
        };
        assert!(validate(&unclean).unwrap_err().contains("real path"));
    }

    #[test]
    fn untrusted_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecl.toml");
        std::fs::write(&file, "activated = false\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = load_ecl_file(&file).unwrap_err();
        assert!(
            err.message().contains("not writable by group or others"),
            "{}",
            err.message()
        );
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(load_ecl_file(&link)
            .unwrap_err()
            .message()
            .contains("symlink"));
    }
}
