//! `sifrun` command line entry point: parse, dispatch, print errors as one line.

mod cli;
mod commands;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;

use cli::{CacheAction, CatalogueAction, Cli, Command, EclAction};
use commands::{build, cache, catalogue, ecl, exec, inspect, manpages, sign, verify};
use sifrun_runtime::node::helper;
use sifrun_runtime::Error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match cli.command {
        Command::Build(args) => finish(
            build::run(&args.into()).map(|summary| {
                eprintln!("{}", summary.line());
                0
            }),
            1,
        ),
        Command::Inspect(args) => finish(
            inspect::run(&args.image, args.json, &args.selection()).map(|text| {
                let mut out = std::io::stdout().lock();
                // A closed pipe (`| head`) is not an error worth reporting.
                let _ = out.write_all(text.as_bytes());
                0
            }),
            1,
        ),
        Command::Sign(args) => finish(
            sign::run(&args.into()).map(|line| {
                eprintln!("{line}");
                0
            }),
            1,
        ),
        Command::Verify(args) => finish(
            verify::run(&(&args).into(), args.json).map(|o| {
                // The verdict line goes to stderr when it is a failure, so
                // scripts can keep stdout for the JSON report.
                if args.json || o.verified {
                    let _ = std::io::stdout().lock().write_all(o.text.as_bytes());
                } else {
                    eprint!("sifrun: {}", o.text);
                }
                i32::from(!o.verified)
            }),
            2,
        ),
        Command::SlurmSetup(args) => exit_code(helper::run(&args)),
        Command::Ecl(args) => match args.action {
            EclAction::Check {
                config,
                partition,
                json,
                record_dir,
                image,
            } => match ecl::check(&config, &partition, &image, json, record_dir.as_deref()) {
                Ok(outcome) => {
                    let _ = std::io::stdout().lock().write_all(outcome.text.as_bytes());
                    if let Some(t) = &outcome.timing {
                        eprintln!("sifrun: ecl check: {}", t.line());
                    }
                    exit_code(if outcome.allowed { 0 } else { 1 })
                }
                Err(e) => {
                    report(&e);
                    ExitCode::from(2)
                }
            },
        },
        Command::Catalogue(args) => match args.action {
            CatalogueAction::Stage {
                config,
                name,
                json,
                image,
                dir,
            } => finish(
                catalogue::stage(&config, &image, &dir, name.as_deref()).map(|staged| {
                    print_staged(&staged, json);
                    0
                }),
                1,
            ),
            CatalogueAction::Check {
                config,
                verify,
                json,
                images,
            } => finish(
                catalogue::check(&config, &images, verify).map(|states| {
                    let mut out = std::io::stdout().lock();
                    if json {
                        let _ = writeln!(
                            out,
                            "{}",
                            serde_json::to_string_pretty(&states).unwrap_or_default()
                        );
                    } else {
                        for state in &states {
                            let _ = writeln!(out, "{}", state.line());
                        }
                    }
                    i32::from(!states.iter().all(catalogue::EntryState::good))
                }),
                2,
            ),
        },
        Command::Cache(args) => finish(
            match args.action {
                CacheAction::List { json } => cache::list(&args.state_dir, json),
                CacheAction::Clean => cache::clean(&args.state_dir),
                CacheAction::Keeper { idle_secs, detach } => {
                    cache::keeper(&args.state_dir, Duration::from_secs(idle_secs), detach)
                        .map(|()| String::new())
                }
            }
            .map(|text| {
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                0
            }),
            1,
        ),
        Command::Manpages { dir } => finish(
            manpages::write(&dir).map(|files| {
                eprintln!("wrote {} man pages into {}", files.len(), dir.display());
                0
            }),
            1,
        ),
        Command::Exec(args) => run_container(args.into()),
        Command::Shell(args) => run_container(args.into()),
        Command::Run(args) => run_container(args.into()),
    }
}

/// `sifrun catalogue stage`'s summary: one line, then one per list.
fn print_staged(staged: &catalogue::Staged, json: bool) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(staged).unwrap_or_default()
        );
        return;
    }
    let _ = writeln!(
        out,
        "staged {} ({} MiB, sha256 {}) in {:.1} s; record {}",
        staged.image.display(),
        staged.bytes.div_ceil(1 << 20),
        staged.sha256,
        staged.seconds,
        staged.record.display()
    );
    for p in &staged.partitions {
        let _ = writeln!(
            out,
            "  partition {}: {} ({}): {}",
            p.partition,
            if p.allowed { "allowed" } else { "refused" },
            p.rule,
            p.reason
        );
    }
}

/// `exec`, `shell`, `run`: the container's exit status, or the error's
/// (255 for sifrun failures, 127/126 for a command not found/not executable).
fn run_container(opts: exec::ExecOptions) -> ExitCode {
    match exec::run(&opts) {
        Ok(status) => exit_code(status),
        Err(e) => {
            let code = e.exit_code();
            report(&e);
            exit_code(code)
        }
    }
}

/// Maps a subcommand result to the exit status; errors use `error_code`.
fn finish(result: Result<i32, Error>, error_code: u8) -> ExitCode {
    match result {
        Ok(code) => exit_code(code),
        Err(e) => {
            report(&e);
            ExitCode::from(error_code)
        }
    }
}

fn report(e: &Error) {
    eprintln!("sifrun: error: {}", e.message());
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// Help and version go out as clap renders them; usage errors are squeezed
/// into the one-line `sifrun: error:` format.
fn clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ClapErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // clap's first paragraph (up to the blank line) is the message;
            // usage and tips follow. Squeeze the paragraph onto one line.
            let rendered = e.render().to_string();
            let first = rendered
                .trim_start()
                .split("\n\n")
                .next()
                .unwrap_or("invalid usage")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            eprintln!("sifrun: error: {first} (see 'sifrun --help')");
            ExitCode::from(2)
        }
    }
}
