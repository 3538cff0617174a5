//! Unprivileged user namespaces: how `sifrun exec` gets the right to mount
//! without being root.
//!
//! The calling process moves into a new user namespace in which it maps only
//! its own UID and GID onto themselves. No subordinate ID ranges (and so no
//! setuid `newuidmap`) are needed, and `setgroups` is denied, which the
//! kernel requires before an unprivileged process may write its own
//! `gid_map`. Inside, the process holds every capability *over namespaces
//! owned by this user namespace* (its new mount namespace, in particular),
//! and none over the host.

use std::fs;

use nix::errno::Errno;
use nix::sched::{unshare, CloneFlags};

use crate::error::{Context, Error, Result};

/// sysctl files that can switch unprivileged user namespaces off, with the
/// value that allows them and a human description.
const USERNS_SYSCTLS: &[Sysctl] = &[
    Sysctl {
        name: "kernel.unprivileged_userns_clone",
        path: "/proc/sys/kernel/unprivileged_userns_clone",
        blocks: |v| v == 0,
        wanted: "1",
    },
    Sysctl {
        name: "user.max_user_namespaces",
        path: "/proc/sys/user/max_user_namespaces",
        blocks: |v| v == 0,
        wanted: "a positive number",
    },
    Sysctl {
        name: "kernel.apparmor_restrict_unprivileged_userns",
        path: "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        blocks: |v| v != 0,
        wanted: "0",
    },
];

/// One sysctl that can forbid unprivileged user namespaces.
struct Sysctl {
    name: &'static str,
    path: &'static str,
    blocks: fn(u64) -> bool,
    wanted: &'static str,
}

/// Moves the calling (single-threaded) process into a new user namespace
/// where its own UID and GID map to themselves, then into a new mount
/// namespace owned by it. A parent-death signal set by the caller survives.
pub fn enter(uid: u32, gid: u32) -> Result<()> {
    // Changing the user namespace resets the parent-death signal.
    let pdeathsig = nix::sys::prctl::get_pdeathsig().unwrap_or(None);
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| disabled_error(e, &read_sysctls()))?;
    if pdeathsig.is_some() {
        nix::sys::prctl::set_pdeathsig(pdeathsig).context("restoring parent-death signal")?;
    }
    write_id_maps(uid, gid)?;
    crate::container::namespaces::unshare_mount_namespace().map_err(|e| {
        // On Ubuntu the AppArmor restriction lets unshare(2) succeed but
        // leaves the namespace without capabilities: this is where it shows.
        let values = read_sysctls();
        if blocking(&values).is_empty() {
            e
        } else {
            disabled_error(Errno::EPERM, &values)
        }
    })
}

/// Writes the one-line UID and GID maps (`setgroups` denied first, as the
/// kernel demands of an unprivileged writer).
fn write_id_maps(uid: u32, gid: u32) -> Result<()> {
    let write = |file: &str, text: String| {
        fs::write(format!("/proc/self/{file}"), text).map_err(|e| {
            let values = read_sysctls();
            if blocking(&values).is_empty() {
                Error::system(format!(
                    "writing /proc/self/{file} in the new user namespace: {e}"
                ))
            } else {
                disabled_error(Errno::EPERM, &values)
            }
        })
    };
    write("setgroups", "deny".to_string())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))
}

/// Reads the sysctls that exist on this host (missing ones are skipped:
/// `unprivileged_userns_clone` is a Debian patch, the AppArmor one Ubuntu's).
fn read_sysctls() -> Vec<(&'static Sysctl, u64)> {
    USERNS_SYSCTLS
        .iter()
        .filter_map(|s| {
            let text = fs::read_to_string(s.path).ok()?;
            Some((s, text.trim().parse::<u64>().ok()?))
        })
        .collect()
}

/// The sysctls among `values` whose setting forbids user namespaces.
fn blocking<'a>(values: &'a [(&'static Sysctl, u64)]) -> Vec<&'a (&'static Sysctl, u64)> {
    values.iter().filter(|(s, v)| (s.blocks)(*v)).collect()
}

/// The one-line error for a host that refuses unprivileged user namespaces,
/// naming the sysctl that is set against them when one is, and otherwise
/// all of them.
fn disabled_error(errno: Errno, values: &[(&'static Sysctl, u64)]) -> Error {
    let culprits = blocking(values);
    let detail = if culprits.is_empty() {
        let names: Vec<String> = USERNS_SYSCTLS
            .iter()
            .map(|s| format!("{} (must be {})", s.name, s.wanted))
            .collect();
        format!(
            "check the sysctls {}; a container or seccomp policy may also forbid unshare(CLONE_NEWUSER)",
            names.join(", ")
        )
    } else {
        let names: Vec<String> = culprits
            .iter()
            .map(|(s, v)| format!("{} = {v} (must be {})", s.name, s.wanted))
            .collect();
        format!("sysctl {}", names.join(", "))
    };
    Error::system(format!(
        "unprivileged user namespaces are disabled on this host ({}): {detail}; run sifrun as root or ask the administrator",
        errno.desc()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_blocking_sysctl() {
        let values = vec![(&USERNS_SYSCTLS[0], 0), (&USERNS_SYSCTLS[1], 100)];
        let e = disabled_error(Errno::EPERM, &values);
        assert!(e
            .message()
            .contains("kernel.unprivileged_userns_clone = 0 (must be 1)"));
        assert!(!e.message().contains("max_user_namespaces"));
        assert!(!e.message().contains('\n'));
    }

    #[test]
    fn names_all_sysctls_when_none_is_set_against() {
        let values = vec![(&USERNS_SYSCTLS[1], 100)];
        let e = disabled_error(Errno::ENOSPC, &values);
        for s in USERNS_SYSCTLS {
            assert!(e.message().contains(s.name), "{}", e.message());
        }
    }

    #[test]
    fn apparmor_restriction_blocks_when_nonzero() {
        let values = vec![(&USERNS_SYSCTLS[2], 1)];
        assert_eq!(blocking(&values).len(), 1);
        let values = vec![(&USERNS_SYSCTLS[1], 0)];
        assert_eq!(blocking(&values).len(), 1);
    }
}
