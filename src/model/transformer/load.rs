//! Loading: every family's checkpoint names and layouts ([`Slot`], [`hf_name`]) onto the one set
//! of block weights the forward pass reads, and back ([`Transformer::hf_tensors`]).
//!
//! The block weights are canonical: `w_qkv` is `[q; k; v]` rows (`[out, in]`), `w_gate_up` is
//! `[gate; up]` rows for gated MLPs and `W_in` rows for plain ones, every norm a [`Norm`]. What
//! differs per family is only how a checkpoint stores them:
//! - Llama, Mistral, Qwen2/3, Gemma 1/2/3, OLMo-2: separate `q_proj`/`k_proj`/`v_proj` and
//!   `gate_proj`/`up_proj` under `model.layers.{i}.`;
//! - Phi-3: fused `qkv_proj` (`[q; k; v]` rows) and `gate_up_proj` (`[gate; up]` rows);
//! - GPT-2: `transformer.h.{i}.`, Conv1D weights stored `[in, out]` (transposed here), fused
//!   `c_attn` = `[q | k | v]` columns, learned positions `transformer.wpe`;
//! - GPT-NeoX: `gpt_neox.layers.{i}.`, fused `query_key_value` interleaved per head
//!   (`[head, (q, k, v), d_head]` rows: de-interleaved here), unembedding `embed_out`.
//!
//! Biases are loaded for every projection the config says has one.

use candle_core::{DType, Device, Tensor};

use super::{Block, Linear, Norm, Table, Transformer};
use crate::model::config::{Arch, ModelConfig, NormKind, QkNorm};
use crate::model::gemm::Format;
use crate::model::mapped::{MappedLinear, MappedRows};
use crate::model::weights::WeightSource;
use crate::Result;

/// A weight of the model, named per family by [`hf_name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Embed,
    PosEmbed,
    FinalNorm,
    LmHead,
    Ln1,
    Ln2,
    PostAttnNorm,
    PostFfNorm,
    Q,
    K,
    V,
    /// Fused q, k, v.
    Qkv,
    O,
    QNorm,
    KNorm,
    Gate,
    /// The up projection (gated), or `W_in` (plain MLP).
    Up,
    /// Fused gate and up (Phi-3).
    GateUp,
    Down,
}

impl Slot {
    pub const TOP: [Slot; 4] = [Slot::Embed, Slot::PosEmbed, Slot::FinalNorm, Slot::LmHead];
    pub const BLOCK: [Slot; 15] = [
        Slot::Ln1,
        Slot::Ln2,
        Slot::PostAttnNorm,
        Slot::PostFfNorm,
        Slot::Q,
        Slot::K,
        Slot::V,
        Slot::Qkv,
        Slot::O,
        Slot::QNorm,
        Slot::KNorm,
        Slot::Gate,
        Slot::Up,
        Slot::GateUp,
        Slot::Down,
    ];

    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Slot::FinalNorm
                | Slot::Ln1
                | Slot::Ln2
                | Slot::PostAttnNorm
                | Slot::PostFfNorm
                | Slot::QNorm
                | Slot::KNorm
        )
    }
}

/// Whether the family stores this slot's weight as a Conv1D (`[in, out]`): GPT-2's projections.
pub fn conv1d(arch: Arch, slot: Slot) -> bool {
    arch == Arch::Gpt2 && matches!(slot, Slot::Qkv | Slot::O | Slot::Up | Slot::Down)
}

/// The checkpoint name (without `.weight` / `.bias`) of `slot` in layer `layer` for `cfg`'s
/// family, or `None` when the family has no such weight.
pub fn hf_name(cfg: &ModelConfig, slot: Slot, layer: usize) -> Option<String> {
    use Slot::*;
    let arch = cfg.arch;
    let top = |s: &str| Some(s.to_string());
    match (arch, slot) {
        (Arch::Gpt2, Embed) => return top("transformer.wte"),
        (Arch::Gpt2, PosEmbed) => return top("transformer.wpe"),
        (Arch::Gpt2, FinalNorm) => return top("transformer.ln_f"),
        (Arch::GptNeox, Embed) => return top("gpt_neox.embed_in"),
        (Arch::GptNeox, FinalNorm) => return top("gpt_neox.final_layer_norm"),
        (Arch::GptNeox, LmHead) => return top("embed_out"),
        (_, Embed) => return top("model.embed_tokens"),
        (_, PosEmbed) => return None,
        (_, FinalNorm) => return top("model.norm"),
        (_, LmHead) => return top("lm_head"),
        _ => {}
    }
    let gated = cfg.gated_mlp;
    let fused_qkv = matches!(arch, Arch::Gpt2 | Arch::GptNeox | Arch::Phi3);
    let suffix = match (arch, slot) {
        (_, Ln1 | Ln2) if !cfg.pre_norms => return None,
        (_, PostAttnNorm | PostFfNorm) if !cfg.post_norms => return None,
        (_, QNorm | KNorm) if cfg.qk_norm == QkNorm::None => return None,
        (_, Q | K | V) if fused_qkv => return None,
        (_, Qkv) if !fused_qkv => return None,
        (_, Gate | GateUp) if !gated => return None,
        (Arch::Phi3, Gate | Up) => return None,
        (_, GateUp) if arch != Arch::Phi3 => return None,
        (Arch::Gpt2, Ln1) => "ln_1",
        (Arch::Gpt2, Ln2) => "ln_2",
        (Arch::Gpt2, Qkv) => "attn.c_attn",
        (Arch::Gpt2, O) => "attn.c_proj",
        (Arch::Gpt2, Up) => "mlp.c_fc",
        (Arch::Gpt2, Down) => "mlp.c_proj",
        (Arch::GptNeox, Qkv) => "attention.query_key_value",
        (Arch::GptNeox, O) => "attention.dense",
        (Arch::GptNeox, Up) => "mlp.dense_h_to_4h",
        (Arch::GptNeox, Down) => "mlp.dense_4h_to_h",
        (_, Ln1) => "input_layernorm",
        // Gemma 2/3 have both pre and post norms around the MLP.
        (_, Ln2) if cfg.post_norms => "pre_feedforward_layernorm",
        (_, Ln2) => "post_attention_layernorm",
        (_, PostAttnNorm) => "post_attention_layernorm",
        (_, PostFfNorm) => "post_feedforward_layernorm",
        (_, Q) => "self_attn.q_proj",
        (_, K) => "self_attn.k_proj",
        (_, V) => "self_attn.v_proj",
        (_, Qkv) => "self_attn.qkv_proj",
        (_, O) => "self_attn.o_proj",
        (_, QNorm) => "self_attn.q_norm",
        (_, KNorm) => "self_attn.k_norm",
        (_, Gate) => "mlp.gate_proj",
        (_, Up) => "mlp.up_proj",
        (_, GateUp) => "mlp.gate_up_proj",
        (_, Down) => "mlp.down_proj",
        (_, Embed | PosEmbed | FinalNorm | LmHead) => unreachable!("top-level slots return above"),
    };
    let prefix = match arch {
        Arch::Gpt2 => "transformer.h",
        Arch::GptNeox => "gpt_neox.layers",
        _ => "model.layers",
    };
    Some(format!("{prefix}.{layer}.{suffix}"))
}

/// Whether a projection slot carries a bias in `cfg`.
fn has_bias(cfg: &ModelConfig, slot: Slot) -> bool {
    match slot {
        Slot::Q | Slot::K | Slot::V | Slot::Qkv => cfg.qkv_bias,
        Slot::O | Slot::Up | Slot::Down => cfg.out_bias,
        _ => false,
    }
}

/// NeoX's fused rows `[head, (q, k, v), d_head]` → `[(q, k, v), head, d_head]` (and back with
/// `inverse`); works on weights `[rows, in]` and biases `[rows]`.
fn neox_deinterleave(t: &Tensor, n_heads: usize, d_head: usize, inverse: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rest: usize = dims[1..].iter().product();
    let shape = if inverse {
        (3, n_heads, d_head, rest)
    } else {
        (n_heads, 3, d_head, rest)
    };
    Ok(t.reshape(shape)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(dims)?)
}

/// A projection's weight as read: a tensor, or 16-bit rows left in the checkpoint's map.
enum Weight {
    Loaded(Tensor),
    Mapped(MappedRows),
}

impl Weight {
    fn dims(&self) -> Vec<usize> {
        match self {
            Weight::Loaded(t) => t.dims().to_vec(),
            Weight::Mapped(m) => vec![m.dims().0, m.dims().1],
        }
    }

    fn tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        match self {
            Weight::Loaded(t) => Ok(t.clone()),
            Weight::Mapped(m) => MappedLinear::new(vec![m.clone()])?.unpack(dtype, device),
        }
    }
}

/// The linear layer whose rows are `parts`' rows in order: mapped when every part is (no
/// copy), else one loaded tensor (concatenated).
fn stack(parts: Vec<Weight>, dtype: DType, device: &Device) -> Result<Linear> {
    if parts.iter().all(|p| matches!(p, Weight::Mapped(_))) {
        let rows = parts
            .into_iter()
            .filter_map(|p| match p {
                Weight::Mapped(m) => Some(m),
                Weight::Loaded(_) => None,
            })
            .collect();
        return Ok(Linear::Mapped(MappedLinear::new(rows)?));
    }
    let ts = parts
        .iter()
        .map(|p| p.tensor(dtype, device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Linear::Dense(if ts.len() == 1 {
        ts[0].clone()
    } else {
        Tensor::cat(&ts, 0)?
    }))
}

impl Transformer {
    /// Load every weight of `cfg` from a source (each family's Hugging Face names, see
    /// [`hf_name`]).
    pub fn load(
        src: &dyn WeightSource,
        cfg: ModelConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Transformer> {
        Self::load_with(src, cfg, dtype, device, false)
    }

    /// [`Transformer::load`]; with `map` (an f32 model on the CPU), every linear weight and
    /// table that the source holds as a 2-D bf16 / f16 tensor in a memory map
    /// ([`WeightSource::mapped`]: safetensors) stays there and is multiplied where it lies
    /// ([`crate::model::mapped`]); q,k,v and gate/up stay separate blocks of rows instead of
    /// a concatenated copy. Weights the load must transform (GPT-2's Conv1D transpose,
    /// GPT-NeoX's interleaved q,k,v), other dtypes, norms and biases are loaded as usual.
    pub fn load_with(
        src: &dyn WeightSource,
        cfg: ModelConfig,
        dtype: DType,
        device: &Device,
        map: bool,
    ) -> Result<Transformer> {
        let map = map && dtype == DType::F32 && device.is_cpu();
        // Every tensor is checked for NaN / inf as it is read.
        let finite = crate::model::weights::Finite(src);
        // Dequantizing GGUF tensors is CPU-bound: do it on all cores first.
        let prefetched;
        let src: &dyn WeightSource = if src.parallel_load() {
            prefetched = crate::model::weights::prefetch(&finite, device)?;
            &prefetched
        } else {
            &finite
        };
        let name = |slot: Slot, l: usize| hf_name(&cfg, slot, l);
        let need = |slot: Slot, l: usize| -> Result<String> {
            name(slot, l).ok_or_else(|| {
                crate::Error::msg(format!("{}: no {slot:?} weight", cfg.arch.name()))
            })
        };
        // A 2-D 16-bit tensor left where it lies (with `map`, for weights used as stored).
        let mapped = |slot: Option<Slot>, n: &str| -> Result<Option<MappedRows>> {
            let transformed = slot.is_some_and(|s| {
                conv1d(cfg.arch, s) || (cfg.arch == Arch::GptNeox && s == Slot::Qkv)
            });
            if !map || transformed {
                return Ok(None);
            }
            src.mapped(n)
        };
        // A projection `[out, in]` (Conv1D transposed) and its bias when the config has one.
        let proj = |slot: Slot, l: usize| -> Result<(Weight, Option<Tensor>)> {
            let n = need(slot, l)?;
            let wn = format!("{n}.weight");
            let w = match mapped(Some(slot), &wn)? {
                Some(m) => Weight::Mapped(m),
                None => {
                    let w = src.get(&wn, dtype, device)?;
                    Weight::Loaded(if conv1d(cfg.arch, slot) {
                        w.t()?.contiguous()?
                    } else {
                        w
                    })
                }
            };
            let b = if has_bias(&cfg, slot) {
                Some(src.get(&format!("{n}.bias"), dtype, device)?)
            } else {
                None
            };
            Ok((w, b))
        };
        // Norm weights: keep f32 precision for the (offset + w) addition, then cast.
        let norm = |slot: Slot, l: usize| -> Result<Option<Norm>> {
            let Some(n) = name(slot, l) else {
                return Ok(None);
            };
            let w = src.get(&format!("{n}.weight"), DType::F32, device)?;
            let w = (w + cfg.norm_offset)?.to_dtype(dtype)?;
            let b = if cfg.norm == NormKind::Layer && !slot_is_qk(slot) {
                let bn = format!("{n}.bias");
                src.contains(&bn)
                    .then(|| src.get(&bn, dtype, device))
                    .transpose()?
            } else {
                None
            };
            Ok(Some(Norm { w, b }))
        };
        // The embedding and unembedding tables: mapped where they lie, or loaded.
        let table = |n: &str| -> Result<Table> {
            Ok(match mapped(None, n)? {
                Some(m) => Table::mapped(MappedLinear::new(vec![m])?, dtype, device),
                None => Table::dense(src.get(n, dtype, device)?),
            })
        };
        let embed = table(&format!("{}.weight", need(Slot::Embed, 0)?))?;
        let (v, d) = embed.dims()?;
        if v < cfg.vocab_size || d != cfg.d_model {
            crate::bail!(
                "embedding matrix is {v}×{d}, the config says {}×{}",
                cfg.vocab_size,
                cfg.d_model
            );
        }
        let pos_embed = match name(Slot::PosEmbed, 0) {
            Some(n) if cfg.learned_pos => {
                let p = src.get(&format!("{n}.weight"), dtype, device)?;
                if p.dims() != [cfg.max_position_embeddings, cfg.d_model] {
                    crate::bail!(
                        "position embeddings have shape {:?}, expected [{}, {}]",
                        p.dims(),
                        cfg.max_position_embeddings,
                        cfg.d_model
                    );
                }
                Some(p)
            }
            _ => None,
        };
        let (nq, nk) = (cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head);
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let expect = |t: &Weight, rows: usize, cols: usize, what: &str| -> Result<()> {
                if t.dims() != [rows, cols] {
                    crate::bail!(
                        "layer {i}: {what} has shape {:?}, expected [{rows}, {cols}]",
                        t.dims()
                    );
                }
                Ok(())
            };
            let (w_qkv, b_qkv) = if name(Slot::Qkv, i).is_some() {
                let (w, b) = proj(Slot::Qkv, i)?;
                expect(&w, nq + 2 * nk, cfg.d_model, "the fused qkv projection")?;
                if cfg.arch == Arch::GptNeox {
                    let f = |t: &Tensor| neox_deinterleave(t, cfg.n_heads, cfg.d_head, false);
                    let w = Linear::Dense(f(&w.tensor(dtype, device)?)?);
                    (w, b.as_ref().map(f).transpose()?)
                } else {
                    (stack(vec![w], dtype, device)?, b)
                }
            } else {
                let (q, bq) = proj(Slot::Q, i)?;
                let (k, bk) = proj(Slot::K, i)?;
                let (vv, bv) = proj(Slot::V, i)?;
                expect(&q, nq, cfg.d_model, "q_proj")?;
                expect(&k, nk, cfg.d_model, "k_proj")?;
                expect(&vv, nk, cfg.d_model, "v_proj")?;
                let b = match (bq, bk, bv) {
                    (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
                    _ => None,
                };
                (stack(vec![q, k, vv], dtype, device)?, b)
            };
            let (w_o, b_o) = proj(Slot::O, i)?;
            expect(&w_o, cfg.d_model, nq, "the output projection")?;
            let (w_gate_up, b_in) = if !cfg.gated_mlp || name(Slot::GateUp, i).is_some() {
                let slot = if cfg.gated_mlp {
                    Slot::GateUp
                } else {
                    Slot::Up
                };
                let (w, b) = proj(slot, i)?;
                let rows = if cfg.gated_mlp { 2 } else { 1 } * cfg.d_mlp;
                expect(&w, rows, cfg.d_model, "the MLP input")?;
                (stack(vec![w], dtype, device)?, b)
            } else {
                let (g, _) = proj(Slot::Gate, i)?;
                let (u, _) = proj(Slot::Up, i)?;
                expect(&g, cfg.d_mlp, cfg.d_model, "gate_proj")?;
                expect(&u, cfg.d_mlp, cfg.d_model, "up_proj")?;
                (stack(vec![g, u], dtype, device)?, None)
            };
            let (w_down, b_down) = proj(Slot::Down, i)?;
            expect(&w_down, cfg.d_model, cfg.d_mlp, "the MLP output")?;
            let w_o = stack(vec![w_o], dtype, device)?;
            let w_down = stack(vec![w_down], dtype, device)?;
            let qk = |slot: Slot| -> Result<Option<Tensor>> { Ok(norm(slot, i)?.map(|n| n.w)) };
            blocks.push(Block {
                ln1: norm(Slot::Ln1, i)?,
                w_qkv,
                b_qkv,
                w_o,
                b_o,
                q_norm: qk(Slot::QNorm)?,
                k_norm: qk(Slot::KNorm)?,
                post_attn_ln: norm(Slot::PostAttnNorm, i)?,
                ln2: norm(Slot::Ln2, i)?,
                w_gate_up,
                b_in,
                w_down,
                b_down,
                post_ff_ln: norm(Slot::PostFfNorm, i)?,
            });
        }
        let lm_head = match name(Slot::LmHead, 0) {
            Some(n) if src.contains(&format!("{n}.weight")) => table(&format!("{n}.weight"))?,
            _ => embed.share(),
        };
        let inv_freqs = cfg
            .ropes
            .iter()
            .map(|r| r.inv_freq(cfg.rotary_dim))
            .collect();
        let kernels =
            device.is_cpu() && std::env::var_os("ENGRAM_UNFUSED").is_none_or(|v| v == "0");
        let mut tr = Transformer {
            norm: norm(Slot::FinalNorm, 0)?.ok_or_else(|| crate::Error::msg("no final norm"))?,
            embed,
            pos_embed,
            blocks,
            lm_head,
            inv_freqs,
            lm_head_bf16: None,
            bf16_products: false,
            fused: dtype == DType::F32 && kernels,
            attn_kernel: kernels,
            dtype,
            device: device.clone(),
            cfg,
        };
        // f32 on an AVX-512 CPU (on an AVX2 one with ENGRAM_PACK_F32=1): pack the block
        // weights once for the FMA kernels (exact f32, faster than candle's matmul, which
        // repacks the weight on every call).
        if tr.fused && crate::model::gemm::packs_f32() {
            tr.pack_blocks(Format::F32)?;
        }
        Ok(tr)
    }

    /// Every weight under its Hugging Face name, in the checkpoint's own convention (norm offsets
    /// removed, fused projections split or re-fused as the family stores them, Conv1D weights
    /// transposed back): what `convert` writes.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let c = &self.cfg;
        let unnorm = |w: &Tensor| -> Result<Tensor> {
            Ok((w.to_dtype(DType::F32)? - c.norm_offset)?.to_dtype(self.dtype)?)
        };
        let mut out: Vec<(String, Tensor)> = vec![];
        let mut put = |slot: Slot, l: usize, w: Tensor, b: Option<&Tensor>| -> Result<()> {
            let Some(n) = hf_name(c, slot, l) else {
                return Ok(());
            };
            let neox = c.arch == Arch::GptNeox && slot == Slot::Qkv;
            let w = if neox {
                neox_deinterleave(&w, c.n_heads, c.d_head, true)?
            } else {
                w
            };
            let w = if conv1d(c.arch, slot) { w.t()? } else { w };
            out.push((format!("{n}.weight"), w));
            if let Some(b) = b {
                let b = if neox {
                    neox_deinterleave(b, c.n_heads, c.d_head, true)?
                } else {
                    b.clone()
                };
                out.push((format!("{n}.bias"), b));
            }
            Ok(())
        };
        let put_norm = |put: &mut Put, slot: Slot, l: usize, n: Option<&Norm>| -> Result<()> {
            match n {
                Some(n) => put(slot, l, unnorm(&n.w)?, n.b.as_ref()),
                None => Ok(()),
            }
        };
        put(Slot::Embed, 0, self.embed.tensor().clone(), None)?;
        if let Some(p) = &self.pos_embed {
            put(Slot::PosEmbed, 0, p.clone(), None)?;
        }
        put_norm(&mut put, Slot::FinalNorm, 0, Some(&self.norm))?;
        if !c.tie_word_embeddings {
            put(Slot::LmHead, 0, self.lm_head.tensor().clone(), None)?;
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let (nq, nk) = (c.n_heads * c.d_head, c.n_kv_heads * c.d_head);
            let w_qkv = b.w_qkv.tensor(&self.device)?;
            put_norm(&mut put, Slot::Ln1, i, b.ln1.as_ref())?;
            if hf_name(c, Slot::Qkv, i).is_some() {
                put(Slot::Qkv, i, w_qkv, b.b_qkv.as_ref())?;
            } else {
                let bias = |o, n| b.b_qkv.as_ref().map(|t| t.narrow(0, o, n)).transpose();
                put(Slot::Q, i, w_qkv.narrow(0, 0, nq)?, bias(0, nq)?.as_ref())?;
                put(Slot::K, i, w_qkv.narrow(0, nq, nk)?, bias(nq, nk)?.as_ref())?;
                put(
                    Slot::V,
                    i,
                    w_qkv.narrow(0, nq + nk, nk)?,
                    bias(nq + nk, nk)?.as_ref(),
                )?;
            }
            put(Slot::O, i, b.w_o.tensor(&self.device)?, b.b_o.as_ref())?;
            for (slot, w) in [(Slot::QNorm, &b.q_norm), (Slot::KNorm, &b.k_norm)] {
                if let Some(w) = w {
                    put(slot, i, unnorm(w)?, None)?;
                }
            }
            put_norm(&mut put, Slot::PostAttnNorm, i, b.post_attn_ln.as_ref())?;
            put_norm(&mut put, Slot::Ln2, i, b.ln2.as_ref())?;
            put_norm(&mut put, Slot::PostFfNorm, i, b.post_ff_ln.as_ref())?;
            let w_in = b.w_gate_up.tensor(&self.device)?;
            if !c.gated_mlp {
                put(Slot::Up, i, w_in, b.b_in.as_ref())?;
            } else if hf_name(c, Slot::GateUp, i).is_some() {
                put(Slot::GateUp, i, w_in, None)?;
            } else {
                put(Slot::Gate, i, w_in.narrow(0, 0, c.d_mlp)?, None)?;
                put(Slot::Up, i, w_in.narrow(0, c.d_mlp, c.d_mlp)?, None)?;
            }
            put(
                Slot::Down,
                i,
                b.w_down.tensor(&self.device)?,
                b.b_down.as_ref(),
            )?;
        }
        out.into_iter()
            .map(|(n, t)| Ok((n, self.view(t)?)))
            .collect()
    }
}

/// Writes one slot's weight (and bias) under the family's name ([`Transformer::hf_tensors`]).
type Put<'a> = dyn FnMut(Slot, usize, Tensor, Option<&Tensor>) -> Result<()> + 'a;

/// q/k norms are RMSNorms in every family that has them (no bias).
fn slot_is_qk(slot: Slot) -> bool {
    matches!(slot, Slot::QNorm | Slot::KNorm)
}
