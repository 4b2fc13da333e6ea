//! The head probe: CLI outputs on the paper's data (cmr-fit), induction heads in a real model,
//! and the ablation path under grouped-query attention.

use crate::common::*;

use engram::probes::heads::{self, AblationParams, HeadsParams};
use engram::progress::Progress;
use engram::report::table::read_parquet;

fn paper_table() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
}

#[test]
fn cmr_fit_command_writes_tables_and_reproduces_gpt2_share() {
    let dir = tempfile::tempdir().unwrap();
    let crp = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("notebooks-data/icl-cmr/gpt2-small.CRP_scores.npy");
    engram::cli::run([
        "engram",
        "cmr-fit",
        "--crp",
        crp.to_str().unwrap(),
        "--table",
        paper_table().to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ])
    .unwrap();
    let df = read_parquet(&dir.path().join("heads.parquet")).unwrap();
    assert_eq!(df.height(), 144);
    let like = df.column("cmr_like").unwrap().bool().unwrap();
    let share = like.sum().unwrap() as f64 / 144.0;
    assert!(
        (share - 0.472).abs() < 0.005,
        "GPT-2 share of CMR-like heads {share}"
    );
    for f in [
        "lag_crp.parquet",
        "manifest.json",
        "cmr_distance_heatmap.png",
        "cmr_share_per_layer.svg",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    // Only what cmr-fit computes: no token table, no scores, no score charts.
    for f in [
        "tokens.parquet",
        "induction_heatmap.png",
        "induction_vs_cmr.png",
    ] {
        assert!(!dir.path().join(f).exists(), "{f} written without data");
    }
    assert!(df.column("induction_score").is_err());
    let model = df
        .column("model")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap()
        .to_string();
    assert_eq!(model, "gpt2-small");
    // Malformed input is a one-line error, not a panic.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, b"not an npy file").unwrap();
    let e = engram::cli::run([
        "engram",
        "cmr-fit",
        "--crp",
        bad.to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(e.is_err());
}

#[test]
fn untrained_fixture_has_no_induction_heads() {
    // Random weights: attention is spread out, no head attends to the token after the previous
    // occurrence much more than to anything else.
    let model = load_fixture("llama2");
    let params = HeadsParams {
        seq_len: 20,
        batch: 4,
        cmr_table: Some(paper_table()),
        ..Default::default()
    };
    let r = heads::run(&model, &params, &Progress::quiet()).unwrap();
    assert_eq!(r.heads.len(), model.cfg().n_layers * model.cfg().n_heads);
    let max = r
        .heads
        .iter()
        .map(|h| h.induction_score)
        .fold(0.0, f64::max);
    assert!(max < 0.5, "random model has an induction head? {max}");
    assert_eq!(r.tokens.len(), 4);
    assert_eq!(r.tokens[0].len(), 41);
    assert_eq!(r.tokens[0][1..21], r.tokens[0][21..]);
}

#[test]
fn smollm2_has_induction_heads_outside_layer_0() {
    let Some(model) = real_model("smollm2") else {
        return;
    };
    let params = HeadsParams {
        seq_len: 40,
        batch: 4,
        cmr_table: Some(paper_table()),
        ablate: true,
        ablation: AblationParams {
            corpus: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("notebooks-data/corpus/corpus.jsonl"),
            docs: 2,
            early: 20,
            late: 120,
            window: 3,
            top_frac: 0.05,
            random_sets: 2,
        },
        ..Default::default()
    };
    let r = heads::run(&model, &params, &Progress::quiet()).unwrap();
    let mut sorted: Vec<_> = r.heads.iter().collect();
    sorted.sort_by(|a, b| b.induction_score.total_cmp(&a.induction_score));
    let top = sorted[0];
    eprintln!(
        "top induction head L{}H{} {:.3}",
        top.layer, top.head, top.induction_score
    );
    assert!(top.induction_score > 0.5, "no strong induction head");
    assert!(top.layer > 0);
    // Concentrated: only a few heads are strongly induction-like.
    let strong = r.heads.iter().filter(|h| h.induction_score > 0.3).count();
    assert!(
        strong >= 1 && strong * 10 < r.heads.len(),
        "{strong} strong heads"
    );
    assert!(r
        .heads
        .iter()
        .filter(|h| h.layer == 0)
        .all(|h| h.induction_score < 0.3));
    // In-context learning of the repeated half.
    assert!(r.loss_second_copy < r.loss_first_copy - 3.0);
    // Copying scores are in [-1, 1]; the strongest induction head copies.
    assert!(r.heads.iter().all(|h| h.copying_score.abs() <= 1.0 + 1e-9));
    // The ablation ran: baseline, top CMR heads, two random sets, every document scored.
    let a = r.ablation.as_ref().unwrap();
    assert_eq!(a.conditions.len(), 4);
    assert!(a.conditions.iter().all(|c| c.icl_scores.len() == 2));
    assert!(a.p_value > 0.0 && a.p_value <= 1.0);
    let dir = tempfile::tempdir().unwrap();
    let files = heads::write_outputs(&r, None, dir.path()).unwrap();
    for f in [
        "heads.parquet",
        "lag_crp.parquet",
        "tokens.parquet",
        "ablation.parquet",
        "induction_heatmap.png",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} not written");
    }
    let df = read_parquet(&dir.path().join("lag_crp.parquet")).unwrap();
    assert_eq!(df.height(), r.heads.len() * 16);
    // Cross-run analysis: every row names its model; tokens come with their strings.
    let df = read_parquet(&dir.path().join("heads.parquet")).unwrap();
    let m = df.column("model").unwrap().str().unwrap();
    assert!(m.iter().all(|x| x == Some("smollm2")));
    let t = read_parquet(&dir.path().join("tokens.parquet")).unwrap();
    let strs = t.column("token_str").unwrap().str().unwrap();
    assert_eq!(strs.len(), 4 * 81);
    assert!(strs.iter().all(|s| s.is_some()));
}
