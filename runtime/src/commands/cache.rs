//! `sifrun cache`: look after the node's image cache (see
//! [`sifrun_runtime::node::image_cache`]). `list` and `clean` are for admins; `keeper` is
//! started by `sifrun slurm-setup` when it mounts an image.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sifrun_runtime::error::{Context, Error, Result};
use sifrun_runtime::node::image_cache::{keeper_poll_interval, run_keeper, ImageCache};
use sifrun_runtime::node::kept_containers::KeptContainers;

/// `sifrun cache list`: one line per entry, or a JSON array.
pub fn list(state_dir: &Path, json: bool) -> Result<String> {
    let entries = ImageCache::open(state_dir)?.list()?;
    if json {
        let mut text = serde_json::to_string_pretty(&entries)
            .map_err(|e| Error::system(format!("rendering JSON: {e}")))?;
        text.push('\n');
        return Ok(text);
    }
    let mut text = format!(
        "{:<32}  {:<7}  {:<6}  {:>8}  IMAGE\n",
        "KEY", "MOUNTED", "IN USE", "IDLE (s)"
    );
    for e in &entries {
        text.push_str(&format!(
            "{:<32}  {:<7}  {:<6}  {:>8}  {}\n",
            e.key,
            yes_no(e.mounted),
            yes_no(e.in_use),
            e.idle_secs,
            e.image.as_deref().unwrap_or("-")
        ));
    }
    Ok(text)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `sifrun cache clean`: remove every kept container and unmount every
/// entry no step uses, now.
pub fn clean(state_dir: &Path) -> Result<String> {
    let kept = KeptContainers::open(state_dir)?.sweep(Duration::ZERO)?;
    let report = ImageCache::open(state_dir)?.sweep(Duration::ZERO)?;
    Ok(format!(
        "unmounted {} unused image(s); {} still in use; removed {} kept container(s), {} in use\n",
        report.unmounted.len(),
        report.mounted,
        kept.removed.len(),
        kept.kept
    ))
}

/// `sifrun cache keeper`: unmount entries idle for `idle`, until none is
/// mounted. With `detach`, returns at once and keeps going in a new
/// session outside the caller's cgroup, because the caller is a Slurm step
/// whose processes Slurm kills when the step ends.
pub fn keeper(state_dir: &Path, idle: Duration, detach: bool) -> Result<()> {
    let cache = ImageCache::open(state_dir)?;
    if detach {
        // SAFETY: called from the single-threaded CLI before any thread
        // exists; the child only continues with ordinary Rust code.
        match unsafe { nix::unistd::fork() }.context("forking the cache keeper")? {
            nix::unistd::ForkResult::Parent { .. } => return Ok(()),
            nix::unistd::ForkResult::Child => {
                let _ = nix::unistd::setsid();
                sifrun_runtime::process::leave_job_cgroup();
            }
        }
    }
    let log_path = cache.root().join("keeper.log");
    let mut log: Box<dyn Write> = match File::options().create(true).append(true).open(&log_path) {
        Ok(file) => Box::new(file),
        Err(_) => Box::new(std::io::sink()),
    };
    let kept = KeptContainers::open(state_dir)?;
    run_keeper(&cache, &kept, idle, keeper_poll_interval(idle), &mut log);
    Ok(())
}
