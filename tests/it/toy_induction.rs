//! Training-dynamics check (Singh et al. 2024, docs/methods.md §1): a 2-layer attention-only toy
//! model trained here with candle on repeated random sequences forms induction heads in its
//! second layer; the head probe, run through engram's real loader and forward pass on the
//! exported Hugging Face folder, finds them there and not in an untrained copy. Clamping a
//! layer-0 head to a perfect previous-token pattern makes them form much sooner.

use crate::common::max_abs_diff;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use engram::hooks::Hooks;
use engram::model::{Batch, LoadOptions, Model};
use engram::probes::heads::{self, HeadsParams, HeadsReport};
use engram::progress::Progress;
use engram::report::table::read_parquet;
use engram::toy::{repeated_batch, ToyConfig, ToyModel, TrainReport};
use rand::SeedableRng;

fn paper_table() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy")
}

fn probe_params(seq_len: usize) -> HeadsParams {
    HeadsParams {
        seq_len,
        batch: 16,
        seed: 7,
        cmr_table: Some(paper_table()),
        ..Default::default()
    }
}

/// Export to a Hugging Face folder and load it back with `Model::load`, as `engram heads` does.
fn export_and_load(toy: &ToyModel, dir: &Path) -> Model {
    toy.save_hf_folder(dir).unwrap();
    Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
}

fn best(
    r: &HeadsReport,
    layer: Option<usize>,
    f: fn(&heads::HeadRow) -> f64,
) -> (usize, usize, f64) {
    r.heads
        .iter()
        .filter(|h| layer.is_none_or(|l| h.layer == l))
        .map(|h| (h.layer, h.head, f(h)))
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .unwrap()
}

/// Mean second-copy loss over the last `k` steps.
fn tail_loss(r: &TrainReport, k: usize) -> f64 {
    let h = &r.history[r.history.len() - k..];
    h.iter().map(|s| s.loss_second_copy).sum::<f64>() / k as f64
}

/// The unclamped model, trained once for the tests that need it.
fn trained() -> &'static (ToyModel, TrainReport) {
    static CELL: OnceLock<(ToyModel, TrainReport)> = OnceLock::new();
    CELL.get_or_init(|| {
        let cfg = ToyConfig::default();
        let (m, r) = ToyModel::trained(cfg, 0, &mut |_| {}).unwrap();
        eprintln!(
            "toy: {} steps in {:.1}s, second-copy loss < 1 from step {:?}",
            r.history.len(),
            r.seconds,
            r.steps_to_second_copy_loss(1.0, 10)
        );
        (m, r)
    })
}

#[test]
fn trained_toy_has_induction_heads_in_layer_1_and_untrained_copy_has_none() {
    let (toy, report) = trained();
    let cfg = &toy.cfg;
    // The model learned to copy: the second copy becomes predictable, the first stays random.
    let late = tail_loss(report, 50);
    let chance = ((cfg.vocab - 1) as f64).ln();
    assert!(late < 0.5, "second-copy loss after training {late}");
    assert!(report.history[0].loss_second_copy > 0.8 * chance);
    let tmp = tempfile::tempdir().unwrap();
    let model = export_and_load(toy, &tmp.path().join("trained"));

    // The exported model computes the toy's function through engram's own forward pass.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let rows = repeated_batch(&mut rng, cfg.vocab, cfg.seq_len, 4);
    let ours = toy.logits(&rows).unwrap();
    let batch = Batch::new(&rows, 0).unwrap();
    let theirs = model.forward(&batch, &mut Hooks::none()).unwrap();
    let err = max_abs_diff(&ours, &theirs);
    assert!(err < 1e-3, "toy vs engram forward: max |Δlogit| {err}");

    // The probe finds induction heads in layer 1 and a previous-token head in layer 0.
    let r = heads::run(&model, &probe_params(cfg.seq_len), &Progress::quiet()).unwrap();
    assert!(
        r.loss_second_copy < 0.5 && r.loss_first_copy > 2.0,
        "probe losses {} / {}",
        r.loss_first_copy,
        r.loss_second_copy
    );
    let (l, h, top) = best(&r, None, |h| h.induction_score);
    assert_eq!(
        l, 1,
        "strongest induction head L{l}H{h} ({top}) is not in layer 1"
    );
    assert!(top > 0.5, "strongest induction head L{l}H{h}: {top}");
    let (_, _, l0) = best(&r, Some(0), |h| h.induction_score);
    assert!(l0 < 0.2, "layer 0 has an induction head ({l0})");
    let (_, ph, prev) = best(&r, Some(0), |h| h.prev_token_score);
    assert!(
        prev > 0.5,
        "no previous-token head in layer 0 (best L0H{ph}: {prev})"
    );
    // Induction heads attend to the token after the previous occurrence: the lag-CRP of
    // probabilities peaks at lag +1 (index 9 of -8..=7).
    let row = r
        .heads
        .iter()
        .find(|x| x.layer == l && x.head == h)
        .unwrap();
    let peak = (0..heads::N_LAGS)
        .max_by(|&a, &b| row.lag_probs[a].total_cmp(&row.lag_probs[b]))
        .unwrap();
    assert_eq!(
        peak,
        9,
        "lag-CRP of L{l}H{h} peaks at lag {}",
        peak as i64 - 8
    );

    // The same initialisation, untrained: no induction head anywhere.
    let fresh = ToyModel::untrained(cfg.clone()).unwrap();
    let model0 = export_and_load(&fresh, &tmp.path().join("untrained"));
    let r0 = heads::run(&model0, &probe_params(cfg.seq_len), &Progress::quiet()).unwrap();
    let (l, h, top0) = best(&r0, None, |h| h.induction_score);
    assert!(
        top0 < 0.2,
        "untrained copy has an induction head L{l}H{h}: {top0}"
    );
    assert!(r0.loss_second_copy > 0.8 * chance);
}

#[test]
fn clamping_a_previous_token_head_speeds_up_induction() {
    let cfg = ToyConfig {
        clamp_prev_token: Some((0, 0)),
        steps: 400,
        ..Default::default()
    };
    let (toy, clamped) = ToyModel::trained(cfg.clone(), 0, &mut |_| {}).unwrap();
    let (_, free) = trained();
    let c = clamped.steps_to_second_copy_loss(1.0, 10);
    let f = free.steps_to_second_copy_loss(1.0, 10);
    eprintln!("second-copy loss < 1 from step: clamped {c:?}, unclamped {f:?}");
    let c = c.expect("clamped model never learned to copy in 400 steps");
    // Unclamped, the 10-step mean first dips below 1 much later (or never).
    assert!(
        f.is_none_or(|f| 2 * c < f),
        "clamp did not speed up induction: clamped {c}, unclamped {f:?}"
    );
    assert!(tail_loss(&clamped, 50) < 0.6 * tail_loss(&free.clone_prefix(400), 50));

    // Engram's forward with the clamp intervention computes the clamped toy's function, and the
    // head probe (clamp applied) sees the clamped head and induction heads in layer 1.
    let tmp = tempfile::tempdir().unwrap();
    let model = export_and_load(&toy, tmp.path());
    let t = 2 * cfg.seq_len + 1;
    let clamp = toy.clamp_intervention(t).unwrap().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let rows = repeated_batch(&mut rng, cfg.vocab, cfg.seq_len, 4);
    let ours = toy.logits(&rows).unwrap();
    let batch = Batch::new(&rows, 0).unwrap();
    let theirs = model
        .forward(&batch, &mut Hooks::none().with(clamp.clone()))
        .unwrap();
    assert!(max_abs_diff(&ours, &theirs) < 1e-3);
    let unclamped = model.forward(&batch, &mut Hooks::none()).unwrap();
    assert!(
        max_abs_diff(&ours, &unclamped) > 1e-2,
        "the clamp changed nothing"
    );

    let r = heads::run_with(
        &model,
        &probe_params(cfg.seq_len),
        &[clamp],
        &Progress::quiet(),
    )
    .unwrap();
    let h00 = &r.heads[0];
    assert!(
        (h00.prev_token_score - 1.0).abs() < 1e-5,
        "{}",
        h00.prev_token_score
    );
    let (l, h, top) = best(&r, None, |h| h.induction_score);
    assert!(
        l == 1 && top > 0.5,
        "clamped model: best induction head L{l}H{h} {top}"
    );
}

/// Helper: a report truncated to its first `n` steps.
trait Prefix {
    fn clone_prefix(&self, n: usize) -> TrainReport;
}

impl Prefix for TrainReport {
    fn clone_prefix(&self, n: usize) -> TrainReport {
        TrainReport {
            history: self.history[..n.min(self.history.len())].to_vec(),
            seconds: self.seconds,
        }
    }
}

#[test]
fn toy_command_writes_model_tables_charts_and_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("toy");
    let table = paper_table();
    engram::cli::run([
        "engram",
        "--quiet",
        "toy",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "20",
        "--clamp",
        "0:1",
        "--cmr-table",
        table.to_str().unwrap(),
    ])
    .unwrap();
    for f in [
        "model/config.json",
        "model/model.safetensors",
        "untrained/model.safetensors",
        "training.parquet",
        "training_loss.png",
        "training_loss.svg",
        "heads/heads.parquet",
        "heads/lag_crp.parquet",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let df = read_parquet(&out.join("training.parquet")).unwrap();
    assert_eq!(df.height(), 20);
    let heads_df = read_parquet(&out.join("heads/heads.parquet")).unwrap();
    assert_eq!(heads_df.height(), 8);
    // The clamped head L0H1 is a perfect previous-token head in the probe.
    let prev = heads_df.column("prev_token_score").unwrap().f64().unwrap();
    assert!((prev.get(1).unwrap() - 1.0).abs() < 1e-5);
    let m = engram::report::manifest::Manifest::read(&out.join("manifest.json")).unwrap();
    assert_eq!(m.command, "toy");
    assert_eq!(m.params["clamp"], "0:1");
    assert_eq!(
        m.params["config"]["clamp_prev_token"],
        serde_json::json!([0, 1])
    );
    for f in &m.files {
        assert!(out.join(f).is_file(), "manifest lists missing {f}");
    }
    // Bad input: one-line errors, nothing written.
    for bad in [["--clamp", "5:0"], ["--clamp", "x"], ["--min-seq-len", "1"]] {
        let o = tmp.path().join("bad");
        let e = engram::cli::run(
            [
                "engram",
                "--quiet",
                "toy",
                "--out",
                o.to_str().unwrap(),
                "--steps",
                "1",
            ]
            .into_iter()
            .chain(bad),
        );
        let msg = e.expect_err("bad toy arguments accepted").to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(!o.exists(), "{bad:?} left an output directory");
    }
}
