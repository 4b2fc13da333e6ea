//! Linear weights used where they lie: the bf16 / f16 rows of a memory-mapped safetensors
//! checkpoint multiply f32 activations directly, with f32 accumulation (`--matmul bf16` on a
//! bf16 or f16 safetensors checkpoint; see [`crate::model::LoadOptions::bf16_matmul`]).
//!
//! - [`MappedRows`]: a `[rows, cols]` block of 16-bit floats at an offset of a shared mmap (the
//!   `Arc` keeps the file mapped as long as a layer reads it; no copy is made).
//! - [`MappedLinear`]: a weight `[n, k]` made of one or more such blocks stacked by rows (a
//!   fused q,k,v projection is its three checkpoint tensors, not a concatenated copy).
//!
//! Products `y = x · Wᵀ`:
//! - up to [`GEMV_ROWS`] activation rows (generation): a dot-product kernel reads each weight
//!   row once for all the rows, widening 16-bit values to f32 on the fly (bf16: zero-extend and
//!   shift by 16; f16: `vcvtph2ps`). It is memory-bound, so reading half the bytes of f32 is
//!   the point. AVX2 + FMA (+ F16C) in [`avx2`], a portable kernel elsewhere; parallel over
//!   blocks of output columns.
//! - more rows (prompts, batches): blocks of weight rows are widened to f32 once per call
//!   ([`CHUNK_BYTES`] of f32 at a time, so the transient memory stays small) and multiplied by
//!   candle's f32 matmul; the widening is O(n·k), negligible against the O(m·n·k) product.
//!
//! Both are exact f32 products of the stored 16-bit values (no rounding of the activations),
//! up to summation order. [`MappedKernel::available`] lists what this CPU runs.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::Result;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;

/// Activation rows up to which the dot-product kernel runs (above, widening the weights once
/// per call and candle's f32 matmul win).
pub const GEMV_ROWS: usize = 64;
/// Weight bytes per parallel task of the dot-product kernel (the task's rows stay in L2 while
/// every activation row runs against them).
const GEMV_TASK_BYTES: usize = 64 << 10;
/// Weight bytes per task of the single-row dot-product kernel (decode). 64 KiB to 4 MiB gave
/// the same decode speed on a 2-core Zen 2 (5.1–6.5 tok/s on the Llama-3.2-1B shape, noise):
/// the kernel streams the weights at ~95% of the measured read bandwidth either way.
const GEMV1_TASK_BYTES: usize = 1 << 20;
/// f32 bytes of weight rows widened at a time by the many-row path (16 MiB).
const CHUNK_BYTES: usize = 16 << 20;

/// The 16-bit float format of mapped weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    Bf16,
    F16,
}

impl Half {
    /// The format of a safetensors / candle dtype, `None` for others.
    pub fn of(dtype: DType) -> Option<Half> {
        match dtype {
            DType::BF16 => Some(Half::Bf16),
            DType::F16 => Some(Half::F16),
            _ => None,
        }
    }

    #[inline(always)]
    fn to_f32(self, bits: u16) -> f32 {
        match self {
            Half::Bf16 => f32::from_bits((bits as u32) << 16),
            Half::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// Whether `bits` is NaN or ±inf (all exponent bits set).
    #[inline(always)]
    fn non_finite(self, bits: u16) -> bool {
        match self {
            Half::Bf16 => bits & 0x7f80 == 0x7f80,
            Half::F16 => bits & 0x7c00 == 0x7c00,
        }
    }
}

/// Which kernel runs a mapped product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappedKernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
}

impl MappedKernel {
    /// Every kernel this CPU runs, the portable one first (tests and benchmarks compare them).
    /// `ENGRAM_NO_AVX2=1` leaves out the AVX2 one ([`crate::model::gemm::avx2`]).
    pub fn available() -> Vec<MappedKernel> {
        let mut v = vec![MappedKernel::Portable];
        if has_avx2() {
            v.push(MappedKernel::Avx2);
        }
        v
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> MappedKernel {
        *Self::available().last().unwrap_or(&MappedKernel::Portable)
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::model::gemm::avx2() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A `[rows, cols]` row-major block of 16-bit floats inside a shared memory map.
#[derive(Clone)]
pub struct MappedRows {
    map: Arc<memmap2::Mmap>,
    offset: usize,
    rows: usize,
    cols: usize,
    half: Half,
}

impl std::fmt::Debug for MappedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MappedRows[{}, {}] {:?}",
            self.rows, self.cols, self.half
        )
    }
}

impl MappedRows {
    /// The block at byte `offset` of `map`; an error if it does not fit in the map.
    pub fn new(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        rows: usize,
        cols: usize,
        half: Half,
    ) -> Result<MappedRows> {
        let end = rows
            .checked_mul(cols)
            .and_then(|e| e.checked_mul(2))
            .and_then(|b| b.checked_add(offset));
        match end {
            Some(end) if end <= map.len() => Ok(MappedRows {
                map,
                offset,
                rows,
                cols,
                half,
            }),
            _ => crate::bail!(
                "a [{rows}, {cols}] weight at byte {offset} does not fit in a map of {} bytes",
                map.len()
            ),
        }
    }

    /// A block copied into an anonymous map (tests, benchmarks): `values` `[rows, cols]`
    /// rounded to `half`.
    pub fn from_f32(values: &[f32], rows: usize, cols: usize, half: Half) -> Result<MappedRows> {
        if values.len() != rows * cols {
            crate::bail!("{} values for a [{rows}, {cols}] block", values.len());
        }
        let mut m = memmap2::MmapMut::map_anon((2 * values.len()).max(1))
            .map_err(|e| crate::Error::msg(format!("anonymous map: {e}")))?;
        for (d, &v) in m.chunks_exact_mut(2).zip(values) {
            let bits = match half {
                Half::Bf16 => half::bf16::from_f32(v).to_bits(),
                Half::F16 => half::f16::from_f32(v).to_bits(),
            };
            d.copy_from_slice(&bits.to_le_bytes());
        }
        let map = m
            .make_read_only()
            .map_err(|e| crate::Error::msg(format!("anonymous map: {e}")))?;
        MappedRows::new(Arc::new(map), 0, rows, cols, half)
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    pub fn half(&self) -> Half {
        self.half
    }

    fn bytes(&self) -> &[u8] {
        &self.map[self.offset..self.offset + 2 * self.rows * self.cols]
    }

    /// The number of NaN / ±inf values (checked in parallel; reading them also faults the
    /// pages in, once, at load). Blocks are first tested 4 values per 64-bit word (is any
    /// value's exponent all ones?), and counted one by one only when one is.
    pub fn non_finite_count(&self) -> usize {
        let h = self.half;
        let exp: u64 = match h {
            Half::Bf16 => 0x7f80,
            Half::F16 => 0x7c00,
        };
        let mask = exp * 0x0001_0001_0001_0001;
        self.bytes()
            .par_chunks(1 << 20)
            .map(|c| {
                // (w & mask) ^ mask has a zero 16-bit lane iff that value is non-finite.
                let any = c.chunks_exact(8).fold(0u64, |acc, b| {
                    let v = (u64::from_le_bytes(b.try_into().unwrap_or_default()) & mask) ^ mask;
                    acc | (v.wrapping_sub(0x0001_0001_0001_0001) & !v & 0x8000_8000_8000_8000)
                });
                let tail = c.len() / 8 * 8;
                if any == 0
                    && !c[tail..]
                        .chunks_exact(2)
                        .any(|b| h.non_finite(u16::from_le_bytes([b[0], b[1]])))
                {
                    return 0;
                }
                c.chunks_exact(2)
                    .filter(|b| h.non_finite(u16::from_le_bytes([b[0], b[1]])))
                    .count()
            })
            .sum()
    }
}

/// A linear weight `[n, k]` of mapped 16-bit rows: one or more [`MappedRows`] blocks stacked.
#[derive(Clone, Debug)]
pub struct MappedLinear {
    parts: Vec<MappedRows>,
    /// The first row of each part, and `n` last.
    starts: Vec<usize>,
    n: usize,
    k: usize,
    half: Half,
}

impl MappedLinear {
    /// The weight whose rows are `parts`' rows in order; they must share width and format.
    pub fn new(parts: Vec<MappedRows>) -> Result<MappedLinear> {
        let Some(first) = parts.first() else {
            crate::bail!("a mapped weight needs at least one block");
        };
        let (k, half) = (first.cols, first.half);
        let mut starts = vec![0];
        for p in &parts {
            if p.cols != k || p.half != half {
                crate::bail!(
                    "mapped blocks disagree: [{}, {}] {:?} after [_, {k}] {half:?}",
                    p.rows,
                    p.cols,
                    p.half
                );
            }
            starts.push(starts.last().copied().unwrap_or(0) + p.rows);
        }
        let n = *starts.last().unwrap_or(&0);
        Ok(MappedLinear {
            parts,
            starts,
            n,
            k,
            half,
        })
    }

    /// `(n, k)`: output and input features.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn half(&self) -> Half {
        self.half
    }

    /// Row `r`'s `2k` bytes.
    #[inline]
    fn row(&self, r: usize) -> &[u8] {
        let p = self.starts.partition_point(|&s| s <= r) - 1;
        let local = r - self.starts[p];
        let k2 = 2 * self.k;
        &self.parts[p].bytes()[local * k2..(local + 1) * k2]
    }

    /// Rows `r0..r1` widened to f32 into `out` (`(r1 - r0) · k` values), in parallel.
    fn widen_rows(&self, r0: usize, r1: usize, out: &mut [f32], kernel: MappedKernel) {
        let k = self.k.max(1);
        out.par_chunks_mut(k)
            .zip(r0..r1)
            .for_each(|(o, r)| widen(self.row(r), o, self.half, kernel));
    }

    /// The weight as a tensor `[n, k]` in `dtype` on `device` (a copy: weight views,
    /// differentiable passes).
    pub fn unpack(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let mut v = vec![0f32; self.n * self.k];
        self.widen_rows(0, self.n, &mut v, MappedKernel::best());
        Ok(Tensor::from_vec(v, (self.n, self.k), device)?.to_dtype(dtype)?)
    }

    /// The rows `ids` as f32 `[ids.len(), k]` (an embedding lookup); an error naming the first
    /// id out of range.
    pub fn gather(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.n) {
            crate::bail!("row {bad} of a table of {} rows", self.n);
        }
        let k = self.k;
        let mut v = vec![0f32; ids.len() * k];
        let kernel = MappedKernel::best();
        v.par_chunks_mut(k.max(1))
            .zip(ids)
            .for_each(|(o, &i)| widen(self.row(i as usize), o, self.half, kernel));
        Ok(Tensor::from_vec(v, (ids.len(), k), device)?)
    }

    /// NaN / ±inf values over all parts.
    pub fn non_finite_count(&self) -> usize {
        self.parts.iter().map(MappedRows::non_finite_count).sum()
    }

    /// `x · Wᵀ` for f32 activations `[..., k]` (CPU): `[..., n]` f32, with the best kernel.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_t_with(x, MappedKernel::best())
    }

    /// [`MappedLinear::matmul_t`] with a given kernel (tests, benchmarks); an error if this CPU
    /// does not run it.
    pub fn matmul_t_with(&self, x: &Tensor, kernel: MappedKernel) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            crate::bail!(
                "mapped matmul: input has {k} features, the weight {}",
                self.k
            );
        }
        if !MappedKernel::available().contains(&kernel) {
            crate::bail!("mapped matmul: this CPU has no {kernel:?} kernel");
        }
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            crate::bail!("mapped matmul: needs f32 activations on the CPU");
        }
        let m = x.elem_count() / k.max(1);
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let y = self.matmul_slice(&xv, m, kernel, CHUNK_BYTES)?;
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.n;
        }
        Ok(Tensor::from_vec(y, shape, x.device())?)
    }

    /// `x` `[m, k]` row-major → `[m, n]`; the many-row path widens `chunk_bytes` of f32
    /// weights at a time (a parameter so tests can cut small weights into several chunks).
    fn matmul_slice(
        &self,
        x: &[f32],
        m: usize,
        kernel: MappedKernel,
        chunk_bytes: usize,
    ) -> Result<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        if m == 0 || n == 0 {
            return Ok(vec![0f32; m * n]);
        }
        if k == 0 {
            return Ok(vec![0f32; m * n]);
        }
        if m <= GEMV_ROWS {
            return Ok(self.gemv(x, m, kernel));
        }
        let xt = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
        let cols = (chunk_bytes / (4 * k)).clamp(1, n);
        let mut y = vec![0f32; m * n];
        let mut wbuf = vec![0f32; cols * k];
        for c0 in (0..n).step_by(cols) {
            let c = cols.min(n - c0);
            let w = &mut wbuf[..c * k];
            self.widen_rows(c0, c0 + c, w, kernel);
            let wt = Tensor::from_slice(w, (c, k), &Device::Cpu)?;
            let part: Vec<f32> = xt.matmul(&wt.t()?)?.flatten_all()?.to_vec1()?;
            y.par_chunks_mut(n)
                .zip(part.par_chunks(c))
                .for_each(|(yr, pr)| yr[c0..c0 + c].copy_from_slice(pr));
        }
        Ok(y)
    }

    /// The dot-product kernel for a few rows: tasks of [`GEMV_TASK_BYTES`] of weight rows (4 to
    /// 64 output columns), each reading its weight rows once for all `m` rows of `x`.
    fn gemv(&self, x: &[f32], m: usize, kernel: MappedKernel) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        if m == 1 {
            // One activation row (decode): every weight row is read once and nothing is worth
            // keeping in L2, so tasks are larger (fewer tasks, less scheduling per byte), at
            // least 4 per thread, and write straight into the output.
            let per_thread = n.div_ceil(4 * rayon::current_num_threads()).div_ceil(4) * 4;
            let cols = (GEMV1_TASK_BYTES / (2 * k)).clamp(4, per_thread.max(4)) / 4 * 4;
            let mut y = vec![0f32; n];
            y.par_chunks_mut(cols).enumerate().for_each(|(t, out)| {
                let c0 = t * cols;
                let rows: Vec<&[u8]> = (c0..c0 + out.len()).map(|r| self.row(r)).collect();
                dot_rows(x, 1, k, &rows, out, self.half, kernel);
            });
            return y;
        }
        let cols = (GEMV_TASK_BYTES / (2 * k)).clamp(4, 64) / 4 * 4;
        let blocks: Vec<Vec<f32>> = (0..n.div_ceil(cols))
            .into_par_iter()
            .map(|t| {
                let (c0, c1) = (t * cols, ((t + 1) * cols).min(n));
                let rows: Vec<&[u8]> = (c0..c1).map(|r| self.row(r)).collect();
                let mut out = vec![0f32; m * (c1 - c0)];
                dot_rows(x, m, k, &rows, &mut out, self.half, kernel);
                out
            })
            .collect();
        let mut y = vec![0f32; m * n];
        for (t, b) in blocks.iter().enumerate() {
            let c0 = t * cols;
            let w = b.len() / m;
            for i in 0..m {
                y[i * n + c0..i * n + c0 + w].copy_from_slice(&b[i * w..(i + 1) * w]);
            }
        }
        y
    }
}

/// `out[i · rows.len() + j] = x_i · row_j` for the `m` rows of `x` (`[m, k]`) and the 16-bit
/// weight rows `rows` (each `2k` bytes).
fn dot_rows(
    x: &[f32],
    m: usize,
    k: usize,
    rows: &[&[u8]],
    out: &mut [f32],
    half: Half,
    kernel: MappedKernel,
) {
    assert!(x.len() >= m * k && out.len() == m * rows.len());
    assert!(rows.iter().all(|r| r.len() == 2 * k));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        MappedKernel::Avx2 if has_avx2() => {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); the slice lengths
            // the kernel reads and writes are asserted above.
            unsafe { avx2::dot_rows(x, m, k, rows, out, half == Half::F16) }
        }
        _ => portable_dot_rows(x, m, k, rows, out, half),
    }
}

fn portable_dot_rows(x: &[f32], m: usize, k: usize, rows: &[&[u8]], out: &mut [f32], half: Half) {
    let nr = rows.len();
    let mut w = vec![0f32; k];
    for (j, row) in rows.iter().enumerate() {
        for (d, b) in w.iter_mut().zip(row.chunks_exact(2)) {
            *d = half.to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            // Eight partial sums, as a SIMD kernel would keep them.
            let mut acc = [0f32; 8];
            let mut xc = xr.chunks_exact(8);
            let mut wc = w.chunks_exact(8);
            for (xa, wa) in (&mut xc).zip(&mut wc) {
                for l in 0..8 {
                    acc[l] += xa[l] * wa[l];
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (a, b) in xc.remainder().iter().zip(wc.remainder()) {
                s += a * b;
            }
            out[i * nr + j] = s;
        }
    }
}

/// One row of 16-bit values (`2 · out.len()` bytes) widened to f32.
fn widen(src: &[u8], out: &mut [f32], half: Half, kernel: MappedKernel) {
    assert!(src.len() == 2 * out.len());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        MappedKernel::Avx2 if has_avx2() => {
            // SAFETY: the CPU has AVX2 and F16C (checked just above); `src` holds
            // `2 · out.len()` bytes (asserted above).
            unsafe { avx2::widen(src, out, half == Half::F16) }
        }
        _ => {
            for (d, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *d = half.to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}
