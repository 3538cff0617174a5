//! `sifrun inspect`: header and object table, or JSON for scripts; or the
//! image's metadata as `apptainer inspect` shows it.
//!
//! The JSON document is [`sif::json::ImageView`]; its keys are part of
//! the CLI contract (documented in runtime/README.md).

use std::path::Path;

use sifrun_runtime::error::{Context, Result};
use sifrun_runtime::image::metadata::{self, Attribute, Attributes};
use sifrun_runtime::image::{render_text, summarize};

/// Which part of the image's metadata to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// The attributes asked for (`--labels`...); empty: the header and
    /// object table, unless an app option is given.
    pub attributes: Vec<Attribute>,
    /// `--list-apps`: the SCIF apps (their names; with `--json`, all their
    /// attributes, as Apptainer prints them).
    pub list_apps: bool,
    /// `--app NAME`: the attributes of that app (its labels by default).
    pub app: Option<String>,
}

/// Returns the text `sifrun inspect` prints: siftool-style text (from
/// `sif::display`) or, with `json`, the [`sif::json::ImageView`] document;
/// with a metadata `selection`, what `apptainer inspect` shows of it.
pub fn run(path: &Path, json: bool, selection: &Selection) -> Result<String> {
    if selection.list_apps || selection.app.is_some() {
        return apps(&metadata::read(path)?, json, selection);
    }
    if !selection.attributes.is_empty() {
        let all = metadata::read(path)?;
        return if json {
            to_json(&all.only(&selection.attributes))
        } else {
            Ok(all.to_text(&selection.attributes))
        };
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

/// `--list-apps` and `--app NAME`; in JSON, the apps sit under
/// `data.attributes.apps` as in Apptainer's document.
fn apps(all: &Attributes, json: bool, selection: &Selection) -> Result<String> {
    let Some(name) = &selection.app else {
        let listed = Attributes {
            apps: all.apps.clone(),
            ..Attributes::default()
        };
        return if json {
            to_json(&listed)
        } else {
            Ok(all.app_list())
        };
    };
    let wanted = if selection.attributes.is_empty() {
        vec![Attribute::Labels]
    } else {
        selection.attributes.clone()
    };
    let app = all.app(name)?;
    if json {
        let mut one = Attributes::default();
        one.apps.insert(name.clone(), app.only(&wanted));
        to_json(&one)
    } else {
        Ok(app.to_text(&wanted))
    }
}

fn to_json(attributes: &Attributes) -> Result<String> {
    let mut s = serde_json::to_string_pretty(&attributes.to_json()).context("encoding JSON")?;
    s.push('\n');
    Ok(s)
}
