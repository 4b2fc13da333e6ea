//! The row-block driver of the AVX2 and NEON micro-kernel families ([`super::avx2`],
//! [`super::neon`]): input steps in chunks that keep the panel's slice in L2, rows in the
//! groups the family picks, each group against sub-blocks of the panel's columns. Free of
//! dependencies, so that the NEON harness (`scripts/neon/`) runs it as it stands.

use super::{Format, NR};

/// A sub-block kernel of the AVX2 or NEON family: `C[M × cols'] (+)= A · B` for `M` rows of
/// activations (`a`, stride `lda`), `kc` input steps of a panel (`b`, rows `NR` words apart),
/// written at `c` (stride `ldc`), of which the first `cols` columns (stored, or added to with
/// `add`).
///
/// # Safety
/// The CPU has the family's features; the pointers cover the rows, steps and columns named
/// (each family's kernels document theirs).
pub type SubBlock = unsafe fn(*const f32, usize, usize, *const u32, *mut f32, usize, usize, bool);

/// What a family runs next: the kernel for the rows left, how many rows it takes and how many
/// columns one call covers.
#[derive(Clone, Copy)]
pub struct Pick {
    pub kernel: SubBlock,
    pub rows: usize,
    pub cols: usize,
}

/// Input steps (f32 features or bf16 pairs) per chunk of the AVX2 and NEON kernels: a 64 KiB
/// slice of the panel stays in L2 while every row of a task runs against it (without it, a 1B
/// model's down projection, 8192 inputs, streams its 2 MiB panels from L3 for every 6 rows).
pub const KC: usize = 256;

/// `C[rows × cols] = A · panel` on a family's kernels (`pick`), `a` `rows × lda`:
/// f32 activations (`lda = kp`), or the bf16-rounded activations as f32 (`lda = 2 · kp`).
/// Each family picks, for the rows left, a row group and sub-block width (AVX2: 6 (f32) or 4
/// (bf16) rows against 16 columns; fewer rows left over, and generation's single rows, use
/// wider sub-blocks); input steps go in chunks of at most [`KC`].
///
/// # Safety
/// `pick`'s family runs on this CPU; `c` has `rows` rows (stride `ldc`) of `cols ≤ NR`
/// writable floats. (The slices' lengths are checked here.)
#[allow(clippy::too_many_arguments)]
pub unsafe fn run_task(
    pick: fn(Format, usize) -> Pick,
    a: &[u32],
    rows: usize,
    lda: usize,
    kp: usize,
    panel: &[u32],
    c: *mut f32,
    ldc: usize,
    cols: usize,
    format: Format,
) {
    let width = match format {
        Format::F32 => 1,
        Format::Bf16 => 2,
    };
    assert!(lda == width * kp && a.len() == rows * lda);
    assert!(panel.len() == kp * NR && cols <= NR);
    // (f32 bits as words: the kernels read them as f32.)
    let ap = a.as_ptr() as *const f32;
    // Equal chunks of at most `KC` steps (no input steps at all: one empty chunk, which
    // stores zeros).
    let chunks = kp.div_ceil(KC).max(1);
    let kcs = kp.div_ceil(chunks);
    for k0 in (0..chunks).map(|j| j * kcs) {
        let kc = kcs.min(kp - k0);
        // The first chunk stores, the others add to it.
        let add = k0 > 0;
        let a0 = width * k0;
        let mut i = 0;
        while i < rows {
            let p = pick(format, rows - i);
            debug_assert!(p.rows <= rows - i && p.cols <= NR);
            for c0 in (0..cols).step_by(p.cols) {
                // SAFETY: the family runs on this CPU (the caller's contract); rows `i..i + p.rows` of the activations exist, `lda`
                // floats apart, and the kernel reads `width · kc` floats of each from
                // `a0 = width · k0` on (`k0 + kc ≤ kp`); the panel has `kp` rows of `NR`
                // words, of which it reads `kc` from `k0`, columns `c0..c0 + p.cols ≤ NR`
                // (asserted above); `c` has `rows` rows of `cols` floats (the caller's
                // contract), of which it writes columns `c0..cols` of rows `i..i + p.rows`.
                unsafe {
                    (p.kernel)(
                        ap.add(i * lda + a0),
                        lda,
                        kc,
                        panel.as_ptr().add(k0 * NR + c0),
                        c.add(i * ldc + c0),
                        ldc,
                        cols - c0,
                        add,
                    )
                }
            }
            i += p.rows;
        }
    }
}
