//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use engram::model::{Batch, LoadOptions, Model};

pub const ARCHS: &[&str] = &[
    "llama", "llama2", "mistral", "qwen2", "gemma", "gemma2", "gemma3", "gpt2", "pythia", "qwen3",
    "phi3", "olmo2",
];

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_fixture(name: &str) -> Model {
    Model::load(fixture_dir(name).to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading fixture {name}: {e}"))
}

pub fn reference(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir(name).join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

pub fn ids_of(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// The fixture's padded batch.
pub fn reference_batch(r: &HashMap<String, Tensor>) -> Batch {
    let ids = ids_of(&r["input_ids"]);
    let mask = ids_of(&r["attention_mask"]);
    Batch::from_mask(ids, &mask).unwrap()
}

/// Max |a - b| over rows where the mask is 1 on the given position axis (axis 1 for
/// [b, pos, ...], axis 2 for [b, head, q, k]).
pub fn max_err_masked(a: &Tensor, b: &Tensor, batch: &Batch, pos_axis: usize) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let mut worst = 0f32;
    for (row, &pad) in batch.pad_left.iter().enumerate() {
        let t = batch.seq_len;
        let ar = a
            .narrow(0, row, 1)
            .unwrap()
            .narrow(pos_axis, pad, t - pad)
            .unwrap();
        let br = b
            .narrow(0, row, 1)
            .unwrap()
            .narrow(pos_axis, pad, t - pad)
            .unwrap();
        let e = (ar - br)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        worst = worst.max(e);
    }
    worst
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Real models fetched by scripts/fetch-models.sh; `None` (test skipped, with a message) when
/// absent, a panic when `ENGRAM_REQUIRE_MODELS=1` (CI fetches them first).
pub fn real_model(alias: &str) -> Option<Model> {
    real_model_with(alias, &LoadOptions::default())
}

/// [`real_model`] with explicit load options.
pub fn real_model_with(alias: &str, opts: &LoadOptions) -> Option<Model> {
    let file = engram::model::source::ALIASES
        .iter()
        .find(|a| a.0 == alias)
        .map(|a| engram::model::source::models_dir().join(a.1))
        .unwrap();
    if !file.exists() {
        if std::env::var("ENGRAM_REQUIRE_MODELS").as_deref() == Ok("1") {
            panic!("{} is missing and ENGRAM_REQUIRE_MODELS=1", file.display());
        }
        eprintln!(
            "skipping: {} not fetched (scripts/fetch-models.sh)",
            file.display()
        );
        return None;
    }
    Some(Model::load(alias, opts).unwrap())
}

/// Run the engram binary: (exit code, stdout, stderr).
pub fn engram(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary fails with exactly one line on stderr, `error: …` containing `needle`.
pub fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, _, err) = engram(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"));
}

/// A character-level BPE tokenizer (no merges) whose 128 ids fill the fixtures' vocabulary:
/// `<pad>`, `<s>`, `</s>`, printable ASCII, then Latin-1 letters.
pub fn write_char_tokenizer(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut vocab = serde_json::Map::new();
    let specials = ["<pad>", "<s>", "</s>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    let mut chars: Vec<char> = (32u8..127).map(|b| b as char).collect();
    chars.extend(
        (0xC0u32..)
            .filter_map(char::from_u32)
            .take(128 - 3 - chars.len()),
    );
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), (i + 3).into());
    }
    assert_eq!(vocab.len(), 128);
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&tok).unwrap()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": true}"#,
    )
    .unwrap();
    path
}

/// A temporary directory with the char tokenizer in it, for running the binary on fixture
/// `name`: (the directory, `-m` value, `--tokenizer` value, an `out` path inside it).
pub fn cli_fixture(name: &str) -> (tempfile::TempDir, String, String, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let tok = write_char_tokenizer(&tmp.path().join("tok"));
    let out = tmp.path().join("out");
    let m = fixture_dir(name).to_str().unwrap().to_string();
    (tmp, m, tok.to_str().unwrap().to_string(), out)
}

/// The number of positive entries of a tensor (e.g. the active latents of a batch of codes).
pub fn count_positive(t: &Tensor) -> f32 {
    t.gt(0f32)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// A tensor's values, flattened, as f32.
pub fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}
