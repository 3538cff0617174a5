//! With `--container-remap-root`, package managers (`apt`, `dnf`, `pip`
//! installing as root) run as "root" in a user namespace that maps only
//! the job user: their `chown` to other owners and their `setuid` to other
//! users fail there, and they give up. As pyxis does, a seccomp filter
//! makes those calls succeed without doing anything: the files keep their
//! owner, the process its IDs. It grants nothing (the calls do less than
//! asked, never more), and `no_new_privs` is already set, which the kernel
//! requires of an unprivileged process installing a filter.
//!
//! Calls made through another ABI than the native one (32-bit x86 on a
//! 64-bit kernel) are not filtered: they behave as usual.

/// The native ABI's `AUDIT_ARCH_*` value (linux/audit.h): the machine
/// (ELF), 64-bit, little-endian.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 62 | 0x8000_0000 | 0x4000_0000;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// Calls that succeed without effect (and, on x86_64, the old `chown`
/// and `lchown`, which aarch64 lacks: [`FAKED_LEGACY`]).
const FAKED: &[libc::c_long] = &[
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
];
#[cfg(target_arch = "x86_64")]
const FAKED_LEGACY: &[libc::c_long] = &[libc::SYS_chown, libc::SYS_lchown];
#[cfg(target_arch = "aarch64")]
const FAKED_LEGACY: &[libc::c_long] = &[];

/// `setfsuid`/`setfsgid` with -1 only ask for the current ID: those run as
/// usual, any other succeeds without effect.
const FAKED_UNLESS_QUERY: &[libc::c_long] = &[libc::SYS_setfsuid, libc::SYS_setfsgid];

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The program. Layout: check the ABI, load the call number, one test per
/// faked call (jumping to "fake"), the two query-aware calls (jumping to
/// the argument test), then "allow", the argument test, "fake".
pub fn program() -> Vec<libc::sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let faked: Vec<libc::c_long> = FAKED.iter().chain(FAKED_LEGACY).copied().collect();
    let n = faked.len();
    let m = FAKED_UNLESS_QUERY.len();
    // Indexes: 0 ld arch, 1 jeq arch, 2 ld nr, 3.. faked tests (n), then
    // m query-aware tests, then allow (a), ld arg0 (a+1), jeq -1 (a+2),
    // allow again (a+3), fake (a+4). Jumps count from the next index.
    let first_test = 3;
    let allow = first_test + n + m;
    let fake = allow + 4;
    let mut p = vec![
        stmt(load, ARCH),
        jeq(AUDIT_ARCH, 0, (allow - 2) as u8),
        stmt(load, NR),
    ];
    for (i, nr) in faked.iter().enumerate() {
        let at = first_test + i;
        p.push(jeq(*nr as u32, (fake - at - 1) as u8, 0));
    }
    for (i, nr) in FAKED_UNLESS_QUERY.iter().enumerate() {
        let at = first_test + n + i;
        p.push(jeq(*nr as u32, (allow + 1 - at - 1) as u8, 0));
    }
    // Not a listed call: fall through to allow.
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(load, ARG0_LOW));
    // -1 is a query: allowed (BPF jumps only forward, so "allow" again).
    p.push(jeq(u32::MAX, 0, 1));
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    // errno 0: the call returns success.
    p.push(stmt(ret, libc::SECCOMP_RET_ERRNO));
    debug_assert_eq!(p.len(), fake + 1);
    p
}

/// Installs the filter on the calling thread (and what it execs).
pub fn install() -> Result<(), String> {
    let filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(format!(
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_owner_changes_succeed_without_effect() {
        if !nix::unistd::getuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        // SAFETY: the test process forks; the child checks and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = (|| {
                    nix::unistd::setresgid(65534.into(), 65534.into(), 65534.into()).ok()?;
                    nix::unistd::setresuid(65534.into(), 65534.into(), 65534.into()).ok()?;
                    nix::sys::prctl::set_no_new_privs().ok()?;
                    install().ok()?;
                    // Both "succeed" and change nothing.
                    nix::unistd::setuid(0.into()).ok()?;
                    let chowned = std::os::unix::fs::chown(&file, Some(65534), None).is_ok();
                    // A query still answers; other calls still work.
                    // SAFETY: setfsuid(-1) only reads.
                    let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) };
                    let still = nix::unistd::getuid().as_raw() == 65534 && fsuid == 65534;
                    // Everything else as usual: root's 0644 file reads.
                    let reads = std::fs::read(&file).is_ok();
                    Some(chowned && still && reads)
                })()
                .unwrap_or(false);
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(i32::from(!ok)) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
        // The owner stayed root's.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&file).unwrap().uid(), 0);
    }
}
