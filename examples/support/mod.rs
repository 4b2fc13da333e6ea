//! What the benchmark examples share (`mod support;` in each): /proc figures and the
//! `DTYPE` / `MATMUL` environment switches. Not an example itself (a folder without main.rs).
#![allow(dead_code)] // each example uses a part

use engram::model::LoadOptions;

/// A memory figure of /proc/self/status (VmHWM: peak RSS, VmRSS: current), in MB.
pub fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) this process has used so far, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit(')').next()?.split_whitespace().collect::<Vec<_>>();
            // Fields after the command: state is index 0, utime 11, stime 12.
            let u: f64 = rest.get(11)?.parse().ok()?;
            let k: f64 = rest.get(12)?.parse().ok()?;
            Some((u + k) / ticks)
        })
        .unwrap_or(f64::NAN)
}

/// Load options from the environment: `DTYPE=f32|bf16|f16` (default f32) and `MATMUL=bf16`
/// (the linear layers' products in bf16: packed, or mapped from a 16-bit checkpoint).
pub fn load_options() -> LoadOptions {
    let dtype = match std::env::var("DTYPE").as_deref() {
        Ok("bf16") => candle_core::DType::BF16,
        Ok("f16") => candle_core::DType::F16,
        _ => candle_core::DType::F32,
    };
    LoadOptions {
        dtype,
        bf16_matmul: std::env::var("MATMUL").as_deref() == Ok("bf16"),
        ..LoadOptions::default()
    }
}
