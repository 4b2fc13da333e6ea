//! Building a tokenizer from GGUF metadata: metadata readers, byte-level BPE (GPT-2 style) and
//! SentencePiece-style BPE with merges recovered from scores, added tokens.

use crate::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use std::collections::{HashMap, HashSet};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::*;

// ---------------------------------------------------------------------------------------------
// GGUF metadata helpers

type Metadata = HashMap<String, gguf_file::Value>;

pub(super) fn value_to_u32(v: &gguf_file::Value) -> Result<u32> {
    use gguf_file::Value::*;
    Ok(match v {
        U8(x) => *x as u32,
        I8(x) => *x as u32,
        U16(x) => *x as u32,
        I16(x) => *x as u32,
        U32(x) => *x,
        I32(x) => *x as u32,
        U64(x) => *x as u32,
        I64(x) => *x as u32,
        other => bail!("expected an integer in GGUF metadata, got {other:?}"),
    })
}

pub(super) fn md_u32(md: &Metadata, key: &str) -> Result<Option<u32>> {
    md.get(key)
        .map(value_to_u32)
        .transpose()
        .ctx(|| format!("GGUF metadata `{key}`"))
}

pub(super) fn md_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    md.get(key)
        .map(|v| v.to_bool())
        .transpose()
        .ctx(|| format!("GGUF metadata `{key}`"))
}

pub(super) fn md_str<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    md.get(key)
        .map(|v| v.to_string().map(|s| s.as_str()))
        .transpose()
        .ctx(|| format!("GGUF metadata `{key}`"))
}

pub(super) fn md_str_array(md: &Metadata, key: &str) -> Result<Option<Vec<String>>> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let arr = v
        .to_vec()
        .ctx(|| format!("GGUF metadata `{key}` is not an array"))?;
    arr.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .ctx(|| format!("GGUF metadata `{key}`: non-string element"))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

// ---------------------------------------------------------------------------------------------
// Byte-level BPE (tokenizer.ggml.model = gpt2)

/// GPT-2's byte → printable char table.
pub(super) fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (b'!' as u32..=b'~' as u32).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) fn split_then_bytes(regex: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tk_err)?;
    Ok(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])
    .into())
}

/// Returns the tokenizer and the vocabulary as spelled inside it.
pub(super) fn byte_level_bpe(
    tokens: &[String],
    merges: &[String],
    pre: &str,
) -> Result<(tokenizers::Tokenizer, Vec<String>)> {
    let table = bytes_to_unicode();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    // Tokens are stored byte-level spelled; respell any that are not (as transformers does).
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            }
        })
        .collect();
    let mut vocab = Vocab::default();
    for (i, t) in spelled.iter().enumerate() {
        vocab.insert(t.clone(), i as u32);
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ctx(|| format!("invalid GGUF merge `{m}`"))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tk_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let (normalizer, pre_tok): (Option<NormalizerWrapper>, PreTokenizerWrapper) = match pre {
        // llama.cpp: `\p{N}` then GPT-2's regex; SmolLM2's tokenizer.json: Digits(individual)
        // then ByteLevel(add_prefix_space=false, use_regex=true).
        "smollm" | "codeshell" => (
            None,
            PreSequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
        ),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => {
            (Some(NFC.into()), split_then_bytes(REGEX_QWEN2)?)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "lfm2" | "dbrx"
        | "pixtral" => (None, split_then_bytes(REGEX_LLAMA3)?),
        // "gpt2", "default" and anything unknown: GPT-2's own regex.
        _ => (None, ByteLevel::new(false, true, true).into()),
    };
    if let Some(n) = normalizer {
        tok.with_normalizer(Some(n)).map_err(tk_err)?;
    }
    tok.with_pre_tokenizer(Some(pre_tok));
    tok.with_decoder(Some(DecoderWrapper::from(ByteLevel::new(
        false, true, true,
    ))));
    Ok((tok, spelled))
}

// ---------------------------------------------------------------------------------------------
// SentencePiece BPE (tokenizer.ggml.model = llama)

const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// Rebuild the merges a SentencePiece BPE vocabulary implies, in the order Hugging Face's
/// converter writes them: every split of a piece into two pieces that are both in the vocabulary,
/// sorted by the piece's score (user-defined pieces count as 0, as in the original model proto),
/// then by the lengths of the left and right parts, longest first; stable otherwise.
pub(super) fn sentencepiece_merges(
    tokens: &[String],
    scores: &[f32],
    token_types: &[u32],
    vocab: &HashMap<&str, u32>,
) -> Vec<(String, String)> {
    struct M<'a> {
        l: &'a str,
        r: &'a str,
        score: f32,
        ll: usize,
        lr: usize,
    }
    let mut merges: Vec<M> = Vec::new();
    let mut local: Vec<(u32, u32, M)> = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        let score = if token_types.get(i) == Some(&TOKEN_TYPE_USER_DEFINED) {
            0.0
        } else {
            scores.get(i).copied().unwrap_or(0.0)
        };
        local.clear();
        let n_chars = tok.chars().count();
        for (k, (pos, _)) in tok.char_indices().enumerate().skip(1) {
            let (l, r) = tok.split_at(pos);
            if let (Some(&il), Some(&ir)) = (vocab.get(l), vocab.get(r)) {
                local.push((
                    il,
                    ir,
                    M {
                        l,
                        r,
                        score,
                        ll: k,
                        lr: n_chars - k,
                    },
                ));
            }
        }
        local.sort_by_key(|(il, ir, _)| (*il, *ir));
        merges.extend(local.drain(..).map(|(_, _, m)| m));
    }
    // Stable sort, descending on (score, len(left), len(right)).
    merges.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.ll.cmp(&a.ll))
            .then(b.lr.cmp(&a.lr))
    });
    merges
        .into_iter()
        .map(|m| (m.l.to_string(), m.r.to_string()))
        .collect()
}

pub(super) fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f32],
    token_types: &[u32],
    add_space_prefix: bool,
    unk: Option<String>,
) -> Result<(tokenizers::Tokenizer, Vec<String>)> {
    // Gemma stores whitespace-run pieces as real spaces ("  "); SentencePiece spells them "▁▁".
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "▁".repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // Later duplicates win, like a Python dict built from the list.
    let mut vocab_ref: HashMap<&str, u32> = HashMap::with_capacity(spelled.len());
    for (i, t) in spelled.iter().enumerate() {
        vocab_ref.insert(t.as_str(), i as u32);
    }
    let merges = sentencepiece_merges(&spelled, scores, token_types, &vocab_ref);
    let mut vocab = Vocab::default();
    for (t, i) in vocab_ref {
        vocab.insert(t.to_string(), i);
    }
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(tk_err)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        norms.push(Prepend::new("▁".to_string()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(tk_err)?.into());
    let normalizer: NormalizerWrapper = if norms.len() == 1 {
        norms.pop().unwrap()
    } else {
        NormSequence::new(norms).into()
    };
    tok.with_normalizer(Some(normalizer)).map_err(tk_err)?;

    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ").map_err(tk_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok((tok, spelled))
}

/// Control pieces (type 3) become special added tokens, user-defined ones (type 4) plain added
/// tokens, so both are matched whole in the input text. In a byte-level vocabulary a "control"
/// token spelled outside the byte alphabet is a llama.cpp mislabel and is skipped.
pub(super) fn add_gguf_added_tokens(
    tok: &mut tokenizers::Tokenizer,
    spelled: &[String],
    token_types: &[u32],
    model: &str,
) -> Result<()> {
    let alphabet: Option<HashSet<char>> =
        (model == "gpt2").then(|| bytes_to_unicode().iter().copied().collect());
    let in_alphabet = |t: &str| {
        alphabet
            .as_ref()
            .is_none_or(|a| t.chars().all(|c| a.contains(&c)))
    };
    let control: Vec<AddedToken> = spelled
        .iter()
        .zip(token_types)
        .filter(|(t, ty)| **ty == 3 && in_alphabet(t))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    if !control.is_empty() {
        tok.add_special_tokens(control).map_err(tk_err)?;
    }
    let user: Vec<AddedToken> = spelled
        .iter()
        .zip(token_types)
        .filter(|(_, ty)| **ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    if !user.is_empty() {
        tok.add_tokens(user).map_err(tk_err)?;
    }
    Ok(())
}
