//! The two node paths PMIx rendezvous depends on, from the admin's
//! slurm.conf: `SlurmdSpoolDir` (server directories) and `TmpFS` (client
//! directories).
//!
//! SPANK does not expose Slurm's configuration to plugins, and asking
//! slurmctld on every step would put a network round trip on the step's
//! start path, so the file is read directly. Only these two keys matter;
//! keys are case-insensitive, the last assignment wins (as in Slurm), and
//! `%n`/`%h` expand to the node name and host name.

use std::path::{Path, PathBuf};

/// Slurm's defaults when slurm.conf does not set the keys.
const DEFAULT_SPOOL: &str = "/var/spool/slurmd";
const DEFAULT_TMPFS: &str = "/tmp";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmPaths {
    pub spool_dir: PathBuf,
    pub tmp_fs: PathBuf,
}

impl SlurmPaths {
    /// Reads `slurm_conf` for node `node` (host name `host`).
    pub fn from_file(slurm_conf: &Path, node: &str, host: &str) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(slurm_conf)?;
        Ok(Self::parse(&text, node, host))
    }

    /// Parses slurm.conf text.
    pub fn parse(text: &str, node: &str, host: &str) -> Self {
        let spool = value(text, "SlurmdSpoolDir").unwrap_or_else(|| DEFAULT_SPOOL.to_string());
        let tmp_fs = value(text, "TmpFS").unwrap_or_else(|| DEFAULT_TMPFS.to_string());
        SlurmPaths {
            spool_dir: PathBuf::from(expand_node(&spool, node, host)),
            tmp_fs: PathBuf::from(expand_node(&tmp_fs, node, host)),
        }
    }
}

/// The value of a global `key` (case-insensitive) in slurm.conf-style text
/// (slurm.conf, job_container.conf): the last assignment, without quotes.
/// Only for keys set one per line, not on node or partition lines.
pub fn value(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(key) {
            found = Some(v.trim().trim_matches('"').to_string());
        }
    }
    found
}

/// Slurm's `%n` (node name) and `%h` (host name) in a node path.
pub fn expand_node(path: &str, node: &str, host: &str) -> String {
    path.replace("%n", node).replace("%h", host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_defaults_and_expansion() {
        let conf = "ClusterName=c\nslurmdSpoolDir=/var/tmp/spool/%n # per node\nTmpFS=/local/%h\n";
        let p = SlurmPaths::parse(conf, "node1", "hostA");
        assert_eq!(p.spool_dir, PathBuf::from("/var/tmp/spool/node1"));
        assert_eq!(p.tmp_fs, PathBuf::from("/local/hostA"));
        let p = SlurmPaths::parse("# nothing\n", "n", "h");
        assert_eq!(p.spool_dir, PathBuf::from(DEFAULT_SPOOL));
        assert_eq!(p.tmp_fs, PathBuf::from(DEFAULT_TMPFS));
    }
}
