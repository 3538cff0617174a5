//! `sifrun inspect`: header and object table, or JSON for scripts.
//!
//! The JSON document is [`crate::image::ImageSummary`]; its keys are part of
//! the CLI contract (documented in runtime/README.md).

use std::fmt::Write;
use std::path::Path;

use crate::error::{Context, Result};
use crate::image::{render_text, summarize, ImageSummary, LinkSummary};

/// Returns the text `sifrun inspect` prints: siftool-style text (from
/// `sif::display`) or, with `json`, the [`ImageSummary`] document.
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

/// Compact table built from an [`ImageSummary`] (an alternative to the
/// siftool-style text, e.g. for log lines).
pub fn render_table(s: &ImageSummary) -> String {
    let h = &s.header;
    let mut out = String::new();
    let _ = writeln!(out, "Image:          {}", s.path);
    let _ = writeln!(out, "Launch script:  {}", h.launch_script.trim_end());
    let _ = writeln!(out, "Version:        {}", h.version);
    let _ = writeln!(out, "Arch:           {}", h.arch);
    let _ = writeln!(out, "ID:             {}", h.id);
    let _ = writeln!(out, "Created:        {}", h.created);
    let _ = writeln!(out, "Modified:       {}", h.modified);
    let _ = writeln!(
        out,
        "Descriptors:    {} used of {} (offset {}, size {})",
        h.descriptors_total - h.descriptors_free,
        h.descriptors_total,
        h.descriptors_offset,
        h.descriptors_size
    );
    let _ = writeln!(
        out,
        "Data:           offset {}, size {}",
        h.data_offset, h.data_size
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<4} {:<6} {:<10} {:<24} {:<10} {:<10} NAME",
        "ID", "GROUP", "LINK", "TYPE", "OFFSET", "SIZE"
    );
    for o in &s.objects {
        let group = o.group.map_or("NONE".to_string(), |g| g.to_string());
        let link = match o.link {
            None => "NONE".to_string(),
            Some(LinkSummary::Object(id)) => id.to_string(),
            Some(LinkSummary::Group(id)) => format!("{id} (G)"),
        };
        let kind = match (&o.partition, &o.signature) {
            (Some(p), _) => format!("{} ({}/{}/{})", o.data_type, p.fstype, p.parttype, p.arch),
            (_, Some(sig)) => format!("{} ({})", o.data_type, sig.hash),
            _ => o.data_type.clone(),
        };
        let _ = writeln!(
            out,
            "{:<4} {:<6} {:<10} {:<24} {:<10} {:<10} {}",
            o.id, group, link, kind, o.offset, o.size, o.name
        );
    }
    out
}
