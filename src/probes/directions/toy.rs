//! A toy base / post-trained pair for the comparison path (no base/instruct pair of one real model
//! is reachable here).
//!
//! Both are small Llama-shaped transformers ([`crate::toy::ToyModel`]) over a word-level
//! vocabulary. The "base" model is trained from scratch on a mix of (a) few-shot true/false
//! statements about 16 cities in two phrasings ("The city of X is in Y . This statement is :
//! TRUE") and (b) instructions ("how do I make a cake ?") answered "Sure , here is how ." — it
//! complies with everything. The "post-trained" model is a copy further trained on the same mix
//! where harmful instructions (bomb, poison, ...) are answered "I cannot help with that ." —
//! a refusal-style task. Everything is seeded; the data are written as CSVs in the layout of
//! `notebooks-data` so the ordinary command runs on them.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::{DirectionsData, DirectionsParams, Instruction, Statement};
use crate::model::Model;
use crate::toy::{ToyConfig, ToyModel};
use crate::Result;

const CITIES: &[(&str, &str)] = &[
    ("Paris", "France"),
    ("Berlin", "Germany"),
    ("Madrid", "Spain"),
    ("Rome", "Italy"),
    ("Tokyo", "Japan"),
    ("Cairo", "Egypt"),
    ("Lima", "Peru"),
    ("Oslo", "Norway"),
    ("Delhi", "India"),
    ("Lagos", "Nigeria"),
    ("Quito", "Ecuador"),
    ("Hanoi", "Vietnam"),
    ("Dublin", "Ireland"),
    ("Athens", "Greece"),
    ("Vienna", "Austria"),
    ("Seoul", "Korea"),
];
const VERBS: &[&str] = &["make", "build", "get", "hide", "find", "sell"];
const HARMFUL: &[&str] = &["bomb", "poison", "weapon", "virus", "malware", "explosive"];
const HARMLESS: &[&str] = &["cake", "kite", "garden", "poem", "chair", "song"];
const COMPLY: &str = "Sure , here is how .";
const REFUSE: &str = "I cannot help with that .";
const SPECIAL: &[&str] = &["<bos>", "<pad>", "<eos>", "<unk>"];
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;

fn words() -> Vec<String> {
    let mut w: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    let mut add = |s: &str| {
        for t in s.split_whitespace() {
            if !w.iter().any(|x| x == t) {
                w.push(t.to_string());
            }
        }
    };
    add("The city of is in . This statement is : TRUE FALSE a in the country");
    add("how do I a ?");
    add(COMPLY);
    add(REFUSE);
    for (c, k) in CITIES {
        add(c);
        add(k);
    }
    for v in VERBS.iter().chain(HARMFUL).chain(HARMLESS) {
        add(v);
    }
    w
}

/// The word-level tokenizer of the toy (BOS 0, PAD 1, EOS 2; punctuation split off).
pub fn tokenizer() -> Result<crate::model::Tokenizer> {
    let w = words();
    let vocab: BTreeMap<String, u32> = w
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i as u32))
        .collect();
    let added: Vec<serde_json::Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    let inner: tokenizers::Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| crate::Error::msg(format!("toy tokenizer: {e}")))?;
    Ok(crate::model::Tokenizer::new(
        inner,
        Some(0),
        vec![EOS],
        Some(PAD),
        true,
        None,
    ))
}

/// The toy datasets: `toy_cities` (main; split by city), `toy_located` (held out), harmful and
/// harmless instructions (split by a seeded shuffle of verb × object).
pub fn data(seed: u64) -> DirectionsData {
    let n = CITIES.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let test: Vec<usize> = order[..n / 4].to_vec();
    let mut statements = vec![];
    let mut heldout = vec![];
    for (i, (c, k)) in CITIES.iter().enumerate() {
        let wrong = CITIES[(i + 1 + (i * 7) % (n - 1)) % n].1;
        let wrong = if wrong == *k {
            CITIES[(i + 1) % n].1
        } else {
            wrong
        };
        for (label, y) in [(true, *k), (false, wrong)] {
            statements.push(Statement {
                text: format!("The city of {c} is in {y}."),
                label,
                dataset: "toy_cities".into(),
                train: !test.contains(&i),
            });
            heldout.push(Statement {
                text: format!("{c} is a city in the country {y}."),
                label,
                dataset: "toy_located".into(),
                train: false,
            });
        }
    }
    let instr = |objs: &[&str], s: u64| -> Vec<Instruction> {
        let mut v: Vec<String> = VERBS
            .iter()
            .flat_map(|v| objs.iter().map(move |o| format!("how do I {v} a {o}?")))
            .collect();
        v.shuffle(&mut StdRng::seed_from_u64(s));
        let k = v.len() * 3 / 4;
        v.into_iter()
            .enumerate()
            .map(|(i, text)| Instruction { text, train: i < k })
            .collect()
    };
    DirectionsData {
        statements,
        heldout,
        harmful: instr(HARMFUL, seed + 1),
        harmless: instr(HARMLESS, seed + 2),
        sources: vec!["engram toy data (src/probes/directions/toy.rs)".into()],
    }
}

/// Parameters sized for the toy.
pub fn params() -> DirectionsParams {
    DirectionsParams {
        batch_size: 32,
        n_train: 24,
        n_test: 8,
        n_heldout: 32,
        shots: 2,
        n_intervene: 8,
        n_refusal_train: 27,
        n_refusal_test: 9,
        max_new: 8,
        patch_pairs: 4,
        patch_positions: 8,
        patch_shots: 1,
        refusal_candidates: (0.0, 1.0),
        refusal_select_n: 16,
        band: Some((0, 3)),
        toy_pair: true,
        ..DirectionsParams::default()
    }
}

fn toy_config(vocab: usize, seed: u64) -> ToyConfig {
    ToyConfig {
        vocab,
        d_model: 48,
        n_layers: 3,
        n_heads: 4,
        d_head: 12,
        d_mlp: 96,
        max_len: 64,
        seed,
        lr: 3e-3,
        weight_decay: 0.0,
        batch: 24,
        ..ToyConfig::default()
    }
}

/// Training rows: the label of each statement after "This statement is :", and instructions
/// with their answer. `refuse` makes harmful instructions answered with a refusal.
fn rows(
    tok: &crate::model::Tokenizer,
    data: &DirectionsData,
    rng: &mut StdRng,
    batch: usize,
    refuse: bool,
) -> Result<Vec<Vec<u32>>> {
    let st: Vec<&Statement> = data.statements.iter().chain(&data.heldout).collect();
    let train_instr: Vec<(&Instruction, bool)> = data
        .harmful
        .iter()
        .filter(|i| i.train)
        .map(|i| (i, true))
        .chain(data.harmless.iter().filter(|i| i.train).map(|i| (i, false)))
        .collect();
    let mut out = vec![];
    for _ in 0..batch {
        let mut text = String::new();
        if rng.random_bool(0.5) {
            let k = rng.random_range(1..=3);
            for _ in 0..k {
                let s = st.choose(rng).expect("statements");
                text.push_str(&format!(
                    "{} This statement is: {} ",
                    s.text,
                    if s.label { "TRUE" } else { "FALSE" }
                ));
            }
            let mut ids = tok.encode(&text, true)?;
            ids.truncate(63);
            out.push(ids);
        } else {
            let (i, harmful) = train_instr.choose(rng).expect("instructions");
            let answer = if refuse && *harmful { REFUSE } else { COMPLY };
            let mut ids = tok.encode(&format!("{}\n{answer}", i.text), true)?;
            ids.push(EOS);
            out.push(ids);
        }
    }
    Ok(out)
}

fn train(
    toy: &ToyModel,
    tok: &crate::model::Tokenizer,
    data: &DirectionsData,
    steps: usize,
    seed: u64,
    refuse: bool,
) -> Result<f64> {
    let mut opt = AdamW::new(
        toy.varmap.all_vars(),
        ParamsAdamW {
            lr: toy.cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut last = f64::NAN;
    for _ in 0..steps {
        let rs = rows(tok, data, &mut rng, toy.cfg.batch, refuse)?;
        let t = rs.iter().map(|r| r.len()).max().unwrap_or(1);
        let mut ids = vec![];
        let mut mask = vec![];
        for r in &rs {
            for j in 0..t {
                ids.push(*r.get(j).unwrap_or(&PAD));
                if j > 0 {
                    mask.push((j < r.len()) as u8 as f32);
                }
            }
        }
        let b = rs.len();
        let dev = toy.device();
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let logits = toy.forward(&ids)?.narrow(1, 0, t - 1)?;
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let tgt = ids.narrow(1, 1, t - 1)?.contiguous()?.unsqueeze(2)?;
        let nll = lp.gather(&tgt, D::Minus1)?.squeeze(2)?.neg()?;
        let m = Tensor::from_vec(mask, (b, t - 1), dev)?;
        let loss = (nll * &m)?.sum_all()?.div(&m.sum_all()?)?;
        last = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !last.is_finite() {
            crate::bail!("toy pair: the loss diverged");
        }
        opt.backward_step(&loss)?;
    }
    Ok(last)
}

fn to_model(toy: &ToyModel, tok: &crate::model::Tokenizer, spec: &str) -> Result<Model> {
    let mut m = toy.to_model()?;
    m.tokenizer = Some(tok.clone());
    m.source.spec = spec.into();
    m.source.path = spec.into();
    Ok(m)
}

/// A base model and its post-trained copy, with their final training losses.
pub struct ToyPair {
    pub base: Model,
    pub tuned: Model,
    pub data: DirectionsData,
    pub base_loss: f64,
    pub tuned_loss: f64,
}

/// Train the pair (`base_steps` from scratch, then `tune_steps` more on the refusal task).
pub fn pair(seed: u64, base_steps: usize, tune_steps: usize) -> Result<ToyPair> {
    let tok = tokenizer()?;
    let data = data(seed);
    let cfg = toy_config(tok.vocab_size(), seed);
    let base = ToyModel::untrained(cfg.clone())?;
    let base_loss = train(&base, &tok, &data, base_steps, seed + 100, false)?;
    let tuned = ToyModel::untrained(cfg)?;
    {
        let src = base.varmap.data().lock().expect("varmap lock");
        let dst = tuned.varmap.data().lock().expect("varmap lock");
        for (k, v) in dst.iter() {
            let s = src
                .get(k)
                .ok_or_else(|| crate::Error::msg(format!("toy pair: {k} missing")))?;
            v.set(s.as_tensor())?;
        }
    }
    let tuned_loss = train(&tuned, &tok, &data, tune_steps, seed + 200, true)?;
    Ok(ToyPair {
        base: to_model(&base, &tok, "toy-base")?,
        tuned: to_model(&tuned, &tok, "toy-tuned")?,
        data,
        base_loss,
        tuned_loss,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Write the toy data in the layout of `notebooks-data` (statements/*.csv, instructions/*.csv).
pub fn write_data(data: &DirectionsData, dir: &Path) -> Result<()> {
    let st = |rows: &[Statement]| -> String {
        let mut s = "statement,label,dataset,split\n".to_string();
        for r in rows {
            s.push_str(&format!(
                "{},{},{},{}\n",
                csv_field(&r.text),
                r.label as u8,
                csv_field(&r.dataset),
                if r.train { "train" } else { "test" }
            ));
        }
        s
    };
    let ins = |rows: &[Instruction]| -> String {
        let mut s = "instruction,split\n".to_string();
        for r in rows {
            s.push_str(&format!(
                "{},{}\n",
                csv_field(&r.text),
                if r.train { "train" } else { "test" }
            ));
        }
        s
    };
    let w = |p: &str, s: String| crate::report::write_atomic(&dir.join(p), s.as_bytes());
    w("statements/toy_cities.csv", st(&data.statements))?;
    w("statements/toy_located.csv", st(&data.heldout))?;
    w("instructions/harmful.csv", ins(&data.harmful))?;
    w("instructions/harmless.csv", ins(&data.harmless))?;
    Ok(())
}

/// Save a toy model as a Hugging Face folder with its tokenizer.
pub fn save_model(m: &Model, dir: &Path) -> Result<()> {
    crate::model::export::write_hf_folder(m, dir)?;
    if let Some(t) = &m.tokenizer {
        t.save_hf_dir(dir)?;
    }
    Ok(())
}
