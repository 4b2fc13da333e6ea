//! Relation-specific neurons (`engram neurons`, docs/methods.md §2): average precision against
//! sklearn, answer checking, top-k, deactivation mechanics, an end-to-end run on a tiny fixture
//! model with relations written by the test, CLI errors, and a small real-model run.

use crate::common::*;

use std::collections::HashMap;
use std::path::Path;

use engram::hooks::{HookPoint, Hooks};
use engram::model::{Batch, LoadOptions, Model};
use engram::probes::neurons::{
    self, answer_settled, average_precision, effective_k, is_correct, load_relations,
    standardised_difference, top_k, top_k_tiebreak, unescape_u, Kind, NeuronLayout, NeuronsParams,
};
use engram::progress::Progress;
use engram::report::table::read_parquet;

// ---------------------------------------------------------------------------------------------
// Pure functions

#[test]
fn average_precision_matches_sklearn() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/neurons/average_precision.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut n_ties = 0;
    for c in cases {
        let scores: Vec<f32> = c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let labels: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_bool().unwrap())
            .collect();
        let want = c["ap"].as_f64().unwrap();
        let got = average_precision(&scores, &labels);
        assert!(
            (got - want).abs() < 1e-12,
            "{}: engram {got} vs sklearn {want}",
            c["name"]
        );
        // The order of the inputs does not matter.
        let mut rev_s = scores.clone();
        let mut rev_l = labels.clone();
        rev_s.reverse();
        rev_l.reverse();
        assert!((average_precision(&rev_s, &rev_l) - want).abs() < 1e-12);
        let mut sorted = scores.clone();
        sorted.sort_by(f32::total_cmp);
        sorted.dedup();
        if sorted.len() < scores.len() {
            n_ties += 1;
        }
    }
    assert!(n_ties >= 4, "the fixture must exercise ties");
    // No positives: undefined.
    assert!(average_precision(&[0.1, 0.2], &[false, false]).is_nan());
}

#[test]
fn is_correct_cases() {
    let o = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(is_correct(" Paris, the capital", &o(&["Paris"])));
    assert!(is_correct("paris", &o(&["Paris"])));
    assert!(is_correct("\n  PARIS.", &o(&["Paris"])));
    assert!(is_correct(" New  York City", &o(&["New York"])));
    assert!(is_correct(" the United States", &o(&["United States"])));
    assert!(is_correct(" a guitarist", &o(&["guitarist"])));
    assert!(is_correct(" Lyon", &o(&["Paris", "Lyon"])));
    assert!(is_correct(" Brasília is", &o(&["Brasília"])));
    assert!(!is_correct(" London", &o(&["Paris"])));
    assert!(!is_correct(" in Paris", &o(&["Paris"])));
    assert!(!is_correct(" New", &o(&["New York"])));
    assert!(!is_correct("", &o(&["Paris"])));
    assert!(!is_correct(" anything", &o(&[""])));
    assert!(!is_correct(" theater", &o(&["ater"])));
}

#[test]
fn answer_settled_stops_only_when_the_verdict_is_final() {
    let o = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(answer_settled(" Paris", &o(&["Paris"])));
    assert!(answer_settled(" London", &o(&["Paris"])));
    assert!(answer_settled(" in", &o(&["Paris"])));
    assert!(!answer_settled(" Pa", &o(&["Paris"])));
    assert!(!answer_settled("", &o(&["Paris"])));
    assert!(!answer_settled(" \n", &o(&["Paris"])));
    assert!(!answer_settled(" the", &o(&["United States"])));
    assert!(!answer_settled(" the Uni", &o(&["United States"])));
    assert!(!answer_settled(" a", &o(&["guitarist"])));
    assert!(!answer_settled(" New", &o(&["New York", "Boston"])));
    assert!(!answer_settled(" Bras\u{FFFD}", &o(&["Brasília"])));
    assert!(answer_settled(" theater", &o(&["United States"])));
    // Exactness: whenever a prefix of a continuation is settled, its verdict is the verdict of
    // the whole continuation.
    let objects = o(&[
        "New York",
        "United States",
        "guitarist",
        "Paris",
        "an apple",
    ]);
    let texts = [
        " New York City",
        " New Jersey",
        " the United States of",
        " the Netherlands",
        " a guitarist and",
        " an apple a day",
        " an orange",
        "\n\n  PARIS, France",
        " Parisian",
        " the  united   states",
        " theater",
        " a",
        "",
    ];
    let mut n_settled_early = 0;
    for t in texts {
        let full = is_correct(t, &objects);
        let cuts: Vec<usize> = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect();
        for &c in &cuts {
            if answer_settled(&t[..c], &objects) {
                assert_eq!(is_correct(&t[..c], &objects), full, "{t:?} cut at {c}");
                if c < t.len() {
                    n_settled_early += 1;
                }
            }
        }
    }
    assert!(n_settled_early > 20, "{n_settled_early}");
}

#[test]
fn top_k_orders_by_score_then_index() {
    let s = [0.5f32, 0.9, f32::NAN, 0.9, -1.0, 0.7];
    assert_eq!(top_k(&s, 3), vec![1, 3, 5]);
    assert_eq!(top_k(&s, 10), vec![1, 3, 5, 0, 4, 2]);
    assert_eq!(top_k(&s, 0), Vec::<usize>::new());
    assert!(top_k(&[], 5).is_empty());
    let second = [0.0f32, 1.0, 5.0, 3.0, 0.0, 0.0];
    assert_eq!(top_k_tiebreak(&s, Some(&second), 3), vec![3, 1, 5]);
    // Standardised difference: positives {2, 4}, negatives {0, 0}: diff 3, std 1.658.
    let d = standardised_difference(&[(2.0, true), (4.0, true), (0.0, false), (0.0, false)]);
    assert!((d - 3.0 / 2.75f64.sqrt()).abs() < 1e-9, "{d}");
    assert_eq!(standardised_difference(&[(1.0, true), (1.0, false)]), 0.0);
    assert!(standardised_difference(&[(1.0, true)]).is_nan());
}

#[test]
fn k_rule_and_layout() {
    // The paper's share: 3000 of Llama-2-7B's 835,584 units gives 3000 back.
    let d = NeuronsParams::default();
    assert_eq!(effective_k(3000, 835_584, d.k_share), 3000);
    // SmolLM2-135M: 30 × (2 × 1536 + 576) = 109,440 units → 392.
    assert_eq!(effective_k(3000, 109_440, d.k_share), 392);
    assert_eq!(effective_k(100, 109_440, d.k_share), 100);
    assert_eq!(effective_k(3000, 10, d.k_share), 1);
    let l = NeuronLayout {
        n_layers: 3,
        d_mlp: 8,
        d_model: 4,
        gated: true,
    };
    assert_eq!(l.total(), 60);
    for id in 0..l.total() {
        let (layer, kind, index) = l.locate(id);
        assert!(index < l.width(kind));
        assert_eq!(l.id(layer, kind, index), id);
    }
    assert_eq!(l.locate(20), (1, Kind::Gate, 0));
    assert_eq!(l.locate(19), (0, Kind::Down, 3));
    let iv = l.zero_interventions(&[21, 20, 37, 21]);
    assert_eq!(iv.len(), 2);
    // Ungated MLP (GPT-2, NeoX): in units (mlp.hook_pre), then down units.
    let u = NeuronLayout { gated: false, ..l };
    assert_eq!(u.total(), 36);
    for id in 0..u.total() {
        let (layer, kind, index) = u.locate(id);
        assert_ne!(kind, Kind::Gate);
        assert_ne!(kind, Kind::Up);
        assert_eq!(u.id(layer, kind, index), id);
    }
    assert_eq!(u.locate(12), (1, Kind::In, 0));
    assert_eq!(u.locate(11), (0, Kind::Down, 3));
    assert_eq!(Kind::In.point(2), engram::hooks::HookPoint::MlpPre(2));
}

#[test]
fn unescape_and_relation_loading() {
    assert_eq!(unescape_u("Bras\\u00edlia"), "Brasília");
    assert_eq!(unescape_u("Bogot\\u00e1"), "Bogotá");
    assert_eq!(unescape_u("a\\uZZZZ b"), "a\\uZZZZ b");
    assert_eq!(unescape_u("plain"), "plain");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("r1.json"),
        r#"{"name": "r one", "prompt_templates": ["no slot", "{} is in"],
            "samples": [{"subject": "A", "object": "x"}, {"subject": "A", "object": "y"},
                        {"subject": " B ", "object": "Bras\\u00edlia"}, {"subject": "C", "object": ""}]}"#,
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "ignored").unwrap();
    let rels = load_relations(d, &[]).unwrap();
    assert_eq!(rels.len(), 1);
    let r = &rels[0];
    assert_eq!((r.id.as_str(), r.template.as_str()), ("r1", "{} is in"));
    assert_eq!(r.facts.len(), 2);
    assert_eq!(r.facts[0].objects, vec!["x", "y"]);
    assert_eq!(r.facts[1].subject, "B");
    assert_eq!(r.facts[1].objects, vec!["Brasília"]);
    assert_eq!(r.prompt("B"), "B is in");
    let e = load_relations(d, &["nope".into()]).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let empty = d.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = load_relations(&empty, &[]).unwrap_err().to_string();
    assert!(e.contains("no relation files"), "{e}");
    std::fs::write(d.join("bad.json"), "{").unwrap();
    let e = load_relations(d, &[]).unwrap_err().to_string();
    assert!(e.contains("bad.json"), "{e}");
    // The shipped data parses, and the double-escaped strings come out decoded.
    let lre = Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks-data/lre/factual");
    let all = load_relations(&lre, &[]).unwrap();
    assert_eq!(all.len(), 26);
    let cap = all.iter().find(|r| r.id == "country_capital_city").unwrap();
    assert!(cap
        .facts
        .iter()
        .any(|f| f.objects.contains(&"Brasília".to_string())));
    assert!(all.iter().all(|r| !r.facts.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// A tiny model with a character-level tokenizer

fn tiny_model(tok: &Path) -> Model {
    Model::load(
        fixture_dir("llama2").to_str().unwrap(),
        &LoadOptions {
            tokenizer: Some(tok.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap()
}

const TEMPLATES: [(&str, &str); 3] = [
    ("alpha_rel", "The capital of {} is"),
    ("beta_rel", "{} plays the"),
    ("gamma_rel", "People in {} speak"),
];

/// Subjects: distinct lowercase 4-letter strings (seeded).
fn subjects(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = vec![];
    while out.len() < n {
        let mut s = String::new();
        for _ in 0..4 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.push((b'a' + ((x >> 33) % 26) as u8) as char);
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Write relation files whose objects are the model's own greedy answers for 3 of every 4
/// subjects (and a wrong object otherwise). Returns relation → subject → expected correctness.
fn write_relations(model: &Model, dir: &Path) -> HashMap<String, HashMap<String, bool>> {
    std::fs::create_dir_all(dir).unwrap();
    let tok = model.tokenizer().unwrap();
    let mut expect = HashMap::new();
    for (ri, (id, template)) in TEMPLATES.iter().enumerate() {
        let subs = subjects(24, ri as u64 + 7);
        let prompts: Vec<Vec<u32>> = subs
            .iter()
            .map(|s| model.encode(&template.replace("{}", s)).unwrap())
            .collect();
        let gen = model.generate(&prompts, 8, &mut Hooks::none()).unwrap();
        let mut samples = vec![];
        let mut exp = HashMap::new();
        for (si, (s, g)) in subs.iter().zip(gen).enumerate() {
            let text = tok.decode(&g, true).unwrap();
            let answer: String = text
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .take(2)
                .collect();
            let answer = answer.trim().to_string();
            let object = if si % 4 != 3 && !answer.is_empty() {
                answer
            } else {
                "~~".to_string()
            };
            // What the probe will decide: it generates len(" " + object) + 2 tokens.
            let n = (tok.encode(&format!(" {object}"), false).unwrap().len() + 2).min(8);
            let shown = tok.decode(&g[..n.min(g.len())], true).unwrap();
            let right = is_correct(&shown, std::slice::from_ref(&object));
            exp.insert(s.clone(), right);
            samples.push(serde_json::json!({"subject": s, "object": object}));
        }
        let rel = serde_json::json!({
            "name": id.replace('_', " "),
            "prompt_templates": [template],
            "samples": samples,
        });
        std::fs::write(
            dir.join(format!("{id}.json")),
            serde_json::to_string(&rel).unwrap(),
        )
        .unwrap();
        expect.insert(id.to_string(), exp);
    }
    expect
}

fn col_str(df: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    df.column(name)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|s| s.unwrap().to_string())
        .collect()
}

fn col_f64(df: &polars::prelude::DataFrame, name: &str) -> Vec<f64> {
    df.column(name)
        .unwrap()
        .f64()
        .unwrap()
        .iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect()
}

fn col_u32(df: &polars::prelude::DataFrame, name: &str) -> Vec<u32> {
    df.column(name)
        .unwrap()
        .u32()
        .unwrap()
        .iter()
        .map(|x| x.unwrap())
        .collect()
}

#[test]
fn deactivation_hooks_zero_exactly_the_selected_units() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_char_tokenizer(&tmp.path().join("tok"));
    let model = tiny_model(&tok);
    let layout = NeuronLayout::of(&model);
    let ids = vec![
        layout.id(0, Kind::Gate, 3),
        layout.id(1, Kind::Up, 0),
        layout.id(3, Kind::Down, 63),
        layout.id(2, Kind::Down, 5),
    ];
    let seqs = vec![
        model.encode("The capital of abcd is").unwrap(),
        model.encode("xy plays").unwrap(),
    ];
    let batch = Batch::new(&seqs, model.pad_id()).unwrap();
    let points: Vec<HookPoint> = layout.points().iter().map(|p| p.2).collect();
    let mut clean = Hooks::capture_points(&points);
    let logits = model.forward(&batch, &mut clean).unwrap();
    let mut hooks = layout.deactivation_hooks(&ids);
    let mut capt = Hooks::capture_points(&points);
    for iv in hooks.interventions() {
        capt.add(iv.clone());
    }
    let logits_off = model.forward(&batch, &mut capt).unwrap();
    for id in 0..layout.total() {
        let (l, kind, i) = layout.locate(id);
        let get = |h: &Hooks| -> Vec<f32> {
            h.cache
                .get(kind.point(l))
                .unwrap()
                .narrow(2, i, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let off = get(&capt);
        if ids.contains(&id) {
            assert!(off.iter().all(|&x| x == 0.0), "{id} not zeroed");
            assert!(get(&clean).iter().any(|&x| x != 0.0));
        } else if l == 0 && kind == Kind::Gate {
            // Upstream of every edit: untouched.
            assert_eq!(off, get(&clean));
        }
    }
    assert!(max_abs_diff(&logits, &logits_off) > 1e-4);
    // The mean responses exclude pads and BOS: a prompt alone and in a padded batch agree.
    let alone = neurons::prompt_responses(&model, &seqs[1..], false).unwrap();
    let both = neurons::prompt_responses(&model, &seqs, false).unwrap();
    let err = alone[0]
        .iter()
        .zip(&both[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "padded vs alone: {err}");
    let with_bos = neurons::prompt_responses(&model, &seqs[1..], true).unwrap();
    assert!(with_bos[0]
        .iter()
        .zip(&alone[0])
        .any(|(a, b)| (a - b).abs() > 1e-4));
    hooks = Hooks::none();
    assert!(hooks.is_empty());
}

#[test]
fn end_to_end_on_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_char_tokenizer(&tmp.path().join("tok"));
    let model = tiny_model(&tok);
    let rel_dir = tmp.path().join("relations");
    let expect = write_relations(&model, &rel_dir);
    let layout = NeuronLayout::of(&model);
    let params = NeuronsParams {
        relations: rel_dir.clone(),
        k: 64,
        k_share: 0.1,
        eval_per_relation: 8,
        max_prompts: 0,
        batch_size: 5,
        min_correct: 3,
        k_multiples: vec![0.5, 1.0, 4.0],
        ..Default::default()
    };
    let report = neurons::run(&model, &params, &Progress::quiet()).unwrap();
    let k = 64;
    assert_eq!(report.k, k);
    assert_eq!(report.k_values, vec![32, 64, 256]);

    // Batched greedy answers agree with the one-batch generation that wrote the objects.
    assert_eq!(report.prompts.len(), 72);
    for p in &report.prompts {
        assert_eq!(
            p.correct, expect[&p.relation][&p.subject],
            "{} {:?} → {:?} (object {:?})",
            p.relation, p.prompt, p.generated, p.object
        );
    }
    for r in &report.relations {
        assert_eq!((r.n_eval, r.n_detection), (8, 16));
        assert_eq!(r.status, "ok", "{r:?}");
        let want = report
            .prompts
            .iter()
            .filter(|p| p.relation == r.relation && p.split == "evaluation")
            .filter(|p| p.correct)
            .count();
        assert_eq!(r.eval_correct, want);
        // Evaluation and detection subjects are disjoint.
        let subj = |split: &str| -> Vec<&String> {
            report
                .prompts
                .iter()
                .filter(|p| p.relation == r.relation && p.split == split)
                .map(|p| &p.subject)
                .collect()
        };
        let det = subj("detection");
        assert!(subj("evaluation").iter().all(|s| !det.contains(s)));
    }

    let out = tmp.path().join("run");
    let files = neurons::write_outputs(&report, &out).unwrap();
    for stem in [
        "neurons_per_layer",
        "drop_heatmap",
        "cumulative_k",
        "overlap_heatmap",
    ] {
        for ext in ["png", "svg"] {
            let f = format!("{stem}.{ext}");
            assert!(files.contains(&f), "{f} not listed");
            assert!(std::fs::metadata(out.join(&f)).unwrap().len() > 500);
        }
    }

    // neurons.parquet
    let df = read_parquet(&out.join("neurons.parquet")).unwrap();
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "relation",
            "layer",
            "kind",
            "index",
            "ap",
            "rank",
            "separation"
        ]
        .map(String::from)
    );
    assert_eq!(df.height(), 3 * k);
    let (rel, kind) = (col_str(&df, "relation"), col_str(&df, "kind"));
    let (layer, index, rank) = (
        col_u32(&df, "layer"),
        col_u32(&df, "index"),
        col_u32(&df, "rank"),
    );
    let ap = col_f64(&df, "ap");
    let sep = col_f64(&df, "separation");
    for i in 0..df.height() {
        assert!((layer[i] as usize) < layout.n_layers);
        let width = if kind[i] == "down" {
            layout.d_model
        } else {
            assert!(kind[i] == "gate" || kind[i] == "up", "{}", kind[i]);
            layout.d_mlp
        };
        assert!((index[i] as usize) < width);
        assert!((0.0..=1.0).contains(&ap[i]));
        if i > 0 && rel[i] == rel[i - 1] {
            assert_eq!(rank[i], rank[i - 1] + 1);
            assert!(ap[i] <= ap[i - 1]);
            if ap[i] == ap[i - 1] {
                assert!(sep[i] <= sep[i - 1], "AP ties are ordered by separation");
            }
        } else {
            assert_eq!(rank[i], 1);
        }
    }
    // The selection is better than chance: with 1 positive per 4 negatives a random score has
    // AP ≈ 0.2; a relation's best neurons separate its prompts (templates differ) far better.
    for r in TEMPLATES.map(|t| t.0) {
        let top = (0..df.height()).find(|&i| rel[i] == r).unwrap();
        assert!(ap[top] > 0.6, "{r}: top AP {}", ap[top]);
    }

    // deactivation.parquet: 3×3 matrix at k, 2 cumulative rows per relation, random at 3 k's.
    let df = read_parquet(&out.join("deactivation.parquet")).unwrap();
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "relation_neurons",
            "eval_relation",
            "k",
            "accuracy_before",
            "accuracy_after",
            "drop"
        ]
        .map(String::from)
    );
    assert_eq!(df.height(), 9 + 3 * 2 + 3 * 3);
    let (by, on, kk) = (
        col_str(&df, "relation_neurons"),
        col_str(&df, "eval_relation"),
        col_u32(&df, "k"),
    );
    let (before, after, drop) = (
        col_f64(&df, "accuracy_before"),
        col_f64(&df, "accuracy_after"),
        col_f64(&df, "drop"),
    );
    let mut changed = 0;
    for i in 0..df.height() {
        let rr = report
            .relations
            .iter()
            .find(|r| r.relation == on[i])
            .unwrap();
        assert_eq!(before[i], rr.eval_accuracy);
        assert!((drop[i] - (before[i] - after[i]) / before[i]).abs() < 1e-12);
        assert!((0.0..=1.0).contains(&after[i]));
        if by[i] != "random" && by[i] != on[i] {
            assert_eq!(kk[i] as usize, k, "cumulative rows are own-relation only");
        }
        if after[i] != before[i] {
            changed += 1;
        }
    }
    // Zeroing 256 of 1280 units of a random model changes its answers.
    let big = (0..df.height())
        .filter(|&i| kk[i] == 256 && by[i] != "random")
        .map(|i| drop[i].abs())
        .fold(0f64, f64::max);
    assert!(big > 0.0, "deactivating 256 neurons changed nothing");
    assert!(changed > 0);

    // overlap.parquet: symmetric, the diagonal is the whole set.
    let df = read_parquet(&out.join("overlap.parquet")).unwrap();
    assert_eq!(df.height(), 9);
    let (a, b) = (col_str(&df, "relation_a"), col_str(&df, "relation_b"));
    let (shared, jac) = (col_u32(&df, "shared"), col_f64(&df, "jaccard"));
    for i in 0..9 {
        if a[i] == b[i] {
            assert_eq!((shared[i] as usize, jac[i]), (k, 1.0));
        } else {
            let j = (0..9).find(|&j| a[j] == b[i] && b[j] == a[i]).unwrap();
            assert_eq!(shared[i], shared[j]);
            let want = shared[i] as f64 / (2 * k - shared[i] as usize) as f64;
            assert!((jac[i] - want).abs() < 1e-12);
        }
    }
    let df = read_parquet(&out.join("relations.parquet")).unwrap();
    assert_eq!(col_str(&df, "status"), vec!["ok"; 3]);
}

// ---------------------------------------------------------------------------------------------
// The command line

#[test]
fn cli_runs_and_rejects_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tok = write_char_tokenizer(&d.join("tok"));
    let model = tiny_model(&tok);
    let rel_dir = d.join("relations");
    write_relations(&model, &rel_dir);
    let fixture = fixture_dir("llama2");
    let (m, t, r) = (
        fixture.to_str().unwrap(),
        tok.to_str().unwrap(),
        rel_dir.to_str().unwrap(),
    );
    let out = d.join("out");
    let o = out.to_str().unwrap();

    let missing = d.join("no-such-dir");
    let base = |rel: &str| -> Vec<String> {
        [
            "neurons",
            "--quiet",
            "--model",
            m,
            "--tokenizer",
            t,
            "--relations",
            rel,
            "--out",
            o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = base(missing.to_str().unwrap());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_one_line_error(&a, "no-such-dir");
    assert_one_line_error(&a, "not a directory");
    let args = base(r);
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--only", "alpha_rel,nope"]);
    assert_one_line_error(&a, "relation `nope`");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--k-share", "0"]);
    assert_one_line_error(&a, "--k-share");
    assert!(!out.exists(), "a failed run left outputs");

    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend([
        "--only",
        "alpha_rel,gamma_rel",
        "--k",
        "20",
        "--k-share",
        "0.5",
        "--k-multiples",
        "0.5,1",
        "--eval-per-relation",
        "6",
        "--min-correct",
        "2",
    ]);
    let (code, stdout, err) = engram(&a);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("alpha_rel"), "{stdout}");
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(man["command"], "neurons");
    assert_eq!(man["params"]["k"], 20);
    assert_eq!(man["seed"], 0);
    // The fixture folder holds two .safetensors files: "multi:<sha>,<sha>".
    let sha = man["model"]["sha256"].as_str().unwrap();
    assert!(sha.len() >= 64 && sha.chars().filter(char::is_ascii_hexdigit).count() >= 64);
    let files: Vec<&str> = man["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "neurons.parquet",
        "deactivation.parquet",
        "overlap.parquet",
        "drop_heatmap.png",
        "cumulative_k.svg",
    ] {
        assert!(files.contains(&f), "{f} missing from {files:?}");
        assert!(out.join(f).is_file());
    }
    let notes = man["notes"].to_string();
    assert!(notes.contains("k = min(requested 20"), "{notes}");
    let df = read_parquet(&out.join("neurons.parquet")).unwrap();
    assert_eq!(df.height(), 2 * 20);
}

// ---------------------------------------------------------------------------------------------
// A real model

#[test]
fn smollm2_relation_neurons() {
    let Some(model) = real_model("smollm2") else {
        return;
    };
    let lre = Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks-data/lre/factual");
    let params = NeuronsParams {
        relations: lre,
        only: vec![
            "country_capital_city".into(),
            "person_plays_pro_sport".into(),
        ],
        k: 100,
        eval_per_relation: 12,
        max_prompts: 60,
        k_multiples: vec![1.0],
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let report = neurons::run(&model, &params, &Progress::quiet()).unwrap();
    eprintln!("smollm2 neurons: {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(report.k, 100);
    for r in &report.relations {
        eprintln!(
            "{}: eval {}/{} detection {}/{} {}",
            r.relation, r.eval_correct, r.n_eval, r.detection_correct, r.n_detection, r.status
        );
    }
    let cap = report
        .relations
        .iter()
        .find(|r| r.relation == "country_capital_city")
        .unwrap();
    assert_eq!(cap.status, "ok");
    assert!(cap.eval_accuracy >= 0.5, "{cap:?}");
    let ok = report.ok_relations();
    assert!(!ok.is_empty());
    for name in &ok {
        let own = report.drop_at(name, name, 100).unwrap();
        let random = report.drop_at("random", name, 100).unwrap();
        eprintln!("{name}: own drop {own:.3}, random {random:.3}");
        assert!(own.is_finite() && random.is_finite());
    }
    for (name, ns) in &report.selected {
        assert!(ns[0].ap > 0.9, "{name}: top AP {}", ns[0].ap);
    }

    // Stopping settled prompts early (as the deactivation runs do) gives the same verdicts as
    // generating every prompt's full budget, with and without deactivated neurons.
    let tok = model.tokenizer().unwrap();
    let rels = load_relations(&params.relations, &params.only).unwrap();
    let mut prompts = vec![];
    for (ri, r) in rels.iter().enumerate() {
        for f in r.facts.iter().take(20) {
            let text = r.prompt(&f.subject);
            prompts.push(neurons::Prompt {
                relation: ri,
                subject: f.subject.clone(),
                objects: f.objects.clone(),
                ids: tok.encode(&text, true).unwrap(),
                text,
                max_new: 6,
            });
        }
    }
    let refs: Vec<&neurons::Prompt> = prompts.iter().collect();
    let ids: Vec<usize> = report.selected[0].1.iter().map(|n| n.id).collect();
    for hooks in [Hooks::none(), report.layout.deactivation_hooks(&ids)] {
        let full = neurons::greedy_eval(&model, &refs, &hooks, 8, false, None).unwrap();
        let early = neurons::greedy_eval(&model, &refs, &hooks, 8, true, None).unwrap();
        let mut shorter = 0;
        for (f, e) in full.iter().zip(&early) {
            assert_eq!(f.1, e.1, "{f:?} vs {e:?}");
            assert!(f.0.starts_with(&e.0), "{f:?} vs {e:?}");
            shorter += usize::from(e.0.len() < f.0.len());
        }
        assert!(shorter > 0, "no prompt stopped early");
        assert!(full.iter().any(|f| f.1), "no correct answer to compare");
    }
}
