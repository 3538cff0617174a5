//! CLI surface: help texts and one-line usage errors (no root needed).

mod common;

use common::*;

#[test]
fn help_on_every_subcommand() {
    for sub in [
        vec!["--help"],
        vec!["build", "--help"],
        vec!["inspect", "--help"],
        vec!["exec", "--help"],
    ] {
        let out = run_sifrun(&sub);
        assert!(out.status.success(), "{sub:?}");
        let text = stdout(&out);
        assert!(text.contains("Usage:"), "{sub:?}: {text}");
    }
    let exec_help = stdout(&run_sifrun(&["exec", "--help"]));
    for flag in [
        "--user",
        "--bind",
        "--env",
        "--env-file",
        "--cleanenv",
        "--pwd",
        "--workdir",
        "--contain",
        "--containall",
        "--home",
        "--no-home",
        "--nv",
        "--writable-tmpfs",
    ] {
        assert!(exec_help.contains(flag), "{flag} missing from exec help");
    }
    let build_help = stdout(&run_sifrun(&["build", "--help"]));
    for flag in [
        "--output",
        "--force",
        "--compressor",
        "--deterministic",
        "--deffile",
        "--label",
        "--env",
    ] {
        assert!(build_help.contains(flag), "{flag} missing from build help");
    }
}

#[test]
fn usage_errors_are_one_line() {
    let out = run_sifrun(&["exec"]);
    assert_one_line_error(&out, "required");
    assert_eq!(out.status.code(), Some(2));
    let out = run_sifrun(&["frobnicate"]);
    assert_one_line_error(&out, "frobnicate");
    let out = run_sifrun(&["build", "x"]);
    assert_one_line_error(&out, "--output");
}

#[test]
fn command_options_after_image_belong_to_the_command() {
    // Parsing only: `--help` after IMAGE must not trigger sifrun's help.
    let out = run_sifrun(&["exec", "/nonexistent.sif", "ls", "--help"]);
    assert!(!stdout(&out).contains("Usage:"));
}
