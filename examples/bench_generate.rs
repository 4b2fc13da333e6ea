//! Load + greedy generation benchmark: load time, RSS after the load, prefill and decode time
//! of `NEW` tokens after a `PROMPT`-token random prompt, peak RSS; one JSON object.
//!
//!     DTYPE=f32|bf16 MATMUL=f32|bf16 cargo run --release --example bench_generate -- MODEL [PROMPT] [NEW]
//!
//! Also the machine's memory read bandwidth (`BANDWIDTH=0` skips it) and the decode speed it
//! bounds: every weight is read once per generated token.
//!
//! `MATMUL=bf16` on a bf16 safetensors checkpoint runs the mapped weights
//! (`engram::model::mapped`); `ENGRAM_PACK_BF16=1` packs them instead.

mod support;
use support::*;

use std::time::Instant;

use engram::hooks::Hooks;
use engram::model::transformer::KvCache;
use engram::model::{Batch, LogitsAt, Model, RunOptions};

/// Memory read bandwidth in GB/s over `threads` threads: the best of 3 passes summing a 2 GiB
/// buffer (larger than any cache), each thread its own contiguous part. Decode streams every
/// weight once per token, so this over the bytes read per token bounds its tokens/s.
fn read_bandwidth_gbs(threads: usize) -> f64 {
    let words = (2usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let part = words.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(part)
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for w in c.chunks_exact(8) {
                            for (a, x) in acc.iter_mut().zip(w) {
                                *a = a.wrapping_add(*x);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

fn main() -> engram::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let p: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let new: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(16);
    let opts = load_options();
    let t0 = Instant::now();
    let model = Model::load(spec, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_load = status_mb("VmRSS:");
    let vocab = model.cfg().vocab_size as u32;
    let prompt: Vec<u32> = (0..p as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let last = RunOptions {
        logits: LogitsAt::Last,
        stop_at_layer: None,
    };
    let mut cache = KvCache::new();
    let t1 = Instant::now();
    let mut logits = model.forward_cached(
        &Batch::single(&prompt)?,
        &mut Hooks::none(),
        last,
        &mut cache,
    )?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut out = vec![];
    for _ in 0..new {
        let v: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let next = (0..v.len())
            .max_by(|&a, &b| v[a].total_cmp(&v[b]))
            .unwrap_or(0) as u32;
        out.push(next);
        logits = model.forward_cached(
            &Batch::single(&[next])?,
            &mut Hooks::none(),
            last,
            &mut cache,
        )?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    // Bytes of weights one decode step reads: every block's linear layers and the unembedding,
    // at 2 bytes per weight when the products run in bf16 (mapped or packed), else 4.
    let c = model.cfg();
    let per_layer =
        c.d_model * c.d_head * (2 * c.n_heads + 2 * c.n_kv_heads) + 3 * c.d_model * c.d_mlp;
    let weights = c.n_layers * per_layer + c.vocab_size * c.d_model;
    let bytes_per_token = weights as f64 * if model.bf16_matmul() { 2.0 } else { 4.0 };
    // Before the bandwidth buffer (2 GiB) exists.
    let peak_rss = status_mb("VmHWM:");
    let bw = if std::env::var("BANDWIDTH").as_deref() == Ok("0") {
        f64::NAN
    } else {
        read_bandwidth_gbs(rayon::current_num_threads())
    };
    println!(
        "{}",
        serde_json::json!({
            "model": spec, "dtype": format!("{:?}", opts.dtype), "matmul_bf16": opts.bf16_matmul,
            "mapped_weights": model.mapped_weights(), "threads": rayon::current_num_threads(),
            "load_s": load_s, "rss_after_load_mb": rss_load,
            "prompt": p, "prefill_s": prefill_s, "new": new, "decode_s": decode_s,
            "decode_tok_s": new as f64 / decode_s, "peak_rss_mb": peak_rss,
            "tokens": out,
            "weight_gb_per_token": bytes_per_token / 1e9, "read_bandwidth_gb_s": bw,
            "decode_bound_tok_s": bw * 1e9 / bytes_per_token,
        })
    );
    Ok(())
}
