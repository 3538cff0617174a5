//! Becoming the job user for good in a child forked from slurmstepd.

/// Takes the job user's groups (`groups`), group and user IDs, in that
/// order, with raw system calls: the C library's wrappers would try to
/// change every thread of the multi-threaded process the child was copied
/// from. Only for a freshly forked child. The errno of the call that
/// failed.
pub fn become_user_for_good(uid: u32, gid: u32, groups: &[libc::gid_t]) -> Result<(), i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: a valid pointer and length; changes this process only.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
        return Err(errno());
    }
    // SAFETY: a raw system call on plain values, changing this process only.
    if unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) } != 0 {
        return Err(errno());
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) } != 0 {
        return Err(errno());
    }
    Ok(())
}
