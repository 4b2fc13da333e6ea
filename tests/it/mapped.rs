//! bf16 weights used where they lie (`--matmul bf16` on a bf16 safetensors checkpoint): small
//! random checkpoints of real layouts (`engram::model::random_checkpoint`) give the same logits
//! mapped as loaded into f32, and a truncated or corrupt shard is refused by name.

use candle_core::{DType, Device, Tensor};
use engram::hooks::Hooks;
use engram::model::random_checkpoint::{write, Family, Shape};
use engram::model::{Batch, LoadOptions, Model};

fn tiny(family: Family, tied: bool) -> Shape {
    let mut s = engram::model::random_checkpoint::shape(match family {
        Family::Llama => "llama-3.2-1b",
        Family::Gemma2 => "gemma-2-2b",
    })
    .unwrap();
    s.hidden = 64;
    s.intermediate = 96;
    s.layers = 2;
    s.heads = 4;
    s.kv_heads = 2;
    s.head_dim = 16;
    s.vocab = 600;
    s.tied = tied;
    s
}

fn load(dir: &std::path::Path, mapped: bool) -> engram::Result<Model> {
    let opts = LoadOptions {
        bf16_matmul: mapped,
        // Mapped on every CPU (AMX / AVX512-BF16 hosts would pack by default).
        map_weights: Some(mapped),
        ..Default::default()
    };
    Model::load(dir.to_str().unwrap(), &opts)
}

/// The largest |a - b| over the largest |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
}

#[test]
fn mapped_weights_give_the_f32_logits() {
    for (family, tied) in [
        (Family::Llama, false),
        (Family::Llama, true),
        (Family::Gemma2, true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let shape = tiny(family, tied);
        // Small shards: the checkpoint spans several files and an index.
        let w = write(&shape, tmp.path(), 7, 100_000).unwrap();
        assert!(w.files.len() > 1, "{:?}", w.files);
        let dense = load(tmp.path(), false).unwrap();
        let mapped = load(tmp.path(), true).unwrap();
        assert_eq!(dense.mapped_weights(), 0);
        // Every block weight and both tables (a tied unembedding shares the embedding's).
        assert_eq!(mapped.mapped_weights(), 4 * shape.layers + 2);
        assert!(mapped.bf16_matmul());
        // Both multiply the same bf16 values with f32 activations and f32 sums: only the
        // summation order differs, so the logits agree to f32 rounding (a few ulps of the
        // largest logit, times the depth), far inside the ~1% of rounding activations to bf16.
        for text in ["abc", "The quick brown fox jumps over"] {
            // 4 tokens (the dot-product kernel) and 31 (the widened-block path).
            let batch = dense.batch(&[text]).unwrap();
            let a = dense.forward(&batch, &mut Hooks::none()).unwrap();
            let b = mapped.forward(&batch, &mut Hooks::none()).unwrap();
            assert_eq!(a.dims(), b.dims());
            let r = rel_diff(&b, &a);
            assert!(r < 1e-4, "{family:?} tied={tied} {text:?}: {r}");
        }
        // Greedy generation through the KV cache (single-row products).
        let ids = dense.encode("hello").unwrap();
        let ga = dense
            .generate(std::slice::from_ref(&ids), 6, &mut Hooks::none())
            .unwrap();
        let gb = mapped.generate(&[ids], 6, &mut Hooks::none()).unwrap();
        assert_eq!(ga, gb, "{family:?}");
        // Weight views read the same values.
        assert_eq!(
            rel_diff(&mapped.w_q(1).unwrap(), &dense.w_q(1).unwrap()),
            0.0
        );
        let (g, u) = mapped.w_gate_up(0).unwrap();
        let (gd, ud) = dense.w_gate_up(0).unwrap();
        assert_eq!(rel_diff(&g, &gd) + rel_diff(&u, &ud), 0.0);
        assert_eq!(rel_diff(mapped.w_e(), dense.w_e()), 0.0);
        assert_eq!(rel_diff(mapped.unembed_rows(), dense.unembed_rows()), 0.0);
        assert_eq!(mapped.w_e().dtype(), DType::F32);
    }
}

#[test]
fn a_differentiable_pass_runs_on_mapped_weights() {
    let tmp = tempfile::tempdir().unwrap();
    write(&tiny(Family::Llama, false), tmp.path(), 1, u64::MAX).unwrap();
    let mapped = load(tmp.path(), true).unwrap();
    let dense = load(tmp.path(), false).unwrap();
    let batch = Batch::single(&[1, 2, 3, 4, 5]).unwrap();
    // The residual stream of layer 1 as a variable: the mapped products unpack their weights.
    let resid = |m: &Model| {
        let r = Tensor::randn(0f32, 1.0, (1, 5, 64), &Device::Cpu).unwrap();
        let v = candle_core::Var::from_tensor(&r).unwrap();
        let out = m
            .forward_from(
                &batch,
                1,
                v.as_tensor(),
                &mut Hooks::none(),
                Default::default(),
            )
            .unwrap();
        let g = out.sum_all().unwrap().backward().unwrap();
        (r, g.get(v.as_tensor()).unwrap().clone())
    };
    let (_, gm) = resid(&mapped);
    let (_, gd) = resid(&dense);
    // Different random inputs: only the shapes are comparable, and both are finite.
    assert_eq!(gm.dims(), gd.dims());
    let s = gm
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(s.is_finite() && s > 0.0);
}

#[test]
fn a_truncated_shard_names_the_file_and_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let w = write(&tiny(Family::Llama, false), tmp.path(), 3, 100_000).unwrap();
    let victim = tmp.path().join(&w.files[1]);
    let len = std::fs::metadata(&victim).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    f.set_len(len - 1000).unwrap();
    for mapped in [false, true] {
        let err = load(tmp.path(), mapped)
            .err()
            .expect("a truncated shard is refused");
        let msg = err.to_string();
        assert!(msg.contains(&w.files[1]), "{msg}");
        assert!(msg.contains("truncated: tensor `model.layers."), "{msg}");
    }
}

#[test]
fn a_nan_in_a_mapped_weight_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    // One file; its last tensor is lm_head.weight (untied).
    write(&tiny(Family::Llama, false), tmp.path(), 3, u64::MAX).unwrap();
    let file = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 2..].copy_from_slice(&[0xc0, 0x7f]); // bf16 NaN
    std::fs::write(&file, bytes).unwrap();
    for mapped in [false, true] {
        let msg = load(tmp.path(), mapped).err().unwrap().to_string();
        assert!(msg.contains("lm_head.weight holds 1 NaN"), "{msg}");
    }
}

/// `map_weights` decides between mapped and packed bf16 weights (the default packs on CPUs
/// with native bf16 products when the f32 load fits, and maps elsewhere).
#[test]
fn map_weights_forces_mapped_or_packed() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = tiny(Family::Llama, false);
    write(&shape, tmp.path(), 3, 1 << 30).unwrap();
    let with = |map: Option<bool>| {
        let opts = LoadOptions {
            bf16_matmul: true,
            map_weights: map,
            ..Default::default()
        };
        Model::load(tmp.path().to_str().unwrap(), &opts).unwrap()
    };
    let packed = with(Some(false));
    assert!(packed.bf16_matmul());
    assert_eq!(packed.mapped_weights(), 0);
    assert_eq!(with(Some(true)).mapped_weights(), 4 * shape.layers + 2);
    use engram::model::gemm::{Format, Kernel};
    let native = matches!(Kernel::best(Format::Bf16), Kernel::Amx | Kernel::Avx512);
    assert_eq!(with(None).mapped_weights() == 0, native);
}

/// The peak RSS (MB) `engram ARGS --out DIR` records in its manifest (`peak_rss_mb`, the
/// process's own `VmHWM`; a child's `wait4` usage would include this test process's memory,
/// which Linux carries into the child's high-water mark at exec), with `env` set.
fn manifest_peak_rss(args: &[&str], env: &[(&str, &str)]) -> f64 {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .arg("--out")
        .arg(&dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "engram {args:?}: {status}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    m["peak_rss_mb"]
        .as_f64()
        .expect("peak_rss_mb in the manifest")
}

/// A long prompt in bf16 (`--dtype bf16`) runs the fused attention kernel: no `[b, n_heads, t,
/// t]` scores exist unless a hook asks. Against the op-by-op path (`ENGRAM_UNFUSED=1`, which
/// materialises the scores, their f32 copy and the softmax: ≥ 3 × 268 MB here), the peak RSS
/// is several hundred MB lower, which also shows that the measurement sees the scores.
#[cfg(target_os = "linux")]
#[test]
fn long_prompts_never_materialise_attention_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let mut shape = tiny(Family::Llama, true);
    shape.heads = 16;
    shape.kv_heads = 4;
    shape.head_dim = 4;
    shape.layers = 1;
    write(&shape, tmp.path(), 3, u64::MAX).unwrap();
    // Byte-level tokenizer: 2047 tokens plus <|begin_of_text|>.
    let prompt = "ab".repeat(1023) + "c";
    let dir = tmp.path().to_str().unwrap();
    let args = [
        "cache",
        "--model",
        dir,
        "--dtype",
        "bf16",
        "--quiet",
        "--hooks",
        "blocks.0.hook_resid_post",
        "--prompt",
        &prompt,
    ];
    let fused = manifest_peak_rss(&args, &[]);
    let unfused = manifest_peak_rss(&args, &[("ENGRAM_UNFUSED", "1")]);
    let scores = (16 * 2048 * 2048 * 4) as f64 / (1 << 20) as f64; // one f32 [1, 16, 2048, 2048]
    eprintln!("peak RSS: fused {fused:.0} MB, unfused {unfused:.0} MB (one f32 score tensor {scores:.0} MB)");
    assert!(
        unfused > fused + scores,
        "fused {fused:.0} MB vs unfused {unfused:.0} MB"
    );
    // What is left: the binary, the mask (16 MB, twice) and small activations.
    assert!(fused < 200.0, "fused peak RSS {fused:.0} MB");
}
