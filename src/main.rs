//! The `engram` binary: parse the command line, call the library, print errors as one line.

use mimalloc::MiMalloc;

// Large temporaries are otherwise mmapped and page-faulted on every op with glibc's malloc.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Keep freed memory mapped: the forward pass allocates and frees the same large activation
/// buffers every layer, and returning them to the OS costs a page fault per 4 KiB on each reuse
/// (measured: 75k page faults → 1.1k per 8×128 SmolLM2 forward). Same as MIMALLOC_PURGE_DELAY=-1.
pub fn tune_allocator() {
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a global allocator option before any worker thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    tune_allocator();
    if let Err(e) = engram::cli::run(std::env::args_os()) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
