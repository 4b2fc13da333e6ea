//! Tokenizers: tokenizer.json (+ tokenizer_config.json) or built from GGUF metadata.
//!
//! [`Tokenizer`] wraps a `tokenizers::Tokenizer` and adds what engram needs around it: the BOS /
//! EOS / PAD ids, whether the model expects BOS prepended, the set of special tokens (to exclude
//! them when sampling random tokens) and the chat template, rendered with minijinja the way
//! transformers renders it with jinja2 (`trim_blocks`, `lstrip_blocks`, Python string methods).
//!
//! Built from a GGUF file ([`Tokenizer::from_gguf`]) it supports the two vocabularies our models
//! use:
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE; the pre-tokenizer is chosen from
//!   `tokenizer.ggml.pre` (`smollm`: split digits one by one, then GPT-2's regex; `qwen2`: NFC plus
//!   Qwen2's regex; `llama3`-style regexes; anything else: GPT-2's regex).
//! - `tokenizer.ggml.model = llama`: SentencePiece BPE (Gemma, Llama 2). The file carries no merges;
//!   they are rebuilt from the vocabulary the way Hugging Face's SentencePiece converter does
//!   (score order, user-defined pieces scored 0), which reproduces Gemma-3's `tokenizer.json`
//!   merge list exactly. Spaces become `▁`, unknown bytes fall back to `<0xNN>`, and the control
//!   and user-defined pieces are added tokens so `<start_of_turn>` and `\n\n` stay whole.

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::Serialize;

use crate::{bail, Context, Error, Result};

mod gguf;

use gguf::*;

/// One chat turn for [`Tokenizer::apply_chat_template`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A tokenizer plus the model-level facts around it.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, if the vocabulary has one.
    pub bos_id: Option<u32>,
    /// Every id that ends generation: the declared EOS first, then end-of-turn tokens.
    pub eos_ids: Vec<u32>,
    pub pad_id: Option<u32>,
    /// Whether the model expects BOS prepended to its input.
    pub add_bos: bool,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    special_ids: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .field("n_special", &self.special_ids.len())
            .finish()
    }
}

/// Token strings that end a chat turn in the model families engram supports; they count as EOS
/// alongside the declared one (transformers' generation configs list them the same way).
const END_OF_TURN_TOKENS: &[&str] = &[
    "<end_of_turn>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<|endoftext|>",
];

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::msg(format!("tokenizer: {e}"))
}

impl Tokenizer {
    /// Wrap an existing `tokenizers::Tokenizer` with explicit model facts.
    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        pad_id: Option<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Self {
        let special_ids = special_ids_of(&inner);
        Self {
            inner,
            bos_id,
            eos_ids,
            pad_id,
            add_bos,
            chat_template,
            special_ids,
        }
    }

    /// Load `tokenizer.json` from a Hugging Face model folder, with `tokenizer_config.json`
    /// (bos/eos/pad tokens, `add_bos_token`, `chat_template`), `chat_template.jinja`,
    /// `generation_config.json` and `config.json` (EOS ids) when present.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::from_hf_files(&dir.join("tokenizer.json"), dir)
    }

    /// Load the tokenizer file `tok_path` (any name), reading the configs named in
    /// [`Tokenizer::from_hf_dir`] from `dir`.
    pub fn from_hf_files(tok_path: &Path, dir: &Path) -> Result<Self> {
        // The tokenizers crate panics on some malformed decoders: an error here instead.
        let inner = crate::error::catch_quiet(|| tokenizers::Tokenizer::from_file(tok_path))
            .map_err(|p| {
                Error::msg(format!(
                    "loading {}: malformed tokenizer ({p})",
                    tok_path.display()
                ))
            })?
            .ctx(|| format!("loading {}", tok_path.display()))?;
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let gen_config = read_json_opt(&dir.join("generation_config.json"))?;
        let model_config = read_json_opt(&dir.join("config.json"))?;

        let token_id = |v: Option<&serde_json::Value>| -> Option<u32> {
            let s = match v? {
                serde_json::Value::String(s) => s.as_str(),
                serde_json::Value::Object(o) => o.get("content")?.as_str()?,
                _ => return None,
            };
            inner.token_to_id(s)
        };
        let cfg_get = |k: &str| config.as_ref().and_then(|c| c.get(k));
        let num_ids = |v: Option<&serde_json::Value>| -> Vec<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => {
                    n.as_u64().map(|x| x as u32).into_iter().collect()
                }
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                _ => vec![],
            }
        };

        let mut bos_id = token_id(cfg_get("bos_token"));
        if bos_id.is_none() {
            bos_id = [&gen_config, &model_config].iter().find_map(|c| {
                num_ids(c.as_ref().and_then(|c| c.get("bos_token_id")))
                    .first()
                    .copied()
            });
        }
        let mut eos_ids = Vec::new();
        eos_ids.extend(token_id(cfg_get("eos_token")));
        for c in [&gen_config, &model_config] {
            eos_ids.extend(num_ids(c.as_ref().and_then(|c| c.get("eos_token_id"))));
        }
        let pad_id = token_id(cfg_get("pad_token"));

        // add_bos: the config's flag, else whatever the post-processor does.
        let add_bos = match cfg_get("add_bos_token").and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => match bos_id {
                Some(bos) => inner
                    .encode("a", true)
                    .map(|e| e.get_ids().first() == Some(&bos))
                    .unwrap_or(false),
                None => false,
            },
        };

        let mut chat_template = match cfg_get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // Multiple named templates: [{"name": "default", "template": "..."}, ...]
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| a.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if chat_template.is_none() && jinja.exists() {
            chat_template =
                Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }

        let mut tok = Self::new(inner, bos_id, eos_ids, pad_id, add_bos, chat_template);
        tok.add_end_of_turn_eos();
        Ok(tok)
    }

    /// Build the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let model = md_str(md, "tokenizer.ggml.model")?
            .context_none("GGUF has no `tokenizer.ggml.model`: it carries no tokenizer")?
            .to_lowercase();
        let tokens = md_str_array(md, "tokenizer.ggml.tokens")?
            .context_none("GGUF has no `tokenizer.ggml.tokens`")?;
        let token_types: Vec<u32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(Error::from)?
                .iter()
                .map(value_to_u32)
                .collect::<Result<_>>()?,
            None => vec![],
        };
        let bos_id = md_u32(md, "tokenizer.ggml.bos_token_id")?;
        let eos_id = md_u32(md, "tokenizer.ggml.eos_token_id")?;
        let pad_id = md_u32(md, "tokenizer.ggml.padding_token_id")?;
        let unk_id = md_u32(md, "tokenizer.ggml.unknown_token_id")?;
        let add_bos = md_bool(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(model == "llama");
        let chat_template = md_str(md, "tokenizer.chat_template")?.map(str::to_string);

        let (inner, spelled) = match model.as_str() {
            "gpt2" => {
                let pre = md_str(md, "tokenizer.ggml.pre")?.unwrap_or("gpt2").to_string();
                let merges = md_str_array(md, "tokenizer.ggml.merges")?
                    .context_none("byte-level GGUF tokenizer has no `tokenizer.ggml.merges`")?;
                byte_level_bpe(&tokens, &merges, &pre)?
            }
            "llama" => {
                let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
                    Some(v) => v
                        .to_vec()
                        .map_err(Error::from)?
                        .iter()
                        .map(|x| x.to_f32().map_err(Error::from))
                        .collect::<Result<_>>()?,
                    None => bail!("SentencePiece GGUF tokenizer has no `tokenizer.ggml.scores`"),
                };
                let add_space_prefix =
                    md_bool(md, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let unk = unk_id.and_then(|i| tokens.get(i as usize)).cloned();
                sentencepiece_bpe(&tokens, &scores, &token_types, add_space_prefix, unk)?
            }
            other => bail!(
                "unsupported GGUF tokenizer model `{other}` (supported: gpt2 byte-level BPE, llama SentencePiece)"
            ),
        };

        let mut tok = Self::new(
            inner,
            bos_id,
            eos_id.into_iter().collect(),
            pad_id,
            add_bos,
            chat_template,
        );
        let mut inner = tok.inner;
        add_gguf_added_tokens(&mut inner, &spelled, &token_types, &model)?;
        // Special ids: control, unknown and unused pieces, plus added tokens that are not plain
        // whitespace runs (`<mask>`, `[multimodal]`, `<tool_call>`).
        let mut special: HashSet<u32> = special_ids_of(&inner).into_iter().collect();
        for (i, ty) in token_types.iter().enumerate() {
            if matches!(ty, 2 | 3 | 5) {
                special.insert(i as u32);
            }
        }
        let mut special: Vec<u32> = special.into_iter().collect();
        special.sort_unstable();
        tok.inner = inner;
        tok.special_ids = special;
        tok.add_end_of_turn_eos();
        Ok(tok)
    }

    fn add_end_of_turn_eos(&mut self) {
        for t in END_OF_TURN_TOKENS {
            if let Some(id) = self.inner.token_to_id(t) {
                if !self.eos_ids.contains(&id) {
                    self.eos_ids.push(id);
                }
            }
        }
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Replace (or set) the chat template, e.g. for a GGUF that carries none.
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.chat_template = Some(template.into());
        self
    }

    /// Token ids for `text`. Special tokens written in the text (`<|im_start|>`) stay whole.
    /// With `add_special` and a model that expects it, BOS is prepended unless `text` already
    /// starts with it.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::msg(format!("tokenizer: encoding {:?}: {e}", truncate(text))))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(bos) = self.bos_id {
                if ids.first() != Some(&bos) {
                    ids.insert(0, bos);
                }
            }
        }
        Ok(ids)
    }

    /// Text for `ids`; with `skip_special`, special tokens are left out.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tk_err)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every special / control token id (sorted): BOS, EOS, PAD, `<start_of_turn>`,
    /// `<unusedN>`, ... — the ids to exclude when sampling random tokens.
    pub fn special_ids(&self) -> Vec<u32> {
        self.special_ids.clone()
    }

    /// Whether `id` is one of [`Self::special_ids`].
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// The vocabulary entry for `id` (byte-level / `▁` spelling, not decoded text).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn token_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.inner.id_to_token(i))
            .unwrap_or_default()
    }

    /// Write `tokenizer.json` and a `tokenizer_config.json` (bos/eos/pad tokens, `add_bos_token`,
    /// `chat_template`) into `dir`, so [`Self::from_hf_dir`] (or transformers) can load them.
    pub fn save_hf_dir(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tok_path = dir.join("tokenizer.json");
        self.inner
            .save(&tok_path, false)
            .ctx(|| format!("writing {}", tok_path.display()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let mut config = serde_json::json!({
            "add_bos_token": self.add_bos,
            "add_eos_token": false,
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_ids.first().copied()),
            "pad_token": name(self.pad_id),
        });
        if let Some(t) = &self.chat_template {
            config["chat_template"] = serde_json::Value::String(t.clone());
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(Error::msg)?;
        std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
        Ok(())
    }

    /// Render the model's chat template, like transformers'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_deref().context_none(
            "this model has no chat template (a base model?): format the prompt yourself or attach one with `with_chat_template`",
        )?;
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::msg(format!("chat template: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.clone(), content => m.content.clone() })
            .collect();
        let ctx = minijinja::context! {
            messages => minijinja::Value::from(msgs),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.token_text(self.bos_id),
            eos_token => self.token_text(self.eos_ids.first().copied()),
            pad_token => self.token_text(self.pad_id),
        };
        env.render_str(template, ctx).map_err(|e| {
            let mut msg = format!("rendering the chat template: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Error::msg(msg)
        })
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

trait OptionCtx<T> {
    fn context_none(self, msg: &str) -> Result<T>;
}
impl<T> OptionCtx<T> for Option<T> {
    fn context_none(self, msg: &str) -> Result<T> {
        self.ctx(|| msg.to_string())
    }
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v = serde_json::from_str(&text).ctx(|| format!("parsing {}", path.display()))?;
    Ok(Some(v))
}

/// Added tokens that are special, or that are not pure whitespace runs (`<unused0>`, `<mask>`).
fn special_ids_of(tok: &tokenizers::Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special || !t.content.chars().all(|c| c.is_whitespace() || c == '▁'))
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokenizers::models::bpe::BPE;

    #[test]
    fn bytes_table_is_gpt2s() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn sentencepiece_merge_order() {
        // "ab" (score -1) merges before "bc" (score -2); user-defined "\n\n" counts as 0.
        let tokens: Vec<String> = ["a", "b", "c", "\n", "ab", "bc", "abc", "\n\n"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -1000.0];
        let types = [1, 1, 1, 1, 1, 1, 1, 4];
        let vocab: HashMap<&str, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as u32))
            .collect();
        let m = sentencepiece_merges(&tokens, &scores, &types, &vocab);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(
            m,
            [
                ("\n", "\n"),
                ("a", "b"),
                ("b", "c"),
                ("ab", "c"),
                ("a", "bc")
            ]
        );
    }

    #[test]
    fn chat_template_needs_a_template() {
        let bpe = BPE::builder().build().unwrap();
        let t = Tokenizer::new(
            tokenizers::Tokenizer::new(bpe),
            None,
            vec![],
            None,
            false,
            None,
        );
        let err = t
            .apply_chat_template(&[ChatMessage::user("hi")], true)
            .unwrap_err();
        assert!(err.to_string().contains("no chat template"), "{err}");
        let t = t.with_chat_template(
            "{% for m in messages %}[{{ m.role.upper() }}]{{ m.content.strip() }}{% endfor %}\
             {% if add_generation_prompt %}>{% endif %}{{ raise_exception('boom') if messages|length > 1 }}",
        );
        let s = t
            .apply_chat_template(&[ChatMessage::user(" hi ")], true)
            .unwrap();
        assert_eq!(s, "[USER]hi>");
        let err = t
            .apply_chat_template(
                &[ChatMessage::user("a"), ChatMessage::assistant("b")],
                false,
            )
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
