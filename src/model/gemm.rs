//! Packed matrix multiplies for the linear layers, `x · Wᵀ` with `W` packed once at load:
//!
//! - [`Format::F32`]: exact f32 products with an AVX-512 FMA micro-kernel (the default f32 CPU
//!   path: with the weights pre-packed no call repacks them, and the kernel runs at ~99% of the
//!   measured FMA peak against candle's 83–92% on the model's shapes);
//! - [`Format::Bf16`] (`--matmul bf16`): weights and activations rounded to bf16, f32
//!   accumulation on AMX tiles (`tdpbf16ps`, Sapphire Rapids and later) or with `vdpbf16ps`
//!   (AVX512-BF16: twice the FLOPs per instruction of an f32 FMA on Zen 4; on Intel's cores
//!   it issues at half that rate, and AMX is 3× faster than it).
//!   Everything between the matmuls (residual stream, norms, softmax, activations, hooks) stays
//!   f32.
//!
//! Layout: `W` (`[n, k]`, the HF `[out, in]` convention) is cut into panels of [`NR`] output
//! columns; a panel stores, per input step, the [`NR`] columns' weights side by side as 32-bit
//! words — an f32, or for bf16 a pair of input features `(2p, 2p+1)` in one word, exactly what
//! one `vdpbf16ps` lane multiplies with a broadcast pair of `x`. The micro-kernel keeps an
//! `MR × NR` block of the output in 24 registers and streams the panel from L2.
//!
//! The bf16 panels are also an AMX "VNNI" B tile layout as they stand (16 pairs × 16 columns at
//! a stride of [`NR`] words), with the pair count padded to a tile's depth.
//!
//! Without AVX-512 (f32) or AVX512-BF16 (bf16), CPUs with AVX2 + FMA (Zen 2/3, Intel client
//! cores) run the same packed data through [`avx2`] micro-kernels: 6 rows × 16 columns of f32
//! FMAs per sub-block of a panel (12 of the 16 ymm registers), or for bf16 4 × 16, each pair
//! word widened to two f32 vectors with a shift and a mask (bf16 is the top half of an f32) and
//! multiplied by the activations rounded to bf16 — half the weight bytes of f32 for the
//! memory-bound single-row products of generation. Input steps go in chunks of at most
//! [`simd::KC`] so the panel's slice stays in L2 across a task's rows. Without those either, a
//! portable kernel (same numbers up to summation order, slower). [`Kernel::available`] lists
//! what this CPU runs, and [`PackedLinear::matmul_t_with`] picks one (comparisons). f32 models
//! pack their weights on AVX2-only CPUs only with `ENGRAM_PACK_F32=1` ([`packs_f32`]).

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use crate::Result;

/// Output columns per packed panel (4 × 16 f32 lanes).
pub const NR: usize = 64;
/// Rows per micro-kernel call.
const MR: usize = 6;
/// Rows per AMX tile.
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
const MR_AMX: usize = 16;
/// Rows per AMX row block: two A tiles.
const AMX_BLOCK: usize = 2 * MR_AMX;
/// Rows per parallel task (a multiple of MR and of AMX_BLOCK).
const ROWS_PER_TASK: usize = 16 * MR;
/// AMX: packed weights up to this size (bytes, 1.5 MiB) are kept in L2 while a block of rows
/// runs against every panel (Sapphire Rapids has 2 MiB of L2 per core).
#[cfg_attr(
    not(all(target_arch = "x86_64", target_os = "linux")),
    allow(dead_code)
)]
const AMX_L2_PANELS: usize = 3 << 19;
/// bf16 pairs per packed row are padded to a multiple of this (an AMX tile holds 16 pairs).
const KP_ALIGN: usize = 16;

/// Round to bf16 (nearest even; NaN stays NaN) and return the bits.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16;
    // NaN stays NaN (rounding could carry its payload into the exponent → ±inf).
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) | (bf16_bits(hi) << 16)
}

#[inline(always)]
fn unpair(p: u32) -> (f32, f32) {
    (f32::from_bits(p << 16), f32::from_bits(p & 0xffff_0000))
}

/// One row of activations as bf16 pairs: `dst[q] = pair(src[2q], src[2q + 1])`, zero past the
/// end of `src` (an odd width, the padding to [`KP_ALIGN`]); every word of `dst` is written.
fn pairs(src: &[f32], dst: &mut [std::mem::MaybeUninit<u32>]) {
    #[inline(always)]
    fn generic(src: &[f32], dst: &mut [std::mem::MaybeUninit<u32>]) {
        let full = (src.len() / 2).min(dst.len());
        for (d, s) in dst[..full].iter_mut().zip(src.chunks_exact(2)) {
            d.write(pair(s[0], s[1]));
        }
        for (q, d) in dst.iter_mut().enumerate().skip(full) {
            let lo = src.get(2 * q).copied().unwrap_or(0.0);
            d.write(pair(lo, 0.0));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        /// # Safety
        /// The CPU must have AVX-512F and AVX-512BW (checked by the caller below).
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn avx512(src: &[f32], dst: &mut [std::mem::MaybeUninit<u32>]) {
            generic(src, dst)
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the features the function was compiled for.
            return unsafe { avx512(src, dst) };
        }
    }
    generic(src, dst)
}

/// Element format of a packed weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    F32,
    Bf16,
}

/// Which micro-kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA: f32 FMAs (f32), or bf16 words widened to f32 with a shift and a mask (bf16).
    Avx2,
    /// AVX-512 FMA (f32) or `vdpbf16ps` (bf16).
    Avx512,
    /// AMX tiles (`tdpbf16ps`; bf16 only): Sapphire Rapids and later.
    Amx,
    /// NEON (aarch64's baseline): f32 FMAs, or bf16 words widened as on AVX2.
    Neon,
}

impl Kernel {
    /// The fastest kernel this CPU runs for `format`.
    pub fn best(format: Format) -> Kernel {
        if format == Format::Bf16 && amx::available() {
            Kernel::Amx
        } else if cfg!(target_arch = "aarch64") {
            Kernel::Neon
        } else if native_for(format) {
            Kernel::Avx512
        } else if avx2() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Every kernel this CPU runs for `format`, the portable one first (tests and benchmarks
    /// compare them).
    pub fn available(format: Format) -> Vec<Kernel> {
        let mut v = vec![Kernel::Portable];
        if cfg!(target_arch = "aarch64") {
            v.push(Kernel::Neon);
        }
        if avx2() {
            v.push(Kernel::Avx2);
        }
        if native_for(format) {
            v.push(Kernel::Avx512);
        }
        if format == Format::Bf16 && amx::available() {
            v.push(Kernel::Amx);
        }
        v
    }
}

/// Whether this CPU runs the AVX2 + FMA kernels (both formats). `ENGRAM_NO_AVX2=1` turns them
/// off (for comparisons: `--matmul bf16` then runs the portable kernel on a CPU without
/// AVX-512, and `ENGRAM_PACK_F32=1` packs nothing there).
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var_os("ENGRAM_NO_AVX2").is_none_or(|v| v == "0")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AMX tiles with bf16 products (and Linux lets this process use them):
/// `--matmul bf16` then runs on them.
pub fn amx() -> bool {
    amx::available()
}

/// Whether f32 CPU models pack their block weights at load for the f32 kernels here: with
/// AVX-512, where the packed kernel beats candle's matmul (which repacks the weight on every
/// call). On AVX2-only CPUs only when `ENGRAM_PACK_F32=1`: on a 2-core Zen 2 the AVX2 kernel
/// wins in isolation at 1–128 rows but ties or loses at 1024 rows, and end to end it did not
/// pay (SmolLM2 forward at 8 × 128 within the noise by wall time and ~10% more CPU time;
/// greedy generation 7–15% slower, the packing at load included; docs/performance.md).
pub fn packs_f32() -> bool {
    native_for(Format::F32)
        || (avx2() && std::env::var_os("ENGRAM_PACK_F32").is_some_and(|v| v != "0"))
}

/// Whether this CPU runs the AVX-512 kernel of `format`.
pub fn native_for(format: Format) -> bool {
    match format {
        Format::Bf16 => native(),
        #[cfg(target_arch = "x86_64")]
        Format::F32 => std::arch::is_x86_feature_detected!("avx512f"),
        #[cfg(not(target_arch = "x86_64"))]
        Format::F32 => false,
    }
}

/// Whether this CPU runs the AVX512-BF16 kernel.
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix `[n, k]` packed for `x · Wᵀ`.
#[derive(Clone, Debug)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    format: Format,
    /// Input steps per panel row: `k` (f32) or ⌈k / 2⌉ pairs (bf16), padded with zeros to a
    /// multiple of [`KP_ALIGN`] (an AMX tile's depth).
    kp: usize,
    /// `⌈n / NR⌉` panels of `kp × NR` words.
    data: Vec<u32>,
}

impl PackedLinear {
    /// Pack `w` (`[n, k]`, any float dtype) in `format`.
    pub fn pack(w: &Tensor, format: Format) -> Result<PackedLinear> {
        let (n, k) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.contiguous()?;
        let (storage, layout) = w.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage else {
            crate::bail!("bf16 matmul: weights must be on the CPU");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            crate::bail!("bf16 matmul: weights must be contiguous");
        };
        let w = &v[start..end];
        let kp = match format {
            Format::F32 => k,
            Format::Bf16 => k.div_ceil(2).next_multiple_of(KP_ALIGN),
        };
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                let cols = NR.min(n - p * NR);
                let rows = &w[p * NR * k..(p * NR + cols) * k];
                // Sequential writes; `cols` read streams advancing two floats per step.
                for (q, out) in panel.chunks_exact_mut(NR).enumerate() {
                    for (j, o) in out.iter_mut().take(cols).enumerate() {
                        let row = &rows[j * k..(j + 1) * k];
                        *o = match format {
                            Format::F32 => row[q].to_bits(),
                            Format::Bf16 => pair(
                                row.get(2 * q).copied().unwrap_or(0.0),
                                row.get(2 * q + 1).copied().unwrap_or(0.0),
                            ),
                        };
                    }
                }
            });
        Ok(PackedLinear {
            n,
            k,
            format,
            kp,
            data,
        })
    }

    /// `[n, k]`
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The packed weights back as an f32 `[n, k]` tensor (exact for f32; the bf16-rounded
    /// values for bf16).
    pub fn unpack(&self, device: &Device) -> Result<Tensor> {
        let (k, kp) = (self.k, self.kp);
        let mut w = vec![0f32; self.n * k];
        w.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let (p, j) = (i / NR, i % NR);
            let panel = &self.data[p * kp * NR..(p + 1) * kp * NR];
            match self.format {
                Format::F32 => {
                    for (q, v) in row.iter_mut().enumerate() {
                        *v = f32::from_bits(panel[q * NR + j]);
                    }
                }
                Format::Bf16 => {
                    // (`q` stays below ⌈k / 2⌉: the padding is never read back.)
                    for (q, pr) in row.chunks_mut(2).enumerate() {
                        let (lo, hi) = unpair(panel[q * NR + j]);
                        pr[0] = lo;
                        if pr.len() > 1 {
                            pr[1] = hi;
                        }
                    }
                }
            }
        });
        Ok(Tensor::from_vec(w, (self.n, k), device)?)
    }

    /// `x · Wᵀ` for `x` `[.., k]` (f32, CPU): `[.., n]` f32, with the fastest kernel this CPU
    /// has ([`Kernel::best`]).
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_t_with(x, Kernel::best(self.format))
    }

    /// [`PackedLinear::matmul_t`] with a given kernel (benchmarks, comparisons); an error if
    /// this CPU does not run it ([`Kernel::available`]).
    pub fn matmul_t_with(&self, x: &Tensor, kernel: Kernel) -> Result<Tensor> {
        let k = *x.dims().last().unwrap_or(&0);
        if k != self.k {
            crate::bail!(
                "packed matmul: input has {k} features, the weight {}",
                self.k
            );
        }
        if !Kernel::available(self.format).contains(&kernel) {
            crate::bail!(
                "packed matmul: this CPU has no {kernel:?} kernel for {:?}",
                self.format
            );
        }
        Ok(x.contiguous()?
            .apply_op1_no_bwd(&Apply { w: self, kernel })?)
    }

    /// The (column panel × row range) tasks of an `m`-row product, in parallel:
    /// `f(p, panel, cols, r0, r1)` gets panel `p`'s packed words, its live column count and the
    /// rows `r0..r1`.
    fn par_panel_tasks(&self, m: usize, f: impl Fn(usize, &[u32], usize, usize, usize) + Sync) {
        let (n, kp) = (self.n, self.kp);
        let row_tasks = m.div_ceil(ROWS_PER_TASK);
        (0..n.div_ceil(NR) * row_tasks)
            .into_par_iter()
            .for_each(|t| {
                let (p, r) = (t / row_tasks, t % row_tasks);
                let r0 = r * ROWS_PER_TASK;
                f(
                    p,
                    &self.data[p * kp * NR..(p + 1) * kp * NR],
                    NR.min(n - p * NR),
                    r0,
                    (r0 + ROWS_PER_TASK).min(m),
                );
            });
    }

    /// `x` is `[m, k]` row-major; returns `[m, n]`.
    fn matmul_slice(&self, x: &[f32], m: usize, kernel: Kernel) -> Vec<f32> {
        let (n, kp) = (self.n, self.kp);
        // The left operand as words, row-major `[m, kp]`: the f32 bits themselves, or bf16
        // pairs of activations (for AMX in tile order: `amx::a_row`).
        let converted;
        let a: &[u32] = match self.format {
            // SAFETY: f32 and u32 have the same size and alignment; every bit pattern is valid.
            Format::F32 => unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u32, x.len()) },
            Format::Bf16 if kernel == Kernel::Amx => {
                let (k, len) = (self.k, m.div_ceil(AMX_BLOCK) * AMX_BLOCK * kp);
                let mut v: Vec<u32> = Vec::with_capacity(len);
                v.spare_capacity_mut()[..len]
                    .par_chunks_mut(AMX_BLOCK * kp)
                    .enumerate()
                    .for_each(|(blk, dst)| {
                        for r in 0..AMX_BLOCK {
                            let i = blk * AMX_BLOCK + r;
                            // Rows past `m` (the last block's padding) are zeros.
                            let row = if i < m { &x[i * k..(i + 1) * k] } else { &[] };
                            for (q, step) in dst.chunks_exact_mut(AMX_BLOCK * 16).enumerate() {
                                let src =
                                    &row[(32 * q).min(row.len())..(32 * q + 32).min(row.len())];
                                pairs(src, &mut step[r * 16..(r + 1) * 16]);
                            }
                        }
                    });
                // SAFETY: `pairs` wrote all 16 words of every row of every k step of every
                // block.
                unsafe { v.set_len(len) };
                converted = v;
                &converted
            }
            Format::Bf16 if kernel.row_blocks().is_some() => {
                // The activations rounded to bf16 and kept as f32 bits, `2 · kp` per row
                // (features `2q`, `2q + 1` of pair step `q`), zeros past `k`.
                let mut v = vec![0u32; m * 2 * kp];
                v.par_chunks_mut(2 * kp)
                    .zip(x.par_chunks(self.k))
                    .for_each(|(dst, src)| {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d = bf16_bits(s) << 16;
                        }
                    });
                converted = v;
                &converted
            }
            Format::Bf16 => {
                let mut v: Vec<u32> = Vec::with_capacity(m * kp);
                v.spare_capacity_mut()[..m * kp]
                    .par_chunks_mut(kp)
                    .zip(x.par_chunks(self.k))
                    .for_each(|(dst, src)| pairs(src, dst));
                // SAFETY: `pairs` wrote all `kp` words of each of the `m` rows.
                unsafe { v.set_len(m * kp) };
                converted = v;
                &converted
            }
        };
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        let panels = n.div_ceil(NR);
        let cp = SendPtr(c.as_mut_ptr());
        if kernel == Kernel::Amx {
            // When all the panels fit in L2 (SmolLM2's QKV and output projections), a task is
            // 32 rows against every panel, their activations staying in L1; otherwise (gate/up,
            // down, the unembedding) a task is one panel against 96 rows, the panel staying in
            // L2. Either way the tiles compute 32 × 32 outputs at a time. Against one 16-row
            // group per panel, tile configuration reloaded per task (before 2026-12-02), in
            // interleaved single-thread runs: +5–8% (median) on the panel-major shapes,
            // +10–30% with the row-major tasks on the QKV / output shapes.
            let (row_block, panels_per_task) = if self.data.len() * 4 <= AMX_L2_PANELS {
                (2 * MR_AMX, panels)
            } else {
                (ROWS_PER_TASK, 1)
            };
            let row_tasks = m.div_ceil(row_block);
            let panel_tasks = panels / panels_per_task;
            (0..row_tasks * panel_tasks).into_par_iter().for_each(|t| {
                let (p, r) = (t / row_tasks * panels_per_task, t % row_tasks);
                let (r0, r1) = (r * row_block, ((r + 1) * row_block).min(m));
                // SAFETY: `Amx` is only chosen when the CPU and OS allow the tiles; `kp` is a
                // multiple of the tile depth; `a` holds the blocks of rows `r0..r1` (`r0` is a
                // multiple of `AMX_BLOCK`), `kp` words per row, in tile order; the
                // panels `p..p + panels_per_task` exist; tasks write disjoint (row range ×
                // panel range) blocks of `c`, which outlives the parallel loop.
                unsafe {
                    amx::rows(
                        &a[r0 * kp..],
                        r1 - r0,
                        kp,
                        &self.data[p * kp * NR..(p + panels_per_task) * kp * NR],
                        cp.get().add(r0 * n + p * NR),
                        n,
                        n - p * NR,
                    );
                }
            });
        } else if let Some(pick) = kernel.row_blocks() {
            let lda = match self.format {
                Format::F32 => kp,
                Format::Bf16 => 2 * kp,
            };
            self.par_panel_tasks(m, |p, panel, cols, r0, r1| {
                // SAFETY: `pick`'s family runs on this CPU (`row_blocks`); `cp` is offset to
                // row `r0`, column `p · NR` of the `m × n` output, and `r1 - r0` rows of
                // `cols` columns from there are inside it; tasks write disjoint (row range ×
                // column panel) blocks of `c`, which outlives the parallel loop.
                unsafe {
                    simd::run_task(
                        pick,
                        &a[r0 * lda..r1 * lda],
                        r1 - r0,
                        lda,
                        kp,
                        panel,
                        cp.get().add(r0 * n + p * NR),
                        n,
                        cols,
                        self.format,
                    )
                };
            });
        } else {
            let native = kernel == Kernel::Avx512;
            self.par_panel_tasks(m, |p, panel, cols, r0, r1| {
                let mut i = r0;
                while i < r1 {
                    let mr = MR.min(r1 - i);
                    let a_rows = &a[i * kp..(i + mr) * kp];
                    // SAFETY: `cp` is only offset inside `m × n`; tasks write disjoint (row
                    // range × column panel) blocks of `c`, which outlives the parallel loop.
                    let c_blk = unsafe { cp.get().add(i * n + p * NR) };
                    block(a_rows, mr, kp, panel, c_blk, n, cols, self.format, native);
                    i += mr;
                }
            });
        }
        // SAFETY: the tasks above wrote every element of the `m × n` block (each column panel
        // for every row range, all `cols` columns of it).
        unsafe { c.set_len(m * n) };
        c
    }
}

/// A packed product as a candle op, with the kernel that runs it (one of
/// [`Kernel::available`]).
struct Apply<'a> {
    w: &'a PackedLinear,
    kernel: Kernel,
}

impl candle_core::CustomOp1 for Apply<'_> {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(v) = s else {
            candle_core::bail!("packed matmul: expected f32 activations");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("packed matmul: expected contiguous activations");
        };
        let m = (b - a) / self.w.k.max(1);
        let out = self.w.matmul_slice(&v[a..b], m, self.kernel);
        let mut shape = l.dims().to_vec();
        *shape.last_mut().unwrap() = self.w.n;
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }
}

/// An output buffer shared by parallel tasks that write disjoint parts of it (the packed
/// matmul's row × panel blocks, the fused attention's per-head rows).
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: only used to write disjoint blocks from parallel tasks, each user's SAFETY comment
// says why they are disjoint.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: shared only between tasks writing disjoint blocks.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

impl Kernel {
    /// The row-block family's kernel choice ([`simd::run_task`]) when this kernel is the AVX2
    /// or NEON family and runs on this CPU (NEON is in the aarch64 baseline). Those families
    /// also take bf16 activations widened back to f32 (`2 · kp` per row).
    fn row_blocks(self) -> Option<fn(Format, usize) -> Pick> {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if avx2() => Some(avx2::pick),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => Some(neon::pick),
            _ => None,
        }
    }
}

/// `C[mr × cols] = A[mr × kp] · panel`, written at `c` with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
fn block(
    a: &[u32],
    mr: usize,
    kp: usize,
    panel: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    format: Format,
    native: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if native {
        macro_rules! run {
            ($k:ident) => {
                // SAFETY: `native` is only true when the CPU has the kernel's features
                // (`native_for`); slices are `mr × kp` and `kp × NR` long; `c` has `mr` rows of
                // `cols` writable floats.
                unsafe {
                    match mr {
                        6 => avx512::$k::<6>(a, kp, panel, c, ldc, cols),
                        5 => avx512::$k::<5>(a, kp, panel, c, ldc, cols),
                        4 => avx512::$k::<4>(a, kp, panel, c, ldc, cols),
                        3 => avx512::$k::<3>(a, kp, panel, c, ldc, cols),
                        2 => avx512::$k::<2>(a, kp, panel, c, ldc, cols),
                        _ => avx512::$k::<1>(a, kp, panel, c, ldc, cols),
                    }
                }
            };
        }
        match format {
            Format::Bf16 => run!(kernel_bf16),
            Format::F32 => run!(kernel_f32),
        }
        return;
    }
    let _ = native;
    for i in 0..mr {
        let mut acc = [0f32; NR];
        let row = &a[i * kp..(i + 1) * kp];
        for (q, &ap) in row.iter().enumerate() {
            let bq = &panel[q * NR..(q + 1) * NR];
            match format {
                Format::F32 => {
                    let av = f32::from_bits(ap);
                    for (acc, &bp) in acc.iter_mut().zip(bq) {
                        *acc += av * f32::from_bits(bp);
                    }
                }
                Format::Bf16 => {
                    let (alo, ahi) = unpair(ap);
                    for (acc, &bp) in acc.iter_mut().zip(bq) {
                        let (blo, bhi) = unpair(bp);
                        *acc += alo * blo + ahi * bhi;
                    }
                }
            }
        }
        for (j, v) in acc.iter().enumerate().take(cols) {
            // SAFETY: as above.
            unsafe { *c.add(i * ldc + j) = *v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
mod simd;

use simd::{Pick, SubBlock};

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Store an `M × NR` accumulator block, the last columns masked off past `cols`.
    #[inline(always)]
    /// # Safety
    /// AVX-512F; `c` points to `M` rows, `ldc` floats apart, of at least `cols ≤ NR` writable floats.
    unsafe fn store<const M: usize>(acc: &[[__m512; 4]; M], c: *mut f32, ldc: usize, cols: usize) {
        for (i, acc) in acc.iter().enumerate() {
            let row = c.add(i * ldc);
            for (j, v) in acc.iter().enumerate() {
                let left = cols.saturating_sub(j * 16);
                if left >= 16 {
                    _mm512_storeu_ps(row.add(j * 16), *v);
                } else if left > 0 {
                    let mask: __mmask16 = (1u32 << left) as u16 - 1;
                    _mm512_mask_storeu_ps(row.add(j * 16), mask, *v);
                }
            }
        }
    }

    /// `M` rows of packed bf16 pairs against one packed panel, `C += A·B`.
    ///
    /// # Safety
    /// AVX-512F and AVX512-BF16; `a` holds `M · kp` words, `panel` `kp · NR` words; `c` as [`store`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn kernel_bf16<const M: usize>(
        a: &[u32],
        kp: usize,
        panel: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        debug_assert!(a.len() >= M * kp && panel.len() >= kp * NR);
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        for q in 0..kp {
            let b = bp.add(q * NR) as *const __m512i;
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(1)));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(2)));
            let b3: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(3)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(i * kp + q) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
                acc[2] = _mm512_dpbf16_ps(acc[2], x, b2);
                acc[3] = _mm512_dpbf16_ps(acc[3], x, b3);
            }
        }
        store(&acc, c, ldc, cols);
    }

    /// `M` rows of packed f32 against one packed panel, `C += A·B`.
    ///
    /// # Safety
    /// AVX-512F; `a`, `panel` and `c` as [`kernel_bf16`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_f32<const M: usize>(
        a: &[u32],
        kp: usize,
        panel: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        debug_assert!(a.len() >= M * kp && panel.len() >= kp * NR);
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        let ap = a.as_ptr() as *const f32;
        let bp = panel.as_ptr() as *const f32;
        for q in 0..kp {
            let b = bp.add(q * NR);
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            let b2 = _mm512_loadu_ps(b.add(32));
            let b3 = _mm512_loadu_ps(b.add(48));
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*ap.add(i * kp + q));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                acc[2] = _mm512_fmadd_ps(x, b2, acc[2]);
                acc[3] = _mm512_fmadd_ps(x, b3, acc[3]);
            }
        }
        store(&acc, c, ldc, cols);
    }
}

/// AMX tiles for the bf16 products. The packed bf16 panel is already in the tiles' "VNNI"
/// layout: a B tile is 16 input pairs × 16 output columns, row `q` at `panel[q * NR + col0]`
/// (stride `NR` words), and an A tile 16 rows × 16 pairs of the converted activations, which
/// are written in tile order for it (64 bytes per tile row).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use super::{AMX_BLOCK, KP_ALIGN, MR_AMX, NR};
    use std::arch::asm;

    /// CPUID leaf 7 has AMX-TILE and AMX-BF16, and Linux grants this process the tile state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process).
    /// `ENGRAM_NO_AMX=1` turns it off (the `vdpbf16ps` kernel runs instead).
    pub fn available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            if std::env::var_os("ENGRAM_NO_AMX").is_some_and(|v| v != "0") {
                return false;
            }
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let (amx_bf16, amx_tile) = (edx & (1 << 22) != 0, edx & (1 << 24) != 0);
            if !(amx_bf16 && amx_tile && super::native()) {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
            const XFEATURE_XTILEDATA: u64 = 18;
            const SYS_ARCH_PRCTL: u64 = 158;
            let ret: i64;
            // SAFETY: the arch_prctl system call with two integer arguments; it only changes
            // which extended states this process may use.
            unsafe {
                asm!(
                    "syscall",
                    inlateout("rax") SYS_ARCH_PRCTL as i64 => ret,
                    in("rdi") ARCH_REQ_XCOMP_PERM,
                    in("rsi") XFEATURE_XTILEDATA,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret == 0
        })
    }

    /// The 64-byte tile configuration: palette 1; tmm0–3 the `rows × 16` f32 output tiles,
    /// tmm4 a `rows × 16 pairs` A tile, tmm5–7 `16 pairs × 16 columns` B tiles (with 16 rows,
    /// [`pairs_of_tiles`] uses tmm5 as the second A tile).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new(rows: usize) -> Config {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                c[48 + t] = if t >= 5 { KP_ALIGN as u8 } else { rows as u8 };
            }
            Config(c)
        }
    }

    /// `C[m × cols] = A[m × kp] · panels`, `kp` a multiple of 16, for one or more consecutive
    /// panels (`panels.len() / (kp · NR)` of them, `cols` output columns left from the first
    /// one's, at most `NR` per panel written). Rows go 32 at a time (two A tiles against two B
    /// tiles: four products per four tile loads), each against every panel in turn; fewer
    /// rows left at the end go 16 at a time against four B tiles.
    ///
    /// # Safety
    /// [`available`] returned true; `a` holds `⌈m / 32⌉` blocks of 32 rows × `kp` words in
    /// tile order (see [`a_row`]); `panels` whole panels of `kp × NR` words; `c` has `m` rows
    /// (stride `ldc`) of `min(cols, panels · NR)` writable floats.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows(
        a: &[u32],
        m: usize,
        kp: usize,
        panels: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        debug_assert!(
            kp.is_multiple_of(KP_ALIGN) && a.len() >= m.div_ceil(AMX_BLOCK) * AMX_BLOCK * kp
        );
        let n_panels = panels.len() / (kp * NR);
        let mut i = 0;
        while i < m {
            let mr = (2 * MR_AMX).min(m - i);
            let tile_rows = mr.min(MR_AMX);
            configure(tile_rows);
            for j in 0..n_panels {
                let panel = &panels[j * kp * NR..(j + 1) * kp * NR];
                let (cj, cols) = (c.add(i * ldc + j * NR), NR.min(cols - j * NR));
                let ai = &a[a_row(i, kp)..];
                if mr == 2 * MR_AMX {
                    pairs_of_tiles(ai, kp, panel, cj, ldc, cols);
                } else {
                    group(ai, tile_rows, kp, panel, cj, ldc, cols);
                    if mr > MR_AMX {
                        // 17–31 rows: the second group under its own configuration.
                        let rest = mr - MR_AMX;
                        configure(rest);
                        group(
                            &a[a_row(i + MR_AMX, kp)..],
                            rest,
                            kp,
                            panel,
                            cj.add(MR_AMX * ldc),
                            ldc,
                            cols,
                        );
                        configure(tile_rows);
                    }
                }
            }
            i += mr;
        }
    }

    /// Word offset of row `i` (of a 32-row block, or a multiple of 16) in the tile-ordered
    /// activations: blocks of [`AMX_BLOCK`] rows, each `kp / 16` k steps of 32 rows × 16 words
    /// (a k step's two A tiles are 2 KiB in a row, a block is one sequential stream). Against
    /// row-major activations (a tile's rows `kp` words apart), in interleaved single-thread
    /// runs: +3–20% (median) on all four block shapes.
    fn a_row(i: usize, kp: usize) -> usize {
        (i / AMX_BLOCK) * AMX_BLOCK * kp + (i % AMX_BLOCK) * 16
    }

    thread_local! {
        /// The row count this thread's tiles are configured for (0: not yet).
        static CONFIGURED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Configure this thread's tiles for `rows`-row A and output tiles, unless they already
    /// are. The configuration is kept between calls (no `tilerelease`): reloading it and
    /// releasing the tiles around every task cost ~10% of the products' time here. Nothing
    /// else in the process uses the tiles, and the kernel saves their state with the thread's.
    ///
    /// # Safety
    /// [`available`] returned true.
    unsafe fn configure(rows: usize) {
        CONFIGURED.with(|c| {
            if c.get() != rows {
                let cfg = Config::new(rows);
                asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
                c.set(rows);
            }
        });
    }

    /// 32 rows × one panel, tiles configured for 16 rows: tmm0–3 the 2 × 2 output tiles of a
    /// 32-column half, tmm4/5 the A tiles of rows 0–15 / 16–31, tmm6/7 the B tiles.
    /// # Safety
    /// AMX enabled for this thread and the tiles configured for 16 rows; `a` holds 32 rows of `kp`
    /// pair words, `panel` `kp · NR` words; `c` points to 32 rows, `ldc` floats apart, of `NR`
    /// writable floats.
    unsafe fn pairs_of_tiles(
        a: &[u32],
        kp: usize,
        panel: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        let (sa, sb) = (16usize * 4, NR * 4);
        for h in 0..2 {
            if cols <= 32 * h {
                break;
            }
            zero_outputs();
            for q0 in (0..kp).step_by(KP_ALIGN) {
                let ap = a.as_ptr().add(q0 * AMX_BLOCK);
                let bp = panel.as_ptr().add(q0 * NR + h * 32);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) ap,
                    a1 = in(reg) ap.add(MR_AMX * 16),
                    sa = in(reg) sa,
                    b0 = in(reg) bp,
                    b1 = in(reg) bp.add(16),
                    sb = in(reg) sb,
                    options(nostack, readonly)
                );
            }
            let ch = c.add(h * 32);
            if cols >= 32 * (h + 1) {
                store_2x2(ch, ldc);
            } else {
                // A last, partial panel: through a buffer, so nothing past `cols` is written.
                let mut buf = Buf([0.0; 2 * MR_AMX * 32]);
                let bp = buf.0.as_mut_ptr();
                store_2x2(bp, 32);
                for r in 0..2 * MR_AMX {
                    std::ptr::copy_nonoverlapping(bp.add(r * 32), ch.add(r * ldc), cols - 32 * h);
                }
            }
        }
    }

    /// Zero the four output tiles, tmm0–3.
    /// # Safety
    /// AMX enabled for this thread and the tiles configured.
    unsafe fn zero_outputs() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    /// Store the output tiles as 2 × 2: tmm0/1 rows 0–15, tmm2/3 rows 16–31, 32 columns at
    /// `c`, row stride `ldc` floats.
    /// # Safety
    /// As [`store_tiles`] for the four corners of a 32 × 32 block at `c`.
    unsafe fn store_2x2(c: *mut f32, ldc: usize) {
        store_tiles(
            [c, c.add(16), c.add(MR_AMX * ldc), c.add(MR_AMX * ldc + 16)],
            ldc,
        );
    }

    /// Output staging for a partial panel.
    #[repr(C, align(64))]
    struct Buf<const N: usize>([f32; N]);

    /// One group of `mr ≤ 16` rows against four B tiles, tiles configured for `mr` rows.
    /// # Safety
    /// AMX enabled for this thread; `a` holds `mr` rows of `kp` pair words, `panel` `kp · NR`
    /// words; `c` points to `mr` rows, `ldc` floats apart, of `cols ≤ NR` writable floats.
    unsafe fn group(
        a: &[u32],
        mr: usize,
        kp: usize,
        panel: &[u32],
        c: *mut f32,
        ldc: usize,
        cols: usize,
    ) {
        zero_outputs();
        let (sa, sb) = (16usize * 4, NR * 4);
        for q0 in (0..kp).step_by(KP_ALIGN) {
            let ap = a.as_ptr().add(q0 * AMX_BLOCK);
            let bp = panel.as_ptr().add(q0 * NR);
            asm!(
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm5, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tileloadd tmm6, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm6",
                "tileloadd tmm7, [{b2} + {sb}*1]",
                "tdpbf16ps tmm2, tmm4, tmm7",
                "tileloadd tmm5, [{b3} + {sb}*1]",
                "tdpbf16ps tmm3, tmm4, tmm5",
                a = in(reg) ap,
                sa = in(reg) sa,
                b0 = in(reg) bp,
                b1 = in(reg) bp.add(16),
                b2 = in(reg) bp.add(32),
                b3 = in(reg) bp.add(48),
                sb = in(reg) sb,
                options(nostack, readonly)
            );
        }
        if cols == NR {
            store(c, ldc);
        } else {
            // A last, partial panel: through a buffer, so nothing past `cols` is written.
            let mut buf = Buf([0.0; MR_AMX * NR]);
            let bp = buf.0.as_mut_ptr();
            store(bp, NR);
            for i in 0..mr {
                std::ptr::copy_nonoverlapping(bp.add(i * NR), c.add(i * ldc), cols);
            }
        }
    }

    /// Store the four output tiles side by side: `NR` columns at `c`, row stride `ldc` floats.
    /// # Safety
    /// As [`store_tiles`] for four tiles side by side at `c`.
    unsafe fn store(c: *mut f32, ldc: usize) {
        store_tiles([c, c.add(16), c.add(32), c.add(48)], ldc);
    }

    /// Store tmm0–3 at `c[0..4]`, row stride `ldc` floats.
    /// # Safety
    /// AMX enabled and tmm0–3 configured with `r` rows: each `c[i]` points to `r` rows, `ldc`
    /// floats apart, of 16 writable floats.
    unsafe fn store_tiles(c: [*mut f32; 4], ldc: usize) {
        asm!(
            "tilestored [{c0} + {sc}*1], tmm0",
            "tilestored [{c1} + {sc}*1], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c3} + {sc}*1], tmm3",
            c0 = in(reg) c[0],
            c1 = in(reg) c[1],
            c2 = in(reg) c[2],
            c3 = in(reg) c[3],
            sc = in(reg) ldc * 4,
            options(nostack)
        );
    }
}

/// Stand-in where AMX cannot exist.
#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod amx {
    pub fn available() -> bool {
        false
    }

    /// Never called: [`available`] is false.
    #[allow(clippy::too_many_arguments)]
    /// # Safety
    /// None needed: it only panics.
    pub unsafe fn rows(_: &[u32], _: usize, _: usize, _: &[u32], _: *mut f32, _: usize, _: usize) {
        unreachable!("no AMX on this target")
    }
}

#[cfg(test)]
mod tests;
