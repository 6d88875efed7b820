//! x86-64 kernels: the dot products of quantized weight rows with up to four activation rows
//! at once, so that a weight block is loaded and unpacked once for every row it meets.
//!
//! One source (`row_kernels!`) is compiled twice: for AVX2 (`vpmaddubsw` + `vpmaddwd` make
//! u8 x i8 dot products) and for AVX-VNNI (`vpdpbusd` does it in one instruction). `avx512`
//! adds 512-bit versions of the 32-block formats for CPUs with AVX-512 VNNI over packed rows
//! (`crate::packed`), and `avx2_packed` 256-bit ones of the 4-bit formats over the same rows
//! for AVX2. All are chosen at run time (`crate::dispatch`). Reference: llama.cpp
//! `ggml-cpu/arch/x86/quants.c` (`ggml_vec_dot_q4_1_q8_1`, `..._q4_K_q8_K`, `..._q6_K_q8_K`),
//! read, not copied.

/// `packed_range::<T, MR>`, the module's `packed` kernel over a run of weight rows, compiled
/// with `$features` (both packed modules have one).
macro_rules! packed_range {
    ($features:literal) => {
        /// [`packed`] over weight rows `j0..j1` of `data` (rows `stride` bytes apart), writing
        /// `out[(i0 + r) * n + j]`: one call per run of rows instead of one per row, which at
        /// batch size 1 is most of the work between two dot products.
        ///
        /// # Safety
        ///
        /// [`packed`]'s contract for each row, and: `j1 * stride <= data.len()`
        /// (`PackedMatrix::pack` made `data.len() == rows * stride`, checked_mul, and
        /// `j1 <= rows`), `stride` being one packed row of `a.nb` blocks; `out` valid for
        /// writes at `(i0 + r) * n + j` for `r < MR`, `j0 <= j < j1`, with no one else
        /// accessing those elements (`QMatrix::matmul`).
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn packed_range<const T: u8, const MR: usize>(
            data: &[u8],
            stride: usize,
            j0: usize,
            j1: usize,
            a: &PackedActs,
            i0: usize,
            out: *mut f32,
            n: usize,
        ) {
            let mut tile = [0f32; 4];
            for j in j0..j1 {
                // SAFETY: `(j + 1) * stride <= j1 * stride <= data.len()` (contract), and row
                // `j` is one packed row of `a.nb` blocks, as `packed` needs.
                let w = data.get_unchecked(j * stride..(j + 1) * stride);
                packed::<T, MR>(w, a, i0, &mut tile);
                for r in 0..MR {
                    // SAFETY: an element of `out` this call owns (contract).
                    *out.add((i0 + r) * n + j) = tile[r];
                }
            }
        }
    };
}

pub(crate) mod avx2_packed;
pub(crate) mod avx512;
pub(crate) mod avx512_kquants;

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

/// How far ahead of the block being read the kernels ask the cache for weights: at batch
/// size 1 every weight byte is read once per token from memory, and the hardware prefetcher
/// alone left single-stream decode at 40% of this machine's read bandwidth (see the README).
/// 512 to 2048 bytes measured the same; 1 KiB is a few rows' worth of blocks at most widths.
const PREFETCH_AHEAD: usize = 1024;

/// Asks the cache for `bytes` from `p` on, a line at a time (for reads whose addresses the
/// hardware cannot guess, such as KV rows found through a slot list).
#[inline(always)]
pub(crate) fn prefetch_bytes(p: *const u8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch never faults and reads nothing architecturally, so any address
        // is allowed (SSE, which every x86-64 CPU has); `wrapping_add` keeps the arithmetic
        // defined past the end of the buffer.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(line) as *const i8) }
    }
}

/// Asks the cache for the `BYTES` (whole lines) that lie `PREFETCH_AHEAD` bytes past `p`.
#[inline(always)]
pub(crate) fn prefetch_ahead<const BYTES: usize>(p: *const u8) {
    prefetch_bytes(p.wrapping_add(PREFETCH_AHEAD), BYTES)
}

/// The per-format kernels over `MR` (1..=4) activation rows. `$dot` multiplies unsigned bytes
/// by signed bytes and sums each four adjacent products into an i32 lane; `$dot16` adds to
/// an i32 accumulator the pairwise sums of i16 products (`vpmaddwd`, or `vpdpwssd` on VNNI).
///
/// # Safety (every `pub(crate)` kernel here, the contract of `dispatch::RowsKernel`)
///
/// - the CPU has `$features` (`QMatrix::new_for` refused an `Isa` not in `Isa::available()`);
/// - `a` was filled by `QuantizedActs::quantize_on` in the weight type's activation format,
///   so `a.qs.len() == a.rows * a.k`, `a.d` (and Q8's `a.s`) hold `a.rows * nb` values and
///   Q8K's `a.bsums` `a.rows * nb * 16`, `nb = a.k / block_len` (its checked assert);
/// - `i0 + MR <= a.rows` (`QMatrix::tiled`);
/// - `w` is one GGUF row of `nb` whole blocks, `nb * block_bytes` bytes (`QMatrix::new_for`
///   checked `data.len() == rows * row_bytes` with checked_mul, and the matrix's `cols` is
///   `a.k`).
///
/// Every pointer offset below is inside one of those buffers by these lengths: the SAFETY
/// comments say which.
macro_rules! row_kernels {
    ($features:literal, $dot:ident, $dot16:ident) => {
        use std::arch::x86_64::*;

        use crate::activations::QuantizedActs;
        use crate::formats::q4k_scales_mins;

        /// The two f16 values in the 4 bytes at `p`, as f32: `(p[0..2], p[2..4])`. One
        /// zero-extending 32-bit load: a 16-bit load into a vector register merges into
        /// whatever register LLVM picks, which tied each block to the previous one's
        /// accumulator through a false dependency.
        ///
        /// # Safety
        ///
        /// `$features`; `p` is valid for reading 4 bytes (any alignment).
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
            // SAFETY: 4 bytes at `p`, this function's contract; `read_unaligned` needs no
            // alignment.
            let v = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
            (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        /// 16 bytes of nibbles as 32 bytes: the low nibbles (elements 0..16), then the high.
        ///
        /// # Safety
        ///
        /// `$features`; `p` is valid for reading 16 bytes (any alignment).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            // SAFETY: 16 bytes at `p`, this function's contract; `loadu` is unaligned.
            let raw = _mm_loadu_si128(p as *const __m128i);
            _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
                _mm256_set1_epi8(0x0F),
            )
        }

        /// # Safety
        ///
        /// `$features`; `p` is valid for reading 32 bytes (any alignment).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load(p: *const i8) -> __m256i {
            // SAFETY: 32 bytes at `p`, this function's contract.
            _mm256_loadu_si256(p as *const __m256i)
        }

        /// Q4_0 and Q8_0 (`Q8`): signed weights `w` (32 per block) times signed activations,
        /// as |w| * (x with w's sign) to fit the u8 x i8 instruction.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn signed_blocks<const MR: usize, const Q8: bool>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            let nb = a.k / 32;
            let bb = if Q8 { 34 } else { 18 };
            let mut acc = [_mm256_setzero_ps(); MR];
            // SAFETY (the two offsets): `i0 < a.rows`, and `a.qs`, `a.d` are `a.rows * a.k`
            // and `a.rows * nb` long (the macro's contract).
            let xq = a.qs.as_ptr().add(i0 * a.k);
            let xd = a.d.as_ptr().add(i0 * nb);
            for b in 0..nb {
                // SAFETY: block `b < nb` of `w`, which holds `nb` blocks of `bb` bytes (the
                // contract); the reads below are its 2-byte scale at 0 and its 32 (Q8_0) or
                // 16 (Q4_0) quant bytes at 2, inside the block's `bb` (34 or 18) bytes.
                let blk = w.as_ptr().add(bb * b);
                super::prefetch_ahead::<64>(blk);
                // SAFETY: the scale and the first two quant bytes, inside the block.
                let d = f16_pair(blk).0;
                let w = if Q8 {
                    _mm256_loadu_si256(blk.add(2) as *const __m256i)
                } else {
                    _mm256_sub_epi8(nibbles(blk.add(2)), _mm256_set1_epi8(8))
                };
                let aw = _mm256_sign_epi8(w, w);
                for r in 0..MR {
                    // SAFETY: row `i0 + r < a.rows`, values `32 * b..32 * b + 32` of its `a.k`,
                    // and its block `b < nb` of `d` (the contract).
                    let x = _mm256_sign_epi8(load(xq.add(r * a.k + 32 * b)), w);
                    let p = $dot(aw, x);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * *xd.add(r * nb + b)),
                        _mm256_cvtepi32_ps(p),
                        acc[r],
                    );
                }
            }
            for r in 0..MR {
                out[r] = hsum(acc[r]);
            }
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_0<const MR: usize>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            signed_blocks::<MR, false>(w, a, i0, out)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8_0<const MR: usize>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            signed_blocks::<MR, true>(w, a, i0, out)
        }

        /// Q4_1: unsigned nibbles straight into the u8 x i8 product; the min term uses the
        /// activation block's `d * sum(q)`.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_1<const MR: usize>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            let w = w.as_ptr();
            let nb = a.k / 32;
            let mut acc = [_mm256_setzero_ps(); MR];
            let mut summ = [0f32; MR];
            // SAFETY (the three offsets): `i0 < a.rows`; `a.qs` is `a.rows * a.k` long and
            // `a.d`, `a.s` (Q8 activations) `a.rows * nb` (the macro's contract).
            let xq = a.qs.as_ptr().add(i0 * a.k);
            let xd = a.d.as_ptr().add(i0 * nb);
            let xs = a.s.as_ptr().add(i0 * nb);
            for b in 0..nb {
                // SAFETY: block `b < nb` of `w` (`nb` blocks of 20 bytes, the contract): its
                // scale at 0, min at 2 and 16 quant bytes at 4 end by byte 20.
                let blk = w.add(20 * b);
                super::prefetch_ahead::<64>(blk);
                let (d, m) = f16_pair(blk);
                let q = nibbles(blk.add(4));
                for r in 0..MR {
                    // SAFETY: row `i0 + r < a.rows`: its values `32 * b..32 * b + 32` and
                    // its block `b < nb` of `d` and `s` (the contract).
                    let p = $dot(q, load(xq.add(r * a.k + 32 * b)));
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * *xd.add(r * nb + b)),
                        _mm256_cvtepi32_ps(p),
                        acc[r],
                    );
                    summ[r] += m * *xs.add(r * nb + b);
                }
            }
            for r in 0..MR {
                out[r] = hsum(acc[r]) + summ[r];
            }
        }

        /// Q4_K: per sub-block of 32, `vpmaddubsw` gives the nibbles times the activations
        /// in pairs (at most 2 * 15 * 128, no saturation) and `$dot16` multiplies those by the
        /// sub-block's 6-bit scale and sums them into i32 lanes, so no 32-bit multiply is
        /// needed. The mins go through the activation's sums of 16 in one `vpmaddwd` per row.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_k<const MR: usize>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            let w = w.as_ptr();
            let nb = a.k / 256;
            let mut acc = [_mm256_setzero_ps(); MR];
            let mut macc = [_mm256_setzero_ps(); MR];
            let low = _mm256_set1_epi8(0x0F);
            for b in 0..nb {
                // SAFETY: block `b < nb` of `w` (`nb` blocks of 144 bytes, the contract):
                // `d` at 0, `dmin` at 2, 12 scale bytes at 4, and below 128 quant bytes at
                // 16 (four loads of 32), all inside its 144 bytes.
                let blk = w.add(144 * b);
                super::prefetch_ahead::<192>(blk);
                let (d, dmin) = f16_pair(blk);
                let (scales, mins) = q4k_scales_mins(&*(blk.add(4) as *const [u8; 12]));
                // Each min twice: the activation's sums come in 16s, two per sub-block.
                let m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
                let mins16 =
                    _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
                let mut sumi = [_mm256_setzero_si256(); MR];
                // SAFETY: `i0 + MR <= a.rows` (the contract): row `i0 + r`'s super-block
                // `b < nb`, values `256 * b..256 * (b + 1)` of its `a.k` (eight loads of 32).
                let x = a.qs.as_ptr().add(i0 * a.k + 256 * b);
                for c in 0..4 {
                    // SAFETY: bytes `16 + 32 * c..48 + 32 * c <= 144` of the block.
                    let raw = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                    let q = [
                        _mm256_and_si256(raw, low),
                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
                    ];
                    for h in 0..2 {
                        let j = 2 * c + h;
                        let sc = _mm256_set1_epi16(scales[j] as i16);
                        for r in 0..MR {
                            let p = _mm256_maddubs_epi16(q[h], load(x.add(r * a.k + 32 * j)));
                            sumi[r] = $dot16(sumi[r], p, sc);
                        }
                    }
                }
                for r in 0..MR {
                    let row = i0 + r;
                    // SAFETY: `row < a.rows`: its scale `row * nb + b` of `a.d`
                    // (`a.rows * nb`) and its 16 sums of `a.bsums` (`a.rows * nb * 16`).
                    let xd = *a.d.get_unchecked(row * nb + b);
                    let bs = _mm256_loadu_si256(
                        a.bsums.as_ptr().add((row * nb + b) * 16) as *const __m256i
                    );
                    let m = _mm256_madd_epi16(bs, mins16);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * xd),
                        _mm256_cvtepi32_ps(sumi[r]),
                        acc[r],
                    );
                    macc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(dmin * xd), _mm256_cvtepi32_ps(m), macc[r]);
                }
            }
            for r in 0..MR {
                out[r] = hsum(acc[r]) - hsum(macc[r]);
            }
        }

        /// Q6_K: the 6-bit values are unpacked as unsigned (0..64) and multiplied in pairs
        /// by `vpmaddubsw` (at most 2 * 63 * 128, no saturation); `$dot16` applies the scale
        /// of each 16; each row then subtracts 32 * (scales . its sums of 16) lane by lane.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q6_k<const MR: usize>(
            w: &[u8],
            a: &QuantizedActs,
            i0: usize,
            out: &mut [f32; 4],
        ) {
            let w = w.as_ptr();
            let nb = a.k / 256;
            let mut acc = [_mm256_setzero_ps(); MR];
            let low = _mm256_set1_epi8(0x0F);
            let two_bits = _mm256_set1_epi8(3);
            for b in 0..nb {
                // SAFETY: block `b < nb` of `w` (`nb` blocks of 210 bytes, the contract):
                // 128 bytes of low bits at 0 and 64 of high bits at 128 (the loads below),
                // 16 scales at 192 and `d` at 208, all inside its 210 bytes.
                let blk = w.add(210 * b);
                super::prefetch_ahead::<256>(blk);
                // SAFETY: the last two scales and `d`, bytes 206..210 of the block.
                let d = f16_pair(blk.add(206)).1;
                let sc = blk.add(192) as *const i8;
                let mut sumi = [_mm256_setzero_si256(); MR];
                // SAFETY: `i0 + MR <= a.rows` (the contract): row `i0 + r`'s super-block
                // `b < nb`, values `256 * b..256 * (b + 1)` of its `a.k` (eight loads of 32).
                let x = a.qs.as_ptr().add(i0 * a.k + 256 * b);
                for half in 0..2 {
                    // SAFETY: bytes `64 * half..64 * half + 64` and
                    // `128 + 32 * half..160 + 32 * half` of the block, below 192.
                    let l0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                    let l1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                    let h = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                    for s in 0..4 {
                        let lows = if s % 2 == 0 { l0 } else { l1 };
                        let lows = if s < 2 {
                            lows
                        } else {
                            _mm256_srli_epi16(lows, 4)
                        };
                        let highs = match s {
                            0 => h,
                            1 => _mm256_srli_epi16(h, 2),
                            2 => _mm256_srli_epi16(h, 4),
                            _ => _mm256_srli_epi16(h, 6),
                        };
                        let q = _mm256_or_si256(
                            _mm256_and_si256(lows, low),
                            _mm256_slli_epi16(_mm256_and_si256(highs, two_bits), 4),
                        );
                        let v = 4 * half + s;
                        // SAFETY: scales `2 * v` and `2 * v + 1 < 16` of the block's 16.
                        let scv = _mm256_set_m128i(
                            _mm_set1_epi16(*sc.add(2 * v + 1) as i16),
                            _mm_set1_epi16(*sc.add(2 * v) as i16),
                        );
                        for r in 0..MR {
                            let p = _mm256_maddubs_epi16(q, load(x.add(r * a.k + 32 * v)));
                            sumi[r] = $dot16(sumi[r], p, scv);
                        }
                    }
                }
                // SAFETY: the block's 16 scale bytes at 192 (see above).
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
                for r in 0..MR {
                    let row = i0 + r;
                    // SAFETY: `row < a.rows`: its 16 sums of `a.bsums` (`a.rows * nb * 16`)
                    // and its scale `row * nb + b` of `a.d` (`a.rows * nb`).
                    let bs = _mm256_loadu_si256(
                        a.bsums.as_ptr().add((row * nb + b) * 16) as *const __m256i
                    );
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
                    let xd = *a.d.get_unchecked(row * nb + b);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(d * xd),
                        _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset)),
                        acc[r],
                    );
                }
            }
            for r in 0..MR {
                out[r] = hsum(acc[r]);
            }
        }
    };
}

pub(crate) mod avx2 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_u8i8(
        u: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }
    /// `acc + (pairs of i16 products summed)`, each pair times the scales `s`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_i16(
        acc: std::arch::x86_64::__m256i,
        p: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))
    }
    row_kernels!("avx2,fma,f16c", dot_u8i8, dot_i16);
}

pub(crate) mod avxvnni {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot_u8i8(
        u: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot_i16(
        acc: std::arch::x86_64::__m256i,
        p: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_dpwssd_avx_epi32(acc, p, s)
    }
    row_kernels!("avx2,fma,f16c,avxvnni", dot_u8i8, dot_i16);
}

/// The 256-bit kernels with the EVEX form of `vpdpbusd` (AVX-512 VNNI CPUs without AVX-VNNI).
pub(crate) mod avx512vl {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_u8i8(
        u: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot_i16(
        acc: std::arch::x86_64::__m256i,
        p: std::arch::x86_64::__m256i,
        s: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        _mm256_dpwssd_epi32(acc, p, s)
    }
    row_kernels!(
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
        dot_u8i8,
        dot_i16
    );
}
