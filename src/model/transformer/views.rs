//! Weight views for probes, in TransformerLens conventions (`W_Q`, `W_K`, `W_V`, `W_O`, the
//! MLP matrices, the norms' effective weights and biases, `W_pos`).

use candle_core::Tensor;

use super::{Block, Transformer};
use crate::{Error, Result};

impl Transformer {
    fn check_layer(&self, l: usize) -> Result<&Block> {
        self.blocks.get(l).ok_or(Error::LayerOutOfRange {
            layer: l,
            n_layers: self.cfg.n_layers,
        })
    }

    /// `W_E`: `[vocab, d_model]` (a mapped embedding is widened into a tensor on the first
    /// call, and kept).
    pub fn w_e(&self) -> &Tensor {
        self.embed.tensor()
    }

    /// `W_U`ᵀ as stored: `[vocab, d_model]` (the unembedding rows; widened on the first call
    /// when mapped).
    pub fn unembed_rows(&self) -> &Tensor {
        self.lm_head.tensor()
    }

    /// Rows `first_head..first_head + heads` (in heads of `d_head`) of layer `l`'s fused q,k,v
    /// projection, as `[heads, d_model, d_head]`.
    fn qkv_heads(&self, l: usize, first_head: usize, heads: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let w = self.check_layer(l)?.w_qkv.tensor(&self.device)?;
        let w = w.narrow(0, first_head * c.d_head, heads * c.d_head)?;
        Ok(w.reshape((heads, c.d_head, c.d_model))?
            .transpose(1, 2)?
            .to_dtype(self.dtype)?
            .contiguous()?)
    }

    /// `W_Q` of layer `l`: `[n_heads, d_model, d_head]`.
    pub fn w_q(&self, l: usize) -> Result<Tensor> {
        self.qkv_heads(l, 0, self.cfg.n_heads)
    }

    /// `W_K` of layer `l`: `[n_kv_heads, d_model, d_head]`.
    pub fn w_k(&self, l: usize) -> Result<Tensor> {
        self.qkv_heads(l, self.cfg.n_heads, self.cfg.n_kv_heads)
    }

    /// `W_V` of layer `l`: `[n_kv_heads, d_model, d_head]`.
    pub fn w_v(&self, l: usize) -> Result<Tensor> {
        let c = &self.cfg;
        self.qkv_heads(l, c.n_heads + c.n_kv_heads, c.n_kv_heads)
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
    /// Gated MLPs only; a plain MLP's input is [`Transformer::w_in`].
    pub fn w_gate_up(&self, l: usize) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        if !c.gated_mlp {
            crate::bail!(
                "{} has ungated MLPs (no gate/up pair): use w_in",
                c.arch.name()
            );
        }
        let w = self.check_layer(l)?.w_gate_up.tensor(&self.device)?;
        Ok((
            self.view(w.narrow(0, 0, c.d_mlp)?)?,
            self.view(w.narrow(0, c.d_mlp, c.d_mlp)?)?,
        ))
    }

    /// The weights behind `mlp.hook_pre` of layer `l`, `[d_mlp, d_model]`: the gate projection
    /// (gated MLPs) or `W_in` (plain MLPs).
    pub fn w_in(&self, l: usize) -> Result<Tensor> {
        let w = self.check_layer(l)?.w_gate_up.tensor(&self.device)?;
        self.view(w.narrow(0, 0, self.cfg.d_mlp)?)
    }

    /// `W_out` of layer `l`: `[d_mlp, d_model]` (row n = neuron n's output direction).
    pub fn w_out(&self, l: usize) -> Result<Tensor> {
        self.view(self.check_layer(l)?.w_down.tensor(&self.device)?.t()?)
    }

    /// The attention input norm's effective weight (offset included) of layer `l`: `[d_model]`
    /// (ones without one: OLMo-2). A LayerNorm's bias is [`Transformer::ln1_bias`].
    pub fn ln1_weight(&self, l: usize) -> Result<Tensor> {
        match &self.check_layer(l)?.ln1 {
            Some(n) => Ok(n.w.clone()),
            None => Ok(Tensor::ones(self.cfg.d_model, self.dtype, &self.device)?),
        }
    }

    /// The attention input LayerNorm's bias of layer `l` (GPT-2, GPT-NeoX): `[d_model]`.
    pub fn ln1_bias(&self, l: usize) -> Result<Option<Tensor>> {
        Ok(self.check_layer(l)?.ln1.as_ref().and_then(|n| n.b.clone()))
    }

    /// The attention output bias `b_O` of layer `l` (GPT-2, GPT-NeoX, Phi-3 have one):
    /// `[d_model]`. `hook_result` excludes it, as in TransformerLens.
    pub fn b_o(&self, l: usize) -> Result<Option<Tensor>> {
        Ok(self.check_layer(l)?.b_o.clone())
    }

    /// The post-attention norm's effective weight of layer `l` (Gemma 2/3, OLMo-2; an RMSNorm
    /// of `attn = Σ_h result_h (+ b_O)`, so `attn_out = w ⊙ attn · s(attn)`): `[d_model]`.
    pub fn post_attn_norm_weight(&self, l: usize) -> Result<Option<Tensor>> {
        Ok(self
            .check_layer(l)?
            .post_attn_ln
            .as_ref()
            .map(|n| n.w.clone()))
    }

    /// The final norm's effective weight (offset included): `[d_model]`.
    pub fn final_norm_weight(&self) -> &Tensor {
        &self.norm.w
    }

    /// The final LayerNorm's bias (GPT-2, GPT-NeoX): `[d_model]`.
    pub fn final_norm_bias(&self) -> Option<&Tensor> {
        self.norm.b.as_ref()
    }

    /// Learned absolute position embeddings `W_pos` `[n_ctx, d_model]` (GPT-2).
    pub fn w_pos(&self) -> Option<&Tensor> {
        self.pos_embed.as_ref()
    }
}
