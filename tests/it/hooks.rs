//! Hook invariants on the tiny fixtures: decompositions of the residual stream, per-head results,
//! no-op patching, ablation effects, capture cost-free semantics.

use crate::common::*;

use candle_core::{Tensor, D};
use engram::hooks::{Edit, HookFilter, HookPoint, Hooks, Intervention, Positions};

const TOL: f32 = 1e-4;

fn capture_all(name: &str) -> (engram::model::Model, engram::model::Batch, Tensor, Hooks) {
    let model = load_fixture(name);
    let r = reference(name);
    let batch = reference_batch(&r);
    let mut hooks = Hooks::capture(HookFilter::new(&["*"]));
    let logits = model.forward(&batch, &mut hooks).unwrap();
    (model, batch, logits, hooks)
}

#[test]
fn residual_decomposition_every_arch() {
    for name in ARCHS {
        let (model, batch, _, hooks) = capture_all(name);
        let c = &hooks.cache;
        for l in 0..model.cfg().n_layers {
            let pre = c.get(HookPoint::ResidPre(l)).unwrap();
            let mid = c.get(HookPoint::ResidMid(l)).unwrap();
            let post = c.get(HookPoint::ResidPost(l)).unwrap();
            let attn = c.get(HookPoint::AttnOut(l)).unwrap();
            let mlp = c.get(HookPoint::MlpOut(l)).unwrap();
            let e = max_err_masked(&(pre + attn).unwrap(), mid, &batch, 1);
            assert!(
                e < TOL,
                "{name} L{l}: resid_mid != resid_pre + attn_out ({e})"
            );
            let e = max_err_masked(&(mid + mlp).unwrap(), post, &batch, 1);
            assert!(
                e < TOL,
                "{name} L{l}: resid_post != resid_mid + mlp_out ({e})"
            );
            if l + 1 < model.cfg().n_layers {
                let next = c.get(HookPoint::ResidPre(l + 1)).unwrap();
                assert_eq!(max_abs_diff(post, next), 0.0);
            }
            // Patterns are distributions over keys.
            let p = c.get(HookPoint::Pattern(l)).unwrap();
            let sums = p.sum(D::Minus1).unwrap();
            let ones = sums.ones_like().unwrap();
            assert!(max_abs_diff(&sums, &ones) < 1e-5);
            // Shapes follow TransformerLens.
            let (b, t) = (batch.len(), batch.seq_len);
            let cfg = model.cfg();
            assert_eq!(
                c.get(HookPoint::Q(l)).unwrap().dims(),
                [b, t, cfg.n_heads, cfg.d_head]
            );
            assert_eq!(
                c.get(HookPoint::K(l)).unwrap().dims(),
                [b, t, cfg.n_kv_heads, cfg.d_head]
            );
            assert_eq!(
                c.get(HookPoint::V(l)).unwrap().dims(),
                [b, t, cfg.n_kv_heads, cfg.d_head]
            );
            assert_eq!(
                c.get(HookPoint::Z(l)).unwrap().dims(),
                [b, t, cfg.n_heads, cfg.d_head]
            );
            assert_eq!(
                c.get(HookPoint::Pattern(l)).unwrap().dims(),
                [b, cfg.n_heads, t, t]
            );
            assert_eq!(
                c.get(HookPoint::MlpPost(l)).unwrap().dims(),
                [b, t, cfg.d_mlp]
            );
            assert_eq!(
                c.get(HookPoint::Result(l)).unwrap().dims(),
                [b, t, cfg.n_heads, cfg.d_model]
            );
        }
    }
}

/// Learned positions (GPT-2): resid_pre.0 = hook_embed + hook_pos_embed, the position rows
/// counting real tokens only (row 1's first real token gets W_pos[0]); no such hook elsewhere.
/// Ungated MLPs: hook_post = act(hook_pre), no hook_pre_linear. Parallel blocks (NeoX): the MLP
/// reads resid_pre, so editing resid_mid leaves mlp_out unchanged.
#[test]
fn pos_embed_ungated_mlp_and_parallel_blocks() {
    let (model, batch, _, hooks) = capture_all("gpt2");
    let c = &hooks.cache;
    let emb = c.get(HookPoint::Embed).unwrap();
    let pos = c.get(HookPoint::PosEmbed).unwrap();
    let pre = c.get(HookPoint::ResidPre(0)).unwrap();
    assert!(max_abs_diff(&(emb + pos).unwrap(), pre) < 1e-6);
    let w_pos = model.w_pos().unwrap();
    let first_real = pos.get(1).unwrap().get(batch.pad_left[1]).unwrap();
    assert_eq!(max_abs_diff(&first_real, &w_pos.get(0).unwrap()), 0.0);
    assert!(c.get(HookPoint::MlpPreLinear(0)).is_none());
    let pre = c.get(HookPoint::MlpPre(0)).unwrap();
    let post = c.get(HookPoint::MlpPost(0)).unwrap();
    assert!(max_abs_diff(&pre.gelu().unwrap(), post) < 1e-5);
    let (_, _, _, hooks) = capture_all("llama");
    assert!(hooks.cache.get(HookPoint::PosEmbed).is_none());

    let (model, batch, logits, hooks) = capture_all("pythia");
    assert!(model.cfg().parallel_attn_mlp);
    let mid = hooks.cache.get(HookPoint::ResidMid(1)).unwrap();
    let mlp_out = hooks.cache.get(HookPoint::MlpOut(1)).unwrap().clone();
    let mut edit =
        Hooks::capture(HookFilter::new(&["blocks.1.hook_mlp_out"])).with(Intervention::new(
            HookPoint::ResidMid(1),
            Edit::Patch {
                value: mid.zeros_like().unwrap(),
            },
        ));
    let edited = model.forward(&batch, &mut edit).unwrap();
    let e = max_err_masked(
        edit.cache.get(HookPoint::MlpOut(1)).unwrap(),
        &mlp_out,
        &batch,
        1,
    );
    assert!(e < 1e-6, "parallel block: the MLP read resid_mid ({e})");
    assert!(max_abs_diff(&edited, &logits) > 1e-2);
}

#[test]
fn head_results_sum_to_attn_out() {
    // Without post-attention norms the per-head results sum to attn_out exactly.
    for name in ["llama", "qwen2", "mistral", "gemma", "qwen3", "phi3"] {
        let (model, batch, _, hooks) = capture_all(name);
        for l in 0..model.cfg().n_layers {
            let res = hooks
                .cache
                .get(HookPoint::Result(l))
                .unwrap()
                .sum(2)
                .unwrap();
            let attn = hooks.cache.get(HookPoint::AttnOut(l)).unwrap();
            let e = max_err_masked(&res, attn, &batch, 1);
            assert!(e < TOL, "{name} L{l}: Σ result != attn_out ({e})");
        }
    }
}

#[test]
fn capture_does_not_change_logits() {
    for name in ARCHS {
        let (model, batch, logits, _) = capture_all(name);
        let plain = model.forward(&batch, &mut Hooks::none()).unwrap();
        let e = max_abs_diff(&plain, &logits);
        assert!(e < 1e-5, "{name}: capture changed logits by {e}");
    }
}

#[test]
fn patching_own_activation_is_a_noop_and_ablation_is_not() {
    for name in ["llama", "gemma2", "gemma3"] {
        let (model, batch, logits, hooks) = capture_all(name);
        let l = 1;
        let resid = hooks.cache.get(HookPoint::ResidMid(l)).unwrap().clone();
        let mut patch = Hooks::none().with(Intervention::new(
            HookPoint::ResidMid(l),
            Edit::Patch { value: resid },
        ));
        let patched = model.forward(&batch, &mut patch).unwrap();
        assert!(
            max_abs_diff(&patched, &logits) < 1e-6,
            "{name}: self-patch changed logits"
        );

        // Zero-ablating one head (under GQA) changes the logits, but only after the last
        // position it can affect, and leaves the other heads' z alone.
        let mut abl = Hooks::capture_points(&[HookPoint::Z(l)]).with(Intervention::zero_head(l, 1));
        let ablated = model.forward(&batch, &mut abl).unwrap();
        let d = max_err_masked(&ablated, &logits, &batch, 1);
        assert!(
            d > 1e-3,
            "{name}: ablating head {l}.1 did not change logits ({d})"
        );
        let z = abl.cache.get(HookPoint::Z(l)).unwrap();
        let z_orig = hooks.cache.get(HookPoint::Z(l)).unwrap();
        let head = |t: &Tensor, h: usize| t.narrow(2, h, 1).unwrap();
        assert_eq!(
            max_abs_diff(&head(z, 1), &head(z, 1).zeros_like().unwrap()),
            0.0
        );
        assert_eq!(max_abs_diff(&head(z, 0), &head(z_orig, 0)), 0.0);

        // Adding a vector only at the last position leaves earlier logits untouched.
        let d_model = model.cfg().d_model;
        let v = Tensor::ones(d_model, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut add = Hooks::none().with(
            Intervention::new(
                HookPoint::ResidPost(0),
                Edit::Add {
                    vector: v,
                    scale: 3.0,
                },
            )
            .at(Positions::Last(1)),
        );
        let steered = model.forward(&batch, &mut add).unwrap();
        let t = batch.seq_len;
        let early = max_abs_diff(
            &steered.narrow(1, 0, t - 1).unwrap(),
            &logits.narrow(1, 0, t - 1).unwrap(),
        );
        let last = max_abs_diff(
            &steered.narrow(1, t - 1, 1).unwrap(),
            &logits.narrow(1, t - 1, 1).unwrap(),
        );
        assert!(
            early < 1e-6 && last > 1e-3,
            "{name}: add at last position: early {early}, last {last}"
        );
    }
}

#[test]
fn projecting_out_leaves_no_component_and_neuron_ablation_zeroes() {
    let (model, batch, _, hooks) = capture_all("llama");
    let d = model.cfg().d_model;
    let dir = Tensor::randn(0f32, 1.0, d, &candle_core::Device::Cpu).unwrap();
    let mut h = Hooks::capture_points(&[HookPoint::ResidPost(2), HookPoint::MlpPost(1)])
        .with(Intervention::new(
            HookPoint::ResidPost(2),
            Edit::ProjectOut {
                direction: dir.clone(),
            },
        ))
        .with(Intervention::zero_neurons(1, vec![0, 5, 7]));
    model.forward(&batch, &mut h).unwrap();
    let r = h.cache.get(HookPoint::ResidPost(2)).unwrap();
    let comp = r
        .broadcast_mul(&dir)
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .abs()
        .unwrap();
    let worst = comp
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(worst < 1e-3, "component left along the direction: {worst}");
    let post = h.cache.get(HookPoint::MlpPost(1)).unwrap();
    for n in [0, 5, 7] {
        let col = post.narrow(2, n, 1).unwrap();
        assert_eq!(max_abs_diff(&col, &col.zeros_like().unwrap()), 0.0);
    }
    let before = hooks.cache.get(HookPoint::MlpPost(1)).unwrap();
    assert_eq!(
        max_abs_diff(
            &post.narrow(2, 1, 1).unwrap(),
            &before.narrow(2, 1, 1).unwrap()
        ),
        0.0
    );
}

#[test]
fn positions_filter_keeps_last_tokens() {
    let model = load_fixture("qwen2");
    let r = reference("qwen2");
    let batch = reference_batch(&r);
    let mut h = Hooks::capture(HookFilter::new(&[
        "blocks.*.hook_resid_post",
        "blocks.0.attn.hook_pattern",
    ]))
    .at_positions(Positions::Last(2));
    model.forward(&batch, &mut h).unwrap();
    assert_eq!(h.cache.len(), model.cfg().n_layers + 1);
    assert_eq!(
        h.cache.get(HookPoint::ResidPost(0)).unwrap().dims(),
        [2, 2, 64]
    );
    assert_eq!(
        h.cache.get(HookPoint::Pattern(0)).unwrap().dims(),
        [2, 4, 2, 12]
    );
}

#[test]
fn bad_hooks_are_errors() {
    let model = load_fixture("llama");
    let batch = engram::model::Batch::single(&[1, 2, 3]).unwrap();
    let mut h = Hooks::capture(HookFilter::new(&["blocks.0.attn.hook_nothing"]));
    let e = model.forward(&batch, &mut h).unwrap_err().to_string();
    assert!(e.contains("unknown hook"), "{e}");
    let mut h = Hooks::none().with(Intervention::zero_head(99, 0));
    let e = model.forward(&batch, &mut h).unwrap_err().to_string();
    assert!(e.contains("out of range"), "{e}");
    let too_long = engram::model::Batch::single(&vec![1u32; 100]).unwrap();
    let e = model
        .forward(&too_long, &mut Hooks::none())
        .unwrap_err()
        .to_string();
    assert!(e.contains("longer than the model's context"), "{e}");
}

#[test]
fn pattern_clamp_mean_ablation_and_kv_ablation() {
    let model = load_fixture("llama");
    let batch = engram::model::Batch::single(&[3, 8, 1, 40, 7, 9]).unwrap();
    let t = batch.seq_len;
    // A perfect previous-token pattern on head 2 of layer 0.
    let mut prev = vec![0f32; t * t];
    prev[0] = 1.0;
    for i in 1..t {
        prev[i * t + i - 1] = 1.0;
    }
    let prev = Tensor::from_vec(prev, (t, t), &candle_core::Device::Cpu).unwrap();
    let mut h = Hooks::capture_points(&[HookPoint::Pattern(0), HookPoint::Z(0), HookPoint::V(0)])
        .with(Intervention::clamp_pattern(0, 2, prev.clone()).unwrap());
    model.forward(&batch, &mut h).unwrap();
    let p = h
        .cache
        .get(HookPoint::Pattern(0))
        .unwrap()
        .narrow(1, 2, 1)
        .unwrap()
        .squeeze(1)
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert_eq!(max_abs_diff(&p, &prev), 0.0);
    // z of head 2 at position i is v of position i-1 (its kv head = 2 / group size 2 = 1).
    let z = h.cache.get(HookPoint::Z(0)).unwrap();
    let v = h.cache.get(HookPoint::V(0)).unwrap();
    let z2 = z.narrow(2, 2, 1).unwrap().narrow(1, 1, t - 1).unwrap();
    let v1 = v.narrow(2, 1, 1).unwrap().narrow(1, 0, t - 1).unwrap();
    assert!(max_abs_diff(&z2, &v1) < 1e-6);
    // Mean ablation sets the head's z to the given vector everywhere.
    let mean = Tensor::ones(16, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let mut h = Hooks::capture_points(&[HookPoint::Z(1)])
        .with(Intervention::mean_ablate_head(1, 3, mean).unwrap());
    model.forward(&batch, &mut h).unwrap();
    let z = h
        .cache
        .get(HookPoint::Z(1))
        .unwrap()
        .narrow(2, 3, 1)
        .unwrap();
    assert_eq!(max_abs_diff(&z, &z.ones_like().unwrap()), 0.0);
    // Zeroing kv head 0 zeroes z of both query heads of its group (0 and 1), not the others.
    let mut h = Hooks::capture_points(&[HookPoint::Z(1)]).with(Intervention::zero_kv_head(1, 0));
    model.forward(&batch, &mut h).unwrap();
    let z = h.cache.get(HookPoint::Z(1)).unwrap();
    let g0 = z.narrow(2, 0, 2).unwrap();
    assert_eq!(max_abs_diff(&g0, &g0.zeros_like().unwrap()), 0.0);
    let g1 = z.narrow(2, 2, 2).unwrap();
    assert!(max_abs_diff(&g1, &g1.zeros_like().unwrap()) > 1e-3);
}

/// `ln2.hook_normalized` is the MLP's input: RMSNorm(resid_mid)·w (Llama) and
/// LayerNorm(resid_mid)·w + b (GPT-2), computed here from the checkpoint's own weights.
#[test]
fn ln2_normalized_is_the_mlp_input() {
    for (name, w_name, b_name, layer_norm, eps) in [
        (
            "llama",
            "model.layers.{l}.post_attention_layernorm.weight",
            None,
            false,
            1e-6,
        ),
        (
            "gpt2",
            "h.{l}.ln_2.weight",
            Some("h.{l}.ln_2.bias"),
            true,
            1e-5,
        ),
    ] {
        let (model, batch, _, hooks) = capture_all(name);
        let w = candle_core::safetensors::load(
            fixture_dir(name).join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let get = |pat: &str, l: usize| {
            let key = pat.replace("{l}", &l.to_string());
            w.get(&key)
                .or_else(|| w.get(&format!("transformer.{key}")))
                .unwrap_or_else(|| panic!("{name}: no {key}"))
                .clone()
        };
        for l in 0..model.cfg().n_layers {
            let mid = hooks.cache.get(HookPoint::ResidMid(l)).unwrap();
            let x = if layer_norm {
                mid.broadcast_sub(&mid.mean_keepdim(D::Minus1).unwrap())
                    .unwrap()
            } else {
                mid.clone()
            };
            let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let mut want = x
                .broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&get(w_name, l))
                .unwrap();
            if let Some(b) = b_name {
                want = want.broadcast_add(&get(b, l)).unwrap();
            }
            let got = hooks.cache.get(HookPoint::Ln2(l)).unwrap();
            let e = max_err_masked(got, &want, &batch, 1);
            assert!(e < TOL, "{name} L{l}: ln2.hook_normalized off by {e}");
        }
    }
    assert_eq!(
        "blocks.3.ln2.hook_normalized".parse::<HookPoint>().unwrap(),
        HookPoint::Ln2(3)
    );
}
