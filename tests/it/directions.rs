//! The directions probe (docs/methods.md §4): data readers, the four parts on a tiny fixture, the
//! comparison's identities (a model against itself, against a perturbed copy), outputs, and the
//! toy base / post-trained pair.

use crate::common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use engram::model::{LoadOptions, Model};
use engram::probes::directions::{self, compare, output, toy, DirectionsData, Samples};
use engram::progress::Progress;
use engram::report::table::read_parquet;

#[test]
fn csv_and_data_files() {
    let rows = directions::parse_csv("a,b\n\"x, \"\"y\"\"\",2\r\nlast,\"\"\n").unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1], vec!["x, \"y\"".to_string(), "2".to_string()]);
    assert_eq!(rows[2], vec!["last".to_string(), String::new()]);
    assert!(directions::parse_csv("a,\"open\n").is_err());

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks-data");
    let d = DirectionsData::load(
        &root,
        "cities",
        &["country_region".into(), "lre_facts".into()],
        &directions::ALL_PARTS,
    )
    .unwrap();
    for set in [&d.statements, &d.heldout] {
        let t = set.iter().filter(|s| s.label).count();
        assert_eq!(2 * t, set.len(), "balanced true/false");
    }
    assert!(d.statements.iter().any(|s| s.train) && d.statements.iter().any(|s| !s.train));
    assert!(d.harmful.iter().any(|s| !s.train) && d.harmless.iter().any(|s| !s.train));
    let p = directions::DirectionsParams::default();
    let s = Samples::draw(&d, &p).unwrap();
    assert_eq!(s.train.len(), p.n_train);
    assert_eq!(s.train.iter().filter(|x| x.label).count(), p.n_train / 2);
    assert_eq!(s.harmful_test.len(), p.n_refusal_test);
    // Patching pairs share the subject ("The city of X is in").
    for (t, f) in &s.pairs {
        assert!(t.label && !f.label);
        let subj = |x: &str| x.rsplit_once(" is in ").map(|p| p.0.to_string());
        assert_eq!(subj(&t.text), subj(&f.text));
    }
    // Same seed, same samples; the test split never leaks into training.
    let s2 = Samples::draw(&d, &p).unwrap();
    assert_eq!(s.train, s2.train);
    assert!(s.test.iter().all(|x| !x.train) && s.train.iter().all(|x| x.train));

    // A missing file and a wrong header are one-line errors naming the file.
    let e = DirectionsData::load(&root, "nope", &[], &directions::ALL_PARTS)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.csv"), "{e}");
    // Each part reads only its own files: `--only truth` needs no instructions, `--only
    // refusal` no statements.
    let only = tempfile::tempdir().unwrap();
    let st = only.path().join("statements");
    std::fs::create_dir_all(&st).unwrap();
    std::fs::copy(root.join("statements/cities.csv"), st.join("cities.csv")).unwrap();
    let d = DirectionsData::load(only.path(), "cities", &[], &[directions::Part::Truth]).unwrap();
    assert!(!d.statements.is_empty() && d.harmful.is_empty());
    assert!(d.sources.iter().all(|s| !s.contains("instructions")));
    let e = DirectionsData::load(only.path(), "cities", &[], &[directions::Part::Refusal])
        .unwrap_err()
        .to_string();
    assert!(e.contains("harmful.csv"), "{e}");
    let ent = DirectionsData::load(only.path(), "nope", &[], &[directions::Part::Entropy]);
    assert!(ent.is_ok_and(|d| d.sources.is_empty()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.csv"), "text,label\nx,1\n").unwrap();
    let e = directions::read_statements(&dir.path().join("bad.csv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv") && e.contains("header"), "{e}");
}

#[test]
fn refusal_phrases() {
    use directions::parts::is_refusal;
    assert!(is_refusal(" I’m sorry, but I can't help"));
    assert!(is_refusal("I cannot help with that ."));
    assert!(is_refusal("\"Sorry, no"));
    assert!(!is_refusal("Sure , here is how ."));
    assert!(!is_refusal("Creating a bomb requires"));
    // Identity preambles: a refusal only when a refusal phrase follows the first clause.
    assert!(is_refusal(
        "As an AI language model, I cannot provide instructions"
    ));
    assert!(is_refusal("As an AI assistant, I'm sorry but"));
    assert!(!is_refusal(
        "As an AI language model, I don't have real-time data"
    ));
    assert!(!is_refusal("As an AI, I can help with that"));
    assert!(!is_refusal("As an AI language model developed by"));
}

#[test]
fn post_instruction_positions() {
    use directions::parts::common_suffix_len;
    let seqs = vec![
        vec![1, 2, 9, 7, 8],
        vec![3, 9, 7, 8],
        vec![4, 4, 4, 5, 7, 8],
    ];
    assert_eq!(common_suffix_len(&seqs, 8), 2);
    assert_eq!(common_suffix_len(&seqs, 1), 1);
    assert_eq!(common_suffix_len(&[vec![1, 2], vec![3, 4]], 8), 1);
    assert_eq!(common_suffix_len(&[vec![5, 6], vec![5, 6]], 8), 2);
}

/// The llama fixture (vocab 128) with the toy's word-level tokenizer attached.
fn fixture_with_tokenizer(dir: &std::path::Path) -> Model {
    let mut m = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tok = toy::tokenizer().unwrap();
    assert!(tok.vocab_size() <= m.cfg().vocab_size);
    m.tokenizer = Some(tok);
    m
}

/// A copy of the llama fixture with every weight perturbed by a fixed pattern (relative 10%).
fn perturbed_fixture(dir: &std::path::Path) {
    let src = common::fixture_dir("llama");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let w = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in w {
        let t = t.to_dtype(DType::F32).unwrap();
        let n = t.elem_count();
        let noise: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 0.7548).sin() * 43758.547).fract() - 0.5)
            .collect();
        let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
        let scale = t
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let t = (&t + (noise * (0.2 * scale)).unwrap()).unwrap();
        out.insert(k, t);
    }
    candle_core::safetensors::save(&out, dir.join("model.safetensors")).unwrap();
}

#[test]
fn fixture_parts_and_comparison_identities() {
    let a = fixture_with_tokenizer(&common::fixture_dir("llama"));
    let data = toy::data(0);
    let mut p = toy::params();
    p.max_new = 3;
    p.band = Some((1, 3));
    let s = Samples::draw(&data, &p).unwrap();
    let pr = Progress::quiet();
    let ra = directions::run(&a, "a", &s, &p, &pr).unwrap();
    let nl = a.cfg().n_layers;
    let t = ra.truth.as_ref().unwrap();
    assert_eq!(t.layers.len(), nl);
    assert_eq!(t.directions[0].len(), a.cfg().d_model);
    for l in &t.layers {
        assert!((0.0..=1.0).contains(&l.acc_test) && (0.0..=1.0).contains(&l.acc_train));
        assert_eq!(l.acc_heldout.len(), 1);
    }
    // In-sample, the difference of means separates at least as well as chance on average.
    let mean_train = t.layers.iter().map(|l| l.acc_train).sum::<f64>() / nl as f64;
    assert!(mean_train >= 0.5, "train accuracy {mean_train}");
    assert!(t.intervention.nif.is_finite());
    assert_eq!(t.intervention.labels.len(), p.n_intervene);
    let r = ra.refusal.as_ref().unwrap();
    assert_eq!(r.diffs.len(), nl + 1);
    assert!((directions::parts::norm(&r.direction) - 1.0).abs() < 1e-4);
    assert_eq!(r.conditions.len(), 4);
    assert!(r
        .conditions
        .iter()
        .all(|c| c.completions.len() == p.n_refusal_test));
    let pt = ra.patching.as_ref().unwrap();
    assert_eq!(pt.effect.len(), nl);
    assert_eq!(pt.labels.len(), pt.positions);
    // Patching the last position of the final layer's residual restores the true run exactly.
    let last = pt.effect[nl - 1][0];
    assert!(
        (last - 1.0).abs() < 1e-3,
        "final-layer last-position effect {last}"
    );
    let e = ra.entropy.as_ref().unwrap();
    assert_eq!(e.selected.len(), p.entropy_k);
    assert_eq!(e.candidates.len(), a.cfg().d_mlp / 4);
    let sel_max = e
        .candidates
        .iter()
        .filter(|c| c.selected)
        .map(|c| c.cos_var)
        .fold(0.0, f64::max);
    assert!(e
        .candidates
        .iter()
        .filter(|c| !c.selected)
        .all(|c| c.cos_var >= sel_max));

    // A model against itself: cosines 1, cross accuracy = own accuracy, r = 1, IoU = 1.
    let ra2 = directions::run(&a, "b", &s, &p, &pr).unwrap();
    let c = compare(&a, &ra, &a, &ra2, &s, &p, &pr).unwrap();
    for (_, v) in c.series("truth_cosine", "a·b") {
        assert!((v - 1.0).abs() < 1e-4, "self cosine {v}");
    }
    assert_eq!(
        c.series("truth_probe_acc", "a→b"),
        c.series("truth_probe_acc", "a→a")
    );
    assert!((c.value("patching_pearson_r", "a·b").unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(c.value("entropy_neuron_iou", "a·b"), Some(1.0));
    let nif = |d| c.value("truth_nif_transfer", d).unwrap();
    assert!((nif("a→b") - nif("a→a")).abs() < 1e-9);
    assert!(c.skipped.is_empty(), "{:?}", c.skipped);

    // A perturbed copy: same shapes, different directions.
    let dir = tempfile::tempdir().unwrap();
    perturbed_fixture(dir.path());
    let b = fixture_with_tokenizer(dir.path());
    let rb = directions::run(&b, "b", &s, &p, &pr).unwrap();
    let c = compare(&a, &ra, &b, &rb, &s, &p, &pr).unwrap();
    let cos = c.series("truth_cosine", "a·b");
    assert_eq!(cos.len(), nl);
    assert!(cos
        .iter()
        .all(|(_, v)| v.is_finite() && v.abs() <= 1.0 + 1e-6));
    assert!(cos.iter().any(|(_, v)| *v < 0.999), "{cos:?}");
    let iou = c.value("entropy_neuron_iou", "a·b").unwrap();
    assert!((0.0..=1.0).contains(&iou));
    assert_eq!(c.refusal_transfer.len(), 4);

    // Outputs: tables with the expected rows, charts, direction files.
    let out = tempfile::tempdir().unwrap();
    let files = output::write_outputs(&[&ra, &rb], Some(&c), out.path()).unwrap();
    for f in [
        "truth.parquet",
        "refusal.parquet",
        "patching.parquet",
        "entropy_neurons.parquet",
        "compare.parquet",
        "directions.safetensors",
        "directions_b.safetensors",
        "truth_accuracy.png",
        "cosine_by_layer.svg",
        "patching_a.png",
        "patching_diff.png",
        "refusal_rates.png",
        "refusal_candidates.parquet",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} missing from {files:?}");
        assert!(out.path().join(f).is_file(), "{f}");
    }
    let df = read_parquet(&out.path().join("patching.parquet")).unwrap();
    assert_eq!(df.height(), 2 * nl * pt.positions);
    let df = read_parquet(&out.path().join("refusal.parquet")).unwrap();
    assert_eq!(
        df.height(),
        (4 + 4) * p.n_refusal_test + 4 * p.n_refusal_test
    );
    let df = read_parquet(&out.path().join("refusal_candidates.parquet")).unwrap();
    assert_eq!(
        df.height(),
        r.candidates.len() + rb.refusal.as_ref().unwrap().candidates.len()
    );
    let d = candle_core::safetensors::load(out.path().join("directions.safetensors"), &Device::Cpu)
        .unwrap();
    assert_eq!(d["truth.resid_post"].dims(), &[nl, a.cfg().d_model]);
    assert_eq!(d["refusal.resid"].dims(), &[nl + 1, a.cfg().d_model]);
}

#[test]
fn cli_errors() {
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("x");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "engram",
            "directions",
            "--out",
            o.to_str().unwrap(),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        engram::cli::run(args)
    };
    let e = run(&["--only", "truth,bogus"]).unwrap_err().to_string();
    assert!(e.contains("bogus"), "{e}");
    let e = run(&["--band", "5:2"]).unwrap_err().to_string();
    assert!(e.contains("--band"), "{e}");
    let e = run(&["--refusal-range", "0.8:0.2"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--refusal-range"), "{e}");
    let e = run(&["--data", "/nonexistent-dir"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nonexistent"), "{e}");
    // Layers beyond the model: refused from its config before the weights load (they were
    // reported after the truth directions were fitted).
    let m = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama2");
    let m = m.to_str().unwrap();
    let e = run(&["-m", m, "--band", "0:999"]).unwrap_err().to_string();
    assert!(
        e.contains("--band 0:999 exceeds the model's 4 layers"),
        "{e}"
    );
    let e = run(&["-m", m, "--only", "refusal", "--refusal-layer", "5"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--refusal-layer 5 is out of range (0..=4"),
        "{e}"
    );
    assert!(!o.exists(), "no half-written output");
}

/// The toy pair: the post-trained copy refuses harmful instructions the base answers; the
/// refusal direction is found in the post-trained model and its ablation lowers refusal.
#[test]
fn toy_pair_refusal_and_comparison() {
    let pair = toy::pair(0, 150, 100).unwrap();
    let p = toy::params();
    let s = Samples::draw(&pair.data, &p).unwrap();
    let pr = Progress::quiet();
    let ra = directions::run(&pair.base, "a", &s, &p, &pr).unwrap();
    let rb = directions::run(&pair.tuned, "b", &s, &p, &pr).unwrap();
    let rate = |r: &directions::ModelReport, set: &str, iv: &str| {
        r.refusal
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.set == set && c.intervention == iv)
            .unwrap()
            .rate()
    };
    assert!(rate(&ra, "harmful", "none") <= 0.2, "base refuses");
    assert!(rate(&rb, "harmful", "none") >= 0.7, "tuned does not refuse");
    assert!(
        rate(&rb, "harmless", "none") <= 0.3,
        "tuned refuses harmless"
    );
    let rf = rb.refusal.as_ref().unwrap();
    // Candidates: every post-instruction position × every layer; the chosen one's ablation
    // lowers the refusal score of the harmful selection prompts.
    let nl = pair.tuned.cfg().n_layers;
    assert_eq!(rf.candidates.len(), (nl + 1) * rf.n_positions);
    let chosen: Vec<_> = rf.candidates.iter().filter(|c| c.chosen).collect();
    assert_eq!(chosen.len(), 1);
    assert_eq!(
        (chosen[0].layer, chosen[0].position),
        (rf.layer, rf.position)
    );
    assert!(
        chosen[0].bypass < rf.base_score.0,
        "ablation does not lower the refusal score: {} vs {}",
        chosen[0].bypass,
        rf.base_score.0
    );
    assert!(chosen[0].kl.is_finite() && chosen[0].kl >= -1e-9);
    assert!(rate(&rb, "harmful", "ablation") <= rate(&rb, "harmful", "none"));
    let c = compare(&pair.base, &ra, &pair.tuned, &rb, &s, &p, &pr).unwrap();
    // The tuned model is a fine-tuned copy: its truth directions stay close to the base's.
    let cos = c.series("truth_cosine", "a·b");
    let last = cos.last().unwrap().1;
    assert!(last > 0.3, "truth direction cosine {last}");
    assert!(c.value("patching_pearson_r", "a·b").unwrap().is_finite());
}
