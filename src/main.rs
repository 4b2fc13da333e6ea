//! The `engram` binary: parse the command line, call the library, print errors as one line.

use mimalloc::MiMalloc;

// Large temporaries are otherwise mmapped and page-faulted on every op with glibc's malloc.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    // Freed pages stay mapped (see engram::alloc).
    engram::alloc::keep_freed_pages();
    if let Err(e) = engram::cli::run(std::env::args_os()) {
        let msg = engram::error::one_line_message(&e.to_string());
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
