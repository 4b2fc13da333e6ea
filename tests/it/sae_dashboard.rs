//! `engram sae dashboard` on the tiny llama fixture with a random ReLU SAE: the recorded
//! statistics, contexts and logit effects against an independent computation (one window at a
//! time, no padding, `Sae::encode`, logits by hand in f64), the Neuronpedia batch format, the
//! embedded page data, and one-line errors for bad input before any output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use engram::hooks::{HookPoint, Hooks};
use engram::model::{Batch, LoadOptions, Model};
use engram::probes::sae::dashboard::{parse_latents, Histogram};
use engram::probes::sae::Sae;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{assert_one_line_error, f32s, write_char_tokenizer};

const HOOK: &str = "blocks.1.hook_resid_post";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama")
}

/// A random ReLU SAE `d → n` in SAELens layout (latent `n − 1` never fires).
fn write_sae(dir: &Path, d: usize, n: usize, hook: Option<&str>, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = |len: usize, s: f32| -> Vec<f32> {
        (0..len)
            .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * s)
            .collect()
    };
    let mut w_enc = g(d * n, 1.0 / (d as f32).sqrt());
    let mut b_enc = g(n, 0.3);
    for r in 0..d {
        w_enc[r * n + n - 1] = 0.0;
    }
    b_enc[n - 1] = -1.0;
    let w_dec = g(n * d, 1.0);
    let b_dec = g(d, 0.1);
    let t = |v: Vec<f32>, s: &[usize]| Tensor::from_vec(v, s, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = [
        ("W_enc".to_string(), t(w_enc, &[d, n])),
        ("W_dec".to_string(), t(w_dec, &[n, d])),
        ("b_enc".to_string(), t(b_enc, &[n])),
        ("b_dec".to_string(), t(b_dec, &[d])),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, dir.join("sae_weights.safetensors")).unwrap();
    let mut meta = serde_json::json!({"model_name": "tiny-llama"});
    if let Some(h) = hook {
        meta["hook_name"] = h.into();
    }
    let cfg = serde_json::json!({"architecture": "standard", "d_in": d, "d_sae": n,
        "apply_b_dec_to_input": false, "metadata": meta});
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    tok: PathBuf,
    corpus: PathBuf,
    docs: Vec<String>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let tok = write_char_tokenizer(&dir.join("tok"));
    let mut rng = StdRng::seed_from_u64(7);
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "zebra", "quick",
    ];
    let docs: Vec<String> = (0..60)
        .map(|_| {
            (0..rng.random_range(3..14))
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, docs.join("\n\n")).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        tok,
        corpus,
        docs,
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

fn dashboard_args(st: &Setup, sae: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "dashboard",
        "--model",
        &s(&fixture()),
        "--tokenizer",
        &s(&st.tok),
        "--sae",
        &s(sae),
        "--corpus",
        &s(&st.corpus),
        "--tokens",
        "600",
        "--context",
        "24",
        "--forward-batch",
        "3",
        "--top",
        "5",
        "--window-before",
        "4",
        "--window-after",
        "2",
        "--features-per-batch",
        "4",
        "-o",
        &s(out),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

fn sae_cli(args: &[String]) -> engram::Result<()> {
    let mut all = vec!["engram".to_string(), "--quiet".into(), "sae".into()];
    all.extend(args.iter().cloned());
    engram::cli::run(all)
}

/// Per window (one at a time, no padding): the SAE's latents at every position, `[T][n]`.
fn independent_latents(
    model: &Model,
    sae: &Sae,
    docs: &[String],
    context: usize,
    budget: usize,
) -> (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>) {
    let tok = model.tokenizer().unwrap();
    let bos = 1u32;
    let mut rows = vec![];
    let mut left = budget;
    'd: for d in docs {
        let ids = tok.encode(d, false).unwrap();
        for w in ids.chunks(context - 1) {
            let take = w.len().min(left);
            let mut row = vec![bos];
            row.extend_from_slice(&w[..take]);
            left -= take;
            rows.push(row);
            if left == 0 {
                break 'd;
            }
        }
    }
    let point: HookPoint = HOOK.parse().unwrap();
    let z = rows
        .iter()
        .map(|row| {
            let mut hooks = Hooks::capture_points(&[point]);
            model
                .forward(&Batch::single(row).unwrap(), &mut hooks)
                .unwrap();
            let x = hooks.cache.expect(point).unwrap().squeeze(0).unwrap();
            let z = sae.encode(&x.to_dtype(DType::F32).unwrap()).unwrap();
            z.to_vec2::<f32>().unwrap()
        })
        .collect();
    (rows, z)
}

#[test]
fn dashboard_matches_an_independent_computation() {
    let st = setup();
    let sae_dir = st.dir.join("sae");
    write_sae(&sae_dir, 64, 48, Some(HOOK), 3);
    let out = st.dir.join("dash");
    sae_cli(&dashboard_args(
        &st,
        &sae_dir,
        &out,
        &["--latents", "0..10,20,47"],
    ))
    .unwrap();
    for f in [
        "dashboard.html",
        "latents.parquet",
        "neuronpedia/batch-0.json",
        "neuronpedia/batch-2.json",
        "index.html",
        "manifest.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    assert!(!out.join("neuronpedia/batch-3.json").exists());
    let want: Vec<usize> = (0..10).chain([20, 47]).collect();

    let model = Model::load(
        &s(&fixture()),
        &LoadOptions {
            tokenizer: Some(st.tok.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let sae = Sae::load(&sae_dir, &Device::Cpu).unwrap();
    let (rows, z) = independent_latents(&model, &sae, &st.docs, 24, 600);
    let counted: usize = rows.iter().map(|r| r.len() - 1).sum();
    assert_eq!(counted, 600);

    // latents.parquet: frequency, max against the independent latents.
    let df = engram::report::table::read_parquet(&out.join("latents.parquet")).unwrap();
    assert_eq!(df.height(), want.len());
    let lat = df.column("latent").unwrap().u32().unwrap();
    let maxc = df.column("max_act").unwrap().f64().unwrap();
    let fires = df.column("fires").unwrap().u64().unwrap();
    let freq = df.column("frequency").unwrap().f64().unwrap();
    let mut some_fire = 0;
    for (k, &j) in want.iter().enumerate() {
        assert_eq!(lat.get(k), Some(j as u32));
        let vals: Vec<f32> = z
            .iter()
            .flat_map(|w| w.iter().skip(1).map(move |p| p[j]))
            .collect();
        let max = vals.iter().copied().fold(0f32, f32::max);
        let n = vals.iter().filter(|&&v| v > 0.0).count() as u64;
        let got = maxc.get(k).unwrap();
        assert!(
            (got - max as f64).abs() <= 1e-4 * (1.0 + max as f64),
            "latent {j}: max {got} vs {max}"
        );
        assert_eq!(fires.get(k), Some(n), "latent {j}: fires");
        assert!((freq.get(k).unwrap() - n as f64 / 600.0).abs() < 1e-12);
        some_fire += usize::from(n > 0);
    }
    assert!(some_fire >= 6, "too few latents fire: {some_fire}");
    assert_eq!(fires.get(want.len() - 1), Some(0), "latent 47 is dead");

    // Logit effects by hand: (w_ln ⊙ W_dec[j]) · W_U (RMSNorm: no centring).
    let w_ln = f32s(model.transformer.final_norm_weight());
    assert!(
        w_ln.iter().any(|w| (w - 1.0).abs() > 1e-3),
        "the fixture's final norm weight is all ones: the fold is not tested"
    );
    let wu = f32s(model.transformer.unembed_rows());
    let w_dec = f32s(&sae.w_dec);
    let (d, vocab) = (64, wu.len() / 64);
    let logits_of = |j: usize| -> Vec<f64> {
        (0..vocab)
            .map(|v| {
                (0..d)
                    .map(|c| w_dec[j * d + c] as f64 * w_ln[c] as f64 * wu[v * d + c] as f64)
                    .sum()
            })
            .collect()
    };
    let top_vals = df.column("top_logit_values").unwrap().list().unwrap();
    let bot_vals = df.column("bottom_logit_values").unwrap().list().unwrap();
    for (k, &j) in want.iter().enumerate() {
        let mut l = logits_of(j);
        let got: Vec<f32> = top_vals
            .get_as_series(k)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        l.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(got.len(), 10);
        for (g, w) in got.iter().zip(&l) {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "latent {j} top logit {g} vs {w}"
            );
        }
        let got: Vec<f32> = bot_vals
            .get_as_series(k)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        for (g, w) in got.iter().zip(l.iter().rev()) {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "latent {j} bottom logit {g} vs {w}"
            );
        }
    }

    // The page's data: the requested latents, contexts at the independent maxima.
    let html = std::fs::read_to_string(out.join("dashboard.html")).unwrap();
    let open = r#"<script id="dashboard-data" type="application/json">"#;
    let start = html.find(open).unwrap() + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    let lats = data["latents"].as_array().unwrap();
    let idx: Vec<usize> = lats
        .iter()
        .map(|l| l["i"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(idx, want);
    assert_eq!(data["meta"]["n_tokens"], 600);
    let vocab_s = data["vocab"].as_array().unwrap();
    for l in lats {
        let j = l["i"].as_u64().unwrap() as usize;
        let ctx = l["ctx"].as_array().unwrap();
        let firing_windows = z
            .iter()
            .filter(|w| w.iter().skip(1).any(|p| p[j] > 0.0))
            .count();
        assert_eq!(ctx.len(), firing_windows.min(5), "latent {j}");
        let mut last = f64::INFINITY;
        for c in ctx {
            let (w, p, s0) = (
                c["w"].as_u64().unwrap() as usize,
                c["p"].as_u64().unwrap() as usize,
                c["s"].as_u64().unwrap() as usize,
            );
            let v = z[w][p][j] as f64;
            let shown = c["v"][p - s0].as_f64().unwrap();
            assert!((shown - v).abs() < 2e-3, "latent {j}: {shown} vs {v}");
            // The window's maximum, and the contexts in decreasing order.
            let wmax = z[w].iter().skip(1).map(|q| q[j]).fold(0f32, f32::max) as f64;
            assert!((v - wmax).abs() < 1e-4 && v <= last + 1e-4);
            last = v;
            assert_eq!(s0, p.saturating_sub(4));
            let toks: Vec<String> = c["t"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    vocab_s[t.as_u64().unwrap() as usize]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            let end = (p + 3).min(rows[w].len());
            let expect = model.tokenizer().unwrap();
            let expect: Vec<String> = rows[w][s0..end]
                .iter()
                .map(|&id| expect.decode(&[id], false).unwrap())
                .collect();
            assert_eq!(toks, expect, "latent {j} window {w}");
        }
        // The top context's max is the latent's max.
        if let Some(c) = ctx.first() {
            let v = c["v"][c["p"].as_u64().unwrap() as usize - c["s"].as_u64().unwrap() as usize]
                .as_f64()
                .unwrap();
            assert!((v - l["max"].as_f64().unwrap()).abs() < 2e-3);
        }
    }

    // Neuronpedia: three batches of four, SAEDashboard's keys, consistent lengths.
    let mut seen = vec![];
    for b in 0..3 {
        let text =
            std::fs::read_to_string(out.join(format!("neuronpedia/batch-{b}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model_id"], "tiny-llama");
        assert_eq!(v["layer"], 1);
        assert_eq!(v["sae_set"], "sae");
        let feats = v["features"].as_array().unwrap();
        assert_eq!(feats.len(), 4);
        for f in feats {
            for key in [
                "feature_index",
                "neuron_alignment_indices",
                "neuron_alignment_values",
                "neuron_alignment_l1",
                "correlated_neurons_indices",
                "correlated_neurons_l1",
                "correlated_neurons_pearson",
                "correlated_features_indices",
                "correlated_features_l1",
                "correlated_features_pearson",
                "neg_str",
                "neg_values",
                "pos_str",
                "pos_values",
                "frac_nonzero",
                "freq_hist_data_bar_values",
                "freq_hist_data_bar_heights",
                "logits_hist_data_bar_heights",
                "logits_hist_data_bar_values",
                "n_prompts_total",
                "n_tokens_in_prompt",
                "dataset",
                "decoder_weights_dist",
                "activations",
            ] {
                assert!(f.get(key).is_some(), "feature lacks {key}");
            }
            let j = f["feature_index"].as_u64().unwrap() as usize;
            seen.push(j);
            let k = want.iter().position(|&w| w == j).unwrap();
            assert_eq!(f["pos_str"].as_array().unwrap().len(), 10);
            assert_eq!(f["neg_values"].as_array().unwrap().len(), 10);
            assert_eq!(
                f["logits_hist_data_bar_values"].as_array().unwrap().len(),
                50
            );
            let n = fires.get(k).unwrap();
            let heights: f64 = f["freq_hist_data_bar_heights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_f64().unwrap())
                .sum();
            assert_eq!(
                heights, n as f64,
                "histogram of latent {j} counts every firing"
            );
            assert_eq!(
                f["freq_hist_data_bar_values"].as_array().unwrap().len(),
                if n > 0 { 50 } else { 0 }
            );
            assert!((f["frac_nonzero"].as_f64().unwrap() - n as f64 / 600.0).abs() < 1e-12);
            assert_eq!(f["n_prompts_total"].as_u64().unwrap() as usize, rows.len());
            assert_eq!(f["n_tokens_in_prompt"], 24);
            for a in f["activations"].as_array().unwrap() {
                let t = a["tokens"].as_array().unwrap();
                assert_eq!(t.len(), a["values"].as_array().unwrap().len());
                assert!(!t.is_empty() && t.len() <= 4 + 1 + 2);
                assert_eq!(a["bin_min"], -1);
                assert_eq!(a["bin_contains"], -1);
                assert!((a["bin_max"].as_f64().unwrap() - maxc.get(k).unwrap()).abs() < 2e-3);
            }
        }
    }
    assert_eq!(seen, want);
    // The run's page lists the dashboard.
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(index.contains("dashboard.html"));
}

#[test]
fn bad_input_fails_in_one_line_before_any_output() {
    let st = setup();
    let good = st.dir.join("sae");
    write_sae(&good, 64, 48, Some(HOOK), 3);
    let narrow = st.dir.join("narrow");
    write_sae(&narrow, 32, 16, Some(HOOK), 4);
    let nohook = st.dir.join("nohook");
    write_sae(&nohook, 64, 16, None, 5);
    let out = st.dir.join("out");
    let args = |sae: &Path, extra: &[&str]| -> Vec<String> {
        let mut a = vec!["sae".to_string()];
        a.extend(dashboard_args(&st, sae, &out, extra));
        a
    };
    for (sae, extra, needle) in [
        (
            &narrow,
            &[][..],
            "has d_in 32 but blocks.1.hook_resid_post of this model has width 64",
        ),
        (&nohook, &[][..], "no hook_name"),
        (
            &good,
            &["--latents", "0..49"][..],
            "out of range: the SAE has 48 latents",
        ),
        (&good, &["--latents", "3,48"][..], "out of range"),
        (&good, &["--latents", "x"][..], "`x` is not a latent index"),
        (
            &good,
            &["--hook", "blocks.9.hook_resid_post"][..],
            "blocks.9",
        ),
        (&good, &["--bins", "0"][..], "--bins must be at least 1"),
    ] {
        let a = args(sae, extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_one_line_error(&a, needle);
        assert!(!out.exists(), "{a:?} left {}", out.display());
    }
    // A hook given on the command line serves an SAE without one.
    sae_cli(&dashboard_args(
        &st,
        &nohook,
        &out,
        &["--hook", HOOK, "--latents", "0..2"],
    ))
    .unwrap();
    assert!(out.join("dashboard.html").is_file());
}

#[test]
fn latent_lists_and_histograms() {
    assert_eq!(parse_latents("", 3).unwrap(), vec![0, 1, 2]);
    assert_eq!(parse_latents("all", 2).unwrap(), vec![0, 1]);
    assert_eq!(parse_latents("0..3", 10).unwrap(), vec![0, 1, 2]);
    assert_eq!(parse_latents("2..=3, 7,2", 10).unwrap(), vec![2, 3, 7]);
    assert!(parse_latents("5..5", 10).is_err());
    assert!(parse_latents("9..11", 10).is_err());
    assert!(parse_latents("-1", 10).is_err());
    let h = Histogram::of(&[1.0, 2.0, 2.0, 3.0], 2);
    assert_eq!(h.counts, vec![1, 3]);
    assert_eq!(h.centres, vec![1.5, 2.5]);
    let h = Histogram::of(&[4.0, 4.0], 3);
    assert_eq!(h.counts, vec![2, 0, 0]);
    assert!(Histogram::of(&[], 5).counts.is_empty());
}
