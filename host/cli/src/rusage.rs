//! The process's resource usage (`getrusage`), for the run summary and the benchmarks.

/// `getrusage(who)` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`), or `None` if it failed.
pub fn rusage(who: libc::c_int) -> Option<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the struct it is given and reads nothing else.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised, and filled by the call when it succeeded.
    (rc == 0).then(|| unsafe { usage.assume_init() })
}
