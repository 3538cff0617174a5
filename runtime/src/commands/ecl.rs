//! `sifrun ecl check`: the plugin's ECL decision for an image, offline, so
//! admins can test a configuration before jobs meet it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sifrun_runtime::error::{Context, Error, Result};
use sifrun_runtime::node::ecl::enforce::EclCheck;
use sifrun_runtime::node::ecl::EclConfig;

/// The decision and the text to print.
#[derive(Debug)]
pub struct Outcome {
    pub allowed: bool,
    pub text: String,
    /// Set when a record directory was given (developer option).
    pub timing: Option<Timing>,
}

/// Where the time of one check went, for `ci/bench-verify`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Loading the site file and the partition's keyrings.
    pub setup: Duration,
    /// [`EclCheck::check`]: verification, or reading the record.
    pub decision: Duration,
    /// True when the record answered (no hashing).
    pub cached: bool,
}

impl Timing {
    /// One machine-readable line (microseconds).
    pub fn line(&self) -> String {
        format!(
            "setup_us={} decision_us={} cached={}",
            self.setup.as_micros(),
            self.decision.as_micros(),
            self.cached
        )
    }
}

/// Loads `config`, picks `partition`'s list and checks `image` against it.
/// With `record_dir`, verification records are kept there as the plugin
/// keeps them in a cache entry (see [`record_dir_for`]).
pub fn check(
    config: &Path,
    partition: &str,
    image: &Path,
    json: bool,
    record_dir: Option<&Path>,
) -> Result<Outcome> {
    let start = Instant::now();
    let config = EclConfig::load(config)?;
    let image_dir = real_dir_of(image)?;
    let policy = EclCheck::for_partition(&config, partition)?;
    let setup = start.elapsed();
    let Some(check) = policy else {
        let text = if json {
            format!(
                "{{\"partition\":{},\"allowed\":true,\"rule\":\"no activated ECL\"}}\n",
                serde_json::to_string(partition).unwrap_or_default()
            )
        } else {
            format!("allowed: partition {partition} has no activated execution control list\n")
        };
        return Ok(Outcome {
            allowed: true,
            text,
            timing: None,
        });
    };
    let records = record_dir.map(|d| record_dir_for(d, image)).transpose()?;
    let start = Instant::now();
    let verdict = check.check(image, &image_dir, records.as_deref())?;
    let timing = record_dir.map(|_| Timing {
        setup,
        decision: start.elapsed(),
        cached: verdict.cached,
    });
    let text = if json {
        let mut t = serde_json::to_string_pretty(&verdict)
            .map_err(|e| Error::system(format!("rendering JSON: {e}")))?;
        t.push('\n');
        t
    } else if verdict.decision.allowed {
        format!(
            "allowed: partition {} ({}): {}\n",
            verdict.partition, verdict.decision.rule, verdict.decision.reason
        )
    } else {
        format!("{}: {}\n", image.display(), verdict.refusal())
    };
    Ok(Outcome {
        allowed: verdict.decision.allowed,
        text,
        timing,
    })
}

/// The sub-directory of `base` for `image`'s current bytes, named (like the
/// plugin's cache entries) by device, inode, size, mtime and ctime, so a
/// rewritten file gets a fresh directory and is verified again. Unlike the
/// plugin, this verifies the live file: the option is for measuring, not a
/// guarantee that the bytes checked are the bytes later run.
fn record_dir_for(base: &Path, image: &Path) -> Result<PathBuf> {
    let meta =
        std::fs::metadata(image).map_err(|e| Error::image(format!("{}: {e}", image.display())))?;
    let name = sifrun_runtime::node::image_cache::file_identity_digest(&meta, &[]);
    let dir = base.join(name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The directory an image really sits in (symlinks resolved), as the
/// plugin sees it through the opened file.
fn real_dir_of(image: &Path) -> Result<PathBuf> {
    let real = image
        .canonicalize()
        .map_err(|e| Error::image(format!("{}: {e}", image.display())))?;
    Ok(real.parent().map(Path::to_path_buf).unwrap_or_default())
}
