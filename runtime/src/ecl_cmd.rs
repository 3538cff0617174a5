//! `sifrun ecl check`: the plugin's ECL decision for an image, offline, so
//! admins can test a configuration before jobs meet it.

use std::path::{Path, PathBuf};

use crate::ecl::enforce::EclCheck;
use crate::ecl::EclConfig;
use crate::error::{Error, Result};

/// The decision and the text to print.
#[derive(Debug)]
pub struct Outcome {
    pub allowed: bool,
    pub text: String,
}

/// Loads `config`, picks `partition`'s list and checks `image` against it.
pub fn check(config: &Path, partition: &str, image: &Path, json: bool) -> Result<Outcome> {
    let config = EclConfig::load(config)?;
    let image_dir = real_dir_of(image)?;
    let Some(check) = EclCheck::for_partition(&config, partition)? else {
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
        });
    };
    let verdict = check.check(image, &image_dir, None)?;
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
    })
}

/// The directory an image really sits in (symlinks resolved), as the
/// plugin sees it through the opened file.
fn real_dir_of(image: &Path) -> Result<PathBuf> {
    let real = image
        .canonicalize()
        .map_err(|e| Error::image(format!("{}: {e}", image.display())))?;
    Ok(real.parent().map(Path::to_path_buf).unwrap_or_default())
}
