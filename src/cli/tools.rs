//! Commands that are not probes: `info`, `generate`, `cache`, `convert`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clap::Args;

use super::ModelArgs;
use crate::hooks::{HookFilter, HookPoint, Hooks, Positions};
use crate::model::{self, config::RopeScaling};
use crate::report::manifest::{Manifest, ModelRecord};
use crate::{Error, Result};

pub fn info(args: &ModelArgs, list_hooks: bool) -> Result<()> {
    let m = args.load()?;
    let c = m.cfg();
    let dtype = format!("{:?}", m.dtype).to_lowercase();
    println!("model        {}", m.source.spec);
    println!("path         {}", m.source.path.display());
    println!("arch         {}", c.arch.name());
    println!("dtype        {dtype}");
    if m.mapped_weights() > 0 {
        println!(
            "matmul       16-bit weights where they lie in the file ({} mapped), f32 activations",
            m.mapped_weights()
        );
    } else if m.bf16_matmul() {
        println!("matmul       bf16 (f32 accumulation)");
    }
    println!("layers       {}", c.n_layers);
    println!("d_model      {}", c.d_model);
    println!(
        "heads        {} (kv {}, d_head {})",
        c.n_heads, c.n_kv_heads, c.d_head
    );
    println!("d_mlp        {}", c.d_mlp);
    println!("vocab        {}", c.vocab_size);
    println!("context      {}", c.max_position_embeddings);
    println!("parameters   {:.1}M", c.n_params() as f64 / 1e6);
    let windows: Vec<String> = c
        .layers
        .iter()
        .map(|l| l.sliding_window.map_or("full".into(), |w| format!("w{w}")))
        .collect();
    println!("attention    {}", windows.join(" "));
    println!(
        "rope         {}",
        c.ropes
            .iter()
            .map(|r| format!("θ={}{}", r.theta, rope_scaling(&r.scaling)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    if let Some(s) = c.attn_softcap {
        println!("attn softcap {s}");
    }
    if let Some(s) = c.final_softcap {
        println!("logit softcap {s}");
    }
    match &m.tokenizer {
        Some(t) => {
            let tok = |id: Option<u32>| match id {
                Some(id) => format!("{} ({id})", t.token_str(id).unwrap_or_default()),
                None => "none".into(),
            };
            let eos: Vec<String> = t.eos_ids.iter().map(|&e| tok(Some(e))).collect();
            println!(
                "tokenizer    {} tokens, bos {}, eos {}, chat template: {}",
                t.vocab_size(),
                tok(t.bos_id),
                if eos.is_empty() {
                    "none".into()
                } else {
                    eos.join(", ")
                },
                if t.chat_template.is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        None => println!("tokenizer    none"),
    }
    println!("loaded in    {:.2}s", m.load_seconds);
    let all = c.hook_points();
    if list_hooks {
        println!(
            "hook points  {} (shapes: B = prompts, T = positions, S = key positions)",
            all.len()
        );
        for p in all {
            println!("  {:<36} {}", p.name(), hook_shape(p, c));
        }
    } else {
        println!(
            "hook points  {} (blocks.{{0..{}}}.*; --hooks lists them with their shapes)",
            all.len(),
            c.n_layers - 1
        );
    }
    Ok(())
}

fn rope_scaling(s: &RopeScaling) -> String {
    match s {
        RopeScaling::None => String::new(),
        RopeScaling::Linear { factor } => format!(" (linear scaling ×{factor})"),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => format!(
            " (llama3 scaling ×{factor}, low {low_freq_factor}, high {high_freq_factor}, original context {original_max_position_embeddings})"
        ),
    }
}

/// The shape of a hook point's tensor for this model, TransformerLens-style.
pub fn hook_shape(p: HookPoint, c: &model::ModelConfig) -> String {
    use HookPoint::*;
    match p {
        Embed | PosEmbed | ResidPre(_) | ResidMid(_) | Ln2(_) | ResidPost(_) | AttnOut(_)
        | MlpOut(_) | LnFinal => {
            format!("[B, T, {}]", c.d_model)
        }
        Q(_) | RotQ(_) | Z(_) => format!("[B, T, {}, {}]", c.n_heads, c.d_head),
        K(_) | V(_) | RotK(_) => format!("[B, T, {}, {}]", c.n_kv_heads, c.d_head),
        Result(_) => format!("[B, T, {}, {}]", c.n_heads, c.d_model),
        AttnScores(_) | Pattern(_) => format!("[B, {}, T, S]", c.n_heads),
        MlpPre(_) | MlpPreLinear(_) | MlpPost(_) => format!("[B, T, {}]", c.d_mlp),
    }
}

/// The ids of `prompt`, rendered as a user message through the chat template with `chat`
/// (which then carries its own BOS), else with the model's BOS when `bos`.
fn prompt_ids(tok: &model::Tokenizer, prompt: &str, chat: bool, bos: bool) -> Result<Vec<u32>> {
    if chat {
        let text = tok.apply_chat_template(&[model::tokenizer::ChatMessage::user(prompt)], true)?;
        tok.encode(&text, false)
    } else {
        tok.encode(prompt, bos)
    }
}

/// `engram generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Number of new tokens (generation stops earlier at an end-of-sequence token)
    #[arg(short = 'n', long, default_value_t = 20)]
    pub max_new: usize,
    /// Wrap the prompt as a user message in the model's chat template
    #[arg(long)]
    pub chat: bool,
    /// Sampling temperature; 0 = greedy (argmax)
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens (0 = all; needs --temperature > 0)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler (the same seed gives the same text)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also print the K most likely next tokens and their log-probabilities at every step
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub logprobs: usize,
}

pub fn generate(a: &GenerateArgs) -> Result<()> {
    if a.temperature < 0.0 || !a.temperature.is_finite() {
        crate::bail!("--temperature must be ≥ 0, got {}", a.temperature);
    }
    let m = a.model.load()?;
    let tok = m.tokenizer()?;
    let ids = prompt_ids(tok, &a.prompt, a.chat, true)?;
    let ctx = m.cfg().max_position_embeddings;
    if ids.len() + a.max_new > ctx {
        crate::bail!(
            "the prompt ({} tokens) plus -n {} new tokens exceeds the model's context ({ctx}); \
             lower -n to at most {}",
            ids.len(),
            a.max_new,
            ctx.saturating_sub(ids.len())
        );
    }
    let sampling = model::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
        logprobs: a.logprobs,
    };
    let g = m.generate_with(&[ids], a.max_new, &mut Hooks::none(), &sampling)?;
    println!("{}", tok.decode(&g.tokens[0], true)?);
    if a.logprobs > 0 {
        for (step, (id, top)) in g.tokens[0].iter().zip(&g.logprobs[0]).enumerate() {
            let alts: Vec<String> = top
                .iter()
                .map(|(t, lp)| {
                    format!("{:?} {lp:.3}", tok.decode(&[*t], false).unwrap_or_default())
                })
                .collect();
            println!(
                "{step:>4} {:<16} {}",
                format!("{:?}", tok.decode(&[*id], false)?),
                alts.join("  ")
            );
        }
    }
    Ok(())
}

/// `engram tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to split
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Render the text as a user message through the model's chat template first
    #[arg(long)]
    pub chat: bool,
    /// Do not add the BOS token the model expects
    #[arg(long)]
    pub no_bos: bool,
}

pub fn tokenize(a: &TokenizeArgs) -> Result<()> {
    let m = a.model.load()?;
    let tok = m.tokenizer()?;
    let ids = prompt_ids(tok, &a.prompt, a.chat, !a.no_bos)?;
    println!("{} tokens", ids.len());
    for (i, id) in ids.iter().enumerate() {
        println!("{i:>5} {id:>8}  {:?}", tok.decode(&[*id], false)?);
    }
    Ok(())
}

/// `engram cache`.
#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// One prompt
    #[arg(long, short = 'p', conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A text file with one prompt per line
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Hook name patterns, comma separated, globs allowed (e.g. 'blocks.*.hook_resid_post');
    /// `engram info --hooks` lists the names
    #[arg(long, required = true, value_delimiter = ',')]
    pub hooks: Vec<String>,
    /// Keep only the last N positions of each captured tensor
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Output directory (written as a unit, like a probe's)
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// Replace the engram run the output directory already holds
    #[arg(long)]
    pub force: bool,
}

fn read_prompts(prompt: Option<String>, file: Option<PathBuf>) -> Result<Vec<String>> {
    match (prompt, file) {
        (Some(p), _) => Ok(vec![p]),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            let v: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            if v.is_empty() {
                crate::bail!("{}: no prompts", f.display());
            }
            Ok(v)
        }
        (None, None) => crate::bail!("give --prompt or --prompts FILE"),
    }
}

pub fn cache(a: &CacheArgs) -> Result<()> {
    let (patterns, last) = (&a.hooks, a.last);
    if last == Some(0) {
        crate::bail!("--last 0 keeps no positions; give at least 1");
    }
    if patterns.iter().all(|p| p.trim().is_empty()) {
        crate::bail!(
            "--hooks is empty; give hook names or patterns (engram info --hooks lists them)"
        );
    }
    let prompts = read_prompts(a.prompt.clone(), a.prompts.clone())?;
    let dir = crate::report::outdir::OutDir::begin(&a.out, a.force)?;
    let out = dir.path();
    let m = a.model.load()?;
    let filter = HookFilter::new(patterns);
    let points = filter.resolve(m.cfg().n_layers)?;
    if points.is_empty() {
        crate::bail!(
            "--hooks {} matches no hook point of this model (engram info --hooks lists them)",
            patterns.join(",")
        );
    }
    let batch = m.batch(&prompts)?;
    let mut manifest = Manifest::new(
        "cache",
        serde_json::json!({ "hooks": patterns, "prompts": prompts, "last": last }),
    )
    .with_model(ModelRecord::of(&m)?);
    let mut hooks = Hooks::capture(filter);
    if let Some(n) = last {
        hooks = hooks.at_positions(Positions::Last(n));
    }
    // No logits are kept, and the pass stops after the last block captured from (a long
    // prompt's `[batch, pos, vocab]` logits alone can be gigabytes).
    let run = model::RunOptions::capture_only(&points);
    let t0 = std::time::Instant::now();
    m.transformer.forward_with(&batch, &mut hooks, run)?;
    manifest.record_timing("forward", t0.elapsed().as_secs_f64());
    let mut tensors: Vec<(String, Tensor)> = points
        .iter()
        .filter_map(|p| hooks.cache.get(*p).map(|t| (p.name(), t.clone())))
        .collect();
    tensors.push(("tokens".into(), batch.tokens_tensor(&Device::Cpu)?));
    let mask: Vec<u32> = batch.mask().into_iter().flatten().map(u32::from).collect();
    tensors.push((
        "attention_mask".into(),
        Tensor::from_vec(mask, (batch.len(), batch.seq_len), &Device::Cpu)?,
    ));
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| {
            let t = if t.dtype() == DType::U32 {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            Ok((n, t.contiguous()?))
        })
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let path = out.join("activations.safetensors");
    crate::report::write_safetensors(&path, tensors.iter().cloned())?;
    manifest.add_file("activations.safetensors");
    let tok = m.tokenizer()?;
    let mask = batch.mask();
    let (mut pr, mut pos, mut ids, mut strs) = (vec![], vec![], vec![], vec![]);
    for (i, row) in batch.ids.iter().enumerate() {
        for (j, &t) in row.iter().enumerate() {
            if mask[i][j] == 1 {
                pr.push(i as u32);
                pos.push(j as u32);
                ids.push(t);
                strs.push(tok.decode(&[t], false)?);
            }
        }
    }
    let mut df = crate::report::table::Table::new()
        .col("prompt", pr)
        .col("position", pos)
        .col("token", ids)
        .col("token_str", strs)
        .build()?;
    crate::report::table::write_parquet(&mut df, &out.join("tokens.parquet"))?;
    manifest.add_file("tokens.parquet");
    let page = crate::report::page::write_run_page(out, &manifest)?;
    manifest.add_file(page);
    manifest.write(out)?;
    dir.commit()?;
    println!(
        "{} tensors ({} hook point{}, {} prompt{} × {} positions) → {}",
        tensors.len(),
        points.len(),
        if points.len() == 1 { "" } else { "s" },
        batch.len(),
        if batch.len() == 1 { "" } else { "s" },
        batch.seq_len,
        a.out.join("activations.safetensors").display()
    );
    Ok(())
}

/// Export any loaded model as a Hugging Face folder.
pub fn convert(args: &ModelArgs, out: &Path) -> Result<()> {
    let m = args.load()?;
    crate::model::export::write_hf_folder(&m, out)?;
    println!("wrote {}", out.display());
    Ok(())
}
