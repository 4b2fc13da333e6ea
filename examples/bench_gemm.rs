//! The packed matmuls alone at SmolLM2's block shapes (batch 8 × 128), best of `REPS` (default
//! 30) per shape and format: for A/B comparisons of the kernels on a noisy host, run two builds
//! alternately and compare their minima.
use candle_core::{Device, Tensor};
use engram::model::gemm::{Format, PackedLinear};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> candle_core::Result<()> {
    engram::alloc::keep_freed_pages();
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let formats: Vec<Format> = match std::env::var("FORMAT").as_deref() {
        Ok("f32") => vec![Format::F32],
        Ok("bf16") => vec![Format::Bf16],
        _ => vec![Format::F32, Format::Bf16],
    };
    let dev = Device::Cpu;
    let m = 1024;
    let mut line = Vec::new();
    for (name, n, k) in [
        ("qkv", 960, 576),
        ("o", 576, 576),
        ("gate_up", 3072, 576),
        ("down", 576, 1536),
        ("lm_head", 49152, 576),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        for &fmt in &formats {
            let p = PackedLinear::pack(&w, fmt).unwrap();
            let reps = if name == "lm_head" {
                reps / 6 + 1
            } else {
                reps
            };
            let _ = p.matmul_t(&x).unwrap();
            let mut best = f64::INFINITY;
            for _ in 0..reps {
                let t0 = Instant::now();
                let _ = p.matmul_t(&x).unwrap();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
            line.push(format!("{name} {fmt:?} {gflops:.0}"));
        }
    }
    println!("{}", line.join(", "));
    Ok(())
}
