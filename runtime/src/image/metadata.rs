//! What `apptainer inspect` shows of an image: labels, definition file,
//! runscript, start script, environment scripts, help.
//!
//! Apptainer (1.2 and later) records all of it at build time in a JSON
//! object named `inspect-metadata.json` (`{"data":{"attributes":{...}},
//! "type":"container"}`); images built by `sifrun build` carry a labels
//! object and a definition file object instead. Both are read from SIF
//! objects (bounded), never from the SquashFS, so inspecting needs neither
//! root nor a mount.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name Apptainer gives its metadata object.
pub const METADATA_OBJECT: &str = "inspect-metadata.json";

/// Largest metadata object read.
const MAX_METADATA: u64 = 4 << 20;

/// The attributes, shaped as `apptainer inspect --json` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    /// Labels (OCI labels, `%labels`, build labels).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The definition file the image was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deffile: Option<String>,
    /// `/.singularity.d/runscript`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runscript: Option<String>,
    /// `/.singularity.d/startscript`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startscript: Option<String>,
    /// The environment scripts, by path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// `%help`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helpfile: Option<String>,
    /// The SCIF apps (`%app*` sections), by name: each with its labels,
    /// runscript, environment and help.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, Attributes>,
}

#[derive(Deserialize)]
struct Document {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    attributes: Attributes,
}

/// Reads the attributes of the image at `path`: Apptainer's metadata object
/// when there is one, completed by the SIF labels and definition file
/// objects (what `sifrun build` writes).
pub fn read(path: &Path) -> Result<Attributes> {
    let mut image = sif::Image::open(path)
        .map_err(|e| Error::image(format!("not a valid SIF image: {e}")).at(path))?;
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        Error::image(format!("reading the {what}: {e}")).at(path)
    };
    let metadata = image
        .find_by_type(sif::DataType::GenericJson)
        .filter(|d| d.name == METADATA_OBJECT)
        .last()
        .cloned();
    let mut attributes = match metadata {
        Some(d) => {
            let bytes = image
                .read_object(&d, MAX_METADATA)
                .map_err(|e| bad("inspect metadata", &e))?;
            serde_json::from_slice::<Document>(&bytes)
                .map_err(|e| bad("inspect metadata", &e))?
                .data
                .attributes
        }
        None => Attributes::default(),
    };
    let labels: Vec<sif::Descriptor> = image.find_by_type(sif::DataType::Labels).cloned().collect();
    for d in &labels {
        let bytes = image
            .read_object(d, MAX_METADATA)
            .map_err(|e| bad("labels", &e))?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&bytes).map_err(|e| bad("labels", &e))?;
        for (k, v) in map {
            attributes.labels.entry(k).or_insert(v);
        }
    }
    let deffile = image.find_by_type(sif::DataType::Deffile).next().cloned();
    if attributes.deffile.is_none() {
        if let Some(d) = deffile {
            let bytes = image
                .read_object(&d, MAX_METADATA)
                .map_err(|e| bad("definition file", &e))?;
            attributes.deffile = Some(String::from_utf8_lossy(&bytes).into_owned());
        }
    }
    Ok(attributes)
}

/// One attribute `sifrun inspect` can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `--labels`.
    Labels,
    /// `--deffile`.
    Deffile,
    /// `--runscript`.
    Runscript,
    /// `--startscript`.
    Startscript,
    /// `--environment`.
    Environment,
    /// `--helpfile`.
    Helpfile,
}

impl Attributes {
    /// Only the `wanted` attributes (the `--json` document of those flags).
    pub fn only(&self, wanted: &[Attribute]) -> Attributes {
        let has = |a| wanted.contains(&a);
        Attributes {
            labels: if has(Attribute::Labels) {
                self.labels.clone()
            } else {
                BTreeMap::new()
            },
            deffile: self.deffile.clone().filter(|_| has(Attribute::Deffile)),
            runscript: self.runscript.clone().filter(|_| has(Attribute::Runscript)),
            startscript: self
                .startscript
                .clone()
                .filter(|_| has(Attribute::Startscript)),
            environment: if has(Attribute::Environment) {
                self.environment.clone()
            } else {
                BTreeMap::new()
            },
            helpfile: self.helpfile.clone().filter(|_| has(Attribute::Helpfile)),
            apps: BTreeMap::new(),
        }
    }

    /// The attributes of app `name`, or a usage error naming the apps the
    /// image has.
    pub fn app(&self, name: &str) -> Result<&Attributes> {
        self.apps.get(name).ok_or_else(|| {
            let apps: Vec<&str> = self.apps.keys().map(String::as_str).collect();
            Error::usage(if apps.is_empty() {
                format!("SCIF app {name}: the image has no SCIF apps")
            } else {
                format!(
                    "SCIF app {name}: the image has no such app (its apps: {})",
                    apps.join(", ")
                )
            })
        })
    }

    /// `--list-apps` as text: one app name per line.
    pub fn app_list(&self) -> String {
        self.apps.keys().map(|name| format!("{name}\n")).collect()
    }

    /// The `apptainer inspect --json` document.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "data": { "attributes": self }, "type": "container" })
    }

    /// Text as `apptainer inspect` prints it: labels as `key: value` lines,
    /// each other attribute as its text (each environment script headed by
    /// its path and followed by a blank line), in the order asked for; an
    /// attribute the image lacks is an empty line, as in Apptainer.
    pub fn to_text(&self, wanted: &[Attribute]) -> String {
        let mut out = String::new();
        // Each attribute's text ends with one newline; environment scripts
        // are printed as stored, then a blank line (as Apptainer does).
        let mut put = |text: &str, as_stored: bool| {
            if as_stored {
                out.push_str(text);
            } else {
                out.push_str(text.trim_end());
                out.push('\n');
            }
        };
        let or = |t: &Option<String>, missing: &'static str| t.clone().unwrap_or(missing.into());
        for a in wanted {
            match a {
                Attribute::Labels => {
                    for (k, v) in &self.labels {
                        put(&format!("{k}: {v}"), false);
                    }
                }
                Attribute::Deffile => put(&or(&self.deffile, ""), false),
                Attribute::Runscript => put(&or(&self.runscript, ""), false),
                Attribute::Startscript => put(&or(&self.startscript, ""), false),
                Attribute::Helpfile => put(&or(&self.helpfile, ""), false),
                Attribute::Environment => {
                    if self.environment.is_empty() {
                        put("", false);
                    }
                    for (file, body) in &self.environment {
                        put(&format!("=== {file} ===\n{body}\n\n"), true);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Apptainer 1.4 writes for an image with one app.
    const APPTAINER_DOCUMENT: &str = r##"{"data":{"attributes":{"apps":{"hello":{
        "environment":{"/scif/apps/hello/scif/env/90-environment.sh":"export HELLO_VAR=x"},
        "labels":{"SCIF_APP_NAME":"hello"},"runscript":"#!/bin/sh\necho hi","helpfile":"Says hello."}},
        "labels":{"org.example.version":"1.2"},"runscript":"#!/bin/sh\nexec myprog"}},"type":"container"}"##;

    #[test]
    fn apps_are_read_listed_and_selected() {
        let all = serde_json::from_str::<Document>(APPTAINER_DOCUMENT)
            .unwrap()
            .data
            .attributes;
        assert_eq!(all.app_list(), "hello\n");
        let app = all.app("hello").unwrap();
        assert_eq!(app.to_text(&[Attribute::Labels]), "SCIF_APP_NAME: hello\n");
        assert_eq!(app.to_text(&[Attribute::Helpfile]), "Says hello.\n");
        let runscript_only = app.only(&[Attribute::Runscript]);
        assert_eq!(
            runscript_only.runscript.as_deref(),
            Some("#!/bin/sh\necho hi")
        );
        assert!(runscript_only.labels.is_empty() && runscript_only.environment.is_empty());
        assert_eq!(
            all.app("nope").unwrap_err().message(),
            "SCIF app nope: the image has no such app (its apps: hello)"
        );
        assert!(all.only(&[Attribute::Labels]).apps.is_empty());
    }
}
