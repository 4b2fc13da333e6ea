//! Every probe on the families beyond Llama/Gemma/Qwen2 (tiny fixtures gpt2, pythia, qwen3,
//! phi3, olmo2): each runs, and what a family changes (ungated MLP neurons, missing hooks) holds.

use crate::common::*;

use engram::hooks::{HookPoint, Hooks};
use engram::model::Batch;
use engram::probes::heads::{self, HeadsParams};
use engram::probes::neurons::{self, Kind, NeuronLayout};
use engram::probes::{directions, sae};
use engram::progress::Progress;

const NEW: &[&str] = &["gpt2", "pythia", "qwen3", "phi3", "olmo2"];

fn cmr_table() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
}

#[test]
fn heads_probe_runs_on_every_family() {
    for name in NEW {
        let model = load_fixture(name);
        let params = HeadsParams {
            seq_len: 10,
            batch: 2,
            cmr_table: Some(cmr_table()),
            ..Default::default()
        };
        let r = heads::run(&model, &params, &Progress::quiet()).unwrap();
        let c = model.cfg();
        assert_eq!(r.heads.len(), c.n_layers * c.n_heads, "{name}");
        for h in &r.heads {
            assert!(h.copying_score.abs() <= 1.0 + 1e-9, "{name}: {h:?}");
            assert!((0.0..=1.0).contains(&h.prev_token_score), "{name}");
        }
    }
}

#[test]
fn neuron_units_follow_the_mlp() {
    let seqs = vec![vec![5u32, 9, 17, 33, 4], vec![70u32, 8, 3]];
    for name in NEW {
        let model = load_fixture(name);
        let c = model.cfg();
        let layout = NeuronLayout::of(&model);
        assert_eq!(layout.gated, c.gated_mlp, "{name}");
        let mlp_units = if c.gated_mlp { 2 } else { 1 } * c.d_mlp;
        assert_eq!(layout.per_layer(), mlp_units + c.d_model, "{name}");
        let r = neurons::prompt_responses(&model, &seqs, true).unwrap();
        assert_eq!(r[0].len(), layout.total(), "{name}");
        // Deactivating one unit of each kind in layer 1 zeroes exactly those units.
        let ids: Vec<usize> = layout.kinds().iter().map(|&k| layout.id(1, k, 3)).collect();
        let batch = Batch::new(&seqs, 0).unwrap();
        let mut points: Vec<HookPoint> = layout.points().iter().map(|p| p.2).collect();
        points.push(HookPoint::MlpPost(1));
        let mut capt = Hooks::capture_points(&points);
        for iv in layout.deactivation_hooks(&ids).interventions() {
            capt.add(iv.clone());
        }
        model.forward(&batch, &mut capt).unwrap();
        for &id in &ids {
            let (l, kind, i) = layout.locate(id);
            let x: Vec<f32> = capt
                .cache
                .get(kind.point(l))
                .unwrap()
                .narrow(2, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                x.iter().all(|&v| v == 0.0),
                "{name}: {kind:?} unit not zeroed"
            );
        }
        if !c.gated_mlp {
            assert!(!layout.kinds().contains(&Kind::Up));
            // Zeroing an `in` unit (pre-activation) zeroes its activation too: GELU(0) = 0.
            let post: Vec<f32> = capt
                .cache
                .get(HookPoint::MlpPost(1))
                .unwrap()
                .narrow(2, 3, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert!(
                post.iter().all(|&v| v == 0.0),
                "{name}: activation not zeroed"
            );
        }
    }
}

#[test]
fn sae_store_collects_on_every_family() {
    use sae::store::{collect, CollectParams, Docs};
    let docs: Vec<Vec<u32>> = (0..12)
        .map(|i| {
            (0..20)
                .map(|j| 3 + ((i * 31 + j * 7) % 120) as u32)
                .collect()
        })
        .collect();
    for name in NEW {
        let model = load_fixture(name);
        for hook in ["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"] {
            let params = CollectParams {
                hook: hook.into(),
                tokens: 100,
                shard_size: 50,
                shards_per_round: 2,
                context: 16,
                batch: 4,
                seed: 1,
                ..Default::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let s = collect(
                &model,
                Docs::Tokens(&docs),
                &params,
                dir.path(),
                &Progress::quiet(),
            )
            .unwrap_or_else(|e| panic!("{name} {hook}: {e}"));
            assert_eq!(s.len(), 100, "{name} {hook}");
        }
        if !model.cfg().gated_mlp {
            let params = CollectParams {
                hook: "blocks.1.mlp.hook_pre_linear".into(),
                ..Default::default()
            };
            let dir = tempfile::tempdir().unwrap();
            let e = collect(
                &model,
                Docs::Tokens(&docs),
                &params,
                dir.path(),
                &Progress::quiet(),
            )
            .err()
            .unwrap()
            .to_string();
            assert!(e.contains("does not exist"), "{name}: {e}");
        }
    }
}

#[test]
fn directions_probe_runs_on_every_family() {
    let data = directions::toy::data(0);
    let mut p = directions::toy::params();
    p.max_new = 2;
    p.band = Some((1, 3));
    let s = directions::Samples::draw(&data, &p).unwrap();
    for name in NEW {
        let mut model = load_fixture(name);
        model.tokenizer = Some(directions::toy::tokenizer().unwrap());
        let r = directions::run(&model, name, &s, &p, &Progress::quiet())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let nl = model.cfg().n_layers;
        assert_eq!(r.truth.as_ref().unwrap().layers.len(), nl, "{name}");
        assert_eq!(r.refusal.as_ref().unwrap().diffs.len(), nl + 1, "{name}");
        assert_eq!(r.patching.as_ref().unwrap().effect.len(), nl, "{name}");
    }
}

#[test]
fn unsupported_families_name_themselves_and_the_supported_ones() {
    let v = serde_json::json!({"model_type": "bert", "hidden_size": 64});
    let e = engram::model::ModelConfig::from_hf_json(&v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`bert`"), "{e}");
    for a in ["gpt2", "gpt_neox", "qwen3", "phi3", "olmo2", "llama"] {
        assert!(e.contains(a), "{e}");
    }
    assert_eq!(e.lines().count(), 1);
}

/// `convert` writes each family under its own names and layouts (Conv1D, NeoX's interleaved
/// qkv, Phi-3's fused projections) and config keys; loading the folder gives the same logits.
#[test]
fn convert_round_trips_every_family() {
    for name in NEW {
        let model = load_fixture(name);
        let dir = tempfile::tempdir().unwrap();
        engram::model::export::write_hf_folder(&model, dir.path()).unwrap();
        let back = engram::model::Model::load(dir.path().to_str().unwrap(), &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = reference(name);
        let batch = reference_batch(&r);
        let a = model.forward(&batch, &mut Hooks::none()).unwrap();
        let b = back.forward(&batch, &mut Hooks::none()).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}");
        // The tensor names are the checkpoint's own.
        let ours: std::collections::BTreeSet<String> = candle_core::safetensors::load(
            dir.path().join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .into_keys()
        .collect();
        let orig: std::collections::BTreeSet<String> = candle_core::safetensors::load(
            fixture_dir(name).join("model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .into_keys()
        .collect();
        assert_eq!(ours, orig, "{name}");
    }
}

/// The original GPT-2 checkpoints (saved from GPT2Model) have no `transformer.` prefix.
#[test]
fn gpt2_checkpoint_without_transformer_prefix_loads() {
    let src = fixture_dir("gpt2");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let w =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let stripped: std::collections::HashMap<String, candle_core::Tensor> = w
        .into_iter()
        .map(|(k, t)| (k.trim_start_matches("transformer.").to_string(), t))
        .collect();
    candle_core::safetensors::save(&stripped, dir.path().join("model.safetensors")).unwrap();
    let m = engram::model::Model::load(dir.path().to_str().unwrap(), &Default::default()).unwrap();
    let r = reference("gpt2");
    let batch = reference_batch(&r);
    let l = m.forward(&batch, &mut Hooks::none()).unwrap();
    assert!(max_err_masked(&l, &r["logits"], &batch, 1) <= 1e-4);
}
