//! Gradients through the hooked pass: torch autograd on the tiny fixtures
//! (scripts/reference/make_grad_fixtures.py: grads.safetensors), the differentiable pass's
//! forward numbers against the normal pass, and a finite-difference check that needs no fixture.

use crate::common::*;

use candle_core::{Device, Tensor};
use engram::hooks::{Edit, HookFilter, HookPoint, Hooks, Intervention, Positions};
use engram::model::grad::Metric;
use engram::model::{Batch, LogitsAt, RunOptions};

fn grads_reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(name).join("grads.safetensors"), &Device::Cpu)
        .unwrap()
}

fn to_u32(t: &Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

/// Max |a − b| of `[b, h, q, k]` tensors over real queries and real keys.
fn pattern_err(a: &Tensor, b: &Tensor, batch: &Batch) -> f32 {
    let (nb, nh, t, _) = a.dims4().unwrap();
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let mut worst = 0f32;
    for r in 0..nb {
        let pad = batch.pad_left[r];
        for h in 0..nh {
            for q in pad..t {
                for k in pad..t {
                    let i = ((r * nh + h) * t + q) * t + k;
                    worst = worst.max((a[i] - b[i]).abs());
                }
            }
        }
    }
    worst
}

fn check_arch(name: &str) {
    let model = load_fixture(name);
    let r = reference(name);
    let g = grads_reference(name);
    let batch = reference_batch(&r);
    let n = model.cfg().n_layers;
    let metric = Metric::LogitDiff {
        answer: to_u32(&g["answer"]),
        wrong: to_u32(&g["wrong"]),
    };
    let filter = HookFilter::new(&[
        "hook_embed",
        "blocks.*.hook_resid_pre",
        "blocks.*.attn.hook_pattern",
        &format!("blocks.{}.hook_resid_post", n - 1),
    ]);
    let out = model.gradients(&batch, &metric, &filter).unwrap();
    let want: Vec<f32> = g["metric"].to_vec1().unwrap();
    for (a, b) in out.values.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4, "{name}: metric {a} vs torch {b}");
    }
    // Tolerance relative to the largest gradient entry.
    let gmax = g
        .iter()
        .filter(|(k, _)| k.starts_with("grad."))
        .map(|(_, v)| {
            v.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .fold(0f32, f32::max);
    let tol = 1e-4 * gmax.max(1.0);
    let grad = |p: HookPoint| out.grads.get(p).unwrap_or_else(|| panic!("{name}: no {p}"));
    let mut checks = vec![
        (HookPoint::Embed, "grad.resid_pre.0".to_string(), false),
        (HookPoint::ResidPost(n - 1), "grad.final".to_string(), false),
    ];
    for l in 0..n {
        checks.push((HookPoint::ResidPre(l), format!("grad.resid_pre.{l}"), false));
        checks.push((HookPoint::Pattern(l), format!("grad.pattern.{l}"), true));
    }
    for (p, key, pattern) in checks {
        let e = if pattern {
            pattern_err(grad(p), &g[&key], &batch)
        } else {
            max_err_masked(grad(p), &g[&key], &batch, 1)
        };
        assert!(
            e <= tol,
            "{name}: {p} gradient max abs error {e} (tol {tol})"
        );
    }
    // The differentiable pass computes the normal pass's numbers.
    let opts = RunOptions {
        logits: LogitsAt::Last,
        stop_at_layer: None,
    };
    let plain = model
        .forward_with(&batch, &mut Hooks::none(), opts)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let e = max_abs_diff(&plain, &out.logits);
    assert!(
        e <= 1e-5,
        "{name}: differentiable pass logits differ by {e}"
    );
    eprintln!("{name}: gradients ok (max |grad| {gmax:.3})");
}

#[test]
fn matches_torch_autograd_on_every_fixture() {
    for name in ARCHS {
        check_arch(name);
    }
}

/// Central differences of the metric along single residual coordinates agree with the
/// gradient there (no fixture: only the model's own forward pass).
#[test]
fn finite_differences() {
    for name in ["llama", "gemma2"] {
        let model = load_fixture(name);
        let batch = Batch::single(&[1, 5, 9, 17, 33, 2, 60, 7]).unwrap();
        let metric = Metric::LogProb { target: vec![11] };
        let point = HookPoint::ResidMid(1);
        let out = model
            .gradients(&batch, &metric, &HookFilter::points(&[point]))
            .unwrap();
        let g: Vec<f32> = out
            .grads
            .get(point)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let d = model.cfg().d_model;
        let gmax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(gmax > 0.0, "{name}: zero gradient");
        // The largest entries, and a few others.
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let picks: Vec<usize> = order
            .iter()
            .take(4)
            .chain([3usize, 100, 300].iter())
            .copied()
            .collect();
        let eps = 1e-2f64;
        for &i in &picks {
            let (pos, j) = (i / d, i % d);
            let metric_at = |s: f64| -> f32 {
                let mut dir = vec![0f32; d];
                dir[j] = 1.0;
                let iv = Intervention::new(
                    point,
                    Edit::Add {
                        vector: Tensor::new(dir, &Device::Cpu).unwrap(),
                        scale: s,
                    },
                )
                .at(Positions::Indices(vec![pos]));
                let logits = model.forward(&batch, &mut Hooks::none().with(iv)).unwrap();
                let last = logits.narrow(1, 7, 1).unwrap().squeeze(1).unwrap();
                metric.eval(&last).unwrap().to_vec1::<f32>().unwrap()[0]
            };
            let fd = (metric_at(eps) - metric_at(-eps)) as f64 / (2.0 * eps);
            let err = (fd - g[i] as f64).abs();
            assert!(
                err <= 1e-2 * gmax as f64,
                "{name}: d/d[{pos},{j}] finite difference {fd} vs gradient {}",
                g[i]
            );
        }
    }
}

#[test]
fn bad_requests_are_errors() {
    let model = load_fixture("llama");
    let batch = Batch::single(&[1, 2, 3]).unwrap();
    let metric = Metric::LogitDiff {
        answer: vec![1],
        wrong: vec![2],
    };
    let e = model
        .gradients(
            &batch,
            &metric,
            &HookFilter::new(&["blocks.9.hook_resid_pre"]),
        )
        .unwrap_err();
    assert!(e.to_string().contains("layer 9"), "{e}");
    let wrong_rows = Metric::LogProb { target: vec![1, 2] };
    let e = model
        .gradients(&batch, &wrong_rows, &HookFilter::new(&["hook_embed"]))
        .unwrap_err();
    assert!(e.to_string().contains("batch of 1"), "{e}");
}

/// torch autograd on the real models (scripts/reference/real_grads_reference.py): the gradient
/// of logit(" Paris") − logit(" London") at resid_pre of the first, middle and last layers.
#[test]
fn real_model_gradients_match_torch_autograd() {
    for (alias, stem) in [
        ("smollm2", "smollm2-135m-instruct"),
        ("gemma3", "gemma-3-270m"),
    ] {
        let Some(model) = real_model(alias) else {
            continue;
        };
        let path = fixture_dir("real").join(format!("{stem}_grads.safetensors"));
        let r = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let ids = to_u32(&r["input_ids"].squeeze(0).unwrap());
        let metric = Metric::LogitDiff {
            answer: to_u32(&r["answer"]),
            wrong: to_u32(&r["wrong"]),
        };
        let layers: Vec<usize> = r
            .keys()
            .filter_map(|k| k.strip_prefix("resid_pre.")?.parse().ok())
            .collect();
        assert_eq!(layers.len(), 3, "{alias}");
        let names: Vec<String> = layers
            .iter()
            .map(|l| format!("blocks.{l}.hook_resid_pre"))
            .collect();
        let g = model
            .gradients(
                &Batch::single(&ids).unwrap(),
                &metric,
                &HookFilter::new(&names),
            )
            .unwrap();
        let want = r["metric"].to_vec1::<f32>().unwrap()[0];
        assert!(
            (g.values[0] - want).abs() <= 1e-3 * want.abs().max(1.0),
            "{alias}: metric {} vs torch {want}",
            g.values[0]
        );
        for l in layers {
            let ours = g.grads.get(HookPoint::ResidPre(l)).unwrap();
            let theirs = &r[&format!("resid_pre.{l}")];
            let scale = theirs
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let err = max_abs_diff(ours, theirs);
            eprintln!("{alias} resid_pre.{l}: max |Δ| {err:.3e}, max |grad| {scale:.3e}");
            assert!(
                err <= 1e-4 * scale,
                "{alias} layer {l}: {err} vs max {scale}"
            );
        }
    }
}
