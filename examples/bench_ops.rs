//! Per-op timing at SmolLM2's shapes (batch 8 × 128): which parts of the forward pass cost what.
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn time<F: FnMut() -> Tensor>(name: &str, reps: usize, mut f: F) -> f64 {
    // Best of `reps`: this shared VM's steal time makes means noisy.
    let _ = f();
    let mut s = f64::INFINITY;
    for _ in 0..reps {
        let t0 = Instant::now();
        let _ = f();
        s = s.min(t0.elapsed().as_secs_f64());
    }
    println!("{name:<28}{:8.3} ms  (x30 = {:7.1} ms)", s * 1e3, s * 30e3);
    s
}

fn main() -> candle_core::Result<()> {
    engram::alloc::keep_freed_pages();
    let dev = Device::Cpu;
    let (b, t, d, nh, nk, dh, f, v) = (
        8usize, 128usize, 576usize, 9usize, 3usize, 64usize, 1536usize, 49152usize,
    );
    let x = Tensor::randn(0f32, 1.0, (b * t, d), &dev)?;
    let wqkv = Tensor::randn(0f32, 0.02, ((nh + 2 * nk) * dh, d), &dev)?;
    let wo = Tensor::randn(0f32, 0.02, (d, d), &dev)?;
    let wgu = Tensor::randn(0f32, 0.02, (2 * f, d), &dev)?;
    let wd = Tensor::randn(0f32, 0.02, (d, f), &dev)?;
    let wu = Tensor::randn(0f32, 0.02, (v, d), &dev)?;
    let post = Tensor::randn(0f32, 1.0, (b * t, f), &dev)?;
    let gu = Tensor::randn(0f32, 1.0, (b, t, 2 * f), &dev)?;
    let r = 20;
    let mut tot = 0.0;
    tot += time("qkv", r, || x.matmul(&wqkv.t().unwrap()).unwrap());
    tot += time("o", r, || x.matmul(&wo.t().unwrap()).unwrap());
    tot += time("gate_up", r, || x.matmul(&wgu.t().unwrap()).unwrap());
    tot += time("down", r, || post.matmul(&wd.t().unwrap()).unwrap());
    use engram::model::gemm::{Format, PackedLinear};
    println!(
        "bf16 native: {}, amx: {}",
        engram::model::gemm::native(),
        engram::model::gemm::amx()
    );
    for (name, w, inp) in [
        ("qkv", &wqkv, &x),
        ("o", &wo, &x),
        ("gate_up", &wgu, &x),
        ("down", &wd, &post),
    ] {
        for (fmt, label) in [(Format::F32, "f32 packed"), (Format::Bf16, "bf16")] {
            let p = PackedLinear::pack(w, fmt).unwrap();
            let (n, k) = p.dims();
            let s = time(&format!("{name} {label}"), r, || p.matmul_t(inp).unwrap());
            println!("    {:.0} GFLOP/s", 2.0 * (b * t * n * k) as f64 / s / 1e9);
        }
    }
    let t0 = Instant::now();
    let p = PackedLinear::pack(&wu, Format::Bf16).unwrap();
    println!("pack lm_head {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
    let s = time("lm_head bf16", 3, || p.matmul_t(&x).unwrap());
    println!("    {:.0} GFLOP/s", 2.0 * (b * t * v * d) as f64 / s / 1e9);
    let q = Tensor::randn(0f32, 1.0, (b, nk, 3 * t, dh), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (b, nk, t, dh), &dev)?;
    let vv = Tensor::randn(0f32, 1.0, (b, nk, t, dh), &dev)?;
    tot += time("scores q·kᵀ", r, || q.matmul(&k.t().unwrap()).unwrap());
    let sc = Tensor::randn(0f32, 1.0, (b, nh, t, t), &dev)?;
    let mask = Tensor::zeros((1, 1, t, t), DType::F32, &dev)?;
    tot += time("scale", r, || (&sc * 0.125).unwrap());
    tot += time("mask add", r, || sc.broadcast_add(&mask).unwrap());
    tot += time("softmax", r, || {
        candle_nn::ops::softmax_last_dim(&sc).unwrap()
    });
    time("fused scale+mask+softmax", r, || {
        engram::model::kernels::masked_softmax(&sc, &mask, 0.125, None).unwrap()
    });
    let p = sc.reshape((b, nk, 3 * t, t))?;
    tot += time("pattern·v", r, || p.matmul(&vv).unwrap());
    {
        let qh = q.reshape((b, nh, t, dh))?;
        let causal: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t <= i / t {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let causal = Tensor::from_vec(causal, (1, 1, t, t), &dev)?;
        let unfused = time("attention, unfused (causal)", r, || {
            let s = q
                .matmul(&k.t().unwrap())
                .unwrap()
                .reshape((b, nh, t, t))
                .unwrap();
            let p = engram::model::kernels::masked_softmax(&s, &causal, 0.125, None).unwrap();
            p.reshape((b, nk, 3 * t, t))
                .unwrap()
                .matmul(&vv)
                .unwrap()
                .reshape((b, nh, t, dh))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        });
        for pattern in [false, true] {
            let s = time(&format!("attention, fused (pattern {pattern})"), r, || {
                engram::model::kernels::attention(&qh, &k, &vv, &causal, 0.125, None, pattern)
                    .unwrap()
                    .0
            });
            println!("    {:.2}x", unfused / s);
        }
    }
    let z = Tensor::randn(0f32, 1.0, (b, nh, t, dh), &dev)?;
    tot += time("z transpose+contig", r, || {
        z.transpose(1, 2).unwrap().contiguous().unwrap()
    });
    let qq = Tensor::randn(0f32, 1.0, (b, t, nh, dh), &dev)?;
    tot += time("q transpose+contig (x3)", r, || {
        qq.transpose(1, 2).unwrap().contiguous().unwrap()
    }) * 2.0;
    let qh = qq.transpose(1, 2)?.contiguous()?;
    let cos = Tensor::randn(0f32, 1.0, (t, dh / 2), &dev)?;
    tot += time("rope q (x1.33)", r, || {
        candle_nn::rotary_emb::rope(&qh, &cos, &cos).unwrap()
    }) * 0.33;
    let x3 = x.reshape((b, t, d))?;
    let lnw = Tensor::ones(d, DType::F32, &dev)?;
    tot += time("rms_norm (x2)", r, || {
        candle_nn::ops::rms_norm(&x3, &lnw, 1e-5).unwrap()
    });
    tot += time("rms_norm", r, || {
        candle_nn::ops::rms_norm(&x3, &lnw, 1e-5).unwrap()
    });
    let gate = gu.narrow(2, 0, f)?;
    let up = gu.narrow(2, f, f)?;
    tot += time("silu(gate)", r, || candle_nn::ops::silu(&gate).unwrap());
    let g2 = gate.contiguous()?;
    tot += time("act*up", r, || (&g2 * &up).unwrap());
    time("fused silu(gate)*up", r, || {
        engram::model::kernels::gated_act(&gu, engram::model::kernels::GatedAct::Silu).unwrap()
    });
    tot += time("resid add (x2)", r, || (&x + &x).unwrap()) * 2.0;
    let per_layer = tot;
    let lm = time("lm_head (once)", 3, || x.matmul(&wu.t().unwrap()).unwrap());
    println!("sum: {:.1} ms per forward", (per_layer * 30.0 + lm) * 1e3);
    Ok(())
}
