//! The issue-23 forward benchmark on large checkpoints (scripts/bench/scale.sh pairs it with
//! scripts/bench/scale_reference.py, transformers on the same folder): load time, RSS after the
//! load, one forward of `B × T` random tokens without hooks, one forward of `CB × CT` capturing
//! every layer's `hook_resid_post`, peak RSS; CPU seconds of each. One JSON object. One timed
//! run per measurement (a forward of a 1B model at 8 × 128 takes tens of seconds on 2 cores),
//! after a 1 × 16 warm-up that touches every weight.
//!
//!     DTYPE=f32|bf16 MATMUL=f32|bf16 cargo run --release --example bench_scale -- MODEL [B T CB CT]

mod support;
use support::*;

use std::time::Instant;

use engram::hooks::{HookFilter, Hooks};
use engram::model::{Batch, Model};
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> engram::Result<()> {
    engram::alloc::keep_freed_pages();
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (b, t, cb, ct) = (num(2, 8), num(3, 128), num(4, 4), num(5, 512));
    let opts = load_options();
    let t0 = Instant::now();
    let model = Model::load(spec, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_load = status_mb("VmRSS:");
    let vocab = model.cfg().vocab_size as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut batch = |b: usize, t: usize| {
        let rows: Vec<Vec<u32>> = (0..b)
            .map(|_| (0..t).map(|_| rng.random_range(100..vocab)).collect())
            .collect();
        Batch::new(&rows, 0)
    };
    model.forward(&batch(1, 16)?, &mut Hooks::none())?;
    let timed = |batch: &Batch, hooks: &mut Hooks| -> engram::Result<(f64, f64)> {
        let (c0, t0) = (cpu_seconds(), Instant::now());
        let logits = model.forward(batch, hooks)?;
        std::hint::black_box(&logits);
        Ok((t0.elapsed().as_secs_f64(), cpu_seconds() - c0))
    };
    let (fwd_s, fwd_cpu) = timed(&batch(b, t)?, &mut Hooks::none())?;
    let mut hooks = Hooks::capture(HookFilter::new(&["blocks.*.hook_resid_post"]));
    let (cap_s, cap_cpu) = timed(&batch(cb, ct)?, &mut hooks)?;
    let captured: usize = (0..model.cfg().n_layers)
        .filter_map(|l| {
            hooks
                .cache
                .get(engram::hooks::HookPoint::ResidPost(l))
                .map(|x| x.elem_count())
        })
        .sum();
    println!(
        "{}",
        serde_json::json!({
            "model": spec, "dtype": format!("{:?}", opts.dtype), "matmul_bf16": model.bf16_matmul(),
            "mapped_weights": model.mapped_weights(), "threads": rayon::current_num_threads(),
            "load_s": load_s, "rss_after_load_mb": rss_load,
            "batch": [b, t], "forward_s": fwd_s, "forward_tok_s": (b * t) as f64 / fwd_s,
            "forward_cpu_s": fwd_cpu,
            "capture_batch": [cb, ct], "capture_s": cap_s, "capture_tok_s": (cb * ct) as f64 / cap_s,
            "capture_cpu_s": cap_cpu, "captured_mb": captured as f64 * 4.0 / 1e6,
            "peak_rss_mb": status_mb("VmHWM:"),
        })
    );
    Ok(())
}
