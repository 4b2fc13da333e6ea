//! One normalised model configuration for every supported architecture.
//!
//! Architecture differences are data here (norm kind and offset, softcaps, window pattern, rope per
//! layer and rotary width, learned positions, pre/post norms, q/k norms, gated or plain MLP, parallel
//! blocks, biases), read at a few named places in the forward pass; [`Arch::structure`] holds what
//! is fixed per family. The weights' names and layouts per family are in `transformer/load.rs`.
//! Built from a Hugging Face `config.json` (both the transformers ≤4 keys `rope_theta` /
//! `rope_scaling` and the transformers 5 `rope_parameters`) or from GGUF metadata.

use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Gemma,
    Gemma2,
    Gemma3,
    Gpt2,
    GptNeox,
    Qwen3,
    Phi3,
    Olmo2,
}

/// How a norm normalises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// x / rms(x) · w
    Rms,
    /// (x − mean) / std · w + b (GPT-2, GPT-NeoX)
    Layer,
}

/// RMSNorm on queries and keys before rotary embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    None,
    /// Over each head's `d_head` values (Gemma 3, Qwen3).
    PerHead,
    /// Over the whole projection, all heads at once (OLMo-2): weights `[n_heads·d_head]`.
    Full,
}

/// What is fixed per family (the rest of [`ModelConfig`] comes from the config file).
#[derive(Clone, Copy, Debug)]
pub struct Structure {
    pub norm: NormKind,
    pub learned_pos: bool,
    pub gated_mlp: bool,
    pub pre_norms: bool,
    pub post_norms: bool,
    pub qk_norm: QkNorm,
    /// Biases on the attention output and both MLP projections.
    pub out_bias: bool,
    /// Biases on q, k, v (unless the config says otherwise).
    pub qkv_bias: bool,
    pub rotary: bool,
}

/// Every architecture name [`Arch::parse`] accepts, for messages.
pub const SUPPORTED: &str =
    "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, gpt2, gpt_neox, phi3, olmo2";

impl Arch {
    pub fn parse(model_type: &str) -> Result<Arch> {
        Ok(match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "gemma" => Arch::Gemma,
            "gemma2" => Arch::Gemma2,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            "gpt2" => Arch::Gpt2,
            "gpt_neox" | "gptneox" => Arch::GptNeox,
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            "olmo2" => Arch::Olmo2,
            other => return Err(Error::UnsupportedArch(other.to_string())),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Gemma => "gemma",
            Arch::Gemma2 => "gemma2",
            Arch::Gemma3 => "gemma3",
            Arch::Gpt2 => "gpt2",
            Arch::GptNeox => "gpt_neox",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Olmo2 => "olmo2",
        }
    }

    /// The family's fixed structure: LayerNorm, learned positions and plain GELU MLPs with
    /// biases for GPT-2 and GPT-NeoX (rotary for NeoX); post-norms only and whole-width q/k norms
    /// for OLMo-2; per-head q/k norms for Gemma 3 and Qwen3; Gemma 2/3's sandwich norms.
    pub fn structure(self) -> Structure {
        let base = Structure {
            norm: NormKind::Rms,
            learned_pos: false,
            gated_mlp: true,
            pre_norms: true,
            post_norms: self.is_gemma2_or_3(),
            qk_norm: QkNorm::None,
            out_bias: false,
            qkv_bias: self == Arch::Qwen2,
            rotary: true,
        };
        let plain = Structure {
            norm: NormKind::Layer,
            gated_mlp: false,
            out_bias: true,
            qkv_bias: true,
            ..base
        };
        match self {
            Arch::Gpt2 => Structure {
                learned_pos: true,
                rotary: false,
                ..plain
            },
            Arch::GptNeox => plain,
            Arch::Gemma3 | Arch::Qwen3 => Structure {
                qk_norm: QkNorm::PerHead,
                ..base
            },
            Arch::Olmo2 => Structure {
                pre_norms: false,
                post_norms: true,
                qk_norm: QkNorm::Full,
                ..base
            },
            _ => base,
        }
    }

    /// Gemma family: √d embedding scale and (1 + w) RMSNorm weights.
    pub fn is_gemma(self) -> bool {
        matches!(self, Arch::Gemma | Arch::Gemma2 | Arch::Gemma3)
    }

    /// Gemma 2 and 3: sandwich norms, attention and final logit softcaps.
    pub fn is_gemma2_or_3(self) -> bool {
        matches!(self, Arch::Gemma2 | Arch::Gemma3)
    }

    /// The attention and final logit softcaps, Gemma 2/3 only: `get` reads the key
    /// (`attn_logit_softcapping`, `final_logit_softcapping`); a value ≤ 0 means none.
    pub(crate) fn softcaps(self, get: impl Fn(&str) -> Option<f64>) -> (Option<f64>, Option<f64>) {
        if !self.is_gemma2_or_3() {
            return (None, None);
        }
        let cap = |k: &str| get(k).filter(|x| *x > 0.0);
        (
            cap("attn_logit_softcapping"),
            cap("final_logit_softcapping"),
        )
    }

    /// RMSNorm weight offset: weights are stored as (1 + w) for the Gemma family.
    pub fn norm_offset(self) -> f64 {
        if self.is_gemma() {
            1.0
        } else {
            0.0
        }
    }

    /// Embedding scale: √d_model for the Gemma family.
    pub fn embed_scale(self, d_model: usize) -> Option<f64> {
        self.is_gemma().then(|| (d_model as f64).sqrt())
    }

    /// Whether layer `i` uses the sliding window when the config does not list layer types:
    /// Gemma 2's even layers, every layer of Gemma 3 but each `gemma3_pattern`-th, every layer of
    /// a Mistral with a window. (Qwen2's rule reads its own config keys; the caller applies it.)
    pub(crate) fn default_sliding(self, i: usize, gemma3_pattern: usize, has_window: bool) -> bool {
        match self {
            Arch::Gemma2 => i.is_multiple_of(2),
            Arch::Gemma3 => !(i + 1).is_multiple_of(gemma3_pattern),
            Arch::Mistral | Arch::Phi3 => has_window,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    /// tanh approximation (`gelu_pytorch_tanh`, `gelu_new`)
    GeluTanh,
    /// exact erf GELU
    Gelu,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Activation> {
        Ok(match s {
            "silu" | "swish" => Activation::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            other => return Err(Error::msg(format!("unsupported activation `{other}`"))),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding settings of one kind of layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// Inverse frequencies for a head of width `d_head`, computed in f32 as transformers does.
    pub fn inv_freq(&self, d_head: usize) -> Vec<f32> {
        let base = self.theta as f32;
        let mut inv: Vec<f32> = (0..d_head)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / d_head as f32))
            .collect();
        match &self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv {
                    *f /= *factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                );
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in &mut inv {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let smooth = (old / wavelen - low) / (high - low);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    // transformers: ~(wavelen < high) & ~(wavelen > low); NaN-free here.
                    let is_medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    *f = if is_medium { smoothed } else { scaled };
                }
            }
        }
        inv
    }
}

/// Attention settings of one layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerAttention {
    /// Keys further back than this many positions are masked (`i - j >= window`).
    pub sliding_window: Option<usize>,
    /// Index into [`ModelConfig::ropes`].
    pub rope: usize,
}

impl LayerAttention {
    /// One entry per layer: sliding layers get `window` and, when there are two ropes, the
    /// local one (index 1); the others attend globally with rope 0.
    pub(crate) fn per_layer(sliding: &[bool], window: Option<usize>, n_ropes: usize) -> Vec<Self> {
        sliding
            .iter()
            .map(|&s| LayerAttention {
                sliding_window: if s { window } else { None },
                rope: if s && n_ropes > 1 { 1 } else { 0 },
            })
            .collect()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_mlp: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub d_head: usize,
    pub norm_eps: f64,
    pub max_position_embeddings: usize,
    pub act: Activation,
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v projections (Qwen2, GPT-2, GPT-NeoX).
    pub qkv_bias: bool,
    /// Bias on the attention output projection and both MLP projections (GPT-2, GPT-NeoX).
    pub out_bias: bool,
    /// RMSNorm or LayerNorm (with bias) for every norm of the model.
    pub norm: NormKind,
    /// Learned absolute position embeddings added to the token embeddings (GPT-2).
    pub learned_pos: bool,
    /// Rotary embedding on the first `rotary_dim` dims of each head (NeoX rotate-half); `d_head`
    /// for full rotary, less for partial (`rotary_pct`, `partial_rotary_factor`), 0 for none.
    pub rotary_dim: usize,
    /// act(gate)·up (true) or act(W_in·x + b_in) (GPT-2, GPT-NeoX).
    pub gated_mlp: bool,
    /// Attention and MLP both read resid_pre and add to it (GPT-NeoX `use_parallel_residual`).
    pub parallel_attn_mlp: bool,
    /// Norms before attention and MLP (all but OLMo-2).
    pub pre_norms: bool,
    /// Norms on the attention and MLP outputs before they join the residual (Gemma 2/3, OLMo-2).
    pub post_norms: bool,
    /// RMSNorm multiplies by (offset + w): 1 for Gemma, 0 otherwise.
    pub norm_offset: f64,
    /// Embeddings are multiplied by this (√d for Gemma).
    pub embed_scale: Option<f64>,
    /// Attention logits are multiplied by this (1/√d_head, or 1/√query_pre_attn_scalar).
    pub attn_scale: f64,
    /// cap·tanh(x/cap) on attention logits (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// cap·tanh(x/cap) on the final logits (Gemma 2).
    pub final_softcap: Option<f64>,
    /// RMSNorm on q and k (Gemma 3, Qwen3 per head; OLMo-2 over the whole projection).
    pub qk_norm: QkNorm,
    /// The distinct rope settings; layers index into this.
    pub ropes: Vec<Rope>,
    pub layers: Vec<LayerAttention>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

fn get_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

fn get_f64(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

fn need_usize(v: &Value, key: &str) -> Result<usize> {
    get_usize(v, key).ok_or_else(|| Error::msg(format!("config.json: missing or invalid `{key}`")))
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

/// Parse one rope parameter object (`rope_scaling` or an entry of `rope_parameters`).
fn parse_scaling(obj: Option<&Value>) -> Result<RopeScaling> {
    let Some(obj) = obj.filter(|o| o.is_object()) else {
        return Ok(RopeScaling::None);
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let f = |k: &str, d: f64| get_f64(obj, k).unwrap_or(d);
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: f("factor", 1.0),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: f("factor", 8.0),
            low_freq_factor: f("low_freq_factor", 1.0),
            high_freq_factor: f("high_freq_factor", 4.0),
            original_max_position_embeddings: f("original_max_position_embeddings", 8192.0),
        },
        other => {
            return Err(Error::msg(format!(
                "unsupported rope scaling type `{other}` (supported: default, linear, llama3)"
            )))
        }
    })
}

impl ModelConfig {
    /// Build from a Hugging Face config.json value.
    pub fn from_hf_json(root: &Value) -> Result<ModelConfig> {
        let model_type = root
            .get("model_type")
            .and_then(|m| m.as_str())
            .ok_or_else(|| Error::msg("config.json: missing `model_type`"))?;
        // Multimodal Gemma 3 keeps the language model under text_config.
        let v = if model_type == "gemma3" {
            root.get("text_config").unwrap_or(root)
        } else {
            root
        };
        let arch = Arch::parse(model_type)?;
        // GPT-2 spells the sizes its own way.
        let key = |k: &'static str| -> &'static str {
            match (arch, k) {
                (Arch::Gpt2, "hidden_size") => "n_embd",
                (Arch::Gpt2, "num_attention_heads") => "n_head",
                (Arch::Gpt2, "num_hidden_layers") => "n_layer",
                (Arch::Gpt2, "max_position_embeddings") => "n_positions",
                (Arch::Gpt2, "intermediate_size") => "n_inner",
                (Arch::Gpt2, "hidden_act") => "activation_function",
                _ => k,
            }
        };
        let d_model = need_usize(v, key("hidden_size"))?;
        let n_heads = need_usize(v, key("num_attention_heads"))?;
        let n_layers = need_usize(v, key("num_hidden_layers"))?;
        check_dims(
            "config.json",
            d_model,
            n_heads,
            n_layers,
            get_usize(v, "head_dim"),
        )?;
        let d_head = get_usize(v, "head_dim").unwrap_or(d_model / n_heads);
        let n_kv_heads = get_usize(v, "num_key_value_heads").unwrap_or(n_heads);
        let d_mlp = match arch {
            // GPT-2: n_inner null means 4·d.
            Arch::Gpt2 => get_usize(v, "n_inner").unwrap_or(4 * d_model),
            _ => need_usize(v, "intermediate_size")?,
        };
        if arch == Arch::Gpt2 {
            for k in ["scale_attn_by_inverse_layer_idx", "add_cross_attention"] {
                if v.get(k).and_then(|x| x.as_bool()) == Some(true) {
                    return Err(Error::msg(format!(
                        "config.json: gpt2 with `{k}` is not supported"
                    )));
                }
            }
        }
        let act_name = v
            .get("hidden_activation")
            .or_else(|| v.get(key("hidden_act")))
            .and_then(|a| a.as_str())
            .unwrap_or(if arch.is_gemma() {
                "gelu_pytorch_tanh"
            } else {
                "silu"
            });
        // transformers' Gemma 1 uses the tanh approximation whatever hidden_act says.
        let act = if arch == Arch::Gemma {
            Activation::GeluTanh
        } else {
            Activation::parse(act_name)?
        };

        // Rope: transformers 5 `rope_parameters` (flat, or per layer type), else legacy keys.
        let legacy_theta = get_f64(v, "rope_theta").or_else(|| get_f64(v, "rotary_emb_base"));
        let params = v.get("rope_parameters");
        let (global, local) = match params {
            Some(p)
                if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() =>
            {
                let g = p.get("full_attention");
                let l = p.get("sliding_attention");
                let rope = |o: Option<&Value>, default_theta: f64| -> Result<Rope> {
                    Ok(Rope {
                        theta: o
                            .and_then(|o| get_f64(o, "rope_theta"))
                            .unwrap_or(default_theta),
                        scaling: parse_scaling(o)?,
                    })
                };
                let g = rope(g, legacy_theta.unwrap_or(10000.0))?;
                let l = rope(l, get_f64(v, "rope_local_base_freq").unwrap_or(10000.0))?;
                (g, Some(l))
            }
            Some(p) if p.is_object() => (
                Rope {
                    theta: get_f64(p, "rope_theta").or(legacy_theta).unwrap_or(10000.0),
                    scaling: parse_scaling(Some(p))?,
                },
                None,
            ),
            _ => (
                Rope {
                    theta: legacy_theta.unwrap_or(10000.0),
                    scaling: parse_scaling(v.get("rope_scaling"))?,
                },
                None,
            ),
        };
        let local = match (arch, local) {
            (_, Some(l)) => Some(l),
            (Arch::Gemma3, None) => Some(Rope {
                theta: get_f64(v, "rope_local_base_freq").unwrap_or(10000.0),
                scaling: RopeScaling::None,
            }),
            _ => None,
        };

        // Which layers use a sliding window.
        let window = get_usize(v, "sliding_window");
        let layer_types: Option<Vec<bool>> = v.get("layer_types").and_then(|lt| {
            lt.as_array().map(|a| {
                a.iter()
                    .map(|t| t.as_str() == Some("sliding_attention"))
                    .collect()
            })
        });
        let sliding: Vec<bool> = match layer_types {
            Some(lt) if lt.len() == n_layers => lt,
            Some(lt) => {
                return Err(Error::msg(format!(
                    "config.json: layer_types has {} entries for {n_layers} layers",
                    lt.len()
                )))
            }
            None => {
                let pattern = get_usize(v, "sliding_window_pattern").unwrap_or(6);
                (0..n_layers)
                    .map(|i| match arch {
                        Arch::Qwen2 | Arch::Qwen3 => {
                            v.get("use_sliding_window").and_then(|x| x.as_bool()) == Some(true)
                                && i >= get_usize(v, "max_window_layers").unwrap_or(n_layers)
                        }
                        _ => arch.default_sliding(i, pattern, window.is_some()),
                    })
                    .collect()
            }
        };
        let mut ropes = vec![global];
        if let Some(l) = local {
            ropes.push(l);
        }
        let layers = LayerAttention::per_layer(&sliding, window, ropes.len());

        let qpas = get_f64(v, "query_pre_attn_scalar");
        let attn_scale = match (arch, qpas) {
            (Arch::Gemma2 | Arch::Gemma3, Some(q)) => q.powf(-0.5),
            _ => (d_head as f64).powf(-0.5),
        };
        let (attn_softcap, final_softcap) = arch.softcaps(|k| get_f64(v, k));
        let attn_scale = if arch == Arch::Gpt2
            && v.get("scale_attn_weights").and_then(|x| x.as_bool()) == Some(false)
        {
            1.0
        } else {
            attn_scale
        };
        let st = arch.structure();
        // Partial rotary: `rope_parameters.partial_rotary_factor` (transformers 5), else the
        // legacy `partial_rotary_factor` / NeoX `rotary_pct` (NeoX's default is 0.25).
        let rotary_fraction = params
            .and_then(|p| get_f64(p, "partial_rotary_factor"))
            .or_else(|| get_f64(v, "partial_rotary_factor"))
            .or_else(|| get_f64(v, "rotary_pct"))
            .unwrap_or(if arch == Arch::GptNeox { 0.25 } else { 1.0 });
        let rotary_dim = if st.rotary {
            (d_head as f64 * rotary_fraction) as usize
        } else {
            0
        };
        let flag = |k: &str| v.get(k).and_then(|x| x.as_bool());
        let cfg = ModelConfig {
            arch,
            vocab_size: need_usize(v, "vocab_size")?,
            d_model,
            d_mlp,
            n_layers,
            n_heads,
            n_kv_heads,
            d_head,
            norm_eps: ["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"]
                .iter()
                .find_map(|k| get_f64(v, k))
                .unwrap_or(if st.norm == NormKind::Layer {
                    1e-5
                } else {
                    1e-6
                }),
            max_position_embeddings: get_usize(v, key("max_position_embeddings")).unwrap_or(4096),
            act,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .or_else(|| root.get("tie_word_embeddings"))
                .and_then(|x| x.as_bool())
                .unwrap_or(arch.is_gemma() || arch == Arch::Gpt2),
            // NeoX's `attention_bias` covers q/k/v and the output projection.
            qkv_bias: match arch {
                Arch::Qwen2 | Arch::Gpt2 => true,
                _ => flag("attention_bias").unwrap_or(st.qkv_bias),
            },
            out_bias: match arch {
                Arch::GptNeox => flag("attention_bias").unwrap_or(true),
                _ => st.out_bias,
            },
            norm: st.norm,
            learned_pos: st.learned_pos,
            rotary_dim,
            gated_mlp: st.gated_mlp,
            parallel_attn_mlp: arch == Arch::GptNeox
                && flag("use_parallel_residual").unwrap_or(true),
            pre_norms: st.pre_norms,
            post_norms: st.post_norms,
            norm_offset: arch.norm_offset(),
            embed_scale: arch.embed_scale(d_model),
            attn_scale,
            attn_softcap,
            final_softcap,
            qk_norm: st.qk_norm,
            ropes,
            layers,
            bos_token_id: ids(v.get("bos_token_id").or_else(|| root.get("bos_token_id")))
                .first()
                .copied(),
            eos_token_ids: ids(v.get("eos_token_id").or_else(|| root.get("eos_token_id"))),
            pad_token_id: ids(v.get("pad_token_id").or_else(|| root.get("pad_token_id")))
                .first()
                .copied(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        check_dims(
            "config",
            self.d_model,
            self.n_heads,
            self.n_layers,
            Some(self.d_head),
        )?;
        if self.vocab_size == 0 || self.d_mlp == 0 {
            return Err(Error::msg(format!(
                "config: vocabulary size {} and MLP width {} must be positive",
                self.vocab_size, self.d_mlp
            )));
        }
        for r in &self.ropes {
            if !(r.theta.is_finite() && r.theta > 0.0) {
                return Err(Error::msg(format!(
                    "config: rope theta must be a positive number, got {}",
                    r.theta
                )));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::msg(format!(
                "config: the norm epsilon must be a non-negative number, got {}",
                self.norm_eps
            )));
        }
        for (what, v, max) in [
            ("vocabulary size", self.vocab_size, MAX_VOCAB),
            ("MLP width", self.d_mlp, MAX_WIDTH),
            ("kv heads", self.n_kv_heads, MAX_HEADS),
            ("context length", self.max_position_embeddings, MAX_CONTEXT),
        ] {
            if v > max {
                return Err(Error::msg(format!(
                    "config: {what} {v} is beyond any real model (at most {max}): a corrupt config?"
                )));
            }
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return Err(Error::msg(format!(
                "config: {} attention heads are not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            )));
        }
        if !self.rotary_dim.is_multiple_of(2) || self.rotary_dim > self.d_head {
            return Err(Error::msg(format!(
                "config: {} rotary dims must be even and at most head_dim {}",
                self.rotary_dim, self.d_head
            )));
        }
        if self.layers.len() != self.n_layers {
            return Err(Error::msg(
                "config: layer settings do not match num_hidden_layers",
            ));
        }
        Ok(())
    }

    /// Whether the forward pass reaches this hook point: `hook_pos_embed` needs learned
    /// positions (GPT-2), `mlp.hook_pre_linear` a gated MLP; every other point always fires.
    pub fn fires(&self, point: crate::hooks::HookPoint) -> bool {
        use crate::hooks::HookPoint;
        match point {
            HookPoint::PosEmbed => self.learned_pos,
            HookPoint::MlpPreLinear(_) => self.gated_mlp,
            _ => true,
        }
    }

    /// Every hook point this model fires, in forward order.
    pub fn hook_points(&self) -> Vec<crate::hooks::HookPoint> {
        crate::hooks::HookPoint::all(self.n_layers)
            .into_iter()
            .filter(|&p| self.fires(p))
            .collect()
    }

    /// Query heads per kv head.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    /// Total number of parameters implied by the shapes (embeddings counted once when tied).
    pub fn n_params(&self) -> usize {
        let attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_kv_heads);
        let mlp = if self.gated_mlp { 3 } else { 2 } * self.d_model * self.d_mlp;
        let emb = self.vocab_size * self.d_model;
        let pos = if self.learned_pos {
            self.max_position_embeddings * self.d_model
        } else {
            0
        };
        self.n_layers * (attn + mlp) + emb * if self.tie_word_embeddings { 1 } else { 2 } + pos
    }
}

mod limits;
pub(crate) use limits::check_dims;
pub use limits::{MAX_CONTEXT, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};

#[cfg(test)]
mod tests;
