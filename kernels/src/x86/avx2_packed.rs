//! 256-bit kernels for the 4-bit 32-block formats (Q4_0, Q4_1) over packed rows
//! ([`crate::packed`]), on CPUs with AVX2 and no AVX-512: the same rows and the same
//! reordered activations as the 512-bit kernels of [`super::avx512`], a group of four blocks
//! read as two 256-bit halves.
//!
//! Over GGUF's layout, every block and activation row costs a scalar scale product, a
//! broadcast and (Q4_1) a scalar min term beside its two multiply-add instructions. Packed,
//! the four blocks of a group have their scales in one 128-bit load, multiplied by the four
//! activation scales at once and spread over the blocks' lanes by one permute per half;
//! the low and high nibbles' `vpmaddubsw` pairs are added in i16 (at most 2 * 15 * 128 * 2 =
//! 7680, no saturation) before one `vpmaddwd`. Q4_0's signed weights take the sign trick
//! (|w| times x with w's sign), as llama.cpp's AVX2 kernels do. The results equal the
//! reference's up to the order of float additions (`tests/exactness.rs`).
//! Reference: llama.cpp `ggml-cpu/arch/x86/quants.c` and `repack.cpp`, read, not copied.

use std::arch::x86_64::*;

use super::avx512::{Q4_0, Q4_1};
use crate::packed::PackedActs;

/// A group's four f16 scales (or mins) as f32; `present` of them exist.
///
/// # Safety
///
/// AVX2, F16C; `p` is valid for reading `present` (1..=4) f16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_f16(p: *const u8, present: usize) -> __m128 {
    if present == 4 {
        // SAFETY: 8 bytes, the 4 values (contract).
        _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))
    } else {
        let mut buf = [0u8; 8];
        // SAFETY: `2 * present <= 8` bytes from `p` (contract) into `buf`.
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), 2 * present);
        _mm_cvtph_ps(_mm_loadl_epi64(buf.as_ptr() as *const __m128i))
    }
}

packed_range!("avx2,fma,f16c");

/// `T` is [`Q4_0`] or [`Q4_1`]; `MR` activation rows (1..=4); `w` one packed row.
///
/// # Safety
///
/// - the CPU has AVX2, FMA and F16C;
/// - `w` is one packed row of `a.nb` blocks of `T`: `a.nb * 16` quant bytes, then `a.nb`
///   f16 scales, then (Q4_1) `a.nb` f16 mins (`PackedMatrix::pack`);
/// - `a` was packed by `PackedActs::pack` for `T` from `a_rows >= i0 + MR` rows: `a.qs`
///   holds `a_rows * a.kp` values and `a.d`, `a.s` `a_rows * a.nbp`, with `a.nbp` a
///   multiple of 4 and `a.kp == a.nbp * 32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed<const T: u8, const MR: usize>(
    w: &[u8],
    a: &PackedActs,
    i0: usize,
    out: &mut [f32; 4],
) {
    let (nb, groups) = (a.nb, a.nbp / 4);
    let wq = w.as_ptr();
    // SAFETY: the scales start after `nb * 16` quant bytes and the mins (Q4_1) after `nb * 2`
    // scale bytes, inside (or, for Q4_0, one past the end of) the row (contract).
    let wd = wq.add(nb * 16);
    let wm = wd.add(nb * 2);
    let low = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    // Lanes 0..4 of a half's i32 sums belong to its first block, 4..8 to its second.
    let first_half = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    let second_half = _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3);
    let mut acc = [_mm256_setzero_ps(); MR];
    let mut mins = [_mm_setzero_ps(); MR];
    for g in 0..groups {
        super::prefetch_ahead::<64>(wq.wrapping_add(64 * g));
        // `g < nbp / 4` and `nbp - nb < 4`, so `1 <= present <= 4`.
        let present = (nb - 4 * g).min(4);
        // Blocks 0 and 1 of the group, then 2 and 3; a short last group is copied out with
        // zeros after it (zero weights meet zero-padded activations).
        let (raw0, raw1) = if present == 4 {
            // SAFETY: group `g`'s 64 quant bytes, inside the row's `nb * 16` (contract).
            (
                _mm256_loadu_si256(wq.add(64 * g) as *const __m256i),
                _mm256_loadu_si256(wq.add(64 * g + 32) as *const __m256i),
            )
        } else {
            let mut buf = [0u8; 64];
            // SAFETY: the group's `present * 16 < 64` quant bytes (contract) into `buf`.
            std::ptr::copy_nonoverlapping(wq.add(64 * g), buf.as_mut_ptr(), 16 * present);
            (
                _mm256_loadu_si256(buf.as_ptr() as *const __m256i),
                _mm256_loadu_si256(buf.as_ptr().add(32) as *const __m256i),
            )
        };
        // Low nibbles meet activation values 0..32 (blocks 0, 1) and 32..64 (2, 3) of the
        // group's 128; high nibbles 64..96 and 96..128.
        let mut q = [
            _mm256_and_si256(raw0, low),
            _mm256_and_si256(raw1, low),
            _mm256_and_si256(_mm256_srli_epi16(raw0, 4), low),
            _mm256_and_si256(_mm256_srli_epi16(raw1, 4), low),
        ];
        if T == Q4_0 {
            for v in &mut q {
                *v = _mm256_sub_epi8(*v, _mm256_set1_epi8(8));
            }
        }
        let magnitude = if T == Q4_0 {
            q.map(|v| _mm256_sign_epi8(v, v))
        } else {
            q
        };
        // SAFETY: group `g`'s `present` scales (and mins) are f16 `4 * g..4 * g + present` of
        // the row's `nb` (contract).
        let d = group_f16(wd.add(8 * g), present);
        let m = if T == Q4_1 {
            // SAFETY: as the scales.
            group_f16(wm.add(8 * g), present)
        } else {
            _mm_setzero_ps()
        };
        for r in 0..MR {
            let row = i0 + r;
            // SAFETY (this row's reads): `row < a_rows` (contract); its values
            // `128 * g..128 * (g + 1)` lie in its `a.kp = 32 * a.nbp` since `g < a.nbp / 4`,
            // and its blocks `4 * g..4 * g + 4` of `a.d`, `a.s` in its `a.nbp`.
            let x = a.qs.as_ptr().add(row * a.kp + 128 * g);
            let mut sums = [_mm256_setzero_si256(); 2];
            for (h, sum) in sums.iter_mut().enumerate() {
                // SAFETY: values `32 * h..32 * h + 32` and `64 + 32 * h..96 + 32 * h` of the
                // group's 128 (above).
                let (xl, xh) = (
                    _mm256_loadu_si256(x.add(32 * h) as *const __m256i),
                    _mm256_loadu_si256(x.add(64 + 32 * h) as *const __m256i),
                );
                let (xl, xh) = if T == Q4_0 {
                    (_mm256_sign_epi8(xl, q[h]), _mm256_sign_epi8(xh, q[2 + h]))
                } else {
                    (xl, xh)
                };
                let pairs = _mm256_add_epi16(
                    _mm256_maddubs_epi16(magnitude[h], xl),
                    _mm256_maddubs_epi16(magnitude[2 + h], xh),
                );
                *sum = _mm256_madd_epi16(pairs, ones);
            }
            let blk = row * a.nbp + 4 * g;
            // SAFETY: 4 values from block `blk` of `a.d`, the group's (above).
            let scales = _mm256_castps128_ps256(_mm_mul_ps(d, _mm_loadu_ps(a.d.as_ptr().add(blk))));
            acc[r] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(scales, first_half),
                _mm256_cvtepi32_ps(sums[0]),
                acc[r],
            );
            acc[r] = _mm256_fmadd_ps(
                _mm256_permutevar8x32_ps(scales, second_half),
                _mm256_cvtepi32_ps(sums[1]),
                acc[r],
            );
            if T == Q4_1 {
                // SAFETY: 4 values from block `blk` of `a.s`, the group's (above).
                mins[r] = _mm_fmadd_ps(m, _mm_loadu_ps(a.s.as_ptr().add(blk)), mins[r]);
            }
        }
    }
    for r in 0..MR {
        let v = _mm_add_ps(
            _mm256_castps256_ps128(acc[r]),
            _mm256_extractf128_ps(acc[r], 1),
        );
        let v = _mm_add_ps(v, mins[r]);
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        out[r] = _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
    }
}
