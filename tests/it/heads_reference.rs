//! The heads probe on real checkpoints against an independent Python implementation
//! (scripts/bench/heads_reference.py: transformers with eager attention on the same GGUF, scores
//! captured inside its attention function, numpy for the statistics and the CMR fit), run on the
//! same token rows. Fixtures: tests/fixtures/real/{smollm2,gemma3}_heads_reference.json, and for
//! the GPT-2 / GPT-NeoX code path tests/fixtures/{gpt2,pythia}/heads_reference.json (the tiny
//! random fixtures, from an HF folder, seed 4: rows without a repeated token, since engram takes
//! a token's first occurrence and the reference position i − n).

use crate::common::*;

use engram::probes::heads::{self, HeadsParams};
use engram::progress::Progress;

fn fixture(name: &str) -> serde_json::Value {
    let path = fixture_dir("real").join(format!("{name}_heads_reference.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn flat(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        x => vec![x.as_f64().unwrap_or(f64::NAN)],
    }
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() || y.is_finite())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn heads_probe_matches_python_reference() {
    for alias in ["smollm2", "gemma3"] {
        let Some(model) = real_model(alias) else {
            continue;
        };
        compare(alias, &model, &fixture(alias), HeadsParams::default());
    }
}

/// GPT-2 (LayerNorm, learned positions, Conv1D, fused c_attn) and GPT-NeoX (interleaved qkv,
/// partial rotary, parallel blocks) through the whole probe.
#[test]
fn heads_probe_matches_python_reference_gpt2_and_neox() {
    for name in ["gpt2", "pythia"] {
        let model = load_fixture(name);
        let path = fixture_dir(name).join("heads_reference.json");
        let r = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let params = HeadsParams {
            seed: 4,
            chunk: 3,
            ..Default::default()
        };
        compare(name, &model, &r, params);
    }
}

fn compare(alias: &str, model: &engram::model::Model, r: &serde_json::Value, base: HeadsParams) {
    {
        let params = HeadsParams {
            seq_len: r["n"].as_u64().unwrap() as usize,
            batch: r["batch"].as_u64().unwrap() as usize,
            cmr_table: Some(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy"),
            ),
            ..base
        };
        let rep = heads::run(model, &params, &Progress::quiet()).unwrap();
        // Same seeded rows as the reference was run on.
        let tokens: Vec<f64> = rep.tokens.iter().flatten().map(|&t| t as f64).collect();
        assert_eq!(tokens, flat(&r["tokens"]), "{alias}: token rows differ");

        let col = |f: &dyn Fn(&heads::HeadRow) -> Vec<f64>| -> Vec<f64> {
            rep.heads.iter().flat_map(f).collect()
        };
        let checks: [(&str, Vec<f64>, f64); 7] = [
            ("induction_score", col(&|h| vec![h.induction_score]), 1e-5),
            ("prev_token_score", col(&|h| vec![h.prev_token_score]), 1e-5),
            ("duplicate_score", col(&|h| vec![h.duplicate_score]), 1e-5),
            ("copying_score", col(&|h| vec![h.copying_score]), 1e-4),
            ("lag_crp_score", col(&|h| h.lag_scores.clone()), 1e-4),
            ("lag_crp_prob", col(&|h| h.lag_probs.clone()), 1e-5),
            ("cmr_distance", col(&|h| vec![h.fit.distance]), 1e-4),
        ];
        for (name, ours, tol) in checks {
            let e = max_diff(&ours, &flat(&r[name]));
            eprintln!("{alias} {name}: max abs diff {e:.2e}");
            assert!(e <= tol, "{alias} {name}: max abs diff {e} > {tol}");
        }
        for (name, ours) in [
            ("loss_first_copy", rep.loss_first_copy),
            ("loss_second_copy", rep.loss_second_copy),
        ] {
            let e = (ours - r[name].as_f64().unwrap()).abs();
            assert!(e <= 1e-4, "{alias} {name}: {ours} vs reference (diff {e})");
        }
    }
}
