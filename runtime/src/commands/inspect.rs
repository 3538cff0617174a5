//! `sifrun inspect`: header and object table, or JSON for scripts.
//!
//! The JSON document is [`sif::json::ImageView`]; its keys are part of
//! the CLI contract (documented in runtime/README.md).

use std::path::Path;

use sifrun_runtime::error::{Context, Result};
use sifrun_runtime::image::{render_text, summarize};

/// Returns the text `sifrun inspect` prints: siftool-style text (from
/// `sif::display`) or, with `json`, the [`sif::json::ImageView`] document.
pub fn run(path: &Path, json: bool) -> Result<String> {
    if json {
        let summary = summarize(path)?;
        let mut s = serde_json::to_string_pretty(&summary).context("encoding JSON")?;
        s.push('\n');
        Ok(s)
    } else {
        render_text(path)
    }
}
