//! Weight views for probes, in TransformerLens conventions (`W_Q`, `W_K`, `W_V`, `W_O`, the
//! MLP matrices, the norms' effective weights), and every weight under its Hugging Face name
//! for `convert`.

use candle_core::{DType, Tensor};

use super::{Block, Transformer};
use crate::{Error, Result};

impl Transformer {
    fn check_layer(&self, l: usize) -> Result<&Block> {
        self.blocks.get(l).ok_or(Error::LayerOutOfRange {
            layer: l,
            n_layers: self.cfg.n_layers,
        })
    }

    /// `W_E`: `[vocab, d_model]`.
    pub fn w_e(&self) -> &Tensor {
        &self.embed
    }

    /// `W_U`ᵀ as stored: `[vocab, d_model]` (the unembedding rows).
    pub fn unembed_rows(&self) -> &Tensor {
        &self.lm_head
    }

    /// `W_V` of layer `l`: `[n_kv_heads, d_model, d_head]`.
    pub fn w_v(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let w = self.check_layer(l)?.w_qkv.tensor(&self.device)?.narrow(
            0,
            (c.n_heads + c.n_kv_heads) * c.d_head,
            c.n_kv_heads * c.d_head,
        )?;
        Ok(w.reshape((c.n_kv_heads, c.d_head, c.d_model))?
            .transpose(1, 2)?
            .to_dtype(self.dtype)?
            .contiguous()?)
    }

    /// `W_Q` of layer `l`: `[n_heads, d_model, d_head]`.
    pub fn w_q(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let w =
            self.check_layer(l)?
                .w_qkv
                .tensor(&self.device)?
                .narrow(0, 0, c.n_heads * c.d_head)?;
        Ok(w.reshape((c.n_heads, c.d_head, c.d_model))?
            .transpose(1, 2)?
            .to_dtype(self.dtype)?
            .contiguous()?)
    }

    /// `W_K` of layer `l`: `[n_kv_heads, d_model, d_head]`.
    pub fn w_k(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let w = self.check_layer(l)?.w_qkv.tensor(&self.device)?.narrow(
            0,
            c.n_heads * c.d_head,
            c.n_kv_heads * c.d_head,
        )?;
        Ok(w.reshape((c.n_kv_heads, c.d_head, c.d_model))?
            .transpose(1, 2)?
            .to_dtype(self.dtype)?
            .contiguous()?)
    }

    /// `W_O` of layer `l`: `[n_heads, d_head, d_model]`.
    pub fn w_o(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let w = self.check_layer(l)?.w_o.tensor(&self.device)?; // [d, nh*dh]
        self.view(
            w.reshape((c.d_model, c.n_heads, c.d_head))?
                .permute((1, 2, 0))?,
        )
    }

    /// MLP input weights (gate, up) of layer `l`: each `[d_mlp, d_model]` (rows = neurons).
    pub fn w_gate_up(&self, l: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let w = self.check_layer(l)?.w_gate_up.tensor(&self.device)?;
        Ok((
            self.view(w.narrow(0, 0, c.d_mlp)?)?,
            self.view(w.narrow(0, c.d_mlp, c.d_mlp)?)?,
        ))
    }

    /// `W_out` of layer `l`: `[d_mlp, d_model]` (row n = neuron n's output direction).
    pub fn w_out(&self, l: usize) -> Result<Tensor> {
        self.view(self.check_layer(l)?.w_down.tensor(&self.device)?.t()?)
    }

    /// The attention input norm's effective weight (offset included) of layer `l`: `[d_model]`.
    pub fn ln1_weight(&self, l: usize) -> Result<Tensor> {
        Ok(self.check_layer(l)?.ln1.clone())
    }

    /// The final norm's effective weight (offset included): `[d_model]`.
    pub fn final_norm_weight(&self) -> &Tensor {
        &self.norm
    }

    /// Every weight under its Hugging Face name, in the checkpoint's own convention (norm offsets
    /// removed, fused projections split): what `convert` writes.
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let c = &self.cfg;
        let unnorm = |w: &Tensor| -> Result<Tensor> {
            Ok((w.to_dtype(DType::F32)? - c.norm_offset)?.to_dtype(self.dtype)?)
        };
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), self.embed.clone()),
            ("model.norm.weight".to_string(), unnorm(&self.norm)?),
        ];
        if !c.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            let (nq, nk) = (c.n_heads * c.d_head, c.n_kv_heads * c.d_head);
            let (w_qkv, w_o) = (b.w_qkv.tensor(&self.device)?, b.w_o.tensor(&self.device)?);
            let w_gate_up = b.w_gate_up.tensor(&self.device)?;
            let w_down = b.w_down.tensor(&self.device)?;
            out.push((p("input_layernorm.weight"), unnorm(&b.ln1)?));
            out.push((p("self_attn.q_proj.weight"), w_qkv.narrow(0, 0, nq)?));
            out.push((p("self_attn.k_proj.weight"), w_qkv.narrow(0, nq, nk)?));
            out.push((p("self_attn.v_proj.weight"), w_qkv.narrow(0, nq + nk, nk)?));
            if let Some(bias) = &b.b_qkv {
                out.push((p("self_attn.q_proj.bias"), bias.narrow(0, 0, nq)?));
                out.push((p("self_attn.k_proj.bias"), bias.narrow(0, nq, nk)?));
                out.push((p("self_attn.v_proj.bias"), bias.narrow(0, nq + nk, nk)?));
            }
            out.push((p("self_attn.o_proj.weight"), w_o));
            if let Some(w) = &b.q_norm {
                out.push((p("self_attn.q_norm.weight"), unnorm(w)?));
            }
            if let Some(w) = &b.k_norm {
                out.push((p("self_attn.k_norm.weight"), unnorm(w)?));
            }
            if c.sandwich_norms {
                if let Some(w) = &b.post_attn_ln {
                    out.push((p("post_attention_layernorm.weight"), unnorm(w)?));
                }
                out.push((p("pre_feedforward_layernorm.weight"), unnorm(&b.ln2)?));
                if let Some(w) = &b.post_ff_ln {
                    out.push((p("post_feedforward_layernorm.weight"), unnorm(w)?));
                }
            } else {
                out.push((p("post_attention_layernorm.weight"), unnorm(&b.ln2)?));
            }
            out.push((p("mlp.gate_proj.weight"), w_gate_up.narrow(0, 0, c.d_mlp)?));
            out.push((
                p("mlp.up_proj.weight"),
                w_gate_up.narrow(0, c.d_mlp, c.d_mlp)?,
            ));
            out.push((p("mlp.down_proj.weight"), w_down));
        }
        out.into_iter()
            .map(|(n, t)| Ok((n, self.view(t)?)))
            .collect()
    }
}
