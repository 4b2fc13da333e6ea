//! Forward-pass benchmark on a real model (default: SmolLM2-135M-Instruct, f32, batch 8 × 128):
//! load time, forward without hooks, forward capturing every layer's resid_post and attention
//! pattern, the cost of an empty hook set, peak RSS. Prints one JSON object (scripts/bench/run.sh
//! pairs it with the transformers reference measured in the same run).
//!
//!     cargo run --release --example bench_forward -- [MODEL] [BATCH] [SEQ] [REPEATS]

use std::time::Instant;

use engram::hooks::{HookFilter, Hooks};
use engram::model::{Batch, LoadOptions, Model};
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> engram::Result<()> {
    // As the engram binary does (src/main.rs): keep freed pages mapped.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a global allocator option before any worker thread exists.
        unsafe { libmimalloc_sys::mi_option_set(15, -1) };
    }
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let b: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let t: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);

    let t0 = Instant::now();
    let model = Model::load(spec, &LoadOptions::default())?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    let cfg = model.cfg().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| rng.random_range(100..cfg.vocab_size as u32))
                .collect()
        })
        .collect();
    let batch = Batch::new(&rows, 0)?;
    let time = |hooks: &mut dyn FnMut() -> Hooks| -> engram::Result<f64> {
        let mut h = hooks();
        model.forward(&batch, &mut h)?; // warm-up
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let mut h = hooks();
            let t0 = Instant::now();
            model.forward(&batch, &mut h)?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let plain = time(&mut Hooks::none)?;
    let empty_filter =
        time(&mut || Hooks::capture(HookFilter::new(&["hook_embed"]))).unwrap_or(f64::NAN);
    let capture = time(&mut || {
        Hooks::capture(HookFilter::new(&[
            "blocks.*.hook_resid_post",
            "blocks.*.attn.hook_pattern",
        ]))
    })?;
    let tokens = (b * t) as f64;
    // FLOPs: 2 per weight per token (non-embedding + unembedding) + attention (QKᵀ and PV).
    let d = cfg.d_model as f64;
    let per_tok_weights = 2.0
        * (cfg.n_layers as f64
            * (d * cfg.d_head as f64 * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) as f64
                + 3.0 * d * cfg.d_mlp as f64)
            + d * cfg.vocab_size as f64);
    let attn = 2.0 * 2.0 * cfg.n_layers as f64 * (cfg.n_heads * cfg.d_head) as f64 * t as f64;
    let gflop = tokens * (per_tok_weights + attn) / 1e9;
    let out = serde_json::json!({
        "model": spec, "batch": b, "seq": t, "threads": rayon::current_num_threads(),
        "load_s": load_s,
        "forward_s": plain, "forward_tok_s": tokens / plain, "forward_gflop_s": gflop / plain,
        "capture_s": capture, "capture_tok_s": tokens / capture,
        "embed_capture_s": empty_filter,
        "gflop_per_forward": gflop,
        "rss_after_load_mb": rss_after_load, "peak_rss_mb": peak_rss_mb(),
    });
    println!("{out}");
    Ok(())
}
