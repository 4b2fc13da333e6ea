//! GGUF weights: metadata + lazily dequantized tensors (candle's kernels: Q4_0, Q4_1, Q4_K,
//! Q5_0, Q5_K, Q6_K, Q8_0, F16, BF16, F32, ...), GGUF names mapped onto Hugging Face names,
//! llama.cpp's Q/K row permutation undone for Llama, Gemma's stored (1 + w) norm weights shifted
//! back to w, GPT-2's projections transposed back to Conv1D; and the [`ModelConfig`] read from
//! the GGUF metadata ([`config_from_gguf`]). Architectures: llama, mistral, qwen2, qwen3, gemma,
//! gemma2, gemma3, gpt2, gptneox, phi3, olmo2 (llama.cpp's names; its tensor names per slot in
//! `gguf_base`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::WeightSource;
use crate::model::config::{Activation, Arch, LayerAttention, ModelConfig, Rope, RopeScaling};
use crate::model::transformer::load::conv1d;
use crate::model::transformer::{hf_name, Slot};
use crate::{Error, Result};

/// How a GGUF tensor becomes a Hugging Face tensor.
#[derive(Clone, Copy, Debug)]
enum Fix {
    None,
    /// Undo llama.cpp's rotary row permutation with this many heads.
    Unpermute(usize),
    /// Gemma norms are stored as (1 + w).
    MinusOne,
    /// Back to a Conv1D's `[in, out]` (GPT-2).
    Transpose,
}

/// Read a GGUF header (metadata + tensor table) from `r`, a file of `len` bytes, and check every
/// tensor's data against the file's end with overflow-checked arithmetic (a tensor whose
/// declared size runs past the end is an error here, before anything is allocated for it).
pub fn read_content<R: std::io::Read + std::io::Seek>(
    r: &mut R,
    len: u64,
) -> Result<gguf_file::Content> {
    let content = gguf_file::Content::read(r)
        .map_err(|e| Error::msg(format!("not a readable GGUF file: {e}")))?;
    for (name, info) in &content.tensor_infos {
        let (block, bytes) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        let elems = info
            .shape
            .dims()
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let size = elems.and_then(|n| {
            if block == 0 || n % block as u64 != 0 {
                None
            } else {
                (n / block as u64).checked_mul(bytes as u64)
            }
        });
        let Some(size) = size else {
            crate::bail!(
                "tensor `{name}` has an impossible shape {:?} for {:?}",
                info.shape.dims(),
                info.ggml_dtype
            );
        };
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| s.checked_add(size));
        match end {
            Some(end) if end <= len => {}
            _ => crate::bail!(
                "truncated GGUF file (tensor `{name}` of {size} bytes at offset {} runs past the end, {len} bytes)",
                info.offset
            ),
        }
    }
    Ok(content)
}

/// A GGUF file: metadata + lazily dequantized tensors.
pub struct GgufWeights {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    file: Mutex<File>,
    /// HF name → (GGUF name, fix)
    map: BTreeMap<String, (String, Fix)>,
}

impl GgufWeights {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let content = read_content(&mut file, len)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let cfg = config_from_gguf(&content)?;
        let map = gguf_name_map(&cfg, &content);
        Ok(GgufWeights {
            path: path.to_path_buf(),
            content,
            file: Mutex::new(file),
            map,
        })
    }

    pub fn config(&self) -> Result<ModelConfig> {
        config_from_gguf(&self.content)
    }
}

/// llama.cpp's name (without `blk.{i}.`, `.weight` / `.bias`) of each weight slot.
fn gguf_base(slot: Slot) -> &'static str {
    match slot {
        Slot::Embed => "token_embd",
        Slot::PosEmbed => "position_embd",
        Slot::FinalNorm => "output_norm",
        Slot::LmHead => "output",
        Slot::Ln1 => "attn_norm",
        Slot::Ln2 => "ffn_norm",
        Slot::PostAttnNorm => "post_attention_norm",
        Slot::PostFfNorm => "post_ffw_norm",
        Slot::Q => "attn_q",
        Slot::K => "attn_k",
        Slot::V => "attn_v",
        Slot::Qkv => "attn_qkv",
        Slot::O => "attn_output",
        Slot::QNorm => "attn_q_norm",
        Slot::KNorm => "attn_k_norm",
        Slot::Gate => "ffn_gate",
        // Phi-3's fused gate_up is llama.cpp's ffn_up (gate first, as in transformers).
        Slot::Up | Slot::GateUp => "ffn_up",
        Slot::Down => "ffn_down",
    }
}

/// HF name → (GGUF name, fix), for every slot of the family ([`hf_name`]) the file holds.
fn gguf_name_map(cfg: &ModelConfig, ct: &gguf_file::Content) -> BTreeMap<String, (String, Fix)> {
    let gemma = cfg.arch.is_gemma();
    let llama_perm = cfg.arch == Arch::Llama || cfg.arch == Arch::Mistral;
    let mut m = BTreeMap::new();
    let mut put = |hf: String, gg: String, fix: Fix| {
        if ct.tensor_infos.contains_key(&gg) {
            m.insert(hf, (gg, fix));
        }
    };
    let slots = Slot::TOP
        .iter()
        .map(|&s| (s, None))
        .chain((0..cfg.n_layers).flat_map(|i| Slot::BLOCK.iter().map(move |&s| (s, Some(i)))));
    for (slot, layer) in slots {
        let Some(hf) = hf_name(cfg, slot, layer.unwrap_or(0)) else {
            continue;
        };
        let gg = match layer {
            Some(i) => format!("blk.{i}.{}", gguf_base(slot)),
            None => gguf_base(slot).to_string(),
        };
        let fix = match slot {
            _ if slot.is_norm() && gemma => Fix::MinusOne,
            Slot::Q if llama_perm => Fix::Unpermute(cfg.n_heads),
            Slot::K if llama_perm => Fix::Unpermute(cfg.n_kv_heads),
            // llama.cpp stores GPT-2's Conv1D weights transposed to [out, in].
            _ if conv1d(cfg.arch, slot) => Fix::Transpose,
            _ => Fix::None,
        };
        let bias_fix = match fix {
            Fix::Unpermute(n) => Fix::Unpermute(n),
            _ => Fix::None,
        };
        put(format!("{hf}.weight"), format!("{gg}.weight"), fix);
        put(format!("{hf}.bias"), format!("{gg}.bias"), bias_fix);
    }
    m
}

impl WeightSource for GgufWeights {
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (gg, fix) = self
            .map
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let qt = {
            let mut f = self
                .file
                .lock()
                .map_err(|_| Error::msg("GGUF file lock poisoned"))?;
            self.content
                .tensor(&mut *f, gg, device)
                .map_err(|e| Error::msg(format!("{}: tensor `{gg}`: {e}", self.path.display())))?
        };
        let t = qt.dequantize(device)?;
        let t = match *fix {
            Fix::None => t,
            Fix::MinusOne => (t - 1.0)?,
            Fix::Unpermute(n_head) => unpermute_rows(&t, n_head)?,
            Fix::Transpose => t.t()?.contiguous()?,
        };
        Ok(t.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    fn parallel_load(&self) -> bool {
        true
    }
    fn element_count(&self) -> Option<u64> {
        Some(
            self.content
                .tensor_infos
                .values()
                .map(|t| t.shape.elem_count() as u64)
                .sum(),
        )
    }
    fn names(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }
}

/// Inverse of llama.cpp's `permute(w, n_head)`: rows grouped (head, half, pair) → (head, pair, half).
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let t = t
        .reshape((n_head, rows / n_head / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)?;
    Ok(t)
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn md_u64(ct: &gguf_file::Content, key: &str) -> Option<u64> {
    use gguf_file::Value::*;
    match md(ct, key)? {
        U8(v) => Some(*v as u64),
        I8(v) => Some(*v as u64),
        U16(v) => Some(*v as u64),
        I16(v) => Some(*v as u64),
        U32(v) => Some(*v as u64),
        I32(v) => Some(*v as u64),
        U64(v) => Some(*v),
        I64(v) => Some(*v as u64),
        _ => None,
    }
}

fn md_f64(ct: &gguf_file::Content, key: &str) -> Option<f64> {
    use gguf_file::Value::*;
    match md(ct, key)? {
        F32(v) => Some(*v as f64),
        F64(v) => Some(*v),
        _ => md_u64(ct, key).map(|v| v as f64),
    }
}

fn md_str(ct: &gguf_file::Content, key: &str) -> Option<String> {
    md(ct, key).and_then(|v| v.to_string().ok().cloned())
}

/// Read a [`ModelConfig`] from GGUF metadata (`general.architecture` and `<arch>.*` keys).
pub fn config_from_gguf(ct: &gguf_file::Content) -> Result<ModelConfig> {
    let arch_name = md_str(ct, "general.architecture")
        .ok_or_else(|| Error::msg("GGUF: missing `general.architecture`"))?;
    let arch = Arch::parse(&arch_name)?;
    let a = |k: &str| format!("{arch_name}.{k}");
    let need = |k: &str| -> Result<usize> {
        md_u64(ct, &a(k))
            .map(|v| v as usize)
            .ok_or_else(|| Error::msg(format!("GGUF: missing `{}`", a(k))))
    };
    let d_model = need("embedding_length")?;
    let n_layers = need("block_count")?;
    let n_heads = need("attention.head_count")?;
    let n_kv_heads = md_u64(ct, &a("attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(n_heads);
    let key_length = md_u64(ct, &a("attention.key_length")).map(|v| v as usize);
    crate::model::config::check_dims("GGUF", d_model, n_heads, n_layers, key_length)?;
    let d_head = key_length.unwrap_or(d_model / n_heads);
    let vocab_size = match md_u64(ct, &a("vocab_size")) {
        Some(v) => v as usize,
        None => ct
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| {
                Error::msg("GGUF: no vocab size and no token_embd.weight with a shape")
            })?,
    };
    let theta = md_f64(ct, &a("rope.freq_base")).unwrap_or(10000.0);
    let scaling = match md_str(ct, &a("rope.scaling.type")).as_deref() {
        Some("linear") => RopeScaling::Linear {
            factor: md_f64(ct, &a("rope.scaling.factor")).unwrap_or(1.0),
        },
        _ => RopeScaling::None,
    };
    let window = md_u64(ct, &a("attention.sliding_window")).map(|v| v as usize);
    let mut ropes = vec![Rope { theta, scaling }];
    // llama.cpp hard-codes Gemma 3's pattern: every 6th layer is global.
    let sliding: Vec<bool> = (0..n_layers)
        .map(|i| arch.default_sliding(i, 6, window.is_some()))
        .collect();
    if arch == Arch::Gemma3 {
        // llama.cpp hard-codes the local rope base of Gemma 3.
        ropes.push(Rope {
            theta: 10000.0,
            scaling: RopeScaling::None,
        });
    }
    let layers = LayerAttention::per_layer(&sliding, window, ropes.len());
    let (attn_softcap, final_softcap) = arch.softcaps(|k| md_f64(ct, &a(k)));
    let tokens_u32 = |k: &str| md_u64(ct, k).map(|v| v as u32);
    let st = arch.structure();
    let has = |n: &str| ct.tensor_infos.contains_key(n);
    if has("rope_factors_long.weight") || has("rope_factors_short.weight") {
        crate::bail!(
            "GGUF: {arch_name} with longrope factors is not supported (default rope only)"
        );
    }
    let cfg = ModelConfig {
        arch,
        vocab_size,
        d_model,
        d_mlp: need("feed_forward_length")?,
        n_layers,
        n_heads,
        n_kv_heads,
        d_head,
        norm_eps: md_f64(ct, &a("attention.layer_norm_rms_epsilon"))
            .or_else(|| md_f64(ct, &a("attention.layer_norm_epsilon")))
            .unwrap_or(1e-6),
        max_position_embeddings: md_u64(ct, &a("context_length")).unwrap_or(4096) as usize,
        act: match arch {
            _ if arch.is_gemma() => Activation::GeluTanh,
            Arch::Gpt2 => Activation::GeluTanh,
            Arch::GptNeox => Activation::Gelu,
            _ => Activation::Silu,
        },
        tie_word_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        out_bias: st.out_bias,
        norm: st.norm,
        learned_pos: st.learned_pos,
        rotary_dim: if st.rotary {
            md_u64(ct, &a("rope.dimension_count")).map_or(d_head, |v| v as usize)
        } else {
            0
        },
        gated_mlp: st.gated_mlp,
        parallel_attn_mlp: arch == Arch::GptNeox
            && !matches!(
                md(ct, &a("use_parallel_residual")),
                Some(gguf_file::Value::Bool(false))
            ),
        pre_norms: st.pre_norms,
        post_norms: st.post_norms,
        norm_offset: arch.norm_offset(),
        embed_scale: arch.embed_scale(d_model),
        attn_scale: match arch {
            Arch::Gemma2 | Arch::Gemma3 => {
                // llama.cpp: query_pre_attn_scalar = head_dim, except Gemma 2/3 27B (d/heads).
                let q = if arch == Arch::Gemma3 && n_layers == 62
                    || arch == Arch::Gemma2 && n_layers == 46
                {
                    (d_model / n_heads) as f64
                } else {
                    d_head as f64
                };
                q.powf(-0.5)
            }
            _ => (d_head as f64).powf(-0.5),
        },
        attn_softcap,
        final_softcap,
        qk_norm: st.qk_norm,
        ropes,
        layers,
        bos_token_id: tokens_u32("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tokens_u32("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
        pad_token_id: tokens_u32("tokenizer.ggml.padding_token_id"),
    };
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> Result<()> {
        // llama.cpp: w.reshape(n_head, 2, rows/n_head/2, rest).swapaxes(1, 2).reshape(shape)
        let (n_head, d_head, cols) = (3usize, 4usize, 2usize);
        let rows = n_head * d_head;
        let w = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu)?.reshape((rows, cols))?;
        let permuted = w
            .reshape((n_head, 2, d_head / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?;
        let back = unpermute_rows(&permuted, n_head)?;
        let diff = (back - &w)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
