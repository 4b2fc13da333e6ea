//! GGUF loading of the families beyond Llama/Gemma/Qwen2: tiny f32 GGUF files written under
//! llama.cpp's names by scripts/reference/make_gguf_fixtures.py from the same weights as the
//! safetensors fixtures. The config read from the metadata matches config.json's, and the logits
//! match transformers' reference (≤ 1e-4).

use crate::common::*;

use candle_core::{DType, Device};
use engram::hooks::Hooks;
use engram::model::weights::GgufWeights;
use engram::model::{RunOptions, Transformer};

#[test]
fn gguf_families_match_their_safetensors_twins() {
    for name in ["gpt2", "pythia", "qwen3", "phi3", "olmo2"] {
        let w = GgufWeights::open(&fixture_dir(name).join("model.gguf")).unwrap();
        let cfg = w.config().unwrap();
        let hf = load_fixture(name);
        let h = hf.cfg();
        assert_eq!(cfg.arch, h.arch, "{name}");
        assert_eq!(
            (cfg.norm, cfg.learned_pos, cfg.rotary_dim, cfg.gated_mlp),
            (h.norm, h.learned_pos, h.rotary_dim, h.gated_mlp),
            "{name}"
        );
        assert_eq!(
            (
                cfg.parallel_attn_mlp,
                cfg.pre_norms,
                cfg.post_norms,
                cfg.qk_norm
            ),
            (h.parallel_attn_mlp, h.pre_norms, h.post_norms, h.qk_norm),
            "{name}"
        );
        assert_eq!(
            (cfg.qkv_bias, cfg.out_bias),
            (h.qkv_bias, h.out_bias),
            "{name}"
        );
        assert_eq!(cfg.tie_word_embeddings, h.tie_word_embeddings, "{name}");
        assert!((cfg.norm_eps - h.norm_eps).abs() < 1e-12, "{name}");
        let t = Transformer::load(&w, cfg, DType::F32, &Device::Cpu).unwrap();
        let r = reference(name);
        let batch = reference_batch(&r);
        let logits = t
            .forward_with(&batch, &mut Hooks::none(), RunOptions::default())
            .unwrap();
        let e = max_err_masked(&logits, &r["logits"], &batch, 1);
        assert!(e <= 1e-4, "{name}: GGUF logits max abs error {e}");
    }
}

/// Found by examples/fuzz.rs: a GGUF without a vocab size whose `token_embd.weight` has no
/// dimensions made the config derivation index an empty shape (a panic): now an error.
#[test]
fn scalar_token_embedding_without_vocab_size_is_an_error() {
    use candle_core::quantized::gguf_file;
    let path = fixture_dir("gpt2").join("model.gguf");
    let mut f = std::fs::File::open(&path).unwrap();
    let mut ct = gguf_file::Content::read(&mut f).unwrap();
    assert!(engram::model::weights::config_from_gguf(&ct).is_ok());
    ct.metadata.retain(|k, _| !k.ends_with(".vocab_size"));
    let info = ct.tensor_infos.get_mut("token_embd.weight").unwrap();
    info.shape = candle_core::Shape::from(());
    let e = engram::model::weights::config_from_gguf(&ct)
        .unwrap_err()
        .to_string();
    assert!(e.contains("token_embd.weight"), "{e}");
}
