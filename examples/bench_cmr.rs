//! Timing of the CMR lag-CRP table simulation (the first-run cost of `engram heads`): the full
//! 4620-point paper table, or every `STRIDE`-th grid point extrapolated to the full table, on
//! the rayon pool (`RAYON_NUM_THREADS` sets its size). Prints the host's CPU, SIMD flags, load
//! average and one JSON line. Not a test: nothing is asserted.
//!
//!     cargo run --release --example bench_cmr              # full table (~1 min on 2 cores)
//!     cargo run --release --example bench_cmr -- 20        # every 20th grid point
//!     cargo run --release --example bench_cmr -- 1 OUT.npy # full table, saved (as shipped
//!                                                          # in assets/cmr/)

use std::time::Instant;

use engram::probes::cmr::{simulate_point, CmrGrid, CrpTable, SimConfig, DEFAULT_SEED};
use rayon::prelude::*;

fn first_line(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let stride: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let flags = first_line("/proc/cpuinfo", "flags");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| f.starts_with("avx") || *f == "fma" || f.starts_with("sse4"))
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "{}; {} threads; SIMD flags: {}; load average before: {}",
        first_line("/proc/cpuinfo", "model name"),
        rayon::current_num_threads(),
        simd.join(" "),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let grid = CmrGrid::paper();
    let cfg = SimConfig::paper();
    let t = Instant::now();
    let points = if stride <= 1 {
        let table = CrpTable::simulate_with(&grid, &cfg, DEFAULT_SEED, |_, _| {}).unwrap();
        assert!(table.data.iter().all(|x| x.is_finite()));
        if let Some(out) = std::env::args().nth(2) {
            table.save_npy(&out).unwrap();
            eprintln!("saved {out}");
        }
        grid.len()
    } else {
        let idx: Vec<usize> = (0..grid.len()).step_by(stride).collect();
        idx.par_iter().for_each(|&i| {
            let (be, br, g) = grid.params(i);
            simulate_point(be, br, g, &cfg, DEFAULT_SEED ^ i as u64).unwrap();
        });
        idx.len()
    };
    let s = t.elapsed().as_secs_f64();
    println!(
        "{{\"points\": {points}, \"seconds\": {s:.2}, \"full_table_seconds\": {:.1}, \"threads\": {}}}",
        s * grid.len() as f64 / points as f64,
        rayon::current_num_threads()
    );
}
