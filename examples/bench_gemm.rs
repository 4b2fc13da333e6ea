//! The packed matmuls alone at SmolLM2's block shapes (batch 8 × 128), best of `REPS` (default
//! 30) per shape and format: for A/B comparisons of the kernels on a noisy host, run two builds
//! alternately and compare their minima.
//!
//! `bench_gemm paths [smollm2|1b|all] [ROWS,..]`: every kernel this CPU has (both formats) and
//! candle's f32 matmul, interleaved, on SmolLM2-135M's and a 1B model's (d 2048, MLP 8192)
//! linear shapes at 1, 8, 128 and 1024 rows; one markdown table row per shape and row count,
//! GFLOP/s and the ratio to candle. Up to 8 rows (generation) the weights rotate over copies
//! totalling over 96 MiB, so that they come from memory as in a forward pass, not from L3.
//! `CPU_TIME=1` times by the process's CPU time instead of the wall clock: with
//! `RAYON_NUM_THREADS=1`, a single core's throughput that other processes on a shared host do
//! not distort (they still share its caches and memory bandwidth).
use candle_core::{Device, Tensor};
use engram::model::gemm::{Format, Kernel, PackedLinear};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> candle_core::Result<()> {
    engram::alloc::keep_freed_pages();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("paths") {
        return paths(&args[2..]);
    }
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

/// The host's CPU model and the SIMD features the kernels care about.
fn host() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    #[allow(unused_mut)]
    let mut flags: Vec<&str> = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! f {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) {
                    flags.push($f);
                })*
            };
        }
        f!("avx2", "fma", "f16c", "avx512f", "avx512bf16");
    }
    if engram::model::gemm::amx() {
        flags.push("amx-bf16");
    }
    format!(
        "{model}, {} threads, [{}]",
        rayon::current_num_threads(),
        flags.join(" ")
    )
}

/// The f32 FMA peak of 256-bit FMAs (12 independent chains per thread, every thread), GFLOP/s.
fn fma256_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        /// # Safety
        /// The CPU must have AVX2 and FMA (checked by the caller).
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains(iters: u64) -> f32 {
            let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            let mut acc = [_mm256_set1_ps(1.0); 12];
            for _ in 0..iters {
                for x in acc.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, a, b);
                }
            }
            let mut out = [0f32; 8];
            let s = acc
                .iter()
                .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
            _mm256_storeu_ps(out.as_mut_ptr(), s);
            out.iter().sum()
        }
        if !engram::model::gemm::avx2() {
            return f64::NAN;
        }
        let iters = 50_000_000u64;
        let run = move || {
            let t0 = Instant::now();
            // SAFETY: AVX2 and FMA were detected above.
            std::hint::black_box(unsafe { chains(iters) });
            t0.elapsed().as_secs_f64()
        };
        run();
        let threads = rayon::current_num_threads();
        let secs: Vec<f64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        secs.iter()
            .map(|s| iters as f64 * 12.0 * 16.0 / s)
            .sum::<f64>()
            / 1e9
    }
    #[cfg(not(target_arch = "x86_64"))]
    f64::NAN
}

/// Seconds on the wall clock, or of this process's CPU time (`CPU_TIME=1`).
fn clock() -> f64 {
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if *CPU.get_or_init(|| std::env::var("CPU_TIME").is_ok_and(|v| v != "0")) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a Linux constant.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        T0.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}

type Run<'a> = Box<dyn FnMut(usize) -> candle_core::Result<()> + 'a>;

fn paths(args: &[String]) -> candle_core::Result<()> {
    let smollm2 = [
        ("135m qkv", 960, 576),
        ("135m o", 576, 576),
        ("135m gate_up", 3072, 576),
        ("135m down", 576, 1536),
        ("135m lm_head", 49152, 576),
    ];
    let one_b = [
        ("1b qkv", 3072, 2048),
        ("1b o", 2048, 2048),
        ("1b gate_up", 16384, 2048),
        ("1b down", 2048, 8192),
    ];
    let shapes: Vec<(&str, usize, usize)> = match args.first().map(String::as_str) {
        Some("smollm2") => smollm2.to_vec(),
        Some("1b") => one_b.to_vec(),
        _ => smollm2.iter().chain(&one_b).copied().collect(),
    };
    let rows: Vec<usize> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 128, 1024]);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // The portable kernels only where one call is at most this many GFLOP (they are slow).
    let portable_gflop: f64 = std::env::var("PORTABLE_GFLOP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    println!(
        "host: {}; timed by {}",
        host(),
        if std::env::var("CPU_TIME").is_ok_and(|v| v != "0") {
            "CPU time"
        } else {
            "wall clock"
        }
    );
    println!("256-bit FMA peak: {:.0} GFLOP/s", fma256_peak());
    let dev = Device::Cpu;
    let mut header = vec!["shape".to_string(), "rows".into(), "candle f32".into()];
    let kernels: Vec<(Format, Kernel)> = [Format::F32, Format::Bf16]
        .iter()
        .flat_map(|&f| Kernel::available(f).into_iter().map(move |k| (f, k)))
        .collect();
    for (f, k) in &kernels {
        header.push(format!("{f:?} {k:?}"));
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for &(name, n, k) in &shapes {
        for &m in &rows {
            // Copies of the weight: enough to fall out of L3 for generation's row counts.
            let copies = if m <= 8 {
                (96usize << 20).div_ceil(n * k * 4).clamp(1, 64)
            } else {
                1
            };
            let ws: Vec<Tensor> = (0..copies)
                .map(|_| Tensor::randn(0f32, 0.02, (n, k), &dev))
                .collect::<candle_core::Result<_>>()?;
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let flop = 2.0 * (m * n * k) as f64;
            let mut runs: Vec<(String, Run)> = vec![(
                "candle".into(),
                Box::new(|c: usize| {
                    std::hint::black_box(x.matmul(&ws[c].t()?)?);
                    Ok(())
                }),
            )];
            for &(f, kern) in &kernels {
                if kern == Kernel::Portable && flop / 1e9 > portable_gflop {
                    continue;
                }
                let ps: Vec<PackedLinear> = ws
                    .iter()
                    .map(|w| PackedLinear::pack(w, f).unwrap())
                    .collect();
                let x = &x;
                runs.push((
                    format!("{f:?} {kern:?}"),
                    Box::new(move |c: usize| {
                        std::hint::black_box(ps[c].matmul_t_with(x, kern).unwrap());
                        Ok(())
                    }),
                ));
            }
            // Calls per round: ~50 ms of the first (warm-up) call's time, at least one.
            let mut inner = vec![1usize; runs.len()];
            for (r, (_, run)) in runs.iter_mut().enumerate() {
                let t0 = clock();
                run(0)?;
                inner[r] = ((0.05 / (clock() - t0)) as usize).clamp(1, 10_000);
            }
            let mut best = vec![f64::INFINITY; runs.len()];
            let mut next = 0usize;
            for _ in 0..rounds {
                for (r, (_, run)) in runs.iter_mut().enumerate() {
                    let t0 = clock();
                    for _ in 0..inner[r] {
                        next = (next + 1) % copies;
                        run(next)?;
                    }
                    best[r] = best[r].min((clock() - t0) / inner[r] as f64);
                }
            }
            let gflops = |r: usize| flop / best[r] / 1e9;
            let mut cells = vec![
                format!("{name} ({n}×{k})"),
                m.to_string(),
                format!("{:.1}", gflops(0)),
            ];
            for (f, kern) in &kernels {
                let label = format!("{f:?} {kern:?}");
                cells.push(match runs.iter().position(|(l, _)| *l == label) {
                    Some(r) => format!("{:.1} ({:.2}×)", gflops(r), best[0] / best[r]),
                    None => "–".into(),
                });
            }
            println!("| {} |", cells.join(" | "));
        }
    }
    Ok(())
}
