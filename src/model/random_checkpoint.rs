//! Random checkpoints of real models' shapes, for tests and benchmarks: a Hugging Face folder
//! with the real `config.json`, bf16 safetensors shards (`model-0000X-of-0000Y.safetensors` and
//! `model.safetensors.index.json`, or one `model.safetensors`) and a byte-level
//! `tokenizer.json` padded to the real vocabulary size (+ `tokenizer_config.json`), so that
//! `engram generate` / `heads` / the probes run on it.
//!
//! The values are streamed to disk in blocks (nothing the size of the model is held in memory):
//! linear weights and embeddings ≈ N(0, 0.02²) (a sum of four uniforms), norm weights 1 (0 for
//! Gemma, which stores `w` of `1 + w`). Each tensor's values depend only on the seed and its
//! name, not on the sharding. `examples/random_checkpoint.rs` is the command line.

use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::{Error, Result};

/// A model family's layout of tensors and config keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Llama,
    Gemma2,
}

/// The shape of a checkpoint.
#[derive(Clone, Debug)]
pub struct Shape {
    pub family: Family,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub tied: bool,
    /// The rest of `config.json` (rope, context, norm epsilon, special token ids, ...).
    pub extra: Value,
}

/// The shapes [`shape`] knows.
pub const SHAPES: [&str; 4] = ["llama-3.2-1b", "llama-3.2-3b", "llama-3-8b", "gemma-2-2b"];

/// The real shape and config of a named model (one of [`SHAPES`]).
pub fn shape(name: &str) -> Result<Shape> {
    let llama3_rope = json!({
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
    });
    let llama = |hidden, intermediate, layers, heads, head_dim, tied, extra: Value| Shape {
        family: Family::Llama,
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads: 8,
        head_dim,
        vocab: 128256,
        tied,
        extra,
    };
    Ok(match name {
        "llama-3.2-1b" => llama(
            2048,
            8192,
            16,
            32,
            64,
            true,
            json!({"rope_theta": 500000.0, "rope_scaling": llama3_rope,
                   "max_position_embeddings": 131072}),
        ),
        "llama-3.2-3b" => llama(
            3072,
            8192,
            28,
            24,
            128,
            true,
            json!({"rope_theta": 500000.0, "rope_scaling": llama3_rope,
                   "max_position_embeddings": 131072}),
        ),
        "llama-3-8b" => llama(
            4096,
            14336,
            32,
            32,
            128,
            false,
            json!({"rope_theta": 500000.0, "max_position_embeddings": 8192}),
        ),
        "gemma-2-2b" => Shape {
            family: Family::Gemma2,
            hidden: 2304,
            intermediate: 9216,
            layers: 26,
            heads: 8,
            kv_heads: 4,
            head_dim: 256,
            vocab: 256000,
            tied: true,
            extra: json!({}),
        },
        other => crate::bail!("unknown shape `{other}` (known: {})", SHAPES.join(", ")),
    })
}

impl Shape {
    /// `config.json`, as the real model's (with this shape's sizes).
    pub fn config(&self) -> Value {
        let mut c = json!({
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied,
            "torch_dtype": "bfloat16",
            "attention_bias": false,
        });
        let family = match self.family {
            Family::Llama => json!({
                "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_act": "silu", "rms_norm_eps": 1e-5, "mlp_bias": false,
                "bos_token_id": self.vocab - 256, "eos_token_id": self.vocab - 255,
                "rope_theta": 500000.0, "max_position_embeddings": 8192,
            }),
            Family::Gemma2 => json!({
                "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
                "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 8192,
                "query_pre_attn_scalar": 256, "sliding_window": 4096,
                "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
            }),
        };
        for src in [family, self.extra.clone()] {
            if let (Some(c), Value::Object(s)) = (c.as_object_mut(), src) {
                c.extend(s);
            }
        }
        c
    }

    /// Every tensor: name, shape, and whether it is a norm weight.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, bool)> {
        let (d, f) = (self.hidden, self.intermediate);
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let mut v = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![self.vocab, d],
            false,
        )];
        let mut norms = vec!["input_layernorm", "post_attention_layernorm"];
        if self.family == Family::Gemma2 {
            norms.extend(["pre_feedforward_layernorm", "post_feedforward_layernorm"]);
        }
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for n in &norms {
                v.push((format!("{p}.{n}.weight"), vec![d], true));
            }
            for (n, shape) in [
                ("self_attn.q_proj", [q, d]),
                ("self_attn.k_proj", [kv, d]),
                ("self_attn.v_proj", [kv, d]),
                ("self_attn.o_proj", [d, q]),
                ("mlp.gate_proj", [f, d]),
                ("mlp.up_proj", [f, d]),
                ("mlp.down_proj", [d, f]),
            ] {
                v.push((format!("{p}.{n}.weight"), shape.to_vec(), false));
            }
        }
        v.push(("model.norm.weight".into(), vec![d], true));
        if !self.tied {
            v.push(("lm_head.weight".into(), vec![self.vocab, d], false));
        }
        v
    }

    /// The number of parameters.
    pub fn parameters(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s, _)| s.iter().product::<usize>() as u64)
            .sum()
    }
}

/// splitmix64: a seed per (seed, tensor, block).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Values per independently seeded block.
const BLOCK: usize = 1 << 16;

/// Fill `out` (little-endian bf16 bytes) with block `b0`, `b0 + 1`, ... of a tensor's values.
fn fill(out: &mut [u8], seed: u64, b0: usize, norm: Option<f32>) {
    out.par_chunks_mut(2 * BLOCK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut s = mix(seed ^ mix((b0 + i) as u64)) | 1;
            // N(0, 0.02²) from four uniforms on [-1, 1) (variance 4/3).
            let scale = 0.02 / (4.0f32 / 3.0).sqrt();
            for d in chunk.chunks_exact_mut(2) {
                let v = match norm {
                    Some(v) => v,
                    None => {
                        let mut acc = 0f32;
                        for _ in 0..2 {
                            s ^= s << 13;
                            s ^= s >> 7;
                            s ^= s << 17;
                            let a = (s as u32 >> 8) as f32 / (1u32 << 24) as f32;
                            let b = ((s >> 32) as u32 >> 8) as f32 / (1u32 << 24) as f32;
                            acc += (a * 2.0 - 1.0) + (b * 2.0 - 1.0);
                        }
                        acc * scale
                    }
                };
                d.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
        });
}

/// What [`write`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub files: Vec<String>,
    pub parameters: u64,
    pub bytes: u64,
}

/// Write a random checkpoint of `shape` into `dir` (created): shards of at most `shard_bytes`
/// of tensor data (one `model.safetensors` when everything fits in one).
pub fn write(shape: &Shape, dir: &Path, seed: u64, shard_bytes: u64) -> Result<Written> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = shape.tensors();
    // Shards: tensors in order, a new shard when the next one would overflow the current.
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0u64;
    for (i, (_, s, _)) in tensors.iter().enumerate() {
        let b = 2 * s.iter().product::<usize>() as u64;
        if size > 0 && size + b > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += b;
        shards.last_mut().expect("one shard at least").push(i);
    }
    let n = shards.len();
    let file_name = |s: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", s + 1)
        }
    };
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    let mut files = vec![];
    let norm_value = match shape.family {
        Family::Llama => 1.0,
        Family::Gemma2 => 0.0,
    };
    for (si, idx) in shards.iter().enumerate() {
        let fname = file_name(si);
        let path = dir.join(&fname);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut off = 0u64;
        for &i in idx {
            let (name, s, _) = &tensors[i];
            let b = 2 * s.iter().product::<usize>() as u64;
            header.insert(
                name.clone(),
                json!({"dtype": "BF16", "shape": s, "data_offsets": [off, off + b]}),
            );
            off += b;
            weight_map.insert(name.clone(), json!(fname));
        }
        let mut h =
            serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::msg(e.to_string()))?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let io = |e| Error::io(&path, e);
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&h).map_err(io)?;
        let mut buf = vec![0u8; 2 * BLOCK * 256];
        for &i in idx {
            let (name, s, is_norm) = &tensors[i];
            let count = s.iter().product::<usize>();
            let tseed = mix(seed ^ name_hash(name));
            let mut done = 0;
            while done < count {
                let c = (count - done).min(BLOCK * 256);
                fill(
                    &mut buf[..2 * c],
                    tseed,
                    done / BLOCK,
                    is_norm.then_some(norm_value),
                );
                w.write_all(&buf[..2 * c]).map_err(io)?;
                done += c;
            }
        }
        w.flush().map_err(io)?;
        total += off;
        files.push(fname);
    }
    let put = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))
    };
    if n > 1 {
        put(
            "model.safetensors.index.json",
            &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
        )?;
    }
    put("config.json", &shape.config())?;
    let (tok, tok_cfg) = tokenizer(shape);
    put("tokenizer.json", &tok)?;
    put("tokenizer_config.json", &tok_cfg)?;
    Ok(Written {
        files,
        parameters: shape.parameters(),
        bytes: total,
    })
}

/// GPT-2's byte → printable character map (the byte-level pre-tokenizer's alphabet).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut map = vec![' '; 256];
    for (b, c) in printable.iter().zip(&chars) {
        map[*b as usize] = char::from_u32(*c).unwrap_or('?');
    }
    map
}

/// A byte-level BPE tokenizer (one token per byte, no merges) with the family's special
/// tokens at their real ids, padded with reserved tokens to the vocabulary size; and its
/// `tokenizer_config.json`. Needs a vocabulary of at least 512 (Llama) or 259 (Gemma).
fn tokenizer(shape: &Shape) -> (Value, Value) {
    let (specials, first_byte): (Vec<(u32, &str)>, u32) = match shape.family {
        // At 128000 and 128001 in the real vocabulary of 128256.
        Family::Llama => {
            let v = shape.vocab as u32;
            (
                vec![(v - 256, "<|begin_of_text|>"), (v - 255, "<|end_of_text|>")],
                0,
            )
        }
        Family::Gemma2 => (vec![(0, "<pad>"), (1, "<eos>"), (2, "<bos>")], 3),
    };
    let mut vocab = serde_json::Map::new();
    for (b, c) in byte_chars().into_iter().enumerate() {
        vocab.insert(c.to_string(), json!(first_byte + b as u32));
    }
    for (id, s) in &specials {
        vocab.insert(s.to_string(), json!(id));
    }
    let taken: std::collections::HashSet<u32> = vocab
        .values()
        .filter_map(|v| v.as_u64().map(|x| x as u32))
        .collect();
    for id in 0..shape.vocab as u32 {
        if !taken.contains(&id) {
            vocab.insert(format!("<|reserved_{id}|>"), json!(id));
        }
    }
    let added: Vec<Value> = specials
        .iter()
        .map(|(id, s)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bl = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true});
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": bl, "post_processor": null, "decoder": bl,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    let (bos, eos) = match shape.family {
        Family::Llama => ("<|begin_of_text|>", "<|end_of_text|>"),
        Family::Gemma2 => ("<bos>", "<eos>"),
    };
    let cfg = json!({"bos_token": bos, "eos_token": eos, "add_bos_token": true,
                     "model_max_length": 8192});
    (tok, cfg)
}
