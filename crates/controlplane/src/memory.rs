//! Gives the system back the memory glibc's allocator keeps after it has been freed.
//!
//! glibc returns freed memory only from the top of each arena. A proxy's first push at
//! 10 000 services is 14 MB, built and freed while the long-lived configuration is
//! allocated around it, so after a thousand proxies connect the heap is a few hundred
//! megabytes of live data spread over gigabytes of resident pages, and stays so.
//! `malloc_trim(0)` hands the free pages of every arena back (`madvise`), which brings the
//! resident size down to what is in use. It is called after bursts, never per request.
//!
//! This is the crate's one use of `unsafe`: a call into the C library with no pointer and
//! no precondition.

/// Returns the allocator's free pages to the system; whether any were returned. Off
/// glibc (musl, other systems) there is no such call, and nothing to do.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc locks each
    // arena while it walks it, as it does for any allocation, so it is safe to call from
    // any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the allocator's free pages to the system; there is no such call here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}
