//! Activations quantized to 8 bits before they meet quantized weights, as llama.cpp does.
//!
//! Reference: llama.cpp `ggml-cpu/arch/x86/quants.c` (`quantize_row_q8_0`, `quantize_row_q8_1`:
//! scale `max|x| / 127` rounded to f16, multiplier `127 / max|x|`, round half to even) and
//! `ggml-quants.c` (`quantize_row_q8_K_ref`). Numerics match them so that greedy output
//! matches llama.cpp's. The layout is ours: each row's bytes are contiguous (one SIMD load
//! spans blocks) and scales sit in their own arrays as f32.

use crate::formats::ActivationFormat;

/// `rows` activation rows of length `k`, quantized for one weight format. Reused across calls
/// so that a forward pass allocates nothing.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    pub(crate) format: ActivationFormat,
    pub(crate) rows: usize,
    pub(crate) k: usize,
    /// `rows * k` quantized values.
    pub(crate) qs: Vec<i8>,
    /// Scale of each block, `rows * blocks`.
    pub(crate) d: Vec<f32>,
    /// Q8 only: f16-rounded `d * sum(q)` of each block (Q4_1's min term).
    pub(crate) s: Vec<f32>,
    /// Q8 only: exact sum of each block's quantized values (offset corrections).
    pub(crate) isum: Vec<i32>,
    /// Q8K only: sum of each 16 quantized values, `rows * blocks * 16`.
    pub(crate) bsums: Vec<i16>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self {
            format: ActivationFormat::Q8,
            rows: 0,
            k: 0,
            qs: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
            isum: Vec::new(),
            bsums: Vec::new(),
        }
    }
}

impl QuantizedActs {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn blocks_per_row(&self) -> usize {
        self.k / self.format.block_len()
    }

    /// Quantizes `x` (`rows x k`, row-major) for `format`; `k` must be a multiple of its block.
    ///
    /// # Panics
    ///
    /// If `x.len()` is not `rows * k` (a product that overflows never is) or `k` is not whole
    /// blocks. [`QMatrix::matmul`](crate::QMatrix::matmul) checks its shapes first and
    /// returns an error instead.
    pub fn quantize(&mut self, format: ActivationFormat, x: &[f32], rows: usize, k: usize) {
        self.quantize_on(crate::Isa::active(), format, x, rows, k)
    }

    /// As [`quantize`](Self::quantize), with the code compiled for `isa` (the values are the
    /// same on every instruction set; only the speed differs).
    pub fn quantize_on(
        &mut self,
        isa: crate::Isa,
        format: ActivationFormat,
        x: &[f32],
        rows: usize,
        k: usize,
    ) {
        // Real checks, once per call, before any field changes: every length below, and
        // the matmul kernels' unchecked reads of rows `0..rows`, follow from
        // `x.len() == rows * k`. Checked product: `rows` and `k` come from the caller, and a
        // product that wrapped to `x.len()` would size the buffers for far fewer rows than
        // `self.rows` claims.
        assert_eq!(
            rows.checked_mul(k),
            Some(x.len()),
            "activation shape: {rows} x {k} is not {} values",
            x.len()
        );
        assert_eq!(k % format.block_len(), 0, "activation row length");
        let nb = k / format.block_len();
        // `rows * nb <= rows * k == x.len()` and `rows * nb * 16 <= rows * k` (a Q8K block is
        // 256 values): none of the products below can overflow.
        self.format = format;
        self.rows = rows;
        self.k = k;
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * nb, 0.0);
        let bufs = RowBuffers {
            qs: self.qs.as_mut_ptr(),
            d: self.d.as_mut_ptr(),
            s: std::ptr::null_mut(),
            isum: std::ptr::null_mut(),
            bsums: std::ptr::null_mut(),
        };
        match format {
            ActivationFormat::Q8 => {
                self.s.resize(rows * nb, 0.0);
                self.isum.resize(rows * nb, 0);
                self.bsums.clear();
                let bufs = RowBuffers {
                    s: self.s.as_mut_ptr(),
                    isum: self.isum.as_mut_ptr(),
                    ..bufs
                };
                for_row_runs(rows, &|r0, r1| {
                    let bufs = &bufs;
                    // SAFETY: the resizes above made `qs.len() == rows * k` and `d`, `s`,
                    // `isum` each `rows * nb` long (products bounded by `x.len()`, see the
                    // checked assert at the top), so rows `r0..r1` (`r1 <= rows`,
                    // `for_row_runs`) lie inside each buffer. Runs are disjoint, and the
                    // `Vec`s are not touched until `for_row_runs` returns.
                    let (qs, d, s, isum) = unsafe {
                        (
                            rows_of(bufs.qs, r0, r1, k),
                            rows_of(bufs.d, r0, r1, nb),
                            rows_of(bufs.s, r0, r1, nb),
                            rows_of(bufs.isum, r0, r1, nb),
                        )
                    };
                    let x = &x[r0 * k..r1 * k];
                    #[cfg(target_arch = "x86_64")]
                    if isa.at_most_best() >= crate::Isa::Avx2 {
                        // SAFETY: `quantize_q8_avx2` needs AVX2, FMA and F16C: `at_most_best`
                        // caps `isa` at `Isa::best()`, and any set from `Isa::Avx2` up is in
                        // `Isa::available()` only when all three were detected. It reads and
                        // writes through safe slices only.
                        return unsafe { quantize_q8_avx2(x, qs, d, s, isum) };
                    }
                    quantize_q8(x, qs, d, s, isum)
                });
            }
            ActivationFormat::Q8K => {
                self.s.clear();
                self.isum.clear();
                self.bsums.resize(rows * nb * 16, 0);
                let bufs = RowBuffers {
                    bsums: self.bsums.as_mut_ptr(),
                    ..bufs
                };
                for_row_runs(rows, &|r0, r1| {
                    let bufs = &bufs;
                    // SAFETY: as for Q8: `qs` is `rows * k`, `d` `rows * nb` and `bsums`
                    // `rows * nb * 16` long (the resizes above), rows `r0..r1` of each are
                    // this run's alone, and the `Vec`s are not touched meanwhile.
                    let (qs, d, sums) = unsafe {
                        (
                            rows_of(bufs.qs, r0, r1, k),
                            rows_of(bufs.d, r0, r1, nb),
                            rows_of(bufs.bsums, r0, r1, nb * 16),
                        )
                    };
                    let x = &x[r0 * k..r1 * k];
                    #[cfg(target_arch = "x86_64")]
                    if isa.at_most_best() >= crate::Isa::Avx2 {
                        // SAFETY: as for `quantize_q8_avx2` above; safe slices only.
                        return unsafe { quantize_q8k_avx2(x, qs, d, sums) };
                    }
                    quantize_q8k(x, qs, d, sums)
                });
            }
        }
    }

    /// The values back as f32 (`d * q`), for tests.
    pub fn dequantize(&self) -> Vec<f32> {
        let bl = self.format.block_len();
        self.qs
            .iter()
            .enumerate()
            .map(|(i, &q)| self.d[i / bl] * q as f32)
            .collect()
    }
}

/// The output buffers of one `quantize_on` call, for the row runs to slice (the ones a
/// format does not use stay null).
#[derive(Clone, Copy)]
struct RowBuffers {
    qs: *mut i8,
    d: *mut f32,
    s: *mut f32,
    isum: *mut i32,
    bsums: *mut i16,
}
// SAFETY: shared only by the tasks of one `quantize_on` call, each making slices of its own
// disjoint rows (see the SAFETY comment there); the buffers outlive the parallel section.
unsafe impl Sync for RowBuffers {}

/// Rows `r0..r1` of a buffer of `per_row` values per row.
///
/// # Safety
///
/// `p` points to at least `r1 * per_row` values, and no one else uses rows `r0..r1` while
/// the slice lives.
unsafe fn rows_of<'a, T>(p: *mut T, r0: usize, r1: usize, per_row: usize) -> &'a mut [T] {
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(p.add(r0 * per_row), (r1 - r0) * per_row) }
}

/// Rows from which quantizing is split across the pool (a prefill chunk, a wide batch).
const PARALLEL_MIN_ROWS: usize = 16;

/// Runs `f(r0, r1)` over disjoint runs of rows covering `0..rows` (`r0 < r1 <= rows`), on
/// the pool when there are enough rows to be worth it.
fn for_row_runs(rows: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let threads = rayon::current_num_threads();
    if rows >= PARALLEL_MIN_ROWS && threads > 1 {
        let per = rows.div_ceil(2 * threads);
        // `c < rows.div_ceil(per)`, so `c * per < rows`.
        crate::threads::parallel_for(rows.div_ceil(per), &|c| {
            f(c * per, ((c + 1) * per).min(rows))
        });
    } else if rows > 0 {
        f(0, rows)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8k_avx2(x: &[f32], qs: &mut [i8], d: &mut [f32], sums: &mut [i16]) {
    quantize_q8k(x, qs, d, sums)
}

#[inline(always)]
fn quantize_q8k(x: &[f32], qs: &mut [i8], d: &mut [f32], sums: &mut [i16]) {
    for ((xb, qb), (d, sums)) in x
        .chunks_exact(256)
        .zip(qs.chunks_exact_mut(256))
        .zip(d.iter_mut().zip(sums.chunks_exact_mut(16)))
    {
        *d = quantize_q8k_block(xb, qb, sums);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_avx2(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    isum: &mut [i32],
) {
    quantize_q8(x, qs, d, s, isum)
}

#[inline(always)]
fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32], isum: &mut [i32]) {
    let scales = d.iter_mut().zip(s.iter_mut()).zip(isum.iter_mut());
    for ((xb, qb), ((d, s), isum)) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(scales) {
        (*d, *s, *isum) = quantize_q8_block(xb.try_into().expect("32"), qb.try_into().expect("32"));
    }
}

fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// One Q8 block: returns (f16-rounded scale, f16-rounded `d * sum(q)`, `sum(q)`). Written
/// in fixed-width lanes so that it vectorizes.
#[inline(always)]
fn quantize_q8_block(x: &[f32; 32], q: &mut [i8; 32]) -> (f32, f32, i32) {
    let mut lanes = [0f32; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l].abs());
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut r = [0i32; 32];
    for (r, &v) in r.iter_mut().zip(x) {
        // |v * id| <= 127: the conversion never saturates.
        *r = (v * id).round_ties_even() as i32;
    }
    let sum: i32 = r.iter().sum();
    for (q, &r) in q.iter_mut().zip(&r) {
        *q = r as i8;
    }
    (f16_round(d), f16_round(d * sum as f32), sum)
}

/// One Q8K block: returns its scale; fills the 256 values and the 16 sums.
#[inline(always)]
fn quantize_q8k_block(x: &[f32], q: &mut [i8], sums: &mut [i16]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        sums.fill(0);
        return 0.0;
    }
    let iscale = -127.0 / max;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, qs) in sums.iter_mut().zip(q.chunks_exact(16)) {
        *s = qs.iter().map(|&v| v as i16).sum();
    }
    1.0 / iscale
}
