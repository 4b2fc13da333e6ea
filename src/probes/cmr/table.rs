//! The CMR lag-CRP table over the parameter grid: simulation, the machine cache, `.npy` I/O.

use crate::{bail, Context, Error, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// CMR lag-CRP for every grid point: `data` is `[n_beta_enc, n_beta_rec, n_gamma, 17]` in C
/// order (lags −8..=8), each row summing to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct CrpTable {
    /// The parameter grid.
    pub grid: CmrGrid,
    /// Flat `[20, 21, 11, 17]` values.
    pub data: Vec<f64>,
    /// Monte-Carlo standard errors, same layout, when the table was simulated here.
    pub sem: Option<Vec<f64>>,
}

impl CrpTable {
    /// Wraps a flat `[grid.shape(), 17]` array.
    pub fn from_vec(grid: CmrGrid, data: Vec<f64>) -> Result<Self> {
        if data.len() != grid.len() * N_LAGS {
            bail!(
                "CMR CRP table: expected {} values ({:?} × {N_LAGS}), got {}",
                grid.len() * N_LAGS,
                grid.shape(),
                data.len()
            );
        }
        Ok(Self {
            grid,
            data,
            sem: None,
        })
    }

    /// The CRP row (lags −8..=8) at grid indices `[i_enc, i_rec, i_gamma]`.
    pub fn crp(&self, idx: [usize; 3]) -> &[f64] {
        let f = self.grid.ravel(idx);
        &self.data[f * N_LAGS..(f + 1) * N_LAGS]
    }

    /// The CRP row at a flat grid index.
    pub fn crp_flat(&self, flat: usize) -> &[f64] {
        &self.data[flat * N_LAGS..(flat + 1) * N_LAGS]
    }

    /// Simulates the paper's grid with [`SimConfig::paper`] but `trials` trials per start.
    /// `progress(done, total)` is called after each grid point (from worker threads).
    pub fn simulate<P>(trials: usize, seed: u64, progress: P) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        let cfg = SimConfig {
            trials,
            ..SimConfig::paper()
        };
        Self::simulate_with(&CmrGrid::paper(), &cfg, seed, progress)
    }

    /// Simulates any grid with any configuration, grid points in parallel (rayon). Grid point
    /// `i` (flat C-order index) uses its own stream, `CmrRng::seed_from_u64(seed ^ i)` (see
    /// [`simulate_point`]), so the result is independent of the number of threads and of
    /// their scheduling.
    pub fn simulate_with<P>(grid: &CmrGrid, cfg: &SimConfig, seed: u64, progress: P) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        cfg.validate()?;
        let total = grid.len();
        let done = AtomicUsize::new(0);
        let points: Vec<PointCrp> = (0..total)
            .into_par_iter()
            .map(|i| {
                let (be, br, g) = grid.params(i);
                let r = simulate_point(be, br, g, cfg, seed ^ i as u64);
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(d, total);
                r
            })
            .collect::<Result<_>>()?;
        let mut data = Vec::with_capacity(total * N_LAGS);
        let mut sem = Vec::with_capacity(total * N_LAGS);
        for p in &points {
            data.extend_from_slice(&p.crp);
            sem.extend_from_slice(&p.sem);
        }
        Ok(Self {
            grid: grid.clone(),
            data,
            sem: Some(sem),
        })
    }

    /// Loads a `[20, 21, 11, 17]` float64 table (e.g. the paper's `cmr_crp_avg_20_11.npy`)
    /// on the paper's grid.
    pub fn load_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (shape, data) = read_npy_f64(path)?;
        let grid = CmrGrid::paper();
        let [a, b, c] = grid.shape();
        if shape != [a, b, c, N_LAGS] {
            bail!(
                "{}: CMR CRP table has shape {shape:?}, expected [{a}, {b}, {c}, {N_LAGS}]",
                path.display()
            );
        }
        Self::from_vec(grid, data)
    }

    /// Saves the table as a float64 `.npy` of shape `[grid.shape(), 17]`.
    pub fn save_npy(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let [a, b, c] = self.grid.shape();
        let t = Tensor::from_vec(self.data.clone(), (a, b, c, N_LAGS), &Device::Cpu)?;
        t.write_npy(path)
            .ctx(|| format!("writing CMR CRP table {}", path.display()))
    }

    /// The cache file name for a configuration and seed (encodes trials, seed, max recalls and
    /// whether closed forms were used, plus a version of the simulation: v2 is the f32 lockstep
    /// simulation on xoshiro256++ streams, whose draws differ from v1's ChaCha12 `StdRng`).
    pub fn cache_file_name(cfg: &SimConfig, seed: u64) -> String {
        format!(
            "cmr_crp_v2_items{}_trials{}_recalls{}_starts{}_{}_seed{:x}.npy",
            cfg.n_items,
            cfg.trials,
            cfg.max_recalls,
            cfg.n_starts,
            if cfg.closed_forms { "cf" } else { "mc" },
            seed
        )
    }

    /// The paper-configuration table ([`SimConfig::paper`], [`DEFAULT_SEED`]): the one shipped
    /// with engram ([`CrpTable::shipped`]); failing that, read from `cache_dir` (default
    /// [`default_cache_dir`]) if present, else simulated with progress (grid points) and
    /// stored there.
    pub fn cached_or_simulate(
        cache_dir: Option<&Path>,
        progress: &crate::progress::Progress,
    ) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        if let Ok(t) = Self::shipped() {
            return Ok(t);
        }
        let bar = std::sync::OnceLock::<crate::progress::Bar>::new();
        let done = AtomicU64::new(0);
        let r =
            Self::cached_or_simulate_with(cache_dir, &SimConfig::paper(), DEFAULT_SEED, |d, t| {
                let b = bar.get_or_init(|| {
                    progress.bar(
                        t as u64,
                        "CMR lag-CRP table (simulated once on this machine, then cached)",
                    )
                });
                let prev = done.fetch_max(d as u64, Ordering::Relaxed);
                b.inc((d as u64).saturating_sub(prev));
            });
        if let Some(b) = bar.get() {
            b.finish();
        }
        r
    }

    /// The paper-configuration table ([`SimConfig::paper`], [`DEFAULT_SEED`]) as this module
    /// simulates it, shipped inside the library (`assets/cmr/`, 628 KB of float64), so that the
    /// first `engram heads` does not spend a minute simulating it. It is not the paper's saved
    /// table but engram's own simulation, written by `examples/bench_cmr.rs -- 1 FILE`
    /// (`CrpTable::simulate_with(&CmrGrid::paper(), &SimConfig::paper(), DEFAULT_SEED, ..)`):
    /// the tests recompute grid points from it bit for bit (and, ignored, the whole table).
    /// Without standard errors (`sem` is `None`).
    pub fn shipped() -> Result<Self> {
        let (shape, data) =
            parse_npy_f64(SHIPPED_NPY).ctx(|| "the shipped CMR table".to_string())?;
        let grid = CmrGrid::paper();
        let [a, b, c] = grid.shape();
        if shape != [a, b, c, N_LAGS] {
            bail!("the shipped CMR table has shape {shape:?}");
        }
        Self::from_vec(grid, data)
    }

    /// As [`CrpTable::cached_or_simulate`] (without the shipped table) with an explicit configuration, seed and progress
    /// callback. The file is written to a temporary name in the same directory and renamed, so
    /// a concurrent reader never sees a partial table.
    pub fn cached_or_simulate_with<P>(
        cache_dir: Option<&Path>,
        cfg: &SimConfig,
        seed: u64,
        progress: P,
    ) -> Result<Self>
    where
        P: Fn(usize, usize) + Sync,
    {
        let dir = match cache_dir {
            Some(d) => d.to_path_buf(),
            None => default_cache_dir()?,
        };
        let path = dir.join(Self::cache_file_name(cfg, seed));
        if path.is_file() {
            if let Ok(t) = Self::load_npy(&path) {
                return Ok(t);
            }
            // A corrupt cache file is recomputed and replaced.
        }
        let table = Self::simulate_with(&CmrGrid::paper(), cfg, seed, progress)?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            Self::cache_file_name(cfg, seed),
            std::process::id()
        ));
        table.save_npy(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(table)
    }
}

/// engram's simulation of the paper's table ([`CrpTable::shipped`]), named as its cache file.
static SHIPPED_NPY: &[u8] = include_bytes!(
    "../../../assets/cmr/cmr_crp_v2_items100_trials1000_recalls50_starts20_cf_seedc0ffeec3a5.npy"
);

/// A little-endian float64, C-order `.npy` held in memory: `(shape, values)`.
fn parse_npy_f64(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" || bytes[6] != 1 {
        bail!("not a version 1 .npy");
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + hlen)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| Error::msg("truncated .npy header"))?;
    if !header.contains("'descr': '<f8'") || !header.contains("'fortran_order': False") {
        bail!("not a little-endian float64 C-order .npy ({header})");
    }
    let shape: Vec<usize> = header
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| Error::msg("no shape in the .npy header"))?
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse()
                .map_err(|_| Error::msg(format!("bad .npy dimension `{d}`")))
        })
        .collect::<Result<_>>()?;
    let body = &bytes[10 + hlen..];
    if body.len() != shape.iter().product::<usize>() * 8 {
        bail!("the .npy holds {} bytes for shape {shape:?}", body.len());
    }
    let values = body
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Ok((shape, values))
}

/// The default cache directory of the CMR table: `$ENGRAM_CACHE/cmr` when `ENGRAM_CACHE` is
/// set, else `$HOME/.cache/engram/cmr`.
pub fn default_cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("ENGRAM_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("cmr"));
    }
    let home = std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .ctx(|| "neither ENGRAM_CACHE nor HOME is set: pass a cache directory".to_string())?;
    Ok(PathBuf::from(home).join(".cache/engram/cmr"))
}

/// Reads a `.npy` file as float64 (any dtype candle reads is converted): `(shape, values)`.
pub fn read_npy_f64(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<f64>)> {
    let path = path.as_ref();
    check_npy_size(path)?;
    let t = Tensor::read_npy(path).ctx(|| format!("reading {}", path.display()))?;
    let shape = t.dims().to_vec();
    let v = t
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    Ok((shape, v))
}

/// The `.npy` header's shape and dtype against the file's size, with overflow-checked
/// arithmetic, before anything is allocated: a shape whose product overflows or needs more bytes
/// than the file holds is a one-line error (candle's reader would panic or allocate it).
pub fn check_npy_size(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |what: String| crate::Error::msg(format!("{}: {what}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| crate::Error::io(path, e))?.len();
    let mut pre = [0u8; 12];
    let n = f.read(&mut pre).map_err(|e| crate::Error::io(path, e))?;
    if n < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (hlen, start) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as u64, 10u64),
        2 | 3 if n >= 12 => (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as u64,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    if start + hlen > file_len || hlen > 1 << 20 {
        return Err(bad(format!("header of {hlen} bytes does not fit the file")));
    }
    let mut header = vec![0u8; hlen as usize];
    let mut f = std::fs::File::open(path).map_err(|e| crate::Error::io(path, e))?;
    let mut skip = vec![0u8; start as usize];
    f.read_exact(&mut skip)
        .map_err(|e| crate::Error::io(path, e))?;
    f.read_exact(&mut header)
        .map_err(|e| crate::Error::io(path, e))?;
    let h = String::from_utf8_lossy(&header);
    let shape_txt = h
        .split("'shape':")
        .nth(1)
        .and_then(|r| r.split('(').nth(1))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape in the .npy header".into()))?;
    let mut count: u64 = 1;
    for d in shape_txt
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let d: u64 = d.parse().map_err(|_| {
            bad(format!(
                "bad dimension `{d}` in the .npy shape ({shape_txt})"
            ))
        })?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad(format!("the .npy shape ({shape_txt}) overflows")))?;
    }
    let item: u64 = h
        .split("'descr':")
        .nth(1)
        .and_then(|r| r.split('\'').nth(1))
        .map(|d| d.trim_start_matches(['<', '>', '|', '=']))
        .and_then(|d| d.get(1..))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let need = count
        .checked_mul(item)
        .ok_or_else(|| bad(format!("the .npy shape ({shape_txt}) overflows")))?;
    if need > file_len - start - hlen {
        return Err(bad(format!(
            "the .npy shape ({shape_txt}) needs {need} bytes of data, the file has {}",
            file_len - start - hlen
        )));
    }
    Ok(())
}
