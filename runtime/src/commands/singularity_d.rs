//! What `sifrun build` adds so that Apptainer and SingularityCE see an
//! image's environment, runscript, labels and help the way sifrun does.
//!
//! Those tools ignore the SIF environment and labels objects; they read
//! the `/.singularity.d` tree inside the SquashFS at run time and the
//! `inspect-metadata.json` object for `inspect`. sifrun build writes both:
//! files are added to the SquashFS as mksquashfs pseudo files (a file or
//! directory the source already has wins), and the metadata as a SIF
//! object (docs/apptainer.md).

use std::collections::BTreeMap;
use std::path::Path;

use sifrun_runtime::error::{Context, Result};
use sifrun_runtime::image::metadata::Attributes;
use sifrun_runtime::image::ImageMetadata;

use crate::commands::target::deffile_section;

/// The environment from `--env` (numbered before a definition file's
/// `90-environment.sh`, so that `%environment` can build on it).
const ENV_SCRIPT: &str = "/.singularity.d/env/89-sifrun-env.sh";
/// The definition file's `%environment`, where Apptainer puts it.
const DEF_ENV_SCRIPT: &str = "/.singularity.d/env/90-environment.sh";
/// Apptainer's runscript and help.
const RUNSCRIPT: &str = "/.singularity.d/runscript";
const HELP: &str = "/.singularity.d/runscript.help";
const LABELS: &str = "/.singularity.d/labels.json";
/// Where Apptainer hooks in at run time: right after `99-base.sh` it applies
/// `APPTAINERENV_*` requests, and `99-runtimevars.sh` edits PATH. An image
/// without them would get neither under Apptainer.
const BASE_SCRIPT: &str = "/.singularity.d/env/99-base.sh";
const RUNTIME_VARS_SCRIPT: &str = "/.singularity.d/env/99-runtimevars.sh";
/// Our own text for them, doing what Apptainer's do: its bound driver
/// libraries last on LD_LIBRARY_PATH, a prompt, and the PATH edits
/// Apptainer passes in `SING_USER_DEFINED_*`.
const BASE_TEXT: &str = "#!/bin/sh\n\
LD_LIBRARY_PATH=\"${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/.singularity.d/libs\"\n\
PS1=\"${PS1:-Apptainer> }\"\n\
export LD_LIBRARY_PATH PS1\n";
const RUNTIME_VARS_TEXT: &str = "#!/bin/sh\n\
[ -z \"${SING_USER_DEFINED_PREPEND_PATH:-}\" ] || PATH=\"$SING_USER_DEFINED_PREPEND_PATH:$PATH\"\n\
[ -z \"${SING_USER_DEFINED_APPEND_PATH:-}\" ] || PATH=\"$PATH:$SING_USER_DEFINED_APPEND_PATH\"\n\
[ -z \"${SING_USER_DEFINED_PATH:-}\" ] || PATH=\"$SING_USER_DEFINED_PATH\"\n\
unset SING_USER_DEFINED_PREPEND_PATH SING_USER_DEFINED_APPEND_PATH SING_USER_DEFINED_PATH\n\
export PATH\n";

/// The files to add to the image, as (path, mode, contents).
#[derive(Debug, Default)]
pub struct Layout {
    files: Vec<(&'static str, u32, String)>,
}

impl Layout {
    /// The layout for what `sifrun build` was given; empty (nothing added)
    /// when it was given no environment, labels or definition file.
    pub fn for_build(meta: &ImageMetadata) -> Result<Layout> {
        let mut files = Vec::new();
        if !meta.env.is_empty() {
            let mut script = String::from("#!/bin/sh\n");
            for (name, value) in &meta.env {
                script.push_str(&format!("export {name}={}\n", double_quoted(value)));
            }
            files.push((ENV_SCRIPT, 0o644, script));
        }
        let deffile = meta.deffile.as_deref().unwrap_or_default();
        if let Some(env) = deffile_section(deffile, "%environment") {
            files.push((DEF_ENV_SCRIPT, 0o644, format!("#!/bin/sh\n{env}")));
        }
        if let Some(run) = deffile_section(deffile, "%runscript") {
            files.push((RUNSCRIPT, 0o755, format!("#!/bin/sh\n{run}")));
        }
        if let Some(help) = deffile_section(deffile, "%help") {
            files.push((HELP, 0o644, help));
        }
        if !meta.labels.is_empty() {
            let json = serde_json::to_string_pretty(&meta.labels).context("encoding labels")?;
            files.push((LABELS, 0o644, json + "\n"));
        }
        if !files.is_empty() {
            files.push((BASE_SCRIPT, 0o644, BASE_TEXT.to_string()));
            files.push((RUNTIME_VARS_SCRIPT, 0o644, RUNTIME_VARS_TEXT.to_string()));
        }
        Ok(Layout { files })
    }

    /// True when there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Writes each file's contents under `work` and returns the mksquashfs
    /// arguments (`-p` pseudo definitions) that add them, with their
    /// directories, owned by root.
    pub fn pseudo_args(&self, work: &Path) -> Result<Vec<String>> {
        let mut args = Vec::new();
        for dir in ["/.singularity.d", "/.singularity.d/env"] {
            args.extend(["-p".to_string(), format!("{dir} d 755 0 0")]);
        }
        for (i, (path, mode, contents)) in self.files.iter().enumerate() {
            let source = work.join(format!("singularity.d-{i}"));
            std::fs::write(&source, contents)
                .with_context(|| format!("writing {}", source.display()))?;
            args.extend([
                "-p".to_string(),
                format!("{path} f {mode:o} 0 0 cat {}", source.display()),
            ]);
        }
        Ok(args)
    }

    /// The `inspect-metadata.json` object: what `apptainer inspect` shows.
    pub fn inspect_metadata(&self, meta: &ImageMetadata) -> Result<Vec<u8>> {
        let file = |p: &str| {
            self.files
                .iter()
                .find(|(path, _, _)| *path == p)
                .map(|(_, _, c)| c.clone())
        };
        let environment: BTreeMap<String, String> = [ENV_SCRIPT, DEF_ENV_SCRIPT]
            .into_iter()
            .filter_map(|p| file(p).map(|c| (p.to_string(), c)))
            .collect();
        let attributes = Attributes {
            labels: meta.labels.clone(),
            deffile: meta
                .deffile
                .as_deref()
                .map(|d| String::from_utf8_lossy(d).into_owned()),
            runscript: file(RUNSCRIPT),
            startscript: None,
            environment,
            helpfile: file(HELP),
            apps: BTreeMap::new(),
        };
        serde_json::to_vec(&attributes.to_json()).context("encoding inspect metadata")
    }
}

/// `value` as one double-quoted shell word (`"`, `$`, `` ` `` and `\`
/// escaped). Not single quotes: Apptainer's embedded interpreter reads
/// `'it'\''s'` as `it\'s`.
fn double_quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '$' | '`' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_survive_any_characters() {
        let meta = ImageMetadata {
            env: vec![("A".into(), "it's $HOME \"x\" `y`".into())],
            ..ImageMetadata::default()
        };
        let layout = Layout::for_build(&meta).unwrap();
        assert_eq!(
            layout.files[0].2,
            "#!/bin/sh\nexport A=\"it's \\$HOME \\\"x\\\" \\`y\\`\"\n"
        );
    }

    #[test]
    fn deffile_sections_go_where_apptainer_puts_them() {
        let meta = ImageMetadata {
            deffile: Some(b"Bootstrap: scratch\n%environment\n    export X=1\n%runscript\n    echo run\n%help\n    Helps.\n".to_vec()),
            ..ImageMetadata::default()
        };
        let layout = Layout::for_build(&meta).unwrap();
        let paths: Vec<&str> = layout.files.iter().map(|f| f.0).collect();
        assert_eq!(
            paths,
            [
                DEF_ENV_SCRIPT,
                RUNSCRIPT,
                HELP,
                BASE_SCRIPT,
                RUNTIME_VARS_SCRIPT
            ]
        );
        assert!(Layout::for_build(&ImageMetadata::default())
            .unwrap()
            .is_empty());
    }
}
