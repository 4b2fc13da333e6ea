//! The activation store: activations of one hook point over a corpus, streamed to disk in
//! safetensors shards, shuffled, resumable.
//!
//! Layout of a store directory:
//! - `store.json`: model, hook, d, counts, the shard list and `next_doc` (see [`StoreMeta`]);
//!   rewritten atomically after every round, so a killed run loses at most one round.
//! - `shard_00000.safetensors`, ...: `activations [n, d]` (f32) and `tokens [n]` (u32, the token
//!   at each position, for top-token tables). A store of several hooks (`--hook A --hook B`)
//!   holds them side by side in each row (`d` their sum; [`Part`] says which columns are whose).
//!
//! Shuffling: documents are consumed in *rounds*; a round fills a buffer of
//! `shard_size × shards_per_round` activations (BOS and pad positions excluded), shuffles it with
//! a generator seeded by `(seed, round)`, and writes it as `shards_per_round` shards. Activations
//! are therefore mixed across the shards of a round (across hundreds of documents), and a resumed
//! collection produces byte-identical shards to a single pass. The reader ([`StoreReader`])
//! shuffles again across a pool of shards while it yields minibatches.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::hooks::{HookPoint, Hooks};
use crate::model::{Batch, Model, RunOptions};
use crate::progress::Progress;
use crate::{Error, Result};

mod parts;
pub use parts::{HookWidth, Part};

/// One shard of a store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardInfo {
    pub file: String,
    pub n: usize,
}

/// `store.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StoreMeta {
    pub model: String,
    pub hook: String,
    pub d: usize,
    pub shard_size: usize,
    pub shards_per_round: usize,
    pub seed: u64,
    /// Tokens per forward window (BOS included).
    pub context: usize,
    /// The number of activations asked for.
    pub target_tokens: usize,
    /// Activations written so far.
    pub n_tokens: usize,
    /// Documents consumed so far (the next round starts here).
    pub next_doc: usize,
    pub rounds: usize,
    pub shards: Vec<ShardInfo>,
    /// True once `target_tokens` are written or the corpus is exhausted.
    pub complete: bool,
    #[serde(default)]
    pub corpus: String,
    /// Stores of several hooks (transcoders, SAEs on several layers from one pass): the hooks
    /// and widths whose activations sit side by side in each row, in order (`hook` is the
    /// first, `d` their sum). Empty for a store of one hook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<HookWidth>,
}

impl StoreMeta {
    pub fn new(model: &str, hook: &str, d: usize) -> Self {
        StoreMeta {
            model: model.into(),
            hook: hook.into(),
            d,
            shard_size: 16384,
            shards_per_round: 4,
            seed: 0,
            context: 256,
            target_tokens: 200_000,
            n_tokens: 0,
            next_doc: 0,
            rounds: 0,
            shards: vec![],
            complete: false,
            corpus: String::new(),
            parts: vec![],
        }
    }

    /// Whether `other` describes the same collection (ignoring progress fields).
    fn same_setup(&self, other: &StoreMeta) -> bool {
        self.model == other.model
            && self.hook == other.hook
            && self.d == other.d
            && self.shard_size == other.shard_size
            && self.shards_per_round == other.shards_per_round
            && self.seed == other.seed
            && self.context == other.context
            && self.corpus == other.corpus
            && self.parts == other.parts
    }
}

/// An activation store on disk.
#[derive(Clone, Debug)]
pub struct ActivationStore {
    pub dir: PathBuf,
    pub meta: StoreMeta,
}

impl ActivationStore {
    /// Open an existing store.
    pub fn open(dir: &Path) -> Result<Self> {
        let p = dir.join("store.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let meta: StoreMeta =
            serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: {e}", p.display())))?;
        Ok(ActivationStore {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Open the store in `dir` to continue it if it was made with the same settings, else start
    /// a new one (an existing store with other settings is an error). A larger `target_tokens`
    /// re-opens a completed store.
    pub fn create_or_resume(dir: &Path, meta: StoreMeta) -> Result<Self> {
        if dir.join("store.json").is_file() {
            let mut s = Self::open(dir)?;
            if !s.meta.same_setup(&meta) {
                crate::bail!(
                    "{}: a store with other settings exists (model {}, hook {}, seed {}); use a new --out",
                    dir.display(),
                    s.meta.model,
                    s.meta.hook,
                    s.meta.seed
                );
            }
            // A new target at or above what the store holds is taken (a completed store
            // reopens for a larger one; an unfinished one may also be asked for less); a
            // smaller one than it holds leaves the store as it is.
            if meta.target_tokens != s.meta.target_tokens && meta.target_tokens >= s.meta.n_tokens {
                s.meta.target_tokens = meta.target_tokens;
                s.meta.complete = false;
            }
            return Ok(s);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let s = ActivationStore {
            dir: dir.to_path_buf(),
            meta: StoreMeta {
                n_tokens: 0,
                next_doc: 0,
                rounds: 0,
                shards: vec![],
                complete: false,
                ..meta
            },
        };
        s.write_meta()?;
        Ok(s)
    }

    fn write_meta(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.meta)
            .map_err(|e| Error::msg(format!("store.json: {e}")))?;
        crate::report::write_atomic(&self.dir.join("store.json"), text.as_bytes())
    }

    pub fn d(&self) -> usize {
        self.meta.d
    }

    /// The hooks of the rows and their columns (one part for a store of one hook).
    pub fn parts(&self) -> Vec<Part> {
        if self.meta.parts.is_empty() {
            return vec![Part {
                hook: self.meta.hook.clone(),
                offset: 0,
                d: self.meta.d,
            }];
        }
        let mut offset = 0;
        self.meta
            .parts
            .iter()
            .map(|h| {
                let p = Part {
                    hook: h.hook.clone(),
                    offset,
                    d: h.d,
                };
                offset += h.d;
                p
            })
            .collect()
    }

    /// The columns of `hook` (the first hook when `None`), or an error naming the hooks the
    /// store holds.
    pub fn part(&self, hook: Option<&str>) -> Result<Part> {
        let parts = self.parts();
        match hook {
            None => Ok(parts[0].clone()),
            Some(h) => parts.iter().find(|p| p.hook == h).cloned().ok_or_else(|| {
                Error::msg(format!(
                    "the store in {} holds {}, not {h}",
                    self.dir.display(),
                    parts
                        .iter()
                        .map(|p| p.hook.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
        }
    }

    pub fn n_shards(&self) -> usize {
        self.meta.shards.len()
    }

    pub fn len(&self) -> usize {
        self.meta.n_tokens
    }

    pub fn is_empty(&self) -> bool {
        self.meta.n_tokens == 0
    }

    /// Shuffle one round's activations (seeded by `(seed, round)`), write its shards and record
    /// them with `next_doc`. `acts` is `[n, d]` row-major, `tokens` `[n]`.
    pub fn write_round(&mut self, acts: Vec<f32>, tokens: Vec<u32>, next_doc: usize) -> Result<()> {
        let d = self.meta.d;
        let n = tokens.len();
        if acts.len() != n * d {
            crate::bail!("write_round: {} values for {n} rows of d = {d}", acts.len());
        }
        let mut perm: Vec<usize> = (0..n).collect();
        let mut rng = StdRng::seed_from_u64(
            self.meta
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(self.meta.rounds as u64),
        );
        perm.shuffle(&mut rng);
        let per = n.div_ceil(self.meta.shards_per_round.max(1)).max(1);
        for chunk in perm.chunks(per) {
            let idx = self.meta.shards.len();
            let file = format!("shard_{idx:05}.safetensors");
            let mut a = Vec::with_capacity(chunk.len() * d);
            let mut t = Vec::with_capacity(chunk.len());
            for &i in chunk {
                a.extend_from_slice(&acts[i * d..(i + 1) * d]);
                t.push(tokens[i]);
            }
            let at = Tensor::from_vec(a, (chunk.len(), d), &Device::Cpu)?;
            let tt = Tensor::from_vec(t, chunk.len(), &Device::Cpu)?;
            let path = self.dir.join(&file);
            crate::report::write_safetensors(
                &path,
                [("activations".to_string(), at), ("tokens".to_string(), tt)],
            )?;
            self.meta.shards.push(ShardInfo {
                file,
                n: chunk.len(),
            });
        }
        self.meta.n_tokens += n;
        self.meta.next_doc = next_doc;
        self.meta.rounds += 1;
        self.write_meta()
    }

    /// Mark the store complete.
    pub fn finish(&mut self) -> Result<()> {
        self.meta.complete = true;
        self.write_meta()
    }

    /// Read shard `i`: activations `[n, d]` row-major and tokens.
    pub fn read_shard(&self, i: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        let info = self
            .meta
            .shards
            .get(i)
            .ok_or_else(|| Error::msg(format!("shard {i} out of range")))?;
        let path = self.dir.join(&info.file);
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        let a = t
            .remove("activations")
            .ok_or_else(|| Error::MissingTensor(format!("activations in {}", path.display())))?;
        let toks = t
            .remove("tokens")
            .ok_or_else(|| Error::MissingTensor(format!("tokens in {}", path.display())))?;
        let shape = a.dims().to_vec();
        let a: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let toks: Vec<u32> = toks.to_vec1()?;
        let (n, d) = (info.n, self.meta.d);
        if a.len() != n * d || toks.len() != n {
            crate::bail!(
                "{}: holds activations of shape {shape:?} and {} tokens, but store.json \
                 describes {n} rows of d = {d} (the store is damaged or mixed with another; \
                 collect it again)",
                path.display(),
                toks.len()
            );
        }
        Ok((a, toks))
    }

    /// Up to `max` activations (and their tokens) from `shards`, in shard order (shards are
    /// already shuffled, so a prefix is a random sample).
    pub fn sample(&self, shards: &[usize], max: usize) -> Result<(Vec<f32>, Vec<u32>)> {
        let d = self.meta.d;
        let (mut a, mut t) = (vec![], vec![]);
        for &i in shards {
            if t.len() >= max {
                break;
            }
            let (sa, st) = self.read_shard(i)?;
            let take = (max - t.len()).min(st.len());
            a.extend_from_slice(&sa[..take * d]);
            t.extend_from_slice(&st[..take]);
        }
        Ok((a, t))
    }

    /// Split shard indices into (train, eval): the last `eval_shards` shards are held out when
    /// the store has more shards than that, else everything is used for both.
    pub fn split(&self, eval_shards: usize) -> (Vec<usize>, Vec<usize>) {
        let n = self.n_shards();
        if eval_shards == 0 || n <= eval_shards {
            return ((0..n).collect(), (0..n).collect());
        }
        (
            (0..n - eval_shards).collect(),
            (n - eval_shards..n).collect(),
        )
    }

    /// A reader of shuffled minibatches over `shards`.
    pub fn reader(&self, shards: Vec<usize>, batch_size: usize, seed: u64) -> StoreReader<'_> {
        StoreReader {
            store: self,
            shards,
            batch_size,
            rng: StdRng::seed_from_u64(seed),
            order: vec![],
            pool: vec![],
            pool_rows: 0,
            pool_shards: 2,
            epoch: 0,
        }
    }
}

/// Shuffled minibatches over a set of shards, forever (epoch after epoch). Memory holds at most
/// `pool_shards + 1` shards: each new shard is appended to a pool that is reshuffled, and
/// batches are drawn from the pool while it holds more than `pool_shards − 1` shards' worth.
pub struct StoreReader<'a> {
    store: &'a ActivationStore,
    shards: Vec<usize>,
    batch_size: usize,
    rng: StdRng,
    order: Vec<usize>,
    pool: Vec<f32>,
    pool_rows: usize,
    /// Number of shards mixed in the pool.
    pub pool_shards: usize,
    /// Completed passes over the shards.
    pub epoch: usize,
}

impl StoreReader<'_> {
    fn refill(&mut self) -> Result<()> {
        let d = self.store.meta.d;
        if self.order.is_empty() {
            if self.shards.is_empty() {
                crate::bail!("the activation store has no shards");
            }
            self.order = self.shards.clone();
            self.order.shuffle(&mut self.rng);
            self.epoch += 1;
        }
        let i = self.order.pop().unwrap_or(0);
        let (a, _) = self.store.read_shard(i)?;
        self.pool.extend_from_slice(&a);
        self.pool_rows += a.len() / d;
        // Shuffle the pool rows in place (Fisher–Yates on rows).
        use rand::Rng;
        for r in (1..self.pool_rows).rev() {
            let j = self.rng.random_range(0..=r);
            if j != r {
                for c in 0..d {
                    self.pool.swap(r * d + c, j * d + c);
                }
            }
        }
        Ok(())
    }

    /// The next minibatch `[batch_size, d]` (row-major).
    pub fn next_batch(&mut self) -> Result<Vec<f32>> {
        let d = self.store.meta.d;
        let shard = self
            .store
            .meta
            .shards
            .iter()
            .map(|s| s.n)
            .max()
            .unwrap_or(1);
        let low = (self.pool_shards.saturating_sub(1) * shard).max(self.batch_size);
        while self.pool_rows < low + self.batch_size {
            self.refill()?;
            if self.shards.len() == 1 && self.pool_rows >= self.batch_size {
                break;
            }
        }
        let b = self.batch_size;
        let start = (self.pool_rows - b) * d;
        let out = self.pool.split_off(start);
        self.pool_rows -= b;
        Ok(out)
    }

    /// The next minibatch as a `[batch_size, d]` tensor on `device`.
    pub fn next_tensor(&mut self, device: &Device) -> Result<Tensor> {
        let v = self.next_batch()?;
        Ok(Tensor::from_vec(
            v,
            (self.batch_size, self.store.meta.d),
            device,
        )?)
    }
}

/// Documents to collect from: raw texts (tokenized with the model's tokenizer) or token ids.
pub enum Docs<'a> {
    Text(&'a [String]),
    Tokens(&'a [Vec<u32>]),
}

impl Docs<'_> {
    fn len(&self) -> usize {
        match self {
            Docs::Text(v) => v.len(),
            Docs::Tokens(v) => v.len(),
        }
    }

    /// Document `i` as token ids (text through the tokenizer, no special tokens added).
    fn ids(&self, i: usize, tokenizer: Option<&crate::model::Tokenizer>) -> Result<Vec<u32>> {
        match self {
            Docs::Text(v) => match tokenizer {
                Some(t) => t.encode(&v[i], false),
                None => crate::bail!("collecting from text needs a tokenizer"),
            },
            Docs::Tokens(v) => Ok(v[i].clone()),
        }
    }
}

/// How a document is cut into forward windows and which of their positions are stored: windows
/// of `body` tokens, each after the model's BOS when it has one; the window's first position
/// (BOS, or an attention sink without one), pads and special tokens are never stored.
struct Windows<'a> {
    body: usize,
    bos: Option<u32>,
    specials: &'a [u32],
}

impl Windows<'_> {
    /// The forward rows of one document.
    fn rows<'d>(&'d self, ids: &'d [u32]) -> impl Iterator<Item = Vec<u32>> + 'd {
        ids.chunks(self.body.max(1)).map(|w| {
            let mut row = Vec::with_capacity(w.len() + 1);
            row.extend(self.bos);
            row.extend_from_slice(w);
            row
        })
    }

    /// Whether position `p` of a row holding `id` is stored.
    fn stored(&self, p: usize, id: u32) -> bool {
        p > 0 && self.specials.binary_search(&id).is_err()
    }

    /// The activations documents `from..` give to a collection of `need` more in rounds of
    /// `round_cap` (as [`collect`] runs: a round takes whole documents until it is full and
    /// drops the rest of its last one), counted until `need` is reached: the collection is
    /// refused up front when the corpus cannot fill the store. Also returns the token ids of
    /// the documents it read (`from..`), which the collection then takes instead of
    /// tokenizing them again.
    fn available(
        &self,
        docs: &Docs<'_>,
        from: usize,
        need: usize,
        round_cap: usize,
        tokenizer: Option<&crate::model::Tokenizer>,
    ) -> Result<(usize, Vec<Vec<u32>>)> {
        let (mut total, mut round) = (0, 0);
        let mut read = vec![];
        for i in from..docs.len() {
            if total >= need {
                break;
            }
            let ids = docs.ids(i, tokenizer)?;
            for row in self.rows(&ids) {
                round += row
                    .iter()
                    .enumerate()
                    .filter(|&(p, &id)| self.stored(p, id))
                    .count();
            }
            read.push(ids);
            let want = round_cap.min(need - total);
            if round >= want {
                total += want;
                round = 0;
            }
        }
        Ok((total + round, read))
    }
}

/// Settings of a collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectParams {
    pub hook: String,
    /// More hooks stored beside `hook` in the same rows (transcoder targets, other layers).
    pub extra_hooks: Vec<String>,
    pub tokens: usize,
    pub shard_size: usize,
    pub shards_per_round: usize,
    pub seed: u64,
    pub context: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Stop after this many new rounds (tests of resumption; `None` = run to the end).
    pub max_new_rounds: Option<usize>,
    /// A label of the corpus recorded in `store.json`.
    pub corpus: String,
}

impl Default for CollectParams {
    fn default() -> Self {
        CollectParams {
            hook: "blocks.15.hook_resid_post".into(),
            extra_hooks: vec![],
            tokens: 200_000,
            shard_size: 16384,
            shards_per_round: 4,
            seed: 0,
            context: 256,
            batch: 8,
            max_new_rounds: None,
            corpus: String::new(),
        }
    }
}

/// The hook point a store of `hook` reads in a model of `cfg`, and its width: it must exist
/// in the model and be a `[batch, pos, d]` point.
pub fn store_point(cfg: &crate::model::ModelConfig, hook: &str) -> Result<(HookPoint, usize)> {
    let point = HookPoint::parse_for(hook, cfg.n_layers)
        .map_err(|e| crate::Error::msg(format!("hook {hook}: {e}")))?;
    if !cfg.fires(point) {
        crate::bail!(
            "{}: `{point}` does not exist in {} (ungated MLPs have no hook_pre_linear; only \
             learned positions have hook_pos_embed)",
            hook,
            cfg.arch.name()
        );
    }
    let d = if matches!(
        point,
        HookPoint::MlpPre(_) | HookPoint::MlpPreLinear(_) | HookPoint::MlpPost(_)
    ) {
        cfg.d_mlp
    } else {
        cfg.d_model
    };
    if point.layout() != crate::hooks::Layout::Stream {
        crate::bail!("SAE stores need a [batch, pos, d] hook point, not `{point}`");
    }
    Ok((point, d))
}

/// Collect activations of `params.hook` over `docs` into the store at `dir` (resuming it when
/// it exists). Each document is split into windows of `context − 1` tokens, each window gets
/// the model's BOS (as SAELens's `prepend_bos`, whether or not the tokenizer adds one by
/// itself); the first position of every window, pad positions and special tokens are not stored.
pub fn collect(
    model: &Model,
    docs: Docs<'_>,
    params: &CollectParams,
    dir: &Path,
    progress: &Progress,
) -> Result<ActivationStore> {
    let hooks: Vec<&String> = std::iter::once(&params.hook)
        .chain(&params.extra_hooks)
        .collect();
    let mut points: Vec<(HookPoint, usize)> = Vec::with_capacity(hooks.len());
    for h in &hooks {
        let p = store_point(model.cfg(), h)?;
        if points.iter().any(|q| q.0 == p.0) {
            crate::bail!("hook {h} is asked for twice");
        }
        points.push(p);
    }
    let d: usize = points.iter().map(|p| p.1).sum();
    let mut meta = StoreMeta::new(&model.source.spec, &params.hook, d);
    if points.len() > 1 {
        meta.parts = hooks
            .iter()
            .zip(&points)
            .map(|(h, p)| HookWidth {
                hook: h.to_string(),
                d: p.1,
            })
            .collect();
    }
    meta.shard_size = params.shard_size.max(1);
    meta.shards_per_round = params.shards_per_round.max(1);
    meta.seed = params.seed;
    meta.context = params.context.max(2);
    meta.target_tokens = params.tokens;
    meta.corpus = params.corpus.clone();
    let mut store = ActivationStore::create_or_resume(dir, meta)?;
    if store.meta.complete {
        return Ok(store);
    }
    let tokenizer = model.tokenizer.as_ref();
    let specials: Vec<u32> = tokenizer.map(|t| t.special_ids()).unwrap_or_default();
    let bos = super::window_bos(model);
    let windows = Windows {
        body: store.meta.context - usize::from(bos.is_some()),
        bos,
        specials: &specials,
    };
    let need = store.meta.target_tokens.saturating_sub(store.meta.n_tokens);
    let round_cap = store.meta.shard_size * store.meta.shards_per_round;
    let first = store.meta.next_doc;
    let (available, mut tokenized) = windows.available(&docs, first, need, round_cap, tokenizer)?;
    if available < need {
        let (done, from) = (store.meta.n_tokens, store.meta.next_doc);
        if store.meta.rounds == 0 {
            // Nothing collected: leave no store behind.
            let _ = std::fs::remove_file(dir.join("store.json"));
        }
        let label = if params.corpus.is_empty() {
            "the corpus"
        } else {
            &params.corpus
        };
        crate::bail!(
            "{label} holds {available} activations to collect{} ({} documents, context {}), \
             fewer than the {need} asked for (--tokens {}); ask for --tokens {} or less, or \
             give a larger corpus",
            if from > 0 {
                format!(" after its first {from} documents")
            } else {
                String::new()
            },
            docs.len(),
            store.meta.context,
            store.meta.target_tokens,
            done + available
        );
    }
    let capture: Vec<HookPoint> = points.iter().map(|p| p.0).collect();
    let bar = progress.bar(store.meta.target_tokens as u64, "collecting activations");
    bar.inc(store.meta.n_tokens as u64);
    let mut new_rounds = 0usize;
    let mut doc = store.meta.next_doc;
    let n_docs = docs.len();
    while store.meta.n_tokens < store.meta.target_tokens && doc < n_docs {
        if params.max_new_rounds.is_some_and(|m| new_rounds >= m) {
            bar.finish();
            return Ok(store);
        }
        let want = round_cap.min(store.meta.target_tokens - store.meta.n_tokens);
        let mut acts: Vec<f32> = Vec::with_capacity(want * d);
        let mut toks: Vec<u32> = Vec::with_capacity(want);
        // Windows waiting for a forward pass.
        let mut pending: Vec<Vec<u32>> = vec![];
        let round_start = doc;
        let flush =
            |pending: &mut Vec<Vec<u32>>, acts: &mut Vec<f32>, toks: &mut Vec<u32>| -> Result<()> {
                if pending.is_empty() {
                    return Ok(());
                }
                let batch = Batch::new(pending, model.pad_id())?;
                let mut hooks = Hooks::capture_points(&capture);
                model.transformer.forward_with(
                    &batch,
                    &mut hooks,
                    RunOptions::capture_only(&capture),
                )?;
                let mut xs: Vec<(HookPoint, usize, Vec<f32>)> = Vec::with_capacity(points.len());
                for &(point, d) in &points {
                    let x = hooks.cache.expect(point)?.to_dtype(DType::F32)?;
                    xs.push((point, d, x.flatten_all()?.to_vec1()?));
                }
                let t = batch.seq_len;
                for (r, row) in batch.ids.iter().enumerate() {
                    let pad = batch.pad_left[r];
                    for (p, &id) in row.iter().enumerate().skip(pad) {
                        if !windows.stored(p - pad, id) {
                            continue;
                        }
                        for (point, d, x) in &xs {
                            let off = (r * t + p) * d;
                            let a = &x[off..off + d];
                            if let Some(bad) = a.iter().find(|v| !v.is_finite()) {
                                crate::bail!(
                                    "{point} is {bad} in a document from number {round_start} \
                                     on (the model overflows in {:?}; try --dtype f32): this \
                                     round was not stored",
                                    model.transformer.dtype
                                );
                            }
                        }
                        for (_, d, x) in &xs {
                            let off = (r * t + p) * d;
                            acts.extend_from_slice(&x[off..off + d]);
                        }
                        toks.push(id);
                    }
                }
                pending.clear();
                Ok(())
            };
        while toks.len() < want && doc < n_docs {
            // Counted above (every document the collection reaches), else tokenized now.
            let ids = match tokenized.get_mut(doc - first) {
                Some(ids) => std::mem::take(ids),
                None => docs.ids(doc, tokenizer)?,
            };
            doc += 1;
            for row in windows.rows(&ids) {
                pending.push(row);
                if pending.len() >= params.batch.max(1) {
                    let before = toks.len();
                    flush(&mut pending, &mut acts, &mut toks)?;
                    bar.inc((toks.len().min(want) - before.min(want)) as u64);
                }
            }
            // A document's last windows go with the next ones, but never across a round.
            if toks.len() + pending.iter().map(|r| r.len()).sum::<usize>() >= want || doc >= n_docs
            {
                let before = toks.len();
                flush(&mut pending, &mut acts, &mut toks)?;
                bar.inc((toks.len().min(want) - before.min(want)) as u64);
            }
        }
        let before = toks.len();
        flush(&mut pending, &mut acts, &mut toks)?;
        bar.inc((toks.len().min(want) - before.min(want)) as u64);
        toks.truncate(want);
        acts.truncate(want * d);
        if toks.is_empty() {
            break;
        }
        store.write_round(acts, toks, doc)?;
        new_rounds += 1;
    }
    bar.finish();
    store.finish()?;
    Ok(store)
}
