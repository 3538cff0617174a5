//! `sifrun inspect`: header and object table, or JSON for scripts.
//!
//! The JSON document is [`sif::json::ImageView`]; its keys are part of
//! the CLI contract (documented in runtime/README.md).

use std::path::Path;

use sifrun_runtime::error::{Context, Result};
use sifrun_runtime::image::metadata::{self, Attribute};
use sifrun_runtime::image::{render_text, summarize};

/// Returns the text `sifrun inspect` prints: siftool-style text (from
/// `sif::display`) or, with `json`, the [`sif::json::ImageView`] document;
/// with `attributes`, those of the image's metadata, as `apptainer inspect`
/// shows them.
pub fn run(path: &Path, json: bool, attributes: &[Attribute]) -> Result<String> {
    if !attributes.is_empty() {
        let all = metadata::read(path)?;
        return Ok(if json {
            let mut s = serde_json::to_string_pretty(&all.only(attributes).to_json())
                .context("encoding JSON")?;
            s.push('\n');
            s
        } else {
            all.to_text(attributes)
        });
    }
    if json {
        let summary = summarize(path)?;
        let mut s = serde_json::to_string_pretty(&summary).context("encoding JSON")?;
        s.push('\n');
        Ok(s)
    } else {
        render_text(path)
    }
}
