//! Who the container command runs as: looking up the identity on the host,
//! rendering its `/etc/passwd` and `/etc/group` entries for the container,
//! and dropping privileges to it.

use std::ffi::CString;
use std::path::PathBuf;

use caps::CapSet;
use nix::unistd::{getgrouplist, setgid, setgroups, setuid, Gid, Group, Uid, User};

use crate::error::{Context, Error, Result};

/// A group the target user belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name on the host (may be a number when the group has no name).
    pub name: String,
    /// Numeric group ID.
    pub gid: u32,
}

/// The user the container command runs as, resolved on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Login name.
    pub name: String,
    /// Numeric user ID.
    pub uid: u32,
    /// Primary group ID.
    pub gid: u32,
    /// GECOS field, copied into the container's passwd entry.
    pub gecos: String,
    /// Home directory (host path, bound at the same path in the container).
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
    /// Primary and supplementary groups (primary first).
    pub groups: Vec<GroupEntry>,
}

impl Identity {
    /// Looks up `spec`, a user name or a numeric UID, in the host user database.
    pub fn lookup(spec: &str) -> Result<Self> {
        let user = if let Ok(uid) = spec.parse::<u32>() {
            User::from_uid(Uid::from_raw(uid))
        } else {
            User::from_name(spec)
        }
        .with_context(|| format!("looking up user {spec}"))?
        .ok_or_else(|| Error::usage(format!("unknown user: {spec}")))?;
        Self::from_user(user)
    }

    /// The identity of the real UID of this process (the invoking user).
    pub fn current() -> Result<Self> {
        let uid = nix::unistd::getuid();
        let user = User::from_uid(uid)
            .context("looking up the invoking user")?
            .ok_or_else(|| Error::system(format!("UID {uid} has no passwd entry")))?;
        Self::from_user(user)
    }

    fn from_user(user: User) -> Result<Self> {
        let cname = CString::new(user.name.clone())
            .map_err(|_| Error::usage("user name contains a NUL byte"))?;
        let gids = getgrouplist(&cname, user.gid)
            .with_context(|| format!("listing groups of {}", user.name))?;
        let mut groups = vec![group_entry(user.gid)];
        for gid in gids {
            if !groups.iter().any(|g| g.gid == gid.as_raw()) {
                groups.push(group_entry(gid));
            }
        }
        Ok(Identity {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            gecos: user.gecos.to_string_lossy().into_owned(),
            home: user.dir,
            shell: user.shell,
            groups,
        })
    }

    /// True for UID 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The `/etc/passwd` line for this user.
    pub fn passwd_line(&self) -> String {
        format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.name,
            self.uid,
            self.gid,
            self.gecos.replace([':', '\n'], " "),
            self.home.display(),
            self.shell.display()
        )
    }

    /// Switches the calling process to this identity: supplementary groups,
    /// GID, then UID (in that order: after setuid we could no longer change
    /// groups). Then sets `no_new_privs` so setuid binaries or file
    /// capabilities in the image cannot raise privileges again, and checks
    /// that a non-root target really holds no capabilities. A parent-death
    /// signal set by the caller is preserved.
    pub fn drop_privileges(&self) -> Result<()> {
        // The kernel clears the parent-death signal on credential changes;
        // callers that asked for one (sifrun exec) still want it afterwards.
        let pdeathsig = nix::sys::prctl::get_pdeathsig().unwrap_or(None);
        let gids: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(g.gid)).collect();
        setgroups(&gids).context("setting supplementary groups")?;
        setgid(Gid::from_raw(self.gid)).context("setting the group ID")?;
        setuid(Uid::from_raw(self.uid)).context("setting the user ID")?;
        if pdeathsig.is_some() {
            nix::sys::prctl::set_pdeathsig(pdeathsig).context("restoring parent-death signal")?;
        }
        // Root stays UID 0 (files it owns, an admin inspecting an image),
        // but never with root's powers: a hostile image must not reach the
        // host (`nsenter`, `mknod`, reading /etc/shadow) because root ran it.
        drop_all_capabilities()?;
        nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
        let (permitted, effective) = capabilities()?;
        if permitted != 0 || effective != 0 {
            return Err(Error::system(format!(
                "capabilities still present after switching to {} (permitted {permitted:#x}, effective {effective:#x})",
                self.name
            )));
        }
        Ok(())
    }
}

/// UID and GID of `nobody`, the identity of helper processes that need no
/// privilege at all.
pub const NOBODY: u32 = 65534;

/// Becomes `nobody`: no supplementary groups, no capabilities (checked),
/// `no_new_privs`, through the same privilege drop as every container
/// process; and not dumpable, so that no other process running as
/// `nobody` can read this one's memory (it holds keys). Needs root.
pub fn drop_to_nobody() -> Result<()> {
    let nobody = Identity {
        name: "nobody".into(),
        uid: NOBODY,
        gid: NOBODY,
        gecos: String::new(),
        home: "/".into(),
        shell: "/".into(),
        groups: Vec::new(),
    };
    nobody.drop_privileges()?;
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| Error::system(format!("making the process not dumpable: {e}")))
}

/// Gives up every capability for good, also as UID 0: the bounding and
/// ambient sets are emptied (no `execve` can bring one back) and the
/// securebits lock out root's special treatment (`SECBIT_NOROOT`: a UID 0
/// `execve` gets no capabilities; `SECBIT_NO_SETUID_FIXUP`), then the
/// process's own sets are cleared. Needs `CAP_SETPCAP` for the first
/// steps, which a non-root target lost with `setuid`: then its sets are
/// already empty and only the clearing runs.
fn drop_all_capabilities() -> Result<()> {
    if capabilities()?.0 != 0 {
        caps::clear(None, CapSet::Bounding).map_err(cap_error("emptying the bounding set"))?;
        caps::clear(None, CapSet::Ambient).map_err(cap_error("emptying the ambient set"))?;
        // NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, NO_CAP_AMBIENT_RAISE,
        // each with its lock bit (the caps crate covers keepcaps only).
        const SECUREBITS: libc::c_ulong = 0b1110_1111;
        // SAFETY: plain prctl with constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking out root's capabilities");
        }
    }
    clear_capabilities()
}

/// Gives up what an unprivileged container process still holds before it
/// runs the command: the capabilities it has over its own user namespace
/// (cleared explicitly rather than left to `execve`, so the check below
/// sees the final state) and, with `no_new_privs`, any way to gain new
/// ones. The process already runs as the invoking user; there is no
/// identity to switch to. A parent-death signal survives.
pub fn drop_user_namespace_capabilities() -> Result<()> {
    clear_capabilities()?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    let (permitted, effective) = capabilities()?;
    if permitted != 0 || effective != 0 {
        return Err(Error::system(format!(
            "capabilities still present in the user namespace (permitted {permitted:#x}, effective {effective:#x})"
        )));
    }
    Ok(())
}

/// The group entry for `gid`, named from the host's group database (the
/// number itself when the group has no name).
pub fn group_entry(gid: Gid) -> GroupEntry {
    let name = Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    GroupEntry {
        name,
        gid: gid.as_raw(),
    }
}

/// Empties the permitted, effective and inheritable capability sets of the
/// calling thread (dropping capabilities never needs a privilege). Each
/// set is written whole, so capabilities newer than the `caps` crate go
/// too.
fn clear_capabilities() -> Result<()> {
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(cap_error("dropping capabilities"))?;
    }
    Ok(())
}

/// Returns the (permitted, effective) capability sets of the calling
/// thread as bit masks.
fn capabilities() -> Result<(u64, u64)> {
    let mask = |set: CapSet| -> Result<u64> {
        let held = caps::read(None, set).map_err(cap_error("reading capabilities"))?;
        Ok(held.iter().fold(0, |m, cap| m | cap.bitmask()))
    };
    Ok((mask(CapSet::Permitted)?, mask(CapSet::Effective)?))
}

/// Maps a `caps` error to ours, with what was being done.
fn cap_error(what: &'static str) -> impl Fn(caps::errors::CapsError) -> Error {
    move |e| Error::system(format!("{what}: {e}"))
}

/// Returns the image's `/etc/passwd` with the user's entry added (replacing
/// any image entry with the same name or UID), so `id`, `whoami` and `~`
/// work inside the container.
pub fn merge_passwd(image_passwd: &str, id: &Identity) -> String {
    let mut out = String::new();
    for line in image_passwd.lines() {
        let mut fields = line.split(':');
        let name = fields.next().unwrap_or("");
        let uid = fields.nth(1).and_then(|u| u.parse::<u32>().ok());
        if name == id.name || uid == Some(id.uid) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&id.passwd_line());
    out.push('\n');
    out
}

/// Returns the image's `/etc/group` with the user's groups added: an image
/// group with the same GID gets the user appended to its member list, a GID
/// unknown to the image gets the host's group name.
pub fn merge_group(image_group: &str, id: &Identity) -> String {
    let mut out = String::new();
    let mut seen: Vec<u32> = Vec::new();
    for line in image_group.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let gid = fields.get(2).and_then(|g| g.parse::<u32>().ok());
        match gid {
            Some(gid) if fields.len() == 4 && id.groups.iter().any(|g| g.gid == gid) => {
                seen.push(gid);
                let mut members: Vec<&str> =
                    fields[3].split(',').filter(|m| !m.is_empty()).collect();
                // Primary group membership is implied by passwd; listing it is harmless.
                if !members.contains(&id.name.as_str()) {
                    members.push(&id.name);
                }
                out.push_str(&format!(
                    "{}:{}:{}:{}\n",
                    fields[0],
                    fields[1],
                    gid,
                    members.join(",")
                ));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for g in &id.groups {
        if !seen.contains(&g.gid) {
            out.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, id.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            gecos: "Alice".into(),
            home: "/home/alice".into(),
            shell: "/bin/sh".into(),
            groups: vec![
                GroupEntry {
                    name: "alice".into(),
                    gid: 1000,
                },
                GroupEntry {
                    name: "wheel".into(),
                    gid: 10,
                },
            ],
        }
    }

    #[test]
    fn passwd_replaces_same_uid() {
        let merged = merge_passwd(
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/h:/bin/sh\n",
            &alice(),
        );
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        );
    }

    #[test]
    fn group_adds_member_and_missing_groups() {
        let merged = merge_group("root:x:0:\nwheel:x:10:root\n", &alice());
        assert_eq!(
            merged,
            "root:x:0:\nwheel:x:10:root,alice\nalice:x:1000:alice\n"
        );
    }

    #[test]
    fn lookup_root_and_unknown() {
        let root = Identity::lookup("0").unwrap();
        assert_eq!(root.name, "root");
        assert!(root.is_root());
        let err = Identity::lookup("no-such-user-sifrun").unwrap_err();
        assert_eq!(err.message(), "unknown user: no-such-user-sifrun");
    }
}
