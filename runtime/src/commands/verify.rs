//! `sifrun verify`: check an image's signatures against OpenPGP keyrings
//! and PEM public keys, with one verdict line or a JSON report.

use std::path::PathBuf;

use serde_json::{json, Value};
use sif::integrity::Report;
use sifrun_runtime::image::signatures::{self, Keys};

use sifrun_runtime::error::Result;

/// What `sifrun verify` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct VerifyArgs {
    /// Image to verify.
    pub image: PathBuf,
    /// The keys to verify against.
    pub keys: Keys,
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

/// Loads the keys and verifies.
pub fn run(args: &VerifyArgs, json_out: bool) -> Result<Outcome> {
    let opts = args.keys.load(args.legacy)?;
    let report = signatures::verify(&args.image, &opts)?;
    let verified = report.verdict.is_ok();
    let text = if json_out {
        let mut s =
            serde_json::to_string_pretty(&report_json(&args.image, &report)).unwrap_or_default();
        s.push('\n');
        s
    } else {
        signatures::verdict_line(&args.image, &report)
    };
    Ok(Outcome { verified, text })
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
            "linked": sif::json::LinkView::of(s.target),
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
