//! The command line: clap definitions and the glue from arguments to library calls.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};

use crate::hooks::{HookFilter, HookPoint, Hooks, Positions};
use crate::model::{self, source, LoadOptions, Model};
use crate::report::manifest::{sha256_file, Manifest, ModelRecord};
use crate::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "engram",
    version,
    about = "Mechanistic interpretability for Llama- and Gemma-family language models",
    long_about = "engram loads a Llama / Mistral / Qwen2 / Gemma 1-2-3 checkpoint (a .gguf file, a \
Hugging Face folder, a Hub repo id, or an alias of a model fetched by scripts/fetch-models.sh: \
smollm2, gemma3, qwen2), runs one hooked forward pass with TransformerLens hook names, and writes \
Parquet tables, charts and a manifest for each probe."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Progress as JSON lines on stderr (for scripts)
    #[arg(long, global = true)]
    pub json_progress: bool,
}

/// Which model to load and how.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face folder, a Hub repo id (org/name) or an alias (smollm2, gemma3, qwen2)
    #[arg(long, short = 'm', default_value = source::DEFAULT_MODEL)]
    pub model: String,
    /// Compute dtype: f32, bf16 or f16
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Device: cpu, cuda[:N] (feature `cuda`) or metal (feature `metal`)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Hub revision (branch, tag or commit) for repo ids
    #[arg(long)]
    pub revision: Option<String>,
    /// A tokenizer.json to use instead of the model's own
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Precision of the linear layers' products: f32, or bf16 (weights and activations rounded
    /// to bf16, f32 accumulation: 1.4–2× faster on CPUs with AMX or AVX512-BF16, logits within
    /// ~1% of f32; needs --dtype f32 on the CPU)
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub matmul: String,
}

impl ModelArgs {
    /// The load options these flags ask for.
    pub fn options(&self) -> Result<LoadOptions> {
        Ok(LoadOptions {
            dtype: model::parse_dtype(&self.dtype)?,
            device: model::parse_device(&self.device)?,
            revision: self.revision.clone(),
            tokenizer: self.tokenizer.clone(),
            bf16_matmul: self.matmul == "bf16",
        })
    }

    pub fn load(&self) -> Result<Model> {
        Model::load(&self.model, &self.options()?)
    }
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Architecture, sizes, dtype and the hook points of a model
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Also list every hook point name
        #[arg(long)]
        hooks: bool,
    },
    /// Greedy generation from a prompt
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt
        #[arg(long, short = 'p')]
        prompt: String,
        /// Number of new tokens
        #[arg(short = 'n', long, default_value_t = 20)]
        max_new: usize,
        /// Wrap the prompt as a user message in the model's chat template
        #[arg(long)]
        chat: bool,
    },
    /// Capture activations at hook points into DIR/activations.safetensors
    Cache {
        #[command(flatten)]
        model: ModelArgs,
        /// One prompt
        #[arg(long, short = 'p', conflicts_with = "prompts")]
        prompt: Option<String>,
        /// A text file with one prompt per line
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Hook name patterns, comma separated, globs allowed (e.g. 'blocks.*.hook_resid_post')
        #[arg(long, required = true)]
        hooks: Vec<String>,
        /// Keep only the last N positions of each captured tensor
        #[arg(long)]
        last: Option<usize>,
        /// Output directory
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Induction heads and CMR-like heads: scores, lag-CRPs, CMR fits, optional ablation
    Heads {
        #[command(flatten)]
        model: ModelArgs,
        /// Output directory
        #[arg(long, short = 'o')]
        out: PathBuf,
        /// Length n of the random sequence (rows are [bos] + R + R)
        #[arg(long, default_value_t = 50)]
        seq_len: usize,
        /// Number of sequences
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Seed of the random tokens and of the random-head control
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// CMR lag-CRP table (.npy [20,21,11,17]); default: engram's own simulation, cached
        #[arg(long)]
        cmr_table: Option<PathBuf>,
        /// Ablate the top 10% CMR-like heads vs random heads and report ICL scores
        #[arg(long)]
        ablate: bool,
        /// Corpus for --ablate (.jsonl with "text", or .txt with blank-line separated documents)
        #[arg(long, default_value = "notebooks-data/corpus/corpus.jsonl")]
        corpus: PathBuf,
        /// Documents used by --ablate
        #[arg(long, default_value_t = 16)]
        docs: usize,
        /// Random head sets in the --ablate control
        #[arg(long, default_value_t = 5)]
        random_sets: usize,
    },
    /// Fit CMR to lag-CRPs computed elsewhere (.npy [layers, heads, 16] over lags -8..+7)
    CmrFit {
        /// The head lag-CRP array
        #[arg(long)]
        crp: PathBuf,
        /// CMR lag-CRP table (.npy [20,21,11,17]); default: engram's own simulation, cached
        #[arg(long)]
        table: Option<PathBuf>,
        /// Output directory
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json) from any model
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        /// Output directory
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
    /// Relation-specific neurons: AP selection, deactivation drop matrix, overlap (LRE relations)
    Neurons(crate::probes::neurons::NeuronsArgs),
    /// Base vs post-trained: truthfulness and refusal directions, patching maps, entropy neurons
    Directions(Box<crate::probes::directions::command::DirectionsArgs>),
    /// Sparse autoencoders: activation stores, threshold / TopK / ReLU SAEs, metrics and atoms
    Sae {
        #[command(subcommand)]
        cmd: crate::probes::sae::command::SaeCommand,
    },
    /// Train a small attention-only model on repeated random sequences (optionally with a clamped
    /// previous-token head), export it as a Hugging Face folder and run the head probe on it
    Toy(crate::toy::ToyArgs),
    /// Run a suite (probes/*.toml: models × probes) into one run directory with index.html; resumable
    Batch(crate::batch::BatchArgs),
}

/// Parse arguments and run; the binary maps the error to one line and exit code 1.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // --help / --version print and succeed; usage errors print clap's message.
            let code = e.exit_code();
            let _ = e.print();
            if code == 0 {
                return Ok(());
            }
            std::process::exit(2);
        }
    };
    let progress = crate::progress::Progress::new(if cli.quiet {
        crate::progress::ProgressMode::Quiet
    } else if cli.json_progress {
        crate::progress::ProgressMode::JsonLines
    } else {
        crate::progress::ProgressMode::Bar
    });
    match cli.command {
        Command::Info { model, hooks } => info(&model, hooks),
        Command::Generate {
            model,
            prompt,
            max_new,
            chat,
        } => generate(&model, &prompt, max_new, chat),
        Command::Cache {
            model,
            prompt,
            prompts,
            hooks,
            last,
            out,
        } => cache(&model, prompt, prompts, &hooks, last, &out),
        Command::Convert { model, out } => convert(&model, &out),
        Command::Heads {
            model,
            out,
            seq_len,
            batch,
            seed,
            cmr_table,
            ablate,
            corpus,
            docs,
            random_sets,
        } => {
            let params = crate::probes::heads::HeadsParams {
                seq_len,
                batch,
                seed,
                cmr_table,
                ablate: ablate.then(|| crate::probes::heads::AblationParams {
                    corpus,
                    docs,
                    random_sets,
                    ..Default::default()
                }),
                ..Default::default()
            };
            heads(&model, &params, &out, &progress)
        }
        Command::CmrFit { crp, table, out } => cmr_fit(&crp, table.as_deref(), &out),
        Command::Sae { cmd } => crate::probes::sae::command::run(cmd, &progress),
        Command::Directions(args) => {
            crate::probes::directions::command::cmd_directions(&args, &progress)
        }
        Command::Toy(args) => crate::toy::cmd(&args, &progress),
        Command::Batch(args) => crate::batch::command(&args, &progress),
        Command::Neurons(args) => crate::probes::neurons::command(&args, &progress),
    }
}

fn info(args: &ModelArgs, list_hooks: bool) -> Result<()> {
    let m = args.load()?;
    let c = m.cfg();
    println!("model        {}", m.source.spec);
    println!("path         {}", m.source.path.display());
    println!("arch         {}", c.arch.name());
    println!("dtype        {:?}", m.dtype);
    if m.bf16_matmul() {
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
            .map(|r| format!("θ={} {:?}", r.theta, r.scaling))
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
        Some(t) => println!(
            "tokenizer    {} tokens, bos {:?}, eos {:?}, chat template: {}",
            t.vocab_size(),
            t.bos_id,
            t.eos_ids,
            if t.chat_template.is_some() {
                "yes"
            } else {
                "no"
            }
        ),
        None => println!("tokenizer    none"),
    }
    println!("loaded in    {:.2}s", m.load_seconds);
    let all = HookPoint::all(c.n_layers);
    if list_hooks {
        for p in all {
            println!("{p}");
        }
    } else {
        println!(
            "hook points  {} (blocks.{{0..{}}}.*; --hooks lists them)",
            all.len(),
            c.n_layers - 1
        );
    }
    Ok(())
}

fn generate(args: &ModelArgs, prompt: &str, max_new: usize, chat: bool) -> Result<()> {
    let m = args.load()?;
    let tok = m.tokenizer()?;
    let text = if chat {
        tok.apply_chat_template(&[model::tokenizer::ChatMessage::user(prompt)], true)?
    } else {
        prompt.to_string()
    };
    // A rendered chat template already carries its BOS.
    let ids = tok.encode(&text, !chat)?;
    let new = m.generate(&[ids], max_new, &mut Hooks::none())?;
    println!("{}", tok.decode(&new[0], true)?);
    Ok(())
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

/// A manifest record of a loaded model; hashes a GGUF file (a folder's weights are hashed shard
/// by shard into one digest of digests).
pub fn model_record(m: &Model) -> Result<ModelRecord> {
    let sha = if m.source.path.is_file() {
        Some(sha256_file(&m.source.path)?)
    } else {
        let mut shards: Vec<PathBuf> = std::fs::read_dir(&m.source.path)
            .map_err(|e| Error::io(&m.source.path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        shards.sort();
        if shards.len() == 1 {
            Some(sha256_file(&shards[0])?)
        } else {
            let parts = shards
                .iter()
                .map(|p| sha256_file(p))
                .collect::<Result<Vec<_>>>()?;
            Some(format!("multi:{}", parts.join(",")))
        }
    };
    Ok(ModelRecord {
        source: m.source.spec.clone(),
        path: m.source.path.display().to_string(),
        revision: m.source.commit.clone().or(m.source.revision.clone()),
        sha256: sha,
        arch: m.cfg().arch.name().to_string(),
        dtype: if m.bf16_matmul() {
            format!("{:?}+bf16-matmul", m.dtype).to_lowercase()
        } else {
            format!("{:?}", m.dtype).to_lowercase()
        },
    })
}

fn cache(
    args: &ModelArgs,
    prompt: Option<String>,
    prompts: Option<PathBuf>,
    patterns: &[String],
    last: Option<usize>,
    out: &Path,
) -> Result<()> {
    let prompts = read_prompts(prompt, prompts)?;
    let m = args.load()?;
    let filter = HookFilter::new(patterns);
    let points = filter.resolve(m.cfg().n_layers)?;
    let batch = m.batch(&prompts)?;
    let mut manifest = Manifest::new(
        "cache",
        serde_json::json!({ "hooks": patterns, "prompts": prompts, "last": last }),
    )
    .with_model(model_record(&m)?);
    let mut hooks = Hooks::capture(filter);
    if let Some(n) = last {
        hooks = hooks.at_positions(Positions::Last(n));
    }
    let t0 = std::time::Instant::now();
    m.forward(&batch, &mut hooks)?;
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
    manifest.write(out)?;
    println!(
        "{} tensors ({} hook points, {} prompts × {} positions) → {}",
        tensors.len(),
        points.len(),
        batch.len(),
        batch.seq_len,
        path.display()
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

fn heads(
    args: &ModelArgs,
    params: &crate::probes::heads::HeadsParams,
    out: &Path,
    progress: &crate::progress::Progress,
) -> Result<()> {
    use crate::probes::heads;
    let mut manifest = Manifest::from_params("heads", params)?.with_seed(Some(params.seed));
    let t0 = std::time::Instant::now();
    let m = args.load()?;
    manifest.record_timing("load", t0.elapsed().as_secs_f64());
    manifest = manifest.with_model(model_record(&m)?);
    let t0 = std::time::Instant::now();
    let report = heads::run(&m, params, progress)?;
    manifest.record_timing("probe", t0.elapsed().as_secs_f64());
    let table = heads::cmr_table(params.cmr_table.as_deref())?;
    let t0 = std::time::Instant::now();
    for f in heads::write_outputs(&report, Some(&table), out)? {
        manifest.add_file(f);
    }
    manifest.record_timing("write", t0.elapsed().as_secs_f64());
    for n in &report.notes {
        manifest.note(n.clone());
    }
    let summary: serde_json::Value = (&report).into();
    manifest.note(format!("summary: {summary}"));
    manifest.write(out)?;
    let (like, strict, per_layer) = heads::cmr_shares(&report.heads, report.n_layers);
    let mut top: Vec<&heads::HeadRow> = report.heads.iter().collect();
    top.sort_by(|a, b| b.induction_score.total_cmp(&a.induction_score));
    println!(
        "loss on first copy {:.3}, second copy {:.3}",
        report.loss_first_copy, report.loss_second_copy
    );
    println!("top induction heads:");
    for h in top.iter().take(5) {
        println!(
            "  L{}H{}  induction {:.3}  prev {:.3}  copying {:+.3}  CMR distance {:.3}",
            h.layer, h.head, h.induction_score, h.prev_token_score, h.copying_score, h.fit.distance
        );
    }
    println!(
        "CMR-like heads: {:.1}% (< 0.5), {:.1}% (< 0.1); per layer: {}",
        like * 100.0,
        strict * 100.0,
        per_layer
            .iter()
            .map(|x| format!("{:.0}", x * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(a) = &report.ablation {
        println!(
            "ablation: ICL(top CMR) − ICL(random) = {:+.3} (t = {:.2}, p = {:.4})",
            a.mean_diff, a.t_stat, a.p_value
        );
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn cmr_fit(crp: &Path, table_arg: Option<&Path>, out: &Path) -> Result<()> {
    use crate::probes::{cmr, heads};
    let arr = Tensor::read_npy(crp).map_err(|e| Error::msg(format!("{}: {e}", crp.display())))?;
    let dims = arr.dims().to_vec();
    if dims.len() != 3 || dims[2] != heads::N_LAGS {
        crate::bail!(
            "{}: expected an array [layers, heads, 16], got {:?}",
            crp.display(),
            dims
        );
    }
    let (nl, nh) = (dims[0], dims[1]);
    let v: Vec<f64> = arr.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let table = heads::cmr_table(table_arg)?;
    let fitter = cmr::CmrFitter::new(&table);
    let mut rows = vec![];
    for l in 0..nl {
        for h in 0..nh {
            let lag: Vec<f64> = v[(l * nh + h) * 16..(l * nh + h + 1) * 16].to_vec();
            let fit = fitter.fit(&lag);
            rows.push(heads::HeadRow {
                layer: l,
                head: h,
                induction_score: f64::NAN,
                prev_token_score: f64::NAN,
                duplicate_score: f64::NAN,
                copying_score: f64::NAN,
                lag_probs: vec![f64::NAN; 16],
                lag_scores: lag,
                fit,
            });
        }
    }
    let report = heads::HeadsReport {
        n_layers: nl,
        n_heads: nh,
        heads: rows,
        tokens: vec![],
        loss_first_copy: f64::NAN,
        loss_second_copy: f64::NAN,
        ablation: None,
        notes: vec![],
    };
    let mut manifest = Manifest::new(
        "cmr-fit",
        serde_json::json!({"crp": crp, "table": table_arg}),
    );
    for f in heads::write_outputs(&report, Some(&table), out)? {
        manifest.add_file(f);
    }
    let (like, strict, per_layer) = heads::cmr_shares(&report.heads, nl);
    manifest.note(format!(
        "share < 0.5: {like:.4}, share < 0.1: {strict:.4}, per layer: {per_layer:?}"
    ));
    manifest.write(out)?;
    println!(
        "{} heads: {:.1}% CMR-like (< 0.5), {:.1}% (< 0.1)",
        nl * nh,
        like * 100.0,
        strict * 100.0
    );
    println!(
        "per layer (% < 0.5): {}",
        per_layer
            .iter()
            .map(|x| format!("{:.0}", x * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("wrote {}", out.display());
    Ok(())
}
