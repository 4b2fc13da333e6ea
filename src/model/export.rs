//! Write any loaded model as a Hugging Face folder: config.json, model.safetensors,
//! tokenizer.json (+ tokenizer_config.json). Loading the folder gives the same logits.

use std::path::Path;

use serde_json::{json, Value};

use super::config::{Arch, ModelConfig, NormKind, Rope, RopeScaling};
use super::Model;
use crate::report::write_atomic;
use crate::{Error, Result};

fn rope_json(r: &Rope) -> Value {
    match &r.scaling {
        RopeScaling::None => json!({"rope_type": "default", "rope_theta": r.theta}),
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "factor": factor, "rope_theta": r.theta})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "rope_theta": r.theta
        }),
    }
}

/// A transformers-5 style config.json for `cfg` (also readable by engram).
pub fn hf_config(cfg: &ModelConfig) -> Value {
    let (model_type, class) = match cfg.arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Mistral => ("mistral", "MistralForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Gemma => ("gemma", "GemmaForCausalLM"),
        Arch::Gemma2 => ("gemma2", "Gemma2ForCausalLM"),
        Arch::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        Arch::Gpt2 => ("gpt2", "GPT2LMHeadModel"),
        Arch::GptNeox => ("gpt_neox", "GPTNeoXForCausalLM"),
        Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        Arch::Phi3 => ("phi3", "Phi3ForCausalLM"),
        Arch::Olmo2 => ("olmo2", "Olmo2ForCausalLM"),
    };
    let act = match cfg.act {
        super::config::Activation::Silu => "silu",
        super::config::Activation::GeluTanh => "gelu_pytorch_tanh",
        super::config::Activation::Gelu => "gelu",
    };
    let window = cfg.layers.iter().find_map(|l| l.sliding_window);
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_mlp,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.d_head,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": "float32",
        "sliding_window": window,
    });
    let o = v.as_object_mut().expect("object");
    if cfg.arch.is_gemma() {
        o.insert("hidden_activation".into(), act.into());
    } else {
        o.insert("hidden_act".into(), act.into());
    }
    if cfg.ropes.len() > 1 {
        o.insert(
            "rope_parameters".into(),
            json!({"full_attention": rope_json(&cfg.ropes[0]),
                   "sliding_attention": rope_json(&cfg.ropes[1])}),
        );
    } else {
        let mut rope = rope_json(&cfg.ropes[0]);
        if cfg.rotary_dim != cfg.d_head {
            rope["partial_rotary_factor"] = json!(cfg.rotary_dim as f64 / cfg.d_head as f64);
        }
        o.insert("rope_parameters".into(), rope);
        o.insert("rope_theta".into(), cfg.ropes[0].theta.into());
    }
    if cfg.norm == NormKind::Layer {
        let eps = o.remove("rms_norm_eps").unwrap_or(Value::Null);
        o.insert("layer_norm_eps".into(), eps);
    }
    match cfg.arch {
        Arch::Gpt2 => {
            // GPT-2's own key names; no rotary embedding.
            for (from, to) in [
                ("hidden_size", "n_embd"),
                ("num_hidden_layers", "n_layer"),
                ("num_attention_heads", "n_head"),
                ("intermediate_size", "n_inner"),
                ("max_position_embeddings", "n_positions"),
                ("layer_norm_eps", "layer_norm_epsilon"),
                ("hidden_act", "activation_function"),
            ] {
                if let Some(x) = o.remove(from) {
                    o.insert(to.into(), x);
                }
            }
            for k in [
                "rope_parameters",
                "rope_theta",
                "head_dim",
                "num_key_value_heads",
            ] {
                o.remove(k);
            }
            // transformers' GPT-2 computes `gelu_new` its own way (≈1e-5 from the tanh GELU).
            if cfg.act == super::config::Activation::GeluTanh {
                o.insert("activation_function".into(), "gelu_new".into());
            }
        }
        Arch::GptNeox => {
            o.insert("use_parallel_residual".into(), cfg.parallel_attn_mlp.into());
            o.insert("attention_bias".into(), cfg.qkv_bias.into());
        }
        Arch::Qwen3 | Arch::Olmo2 => {
            o.insert("attention_bias".into(), cfg.qkv_bias.into());
        }
        _ => {}
    }
    if matches!(cfg.arch, Arch::Gemma2 | Arch::Gemma3) {
        let types: Vec<&str> = cfg
            .layers
            .iter()
            .map(|l| {
                if l.sliding_window.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        o.insert("layer_types".into(), json!(types));
        o.insert(
            "query_pre_attn_scalar".into(),
            json!((cfg.attn_scale.powi(-2)).round()),
        );
        o.insert("attn_logit_softcapping".into(), json!(cfg.attn_softcap));
        o.insert("final_logit_softcapping".into(), json!(cfg.final_softcap));
    }
    if matches!(cfg.arch, Arch::Qwen2 | Arch::Qwen3) {
        o.insert("use_sliding_window".into(), false.into());
    }
    if let Some(b) = cfg.bos_token_id {
        o.insert("bos_token_id".into(), b.into());
    }
    if !cfg.eos_token_ids.is_empty() {
        o.insert("eos_token_id".into(), json!(cfg.eos_token_ids));
    }
    if let Some(p) = cfg.pad_token_id {
        o.insert("pad_token_id".into(), p.into());
    }
    v
}

/// Write `model` as a Hugging Face folder under `out`.
pub fn write_hf_folder(model: &Model, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let cfg = hf_config(model.cfg());
    write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&cfg)
            .map_err(|e| Error::msg(e.to_string()))?
            .as_bytes(),
    )?;
    crate::report::write_safetensors(&out.join("model.safetensors"), model.hf_tensors()?)?;
    if let Some(tok) = &model.tokenizer {
        let json = tok
            .inner()
            .to_string(true)
            .map_err(|e| Error::msg(format!("serialising the tokenizer: {e}")))?;
        write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
        let token = |id: Option<u32>| id.and_then(|i| tok.token_str(i));
        let tc = json!({
            "bos_token": token(tok.bos_id),
            "eos_token": token(tok.eos_ids.first().copied()),
            "pad_token": token(tok.pad_id),
            "add_bos_token": tok.add_bos,
            "chat_template": tok.chat_template,
        });
        write_atomic(
            &out.join("tokenizer_config.json"),
            serde_json::to_string_pretty(&tc)
                .map_err(|e| Error::msg(e.to_string()))?
                .as_bytes(),
        )?;
    }
    Ok(())
}
