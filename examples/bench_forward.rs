//! Forward-pass benchmark on a real model (default: SmolLM2-135M-Instruct, f32, batch 8 × 128):
//! load time, forward without hooks, forward capturing every layer's resid_post and attention
//! pattern, the cost of an empty hook set, peak RSS. Prints one JSON object (scripts/bench/run.sh
//! pairs it with the transformers reference measured in the same run).
//!
//!     cargo run --release --example bench_forward -- [MODEL] [BATCH] [SEQ] [REPEATS]

mod support;
use support::*;

use std::time::Instant;

use engram::hooks::{HookFilter, Hooks};
use engram::model::{Batch, Model};
use rand::{Rng, SeedableRng};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// The machine's f32 FMA peak, measured: every thread runs independent AVX-512 (or AVX2) FMA
/// chains for ~0.3 s; returns total GFLOP/s over `threads` threads (2 FLOP per lane per FMA).
fn fma_peak_gflops(threads: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        /// # Safety
        /// The CPU must have AVX-512F (checked by the caller).
        #[target_feature(enable = "avx512f")]
        unsafe fn chains512(iters: u64) -> f32 {
            let a = _mm512_set1_ps(0.999_999);
            let b = _mm512_set1_ps(1e-7);
            let mut acc = [_mm512_set1_ps(1.0); 12];
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, a, b);
                }
            }
            let mut s = _mm512_setzero_ps();
            for x in acc {
                s = _mm512_add_ps(s, x);
            }
            _mm512_reduce_add_ps(s)
        }
        /// # Safety
        /// The CPU must have AVX2 and FMA (checked by the caller).
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains256(iters: u64) -> f32 {
            let a = _mm256_set1_ps(0.999_999);
            let b = _mm256_set1_ps(1e-7);
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            let mut out = [0f32; 8];
            let mut s = _mm256_setzero_ps();
            for x in acc {
                s = _mm256_add_ps(s, x);
            }
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
        let wide = std::arch::is_x86_feature_detected!("avx512f");
        let (lanes, ok) = if wide {
            (16.0, true)
        } else {
            (
                8.0,
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma"),
            )
        };
        if !ok {
            return f64::NAN;
        }
        let iters: u64 = 100_000_000;
        let run = move || {
            let t0 = Instant::now();
            // SAFETY: the CPU features were detected above.
            let v = unsafe {
                if wide {
                    chains512(iters)
                } else {
                    chains256(iters)
                }
            };
            std::hint::black_box(v);
            t0.elapsed().as_secs_f64()
        };
        run(); // warm-up (clocks)
        let secs: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(f64::NAN))
                .collect()
        });
        let flop = iters as f64 * 12.0 * lanes * 2.0;
        secs.iter().map(|s| flop / s).sum::<f64>() / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        f64::NAN
    }
}

/// The machine's bf16 dot-product peak (`vdpbf16ps`: 32 multiply-adds per instruction),
/// measured like [`fma_peak_gflops`]; NaN without AVX512-BF16.
fn bf16_peak_gflops(threads: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        /// # Safety
        /// The CPU must have AVX-512F and AVX512-BF16 (checked by the caller).
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn chains(iters: u64) -> f32 {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80));
            let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(0x3380_3380));
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, a, b);
                }
            }
            let mut s = _mm512_setzero_ps();
            for x in acc {
                s = _mm512_add_ps(s, x);
            }
            _mm512_reduce_add_ps(s)
        }
        if !engram::model::gemm::native() {
            return f64::NAN;
        }
        let iters: u64 = 50_000_000;
        let run = move || {
            let t0 = Instant::now();
            // SAFETY: AVX512-BF16 was detected above.
            std::hint::black_box(unsafe { chains(iters) });
            t0.elapsed().as_secs_f64()
        };
        run();
        let secs: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(f64::NAN))
                .collect()
        });
        let flop = iters as f64 * 12.0 * 64.0;
        secs.iter().map(|s| flop / s).sum::<f64>() / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        f64::NAN
    }
}

/// GFLOP/s of engram's bf16 matmul ([`engram::model::gemm`]) on the same shape.
fn matmul_bf16_gflops(m: usize, k: usize, n: usize, reps: usize) -> engram::Result<f64> {
    let dev = candle_core::Device::Cpu;
    let a = candle_core::Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let p = engram::model::gemm::PackedLinear::pack(&w, engram::model::gemm::Format::Bf16)?;
    let _ = p.matmul_t(&a)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(3) {
        let t0 = Instant::now();
        std::hint::black_box(p.matmul_t(&a)?);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// GFLOP/s of candle's f32 matmul on the model's largest per-layer shape (tokens × d @ d × d_mlp),
/// the matmul-bound part of a forward pass.
fn matmul_gflops(m: usize, k: usize, n: usize, reps: usize) -> engram::Result<f64> {
    let dev = candle_core::Device::Cpu;
    let a = candle_core::Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let w = candle_core::Tensor::randn(0f32, 1.0, (n, k), &dev)?;
    let _ = a.matmul(&w.t()?)?; // warm-up
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(3) {
        let t0 = Instant::now();
        let y = a.matmul(&w.t()?)?;
        std::hint::black_box(&y);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

fn main() -> engram::Result<()> {
    // As the engram binary does (src/main.rs).
    engram::alloc::keep_freed_pages();
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let b: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let t: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(3);

    let t0 = Instant::now();
    // DTYPE=bf16|f16 benchmarks a half-precision path (default f32, as the reference); MATMUL=bf16
    // runs the linear layers' products in bf16, the rest in f32.
    let opts = load_options();
    let (dtype, bf16_matmul) = (opts.dtype, opts.bf16_matmul);
    let model = Model::load(spec, &opts)?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    let rss_now_after_load = status_mb("VmRSS:");
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
    // Best wall time of `reps` runs, and mean CPU seconds per run (robust on a busy machine).
    let cpu_of = std::cell::RefCell::new(std::collections::HashMap::<&str, f64>::new());
    let time = |name: &'static str, hooks: &mut dyn FnMut() -> Hooks| -> engram::Result<f64> {
        {
            // Warm-up; its captures are dropped before the timed runs.
            let mut h = hooks();
            model.forward(&batch, &mut h)?;
        }
        let mut best = f64::INFINITY;
        let c0 = cpu_seconds();
        for _ in 0..reps {
            let mut h = hooks();
            let t0 = Instant::now();
            model.forward(&batch, &mut h)?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        cpu_of
            .borrow_mut()
            .insert(name, (cpu_seconds() - c0) / reps as f64);
        Ok(best)
    };
    let plain = time("forward", &mut Hooks::none)?;
    let empty_filter = time("embed_capture", &mut || {
        Hooks::capture(HookFilter::new(&["hook_embed"]))
    })
    .unwrap_or(f64::NAN);
    let capture = time("capture", &mut || {
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
    let threads = rayon::current_num_threads();
    let peak = fma_peak_gflops(threads);
    let mm = matmul_gflops(b * t, cfg.d_model, cfg.d_mlp, reps)?;
    let bf16_peak = bf16_peak_gflops(threads);
    let mm_bf16 = matmul_bf16_gflops(b * t, cfg.d_model, cfg.d_mlp, reps)?;
    let out = serde_json::json!({
        "model": spec, "dtype": format!("{dtype:?}"), "matmul": if bf16_matmul { "bf16" } else { "dtype" }, "batch": b, "seq": t, "threads": threads,
        "load_s": load_s,
        "forward_s": plain, "forward_tok_s": tokens / plain, "forward_gflop_s": gflop / plain,
        "capture_s": capture, "capture_tok_s": tokens / capture,
        "embed_capture_s": empty_filter,
        "gflop_per_forward": gflop,
        "rss_after_load_mb": rss_after_load, "rss_now_after_load_mb": rss_now_after_load, "peak_rss_mb": peak_rss_mb(),
        "cpu_s": *cpu_of.borrow(),
        "fma_peak_gflop_s": peak,
        "matmul_gflop_s": mm, "matmul_shape": [b * t, cfg.d_model, cfg.d_mlp],
        "bf16_peak_gflop_s": bf16_peak, "matmul_bf16_gflop_s": mm_bf16,
        "amx": engram::model::gemm::amx(),
    });
    println!("{out}");
    Ok(())
}
