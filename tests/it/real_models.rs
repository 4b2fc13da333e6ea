//! Real pretrained checkpoints (GGUF, fetched by scripts/fetch-models.sh): logits against
//! transformers' own GGUF loader, greedy continuations, chat templates, HF export round trip.
//! Skipped with a message when the models are not fetched, unless ENGRAM_REQUIRE_MODELS=1.

use crate::common::*;

use candle_core::Device;
use engram::hooks::Hooks;
use engram::model::tokenizer::ChatMessage;
use engram::model::{Batch, LoadOptions, Model};

const MODELS: &[(&str, &str)] = &[
    ("smollm2", "smollm2-135m-instruct"),
    ("gemma3", "gemma-3-270m"),
    ("qwen2", "qwen2.5-coder-0.5b-instruct"),
];

/// Last-position logits on "The Eiffel Tower is located in the city of" against transformers
/// (5.23, `from_pretrained(gguf_file=...)`, f32, eager) on the same dequantized weights.
#[test]
fn logits_match_transformers_gguf_loader() {
    for (alias, file) in MODELS {
        let Some(model) = real_model(alias) else {
            continue;
        };
        let r = candle_core::safetensors::load(
            fixture_dir("real").join(format!("{file}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let ids = ids_of(&r["input_ids"]);
        let batch = Batch::single(&ids[0]).unwrap();
        let logits = model.forward(&batch, &mut Hooks::none()).unwrap();
        let t = ids[0].len();
        let last = logits.narrow(1, t - 1, 1).unwrap().flatten_all().unwrap();
        let reference = r["last_logits"].clone();
        let e = max_abs_diff(&last, &reference);
        let scale = reference
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{alias}: max abs logit error {e:.2e} (max |logit| {scale:.1})");
        assert!(e <= 1e-4, "{alias}: logits differ from transformers by {e}");
        // Same greedy continuation as transformers.
        let greedy = ids_of(&r["greedy_ids"].unsqueeze(0).unwrap())[0].clone();
        let new = model
            .generate(&ids, greedy.len(), &mut Hooks::none())
            .unwrap();
        let n = new[0].len().min(greedy.len());
        assert_eq!(
            new[0][..n],
            greedy[..n],
            "{alias}: greedy continuation differs"
        );
    }
}

/// bf16 products (`--matmul bf16`): weights and activations rounded to bf16 at every linear
/// layer, f32 everywhere else. The logits move by the bf16 rounding (bounded here relative to
/// the largest logit), the top token and the continuation stay.
#[test]
fn bf16_matmul_stays_close_to_transformers_f32() {
    let opts = LoadOptions {
        bf16_matmul: true,
        ..LoadOptions::default()
    };
    for (alias, file) in MODELS {
        let Some(model) = real_model_with(alias, &opts) else {
            continue;
        };
        assert!(model.bf16_matmul());
        let r = candle_core::safetensors::load(
            fixture_dir("real").join(format!("{file}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let ids = ids_of(&r["input_ids"]);
        let logits = model
            .forward(&Batch::single(&ids[0]).unwrap(), &mut Hooks::none())
            .unwrap();
        let t = ids[0].len();
        let last = logits.narrow(1, t - 1, 1).unwrap().flatten_all().unwrap();
        let reference = &r["last_logits"];
        let e = max_abs_diff(&last, reference);
        let scale = reference
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let argmax = |x: &candle_core::Tensor| x.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        eprintln!(
            "{alias}: bf16 matmul max abs logit error {e:.2e} ({:.2}% of max |logit| {scale:.1})",
            100.0 * e / scale
        );
        assert!(e > 0.0, "{alias}: bf16 products changed nothing");
        assert!(e <= 0.015 * scale, "{alias}: bf16 logits off by {e}");
        assert_eq!(argmax(&last), argmax(reference), "{alias}: top token");
        let text = model
            .complete("The Eiffel Tower is located in the city of", 8)
            .unwrap();
        assert!(text.contains("Paris"), "{alias}: {text:?}");
        // The weight views still answer in f32, with the bf16 values the products use.
        if *alias == "smollm2" {
            let f32_model = real_model(alias).unwrap();
            for (a, b) in [
                (model.w_out(3).unwrap(), f32_model.w_out(3).unwrap()),
                (model.w_o(3).unwrap(), f32_model.w_o(3).unwrap()),
                (model.w_q(3).unwrap(), f32_model.w_q(3).unwrap()),
            ] {
                assert_eq!(a.dtype(), candle_core::DType::F32);
                assert_eq!(a.dims(), b.dims());
                let rel = (&a - &b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .div(&b.abs().unwrap().affine(1.0, 1e-6).unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(rel <= 1.0 / 256.0, "bf16 view off by {rel} (relative)");
            }
        }
    }
}

#[test]
fn eiffel_tower_is_in_paris() {
    for (alias, _) in MODELS {
        let Some(model) = real_model(alias) else {
            continue;
        };
        let text = model
            .complete("The Eiffel Tower is located in the city of", 8)
            .unwrap();
        eprintln!("{alias}: {text:?}");
        assert!(text.contains("Paris"), "{alias}: {text:?}");
    }
}

#[test]
fn instruct_models_answer_through_their_chat_templates() {
    for alias in ["smollm2", "qwen2"] {
        let Some(model) = real_model(alias) else {
            continue;
        };
        let tok = model.tokenizer().unwrap();
        let prompt = tok
            .apply_chat_template(&[ChatMessage::user("What is the capital of France?")], true)
            .unwrap();
        let ids = tok.encode(&prompt, false).unwrap();
        let new = model.generate(&[ids], 24, &mut Hooks::none()).unwrap();
        let answer = tok.decode(&new[0], true).unwrap();
        eprintln!("{alias}: {answer:?}");
        assert!(answer.contains("Paris"), "{alias}: {answer:?}");
    }
}

/// `engram convert` writes a Hugging Face folder that loads to identical logits: this is how
/// the safetensors path is exercised on real weights.
#[test]
fn converted_folder_gives_identical_logits() {
    for alias in ["smollm2", "gemma3"] {
        let Some(model) = real_model(alias) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        engram::model::export::write_hf_folder(&model, dir.path()).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(dir.path().join(f).is_file(), "{alias}: {f} missing");
        }
        let back = Model::load(dir.path().to_str().unwrap(), &LoadOptions::default()).unwrap();
        let prompt = "The Eiffel Tower is located in the city of";
        let a = model.encode(prompt).unwrap();
        let b = back.encode(prompt).unwrap();
        assert_eq!(a, b, "{alias}: tokenizer changed through export");
        let batch = Batch::single(&a).unwrap();
        let la = model.forward(&batch, &mut Hooks::none()).unwrap();
        let lb = back.forward(&batch, &mut Hooks::none()).unwrap();
        let e = max_abs_diff(&la, &lb);
        assert!(e == 0.0, "{alias}: converted logits differ by {e}");
    }
}
