//! `sifrun verify`: check an image's signatures against OpenPGP keyrings
//! and PEM public keys, with one verdict line or a JSON report.

use std::path::PathBuf;

use serde_json::{json, Value};
use sif::integrity::{self, Keyring, PemPublicKey, Report, VerifyOptions};
use sif::Link;

use crate::error::{Error, Result};

/// What `sifrun verify` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// Image to verify.
    pub image: PathBuf,
    /// OpenPGP public keyrings (armored or binary).
    pub keyrings: Vec<PathBuf>,
    /// PEM public keys for DSSE signatures.
    pub pem_keys: Vec<PathBuf>,
    /// Check legacy (pre-3.6) signatures instead of current ones.
    pub legacy: bool,
}

/// The outcome: exit status 0 only when fully verified, and the text for
/// stdout (JSON report or the verdict line).
#[derive(Debug)]
pub struct Outcome {
    /// True when every group is signed and every signature checks out.
    pub verified: bool,
    /// One line (or the JSON document).
    pub text: String,
}

/// Loads the keys (a key that fails to load is a usage error: verifying
/// without it could give a misleading verdict) and verifies.
pub fn run(args: &VerifyArgs, json_out: bool) -> Result<Outcome> {
    let mut opts = VerifyOptions {
        legacy: args.legacy,
        ..VerifyOptions::default()
    };
    for p in &args.keyrings {
        let bytes = std::fs::read(p)
            .map_err(|e| Error::usage(format!("cannot read keyring {}: {e}", p.display())))?;
        let kr = Keyring::from_bytes(&bytes)
            .map_err(|e| Error::usage(format!("keyring {}: {e}", p.display())))?;
        opts.keyring.extend(kr);
    }
    for p in &args.pem_keys {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::usage(format!("cannot read key {}: {e}", p.display())))?;
        opts.pem_keys.push(
            PemPublicKey::from_pem(&text)
                .map_err(|e| Error::usage(format!("key {}: {e}", p.display())))?,
        );
    }
    let mut img = sif::Image::open(&args.image)
        .map_err(|e| Error::image(format!("{}: {e}", args.image.display())))?;
    let report = integrity::verify(&mut img, &opts);
    let verified = report.verdict.is_ok();
    let text = if json_out {
        let mut s =
            serde_json::to_string_pretty(&report_json(&args.image, &report)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        verdict_line(&args.image, &report)
    };
    Ok(Outcome { verified, text })
}

/// `verified: …` or `not verified: <verdict>` on one line.
pub fn verdict_line(image: &std::path::Path, report: &Report) -> String {
    match &report.verdict {
        Ok(()) => format!(
            "verified: {} (signed by {})\n",
            image.display(),
            report.signers().join(", ")
        ),
        Err(e) => format!("not verified: {}: {e}\n", image.display()),
    }
}

fn link_json(l: Link) -> Value {
    match l {
        Link::None => Value::Null,
        Link::Object(id) => json!({ "object": id }),
        Link::Group(id) => json!({ "group": id }),
    }
}

/// The `--json` document: signers, groups, signatures (with what each
/// covered) and the verdict.
pub fn report_json(image: &std::path::Path, report: &Report) -> Value {
    let verdict = match &report.verdict {
        Ok(()) => json!({ "verified": true, "kind": "verified", "message": "verified" }),
        Err(e) => json!({ "verified": false, "kind": e.kind(), "message": e.to_string() }),
    };
    json!({
        "image": image.display().to_string(),
        "verified": report.verdict.is_ok(),
        "verdict": verdict,
        "signers": report.signers(),
        "groups": report.groups.iter().map(|g| json!({ "id": g.id, "objects": g.objects })).collect::<Vec<_>>(),
        "signatures": report.signatures.iter().map(|s| json!({
            "id": s.id,
            "linked": link_json(s.target),
            "format": s.format.name(),
            "fingerprint": s.fingerprint,
            "signer": s.signer,
            "verified_objects": s.verified_objects,
            "verdict": match &s.result {
                Ok(()) => json!("verified"),
                Err(e) => json!({ "kind": e.kind(), "message": e.to_string() }),
            },
        })).collect::<Vec<_>>(),
    })
}
