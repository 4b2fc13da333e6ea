//! Weights behind one interface: "give me the tensor with this Hugging Face name".
//!
//! - safetensors: memory-mapped, single file or sharded (`model.safetensors.index.json`);
//! - GGUF: every tensor dequantized (candle's kernels: Q4_0, Q4_1, Q4_K, Q5_0, Q5_K, Q6_K, Q8_0,
//!   F16, BF16, F32, ...), GGUF names mapped onto Hugging Face names, llama.cpp's Q/K row
//!   permutation undone for Llama, Gemma's stored (1 + w) norm weights shifted back to w
//!   (`weights/gguf.rs`, with the config read from GGUF metadata).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::model::mapped::{Half, MappedRows};
use crate::{Context, Error, Result};

mod gguf;

pub use gguf::{config_from_gguf, read_content, unpermute_rows, GgufWeights};

/// A source of named tensors (Hugging Face names, e.g. `model.layers.0.self_attn.q_proj.weight`).
pub trait WeightSource: Send + Sync {
    /// Load a tensor, converted to `dtype` on `device`.
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name, Hugging Face style.
    fn names(&self) -> Vec<String>;
    /// Whether loading is CPU-bound (dequantization) and worth doing on all cores at once.
    fn parallel_load(&self) -> bool {
        false
    }
    /// The number of weight elements the file declares (from its headers, before anything is
    /// read), for the memory check of [`check_fits`]; `None` when unknown.
    fn element_count(&self) -> Option<u64> {
        None
    }
    /// A 2-D bf16 / f16 tensor as it lies in a memory map, for the mapped products
    /// ([`crate::model::mapped`]); `None` when this source has no map or the tensor is stored in
    /// another dtype or rank.
    fn mapped(&self, name: &str) -> Result<Option<MappedRows>> {
        let _ = name;
        Ok(None)
    }
}

/// The number of decoder layers the tensor names show (`...layers.N...` / GPT-2's `...h.N...`):
/// one more than the largest block index, 0 when there are none. Towers of other modalities
/// (`vision_tower...layers.N`, audio, projectors) are not the decoder's and are left out.
pub fn layers_in_names(names: &[String]) -> usize {
    const OTHER: [&str; 6] = ["vision", "visual", "image", "audio", "mm_", "multi_modal"];
    let mut n = 0;
    for name in names {
        if OTHER.iter().any(|o| name.contains(o)) {
            continue;
        }
        let parts: Vec<&str> = name.split('.').collect();
        for w in parts.windows(2) {
            if matches!(w[0], "layers" | "h" | "blocks") {
                if let Ok(i) = w[1].parse::<usize>() {
                    n = n.max(i + 1);
                }
            }
        }
    }
    n
}

/// An error if the checkpoint holds more layers than the config describes (they would be left
/// out silently).
pub fn check_layers(src: &dyn WeightSource, n_layers: usize, what: &str) -> Result<()> {
    let found = layers_in_names(&src.names());
    if found > n_layers {
        crate::bail!(
            "{what}: the weights hold {found} layers but the config describes {n_layers}; \
             a config for another model?"
        );
    }
    Ok(())
}

/// An error before the load if the weights, at `dtype`, need more memory than the machine has
/// available now (`MemAvailable`): a clear message instead of an OOM kill.
pub fn check_fits(src: &dyn WeightSource, dtype: DType, what: &str) -> Result<()> {
    let Some(n) = src.element_count() else {
        return Ok(());
    };
    let need = n.saturating_mul(dtype.size_in_bytes() as u64);
    let have = crate::alloc::available_memory_bytes();
    if need > have {
        let gb = |b: u64| b as f64 / 1e9;
        crate::bail!(
            "{what}: {n} weights need {:.1} GB in {dtype:?}, more than the {:.1} GB of memory \
             available{}",
            gb(need),
            gb(have),
            if dtype == DType::F32 {
                " (--dtype bf16 halves it; --matmul bf16 on a bf16 safetensors checkpoint uses \
                 the weights where they lie in the file, without a copy)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The number of NaN / ±inf values of a CPU tensor (`None` on other devices or for integer
/// tensors), read from its storage without a copy.
pub fn non_finite_count(t: &Tensor) -> Option<usize> {
    use candle_core::{CpuStorage, Storage};
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (o0, o1) = layout.contiguous_offsets()?;
    Some(match cpu {
        CpuStorage::F32(v) => v[o0..o1].iter().filter(|x| !x.is_finite()).count(),
        CpuStorage::F64(v) => v[o0..o1].iter().filter(|x| !x.is_finite()).count(),
        CpuStorage::BF16(v) => v[o0..o1]
            .iter()
            .filter(|x| x.to_bits() & 0x7f80 == 0x7f80)
            .count(),
        CpuStorage::F16(v) => v[o0..o1]
            .iter()
            .filter(|x| x.to_bits() & 0x7c00 == 0x7c00)
            .count(),
        _ => return None,
    })
}

/// A source whose every tensor is checked for NaN / ±inf as it is handed out: a checkpoint
/// holding them (a corrupt file, a diverged training run) is refused with the tensor's name
/// instead of giving NaN logits and activations downstream.
pub struct Finite<'a>(pub &'a dyn WeightSource);

impl WeightSource for Finite<'_> {
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.0.get(name, dtype, device)?;
        let t = if t.is_contiguous() {
            t
        } else {
            t.contiguous()?
        };
        if let Some(n) = non_finite_count(&t).filter(|&n| n > 0) {
            return Err(Error::msg(format!(
                "{name} holds {n} NaN or infinite values of {}: the checkpoint is corrupt (or \
                 was saved from a diverged run); nothing was computed",
                t.elem_count()
            )));
        }
        Ok(t)
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn names(&self) -> Vec<String> {
        self.0.names()
    }
    fn parallel_load(&self) -> bool {
        self.0.parallel_load()
    }
    fn element_count(&self) -> Option<u64> {
        self.0.element_count()
    }
    fn mapped(&self, name: &str) -> Result<Option<MappedRows>> {
        let Some(r) = self.0.mapped(name)? else {
            return Ok(None);
        };
        let n = r.non_finite_count();
        if n > 0 {
            let (a, b) = r.dims();
            return Err(Error::msg(format!(
                "{name} holds {n} NaN or infinite values of {}: the checkpoint is corrupt (or \
                 was saved from a diverged run); nothing was computed",
                a * b
            )));
        }
        Ok(Some(r))
    }
}

/// Load every tensor of `src` as f32 in parallel (rayon) into memory.
pub fn prefetch(src: &dyn WeightSource, device: &Device) -> Result<Prefetched> {
    use rayon::prelude::*;
    let names = src.names();
    let tensors = names
        .par_iter()
        .map(|n| Ok((n.clone(), src.get(n, DType::F32, device)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(Prefetched {
        tensors: std::sync::Mutex::new(tensors),
    })
}

/// Tensors loaded ahead of model construction. `get` hands each tensor over and forgets it, so
/// the model's fused copies (QKV, gate/up) replace the originals instead of doubling the peak
/// memory of a load; a tensor can therefore be taken once.
pub struct Prefetched {
    tensors: std::sync::Mutex<HashMap<String, Tensor>>,
}

impl WeightSource for Prefetched {
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .lock()
            .map_err(|_| Error::msg("weight loader poisoned"))?
            .remove(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors
            .lock()
            .map(|m| m.contains_key(name))
            .unwrap_or(false)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tensors
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Memory-mapped safetensors files.
pub struct SafetensorsWeights {
    st: candle_core::safetensors::MmapedSafetensors,
    /// The same files mapped for [`WeightSource::mapped`] (pages are read only through the
    /// map that a tensor is taken from).
    maps: Vec<std::sync::Arc<memmap2::Mmap>>,
    /// Where each tensor lies: its file, dtype and shape, and its first byte in the file.
    layout: HashMap<String, TensorAt>,
    names: Vec<String>,
    /// Prefix that maps `model.` names onto this checkpoint (e.g. `model.language_model.`).
    prefix_map: Option<(String, String)>,
}

impl SafetensorsWeights {
    /// Open `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).ctx(|| format!("{}", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ctx(|| format!("{}: no weight_map", index.display()))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            crate::bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        for f in &files {
            if !f.exists() {
                crate::bail!("{}: weight shard is missing", f.display());
            }
        }
        Self::open_files(&files)
    }

    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut maps = Vec::with_capacity(files.len());
        let mut layout = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
            // SAFETY: mapped read-only, as candle's loader below does; modifying a checkpoint
            // while it is mapped is the caller's responsibility, as with every mmap loader.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(f, e))?;
            read_ahead(&map);
            for (name, at) in read_layout(&map, f)? {
                layout.insert(name, TensorAt { file: i, ..at });
            }
            maps.push(std::sync::Arc::new(map));
        }
        // SAFETY: the files are memory-mapped read-only; modifying them while mapped is the
        // caller's responsibility, as with every mmap-based loader.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files) }
            .map_err(|e| Error::msg(format!("{}: {e}", files[0].display())))?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let prefix_map = if names.iter().any(|n| n.starts_with("model.layers.")) {
            None
        } else if names.iter().any(|n| n.starts_with("h.0."))
            && !names.iter().any(|n| n.starts_with("transformer."))
        {
            // The original GPT-2 checkpoints were saved from GPT2Model: no `transformer.` prefix.
            Some(("transformer.".to_string(), String::new()))
        } else {
            ["model.language_model.", "language_model.model."]
                .iter()
                .find(|p| names.iter().any(|n| n.starts_with(*p)))
                .map(|p| ("model.".to_string(), p.to_string()))
        };
        Ok(SafetensorsWeights {
            st,
            maps,
            layout,
            names,
            prefix_map,
        })
    }

    fn real_name(&self, name: &str) -> String {
        match &self.prefix_map {
            Some((from, to)) if name.starts_with(from.as_str()) => {
                format!("{to}{}", &name[from.len()..])
            }
            _ => name.to_string(),
        }
    }
}

/// Asks the kernel to read a mapped shard ahead (`MADV_WILLNEED`): the load touches every page
/// (the finiteness check, or the copy into f32), and on a cold page cache an asynchronous read
/// of the whole file can run ahead of faulting it in page by page (no difference measured on
/// this project's VM disks: docs/performance.md). Not for shards that would not fit
/// in half the machine's memory: reading those ahead would only push other pages out. The hint
/// is advisory; a kernel that refuses it changes nothing.
fn read_ahead(map: &memmap2::Mmap) {
    #[cfg(unix)]
    if (map.len() as u64) < crate::alloc::physical_memory_bytes() / 2 {
        let _ = map.advise(memmap2::Advice::WillNeed);
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let real = self.real_name(name);
        if !self.names.contains(&real) {
            return Err(Error::MissingTensor(name.to_string()));
        }
        let t = self
            .st
            .load(&real, device)
            .map_err(|e| Error::msg(format!("tensor `{real}`: {e}")))?;
        Ok(t.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        let real = self.real_name(name);
        self.names.contains(&real)
    }
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn mapped(&self, name: &str) -> Result<Option<MappedRows>> {
        let real = self.real_name(name);
        let Some(at) = self.layout.get(&real) else {
            return Err(Error::MissingTensor(name.to_string()));
        };
        let half = match at.dtype.as_str() {
            "BF16" => Half::Bf16,
            "F16" => Half::F16,
            _ => return Ok(None),
        };
        let &[rows, cols] = at.shape.as_slice() else {
            return Ok(None);
        };
        MappedRows::new(self.maps[at.file].clone(), at.start, rows, cols, half)
            .map(Some)
            .map_err(|e| Error::msg(format!("tensor `{real}`: {e}")))
    }
    fn element_count(&self) -> Option<u64> {
        Some(
            self.st
                .tensors()
                .iter()
                .map(|(_, v)| v.shape().iter().map(|&d| d as u64).product::<u64>())
                .sum(),
        )
    }
}

/// Where a tensor lies in a safetensors file.
#[derive(Clone, Debug)]
struct TensorAt {
    file: usize,
    dtype: String,
    shape: Vec<usize>,
    /// The first byte of its data in the file.
    start: usize,
}

/// The tensors a safetensors file's header declares, each checked to lie inside the file: a
/// truncated shard is refused naming the file and the first tensor it cuts.
fn read_layout(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorAt)>> {
    let bad = |what: String| Error::msg(format!("{}: {what}", path.display()));
    let len = bytes.len();
    if len < 8 {
        return Err(bad(format!(
            "{len} bytes, too short for a safetensors file (truncated?)"
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
    if n > len - 8 {
        return Err(bad(format!(
            "the header declares {n} bytes but the file has {len} (truncated, or not \
             safetensors?)"
        )));
    }
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let obj = header
        .as_object()
        .ok_or_else(|| bad("the safetensors header is not an object".into()))?;
    let data = 8 + n;
    let mut out = Vec::with_capacity(obj.len());
    let mut cut: Option<(usize, String)> = None;
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| bad(format!("tensor `{name}`: no `{k}` in the header")))
        };
        let dtype = field("dtype")?.as_str().unwrap_or_default().to_string();
        let nums = |k: &str| -> Result<Vec<usize>> {
            field(k)?
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
                .ok_or_else(|| bad(format!("tensor `{name}`: `{k}` is not a list of integers")))
        };
        let shape = nums("shape")?;
        let offs = nums("data_offsets")?;
        let &[s, e] = offs.as_slice() else {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets needs two numbers"
            )));
        };
        if s > e {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{s}, {e}] run backwards"
            )));
        }
        if data.saturating_add(e) > len && cut.as_ref().is_none_or(|(c, _)| s < *c) {
            let why = format!(
                "truncated: tensor `{name}` ({dtype} {shape:?}) needs bytes {}..{} but the file \
                 has {len} (an interrupted download or copy?)",
                data + s,
                data.saturating_add(e)
            );
            cut = Some((s, why));
        }
        out.push((
            name.clone(),
            TensorAt {
                file: 0,
                dtype,
                shape,
                start: data + s,
            },
        ));
    }
    if let Some((_, why)) = cut {
        return Err(bad(why));
    }
    Ok(out)
}

/// Collect every tensor a source holds into a name → tensor map (used by `convert`).
pub fn load_all(
    src: &dyn WeightSource,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    src.names()
        .into_iter()
        .map(|n| {
            let t = src.get(&n, dtype, device)?;
            Ok((n, t))
        })
        .collect()
}

/// Tensors held in memory under Hugging Face names (toy models, tests, conversions).
#[derive(Clone, Debug, Default)]
pub struct MapWeights {
    pub tensors: HashMap<String, Tensor>,
}

impl MapWeights {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        MapWeights { tensors }
    }
}

impl WeightSource for MapWeights {
    fn get(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }
}
