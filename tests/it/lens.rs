//! The logit lens and direct logit attribution: the lens' final layer is the model's own
//! logits, DLA components sum to the logit difference (every family: post-norms, LayerNorm
//! centring, biases, softcaps), and `engram lens` writes its tables (or one-line errors).

use crate::common::*;

use candle_core::{IndexOp, Tensor};
use engram::hooks::Hooks;
use engram::model::{Batch, Model};
use engram::probes::lens::compute::{direct_logit_attribution, logit_direction, logit_lens};

fn prompt_ids(name: &str) -> Vec<u32> {
    let r = reference(name);
    let b = reference_batch(&r);
    b.ids[0][b.pad_left[0]..].to_vec()
}

fn logits_of(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let l = model
        .forward(&Batch::single(ids).unwrap(), &mut Hooks::none())
        .unwrap();
    engram::model::transformer::log_softmax(&l.i(0).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn raw_logits(model: &Model, ids: &[u32]) -> Tensor {
    model
        .forward(&Batch::single(ids).unwrap(), &mut Hooks::none())
        .unwrap()
        .i((0, ids.len() - 1))
        .unwrap()
}

#[test]
fn lens_final_layer_is_the_models_logits_and_dla_sums_to_the_logit_difference() {
    for name in ARCHS {
        let model = load_fixture(name);
        let ids = prompt_ids(name);
        let n = model.cfg().n_layers;
        let lp = logits_of(&model, &ids);
        let last = raw_logits(&model, &ids).to_vec1::<f32>().unwrap();
        let target = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        let baseline = (0..last.len())
            .min_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap() as u32;
        let own = logit_lens(&model, &ids, None, 1).unwrap();
        assert_eq!(
            own.last().unwrap().next_id,
            target,
            "{name}: default target = top-1"
        );
        let cells = logit_lens(&model, &ids, Some(target), 3).unwrap();
        assert_eq!(cells.len(), (n + 1) * ids.len(), "{name}");
        for c in cells.iter().filter(|c| c.layer == n) {
            let row = &lp[c.position];
            let want = row[c.next_id as usize] as f64;
            assert!(
                (c.logprob - want).abs() <= 1e-5,
                "{name} pos {}: {} vs {want}",
                c.position,
                c.logprob
            );
            let top = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap() as u32;
            assert_eq!(c.top[0].0, top, "{name} pos {}", c.position);
            let rank = 1 + row.iter().filter(|&&x| x > row[c.next_id as usize]).count() as u32;
            assert_eq!(c.rank, rank, "{name}");
        }
        // Earlier layers are not the final logits (the lens reads them, not a copy).
        let far = cells
            .iter()
            .filter(|c| c.layer == 0)
            .map(|c| (c.logprob - lp[c.position][c.next_id as usize] as f64).abs())
            .fold(0.0, f64::max);
        assert!(
            far > 1e-3,
            "{name}: layer 0's lens equals the logits ({far})"
        );

        for base in [Some(baseline), None] {
            let u = logit_direction(&model, target, base).unwrap();
            let dla = direct_logit_attribution(&model, &ids, &u).unwrap();
            let n_heads = dla.components.iter().filter(|c| c.head.is_some()).count();
            assert_eq!(n_heads, n * model.cfg().n_heads, "{name}");
            let scale = dla.logit_diff.abs().max(1.0);
            assert!(
                (dla.sum() - dla.logit_diff).abs() <= 1e-4 * scale,
                "{name} {base:?}: DLA sum {} vs u·ln_final {}",
                dla.sum(),
                dla.logit_diff
            );
            if model.cfg().final_softcap.is_none() {
                let want = match base {
                    Some(b) => (last[target as usize] - last[b as usize]) as f64,
                    None => {
                        last[target as usize] as f64
                            - last.iter().map(|&x| x as f64).sum::<f64>() / last.len() as f64
                    }
                };
                assert!(
                    (dla.logit_diff - want).abs() <= 1e-4 * scale,
                    "{name}: {} vs the logits' {want}",
                    dla.logit_diff
                );
            }
        }
    }
}

#[test]
fn lens_command_writes_tables_charts_and_rejects_bad_tokens() {
    let (tmp, m, t, out) = cli_fixture("gpt2");
    let (m, t, o) = (m.as_str(), t.as_str(), out.to_str().unwrap());
    let (code, stdout, err) = engram(&[
        "lens",
        "--quiet",
        "-m",
        m,
        "--tokenizer",
        t,
        "-p",
        "hello world",
        "-p",
        "abc",
        "--target",
        "x",
        "--baseline",
        "y",
        "-o",
        o,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("prompt 1 target \"x\""), "{stdout}");
    for f in [
        "lens.parquet",
        "lens_top.parquet",
        "dla.parquet",
        "prompts.parquet",
        "lens_rank_heatmap.png",
        "dla_heads_heatmap.svg",
        "dla_layers.png",
        "lens_target_prob.svg",
        "manifest.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let cfg = load_fixture("gpt2");
    let n = cfg.cfg().n_layers;
    let lens = engram::report::table::read_parquet(&out.join("lens.parquet")).unwrap();
    // "hello world" and "abc" are 11 and 3 characters (+ BOS when the tokenizer adds one).
    let rows = lens.height();
    assert!(rows == (n + 1) * 14 || rows == (n + 1) * 16, "{rows} rows");
    let p = engram::report::table::read_parquet(&out.join("prompts.parquet")).unwrap();
    let sum = p.column("dla_sum").unwrap().f64().unwrap().to_vec();
    let ld = p.column("logit_diff").unwrap().f64().unwrap().to_vec();
    for (a, b) in sum.iter().zip(&ld) {
        assert!((a.unwrap() - b.unwrap()).abs() < 1e-4);
    }
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("apply_ln_to_stack"));

    let out2 = tmp.path().join("bad");
    let o2 = out2.to_str().unwrap();
    assert_one_line_error(
        &[
            "lens",
            "-m",
            m,
            "--tokenizer",
            t,
            "-p",
            "hi",
            "--target",
            "xy",
            "-o",
            o2,
        ],
        "--target \"xy\" is 2 tokens",
    );
    assert!(!out2.join("lens.parquet").exists());
    assert_one_line_error(&["lens", "-m", m, "--tokenizer", t, "-o", o2], "no prompts");
}

#[test]
fn smollm2_lens_finds_paris() {
    let Some(model) = real_model("smollm2") else {
        return;
    };
    let ids = model.encode("The Eiffel Tower is in the city of").unwrap();
    let paris = model.single_token(" Paris", "--target").unwrap();
    let n = model.cfg().n_layers;
    let cells = logit_lens(&model, &ids, Some(paris), 5).unwrap();
    let fin = cells
        .iter()
        .find(|c| c.layer == n && c.position + 1 == ids.len())
        .unwrap();
    assert_eq!(fin.rank, 1, "Paris is SmolLM2's top answer");
    let early = cells
        .iter()
        .find(|c| c.layer == 1 && c.position + 1 == ids.len())
        .unwrap();
    assert!(
        early.rank > 1,
        "the lens at layer 1 does not already say Paris"
    );
    let u = logit_direction(&model, paris, model.single_token(" London", "x").ok()).unwrap();
    let dla = direct_logit_attribution(&model, &ids, &u).unwrap();
    assert!(dla.logit_diff > 0.0);
    assert!((dla.sum() - dla.logit_diff).abs() <= 1e-3 * dla.logit_diff.abs().max(1.0));
}
