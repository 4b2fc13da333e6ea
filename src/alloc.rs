//! Allocator policy, and the machine's memory ([`physical_memory_bytes`], for size guards). The engram binary (and the benchmarks) run on mimalloc with page purging
//! off: the forward pass frees and re-allocates the same large temporaries every layer, and
//! handing their pages back to the OS costs a page fault per 4 KiB on the next use (the forward
//! pass ran 1.8× slower with `MIMALLOC_PURGE_DELAY=0`). Memory that will not be reused — the
//! temporaries of a model load — is returned explicitly ([`purging`]).
//!
//! Both functions are harmless when mimalloc is not the global allocator (they only touch
//! mimalloc's own heaps).

const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed pages mapped (unless `MIMALLOC_PURGE_DELAY` is set). Call before any thread
/// starts.
pub fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a global allocator option; called before other threads exist.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Run `f` with freed pages returned to the OS at once (a model load: its temporaries — the
/// dequantized tensors that get fused into bigger ones, file buffers — are not reused), then
/// hand back what is still cached.
pub fn purging<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain calls into mimalloc's option and collection API.
    let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    // SAFETY: as above (mimalloc's options are atomics).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let r = f();
    // SAFETY: as above.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
    }
    r
}

/// Physical memory in bytes (`MemTotal` of /proc/meminfo), or 8 GB where that cannot be read.
pub fn physical_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(8 << 30)
}

/// This process's peak resident set size in bytes so far (`VmHWM` of /proc/self/status), where
/// the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory available to a new allocation now (`MemAvailable` of /proc/meminfo), or the physical
/// memory where that cannot be read.
pub fn available_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or_else(physical_memory_bytes)
}
