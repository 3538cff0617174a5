//! The ECL decision for one image, from what signature verification found.
//!
//! Semantics follow Apptainer's ECL for the same file, with one deliberate
//! difference (see docs/signing.md): in every mode, including blacklist,
//! each object group needs at least one signature that verifies against
//! the partition's keyring. Apptainer lets an image signed only by unknown
//! keys through a blacklist; anyone can make such a signature with a fresh
//! key, so it proves nothing about the bytes.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::{Ecl, ExecGroup, Mode};

/// How one signature object fared against the partition's keyring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum SigStatus {
    /// Checked: made by `signer`, and the digests it covers match.
    Verified { signer: String },
    /// Made by a key that is not in the keyring: proves nothing.
    UnknownKey,
    /// Tampered, malformed or made by an unusable key: the image is refused.
    Invalid { reason: String },
}

/// One signature object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureFact {
    /// The object group it covers (`None`: it covers a single object).
    pub group: Option<u32>,
    /// Fingerprint recorded in its descriptor (not proof of anything).
    pub fingerprint: Option<String>,
    #[serde(flatten)]
    pub status: SigStatus,
}

/// What verification established about an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerFacts {
    /// The image's object groups.
    pub groups: Vec<u32>,
    pub signatures: Vec<SignatureFact>,
}

/// The outcome, with the rule that made it (for the user's one line and
/// the slurmd log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// `execgroup "tag" (mode)`, or why no group applied.
    pub rule: String,
    pub reason: String,
}

impl Decision {
    fn allow(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision {
            allowed: true,
            rule: rule.into(),
            reason: reason.into(),
        }
    }

    fn refuse(rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

/// Picks the execution group for an image in directory `image_dir` (the
/// real directory of the opened file): the group whose dirpath is exactly
/// that directory, else the first group with an empty dirpath.
pub fn exec_group<'a>(ecl: &'a Ecl, image_dir: &Path) -> Option<&'a ExecGroup> {
    ecl.execgroup
        .iter()
        .find(|g| !g.dirpath.is_empty() && Path::new(&g.dirpath) == image_dir)
        .or_else(|| ecl.execgroup.iter().find(|g| g.dirpath.is_empty()))
}

/// Decides whether the image may run under `ecl`.
pub fn decide(ecl: &Ecl, image_dir: &Path, facts: &SignerFacts) -> Decision {
    if !ecl.activated {
        return Decision::allow("ECL not activated", "every readable image may run");
    }
    let Some(group) = exec_group(ecl, image_dir) else {
        return Decision::refuse(
            "no execgroup",
            format!("{} is not part of any execgroup", image_dir.display()),
        );
    };
    let rule = format!("execgroup {:?} ({})", group.tagname, group.mode.name());

    if facts.groups.is_empty() {
        return Decision::refuse(rule, "unsigned: the image has no object groups");
    }
    if let Some(bad) = facts.signatures.iter().find_map(|s| match &s.status {
        SigStatus::Invalid { reason } => Some(reason.clone()),
        _ => None,
    }) {
        return Decision::refuse(rule, bad);
    }
    let on_group = |g: u32| facts.signatures.iter().filter(move |s| s.group == Some(g));
    for &g in &facts.groups {
        if on_group(g).next().is_none() {
            return Decision::refuse(rule, format!("unsigned: object group {g} has no signature"));
        }
        if !on_group(g).any(|s| matches!(s.status, SigStatus::Verified { .. })) {
            let claimed: Vec<String> = on_group(g).filter_map(|s| s.fingerprint.clone()).collect();
            return Decision::refuse(
                rule,
                format!(
                    "object group {g} is signed only by keys not in the partition keyring ({})",
                    if claimed.is_empty() {
                        "no fingerprint".to_string()
                    } else {
                        claimed.join(", ")
                    }
                ),
            );
        }
    }

    // Fingerprints whose verified signature covers every group.
    let verified_on = |g: u32| -> BTreeSet<String> {
        on_group(g)
            .filter_map(|s| match &s.status {
                SigStatus::Verified { signer } => Some(signer.to_ascii_uppercase()),
                _ => None,
            })
            .collect()
    };
    let mut all_signed_by = verified_on(facts.groups[0]);
    for &g in &facts.groups[1..] {
        let here = verified_on(g);
        all_signed_by.retain(|fp| here.contains(fp));
    }
    // Anyone who claims to have signed anything (blacklist matches these too).
    let any_signed_by: BTreeSet<String> = facts
        .signatures
        .iter()
        .flat_map(|s| {
            let verified = match &s.status {
                SigStatus::Verified { signer } => Some(signer.clone()),
                _ => None,
            };
            s.fingerprint.clone().into_iter().chain(verified)
        })
        .map(|fp| fp.to_ascii_uppercase())
        .collect();
    let listed: Vec<String> = group.keyfp.iter().map(|f| f.to_ascii_uppercase()).collect();
    let signers = || all_signed_by.iter().cloned().collect::<Vec<_>>().join(", ");

    match group.mode {
        Mode::Whitelist => match listed.iter().find(|fp| all_signed_by.contains(*fp)) {
            Some(fp) => Decision::allow(rule, format!("signed by {fp}, which the list allows")),
            None => Decision::refuse(
                rule,
                format!("signed by {} but by no key the list allows", signers()),
            ),
        },
        Mode::Whitestrict => {
            let missing: Vec<&String> = listed
                .iter()
                .filter(|fp| !all_signed_by.contains(*fp))
                .collect();
            if missing.is_empty() {
                Decision::allow(rule, format!("signed by every listed key ({})", signers()))
            } else {
                Decision::refuse(
                    rule,
                    format!(
                        "not signed by every listed key: missing {}",
                        missing
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }
        }
        Mode::Blacklist => match listed.iter().find(|fp| any_signed_by.contains(*fp)) {
            Some(fp) => Decision::refuse(rule, format!("signed by {fp}, which the list forbids")),
            None => Decision::allow(
                rule,
                format!("signed by {}, none of them listed", signers()),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "7064B1D6EFF01B1262FED3F03581D99FE87EAFD1";
    const B: &str = "1111111111111111111111111111111111111111";
    const C: &str = "2222222222222222222222222222222222222222";

    fn ecl(mode: Mode, keyfp: &[&str]) -> Ecl {
        Ecl {
            activated: true,
            legacyinsecure: false,
            execgroup: vec![ExecGroup {
                tagname: "site".into(),
                mode,
                dirpath: String::new(),
                keyfp: keyfp.iter().map(|s| s.to_lowercase()).collect(),
            }],
        }
    }

    fn verified(group: u32, fp: &str) -> SignatureFact {
        SignatureFact {
            group: Some(group),
            fingerprint: Some(fp.into()),
            status: SigStatus::Verified { signer: fp.into() },
        }
    }

    fn unknown(group: u32, fp: &str) -> SignatureFact {
        SignatureFact {
            group: Some(group),
            fingerprint: Some(fp.into()),
            status: SigStatus::UnknownKey,
        }
    }

    fn facts(groups: &[u32], signatures: Vec<SignatureFact>) -> SignerFacts {
        SignerFacts {
            groups: groups.to_vec(),
            signatures,
        }
    }

    fn dir() -> &'static Path {
        Path::new("/images")
    }

    #[test]
    fn unsigned_is_refused_in_every_mode() {
        for mode in [Mode::Whitelist, Mode::Whitestrict, Mode::Blacklist] {
            let d = decide(&ecl(mode, &[A]), dir(), &facts(&[1], vec![]));
            assert!(
                !d.allowed && d.reason.starts_with("unsigned"),
                "{mode:?}: {d:?}"
            );
            let d = decide(
                &ecl(mode, &[A]),
                dir(),
                &facts(&[1, 2], vec![verified(1, A)]),
            );
            assert!(
                !d.allowed && d.reason.contains("group 2"),
                "{mode:?}: {d:?}"
            );
        }
    }

    #[test]
    fn not_activated_allows_anything() {
        let mut e = ecl(Mode::Whitelist, &[A]);
        e.activated = false;
        assert!(decide(&e, dir(), &facts(&[1], vec![])).allowed);
    }

    #[test]
    fn whitelist_needs_one_listed_key_verified_on_every_group() {
        let e = ecl(Mode::Whitelist, &[A, C]);
        assert!(
            decide(
                &e,
                dir(),
                &facts(&[1, 2], vec![verified(1, A), verified(2, A)])
            )
            .allowed
        );
        let d = decide(
            &e,
            dir(),
            &facts(&[1, 2], vec![verified(1, A), verified(2, B)]),
        );
        assert!(
            !d.allowed && d.rule == "execgroup \"site\" (whitelist)",
            "{d:?}"
        );
        // A listed key that only claims (unknown to the keyring) does not count.
        let d = decide(&e, dir(), &facts(&[1], vec![verified(1, B), unknown(1, A)]));
        assert!(!d.allowed, "{d:?}");
    }

    #[test]
    fn whitestrict_needs_every_listed_key() {
        let e = ecl(Mode::Whitestrict, &[A, B]);
        assert!(
            decide(
                &e,
                dir(),
                &facts(&[1], vec![verified(1, A), verified(1, B)])
            )
            .allowed
        );
        let d = decide(&e, dir(), &facts(&[1], vec![verified(1, A)]));
        assert!(!d.allowed && d.reason.contains(B), "{d:?}");
    }

    #[test]
    fn blacklist_refuses_any_listed_signer_even_unverified() {
        let e = ecl(Mode::Blacklist, &[B]);
        assert!(decide(&e, dir(), &facts(&[1], vec![verified(1, A)])).allowed);
        assert!(!decide(&e, dir(), &facts(&[1], vec![verified(1, A), unknown(1, B)])).allowed);
        // Only unknown keys: refused (differs from Apptainer, see module docs).
        let d = decide(&e, dir(), &facts(&[1], vec![unknown(1, C)]));
        assert!(
            !d.allowed && d.reason.contains("not in the partition keyring"),
            "{d:?}"
        );
    }

    #[test]
    fn any_invalid_signature_refuses() {
        let bad = SignatureFact {
            group: Some(1),
            fingerprint: Some(A.into()),
            status: SigStatus::Invalid {
                reason: "tampered object 3".into(),
            },
        };
        for mode in [Mode::Whitelist, Mode::Whitestrict, Mode::Blacklist] {
            let d = decide(
                &ecl(mode, &[A]),
                dir(),
                &facts(&[1], vec![verified(1, A), bad.clone()]),
            );
            assert!(
                !d.allowed && d.reason == "tampered object 3",
                "{mode:?}: {d:?}"
            );
        }
    }

    #[test]
    fn exec_group_by_exact_directory_then_fallback() {
        let mut e = ecl(Mode::Whitelist, &[A]);
        e.execgroup.push(ExecGroup {
            tagname: "proj".into(),
            mode: Mode::Whitelist,
            dirpath: "/proj/images".into(),
            keyfp: vec![B.into()],
        });
        assert_eq!(
            exec_group(&e, Path::new("/proj/images")).unwrap().tagname,
            "proj"
        );
        assert_eq!(
            exec_group(&e, Path::new("/proj/images/sub"))
                .unwrap()
                .tagname,
            "site"
        );
        e.execgroup.remove(0);
        assert!(exec_group(&e, Path::new("/elsewhere")).is_none());
        let d = decide(
            &e,
            Path::new("/elsewhere"),
            &facts(&[1], vec![verified(1, B)]),
        );
        assert!(!d.allowed && d.reason.contains("not part of any execgroup"));
    }
}
