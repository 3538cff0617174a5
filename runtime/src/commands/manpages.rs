//! `sifrun manpages DIR` (hidden; used by ci/package): the man pages,
//! generated from the same clap definition that parses the command line,
//! so `man sifrun-exec` and `sifrun exec --help` never disagree.

use std::path::Path;

use clap::CommandFactory;
use sifrun_runtime::error::{Context, Result};

use crate::cli::Cli;

/// Writes `sifrun.1` and one `sifrun-SUBCOMMAND.1` per visible subcommand
/// (nested ones as `sifrun-ecl-check.1`) into `dir`; returns the files.
pub fn write(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let top = Cli::command();
    render(&top, "sifrun", dir, &mut written)?;
    Ok(written)
}

fn render(cmd: &clap::Command, name: &str, dir: &Path, written: &mut Vec<String>) -> Result<()> {
    let cmd = cmd.clone().name(name.to_string());
    let file = format!("{name}.1");
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .context("rendering a man page")?;
    std::fs::write(dir.join(&file), page).with_context(|| format!("writing {file}"))?;
    written.push(file);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        render(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
