//! 512-bit kernels for the K formats (Q4_K, Q6_K) over rows in GGUF's own layout, on CPUs
//! with AVX-512 VNNI: one register holds two Q4_K sub-blocks of 32 (the low and the high
//! nibbles of one 32-byte run, which are 64 consecutive values) or four Q6_K groups of 16.
//!
//! Per register and activation row, `vpmaddubsw` multiplies the unsigned weights by the
//! signed activations in pairs and `vpdpwssd` applies the scales while summing into i32
//! lanes, so no 32-bit multiply is needed. The weights are unpacked once per super-block for
//! up to four rows. The 256-bit kernels of `super` (`row_kernels!`) do the same per 32 values
//! and serve the other instruction sets; both are checked against `crate::reference`.
//! Reference: llama.cpp `ggml-cpu/arch/x86/quants.c` (`ggml_vec_dot_q4_K_q8_K`,
//! `ggml_vec_dot_q6_K_q8_K`), read, not copied.
//!
//! # Safety (every `pub(crate)` kernel here: the contract of `dispatch::RowsKernel`)
//!
//! - the CPU has AVX-512 F, BW, VL, DQ and VNNI with AVX2, FMA and F16C (`Isa::Avx512Vnni`,
//!   which `QMatrix::new_for` refused unless `Isa::available()` listed it);
//! - `a` was filled by `QuantizedActs::quantize_on` in the Q8K format: `a.qs` holds
//!   `a.rows * a.k` values, `a.d` `a.rows * nb` scales and `a.bsums` `a.rows * nb * 16` sums,
//!   `nb = a.k / 256`;
//! - `i0 + MR <= a.rows`, `1 <= MR <= 4` (`QMatrix::tiled`);
//! - `w` is one GGUF row of `nb` whole super-blocks (`QMatrix::new_for` checked the matrix's
//!   length with checked_mul, and its `cols` is `a.k`).

use std::arch::x86_64::*;

use crate::activations::QuantizedActs;
use crate::formats::q4k_scales_mins;

// The 256-bit kernels' reader: its features are a subset of this module's.
use super::avx512vl::f16_pair;

/// Indices that spread four i16 values over a register's four 128-bit lanes, 8 copies each.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn quarters(first: i16) -> __m512i {
    _mm512_add_epi16(
        _mm512_set1_epi16(first),
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16(1), _mm_setzero_si128())),
            _mm256_set_m128i(_mm_set1_epi16(3), _mm_set1_epi16(2)),
            1,
        ),
    )
}

/// Q4_K: 32 bytes of nibbles become 64 values (low nibbles: sub-block `2c`, high: `2c + 1`),
/// which meet 64 consecutive activations; the pair of 6-bit scales is spread over the two
/// halves. The mins go through the activation's sums of 16, as in the 256-bit kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4_k<const MR: usize>(
    w: &[u8],
    a: &QuantizedActs,
    i0: usize,
    out: &mut [f32; 4],
) {
    let w = w.as_ptr();
    let nb = a.k / 256;
    // The scaled sums minus the scaled mins, in one register per row.
    let mut acc = [_mm512_setzero_ps(); MR];
    let low = _mm512_set1_epi8(0x0F);
    // Lanes 0..16 take scale `2c`, lanes 16..32 scale `2c + 1`.
    let halves: [__m512i; 4] = std::array::from_fn(|c| {
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi16(2 * c as i16)),
            _mm256_set1_epi16(2 * c as i16 + 1),
            1,
        )
    });
    for b in 0..nb {
        // SAFETY: block `b < nb` of `w` (`nb` blocks of 144 bytes, the contract): `d` at 0,
        // `dmin` at 2, 12 scale bytes at 4, and 128 quant bytes at 16 (four loads of 32),
        // all inside its 144 bytes.
        let blk = w.add(144 * b);
        super::prefetch_ahead::<192>(blk);
        let (d, dmin) = f16_pair(blk);
        let (scales, mins) = q4k_scales_mins(&*(blk.add(4) as *const [u8; 12]));
        let s8 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64(
            scales.as_ptr() as *const __m128i
        )));
        // Each min twice: the activation's sums come in 16s, two per sub-block.
        let m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mins.as_ptr() as *const __m128i));
        let mins16 = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
        let mut sumi = [_mm512_setzero_si512(); MR];
        // SAFETY: `i0 + MR <= a.rows` (the contract): row `i0 + r`'s super-block `b < nb`,
        // values `256 * b..256 * (b + 1)` of its `a.k` (four loads of 64).
        let x = a.qs.as_ptr().add(i0 * a.k + 256 * b);
        for c in 0..4 {
            // SAFETY: bytes `16 + 32 * c..48 + 32 * c <= 144` of the block.
            let raw = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
            let q = _mm512_and_si512(
                _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1),
                low,
            );
            let sc = _mm512_permutexvar_epi16(halves[c], s8);
            for r in 0..MR {
                let p = _mm512_maddubs_epi16(q, _mm512_loadu_si512(x.add(r * a.k + 64 * c) as _));
                sumi[r] = _mm512_dpwssd_epi32(sumi[r], p, sc);
            }
        }
        for r in 0..MR {
            let row = i0 + r;
            // SAFETY: `row < a.rows`: its scale `row * nb + b` of `a.d` (`a.rows * nb`) and
            // its 16 sums of `a.bsums` (`a.rows * nb * 16`).
            let xd = *a.d.get_unchecked(row * nb + b);
            let bs =
                _mm256_loadu_si256(a.bsums.as_ptr().add((row * nb + b) * 16) as *const __m256i);
            let m = _mm512_zextsi256_si512(_mm256_madd_epi16(bs, mins16));
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(d * xd), _mm512_cvtepi32_ps(sumi[r]), acc[r]);
            acc[r] = _mm512_fnmadd_ps(_mm512_set1_ps(dmin * xd), _mm512_cvtepi32_ps(m), acc[r]);
        }
    }
    for r in 0..MR {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
}

/// Q6_K: a half super-block's 64 low-bit bytes and 32 high-bit bytes become two registers of
/// 64 unsigned values (0..64), each meeting 64 consecutive activations, with four scales of
/// 16 spread over its 128-bit lanes; each row subtracts 32 * (scales . its sums of 16).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q6_k<const MR: usize>(
    w: &[u8],
    a: &QuantizedActs,
    i0: usize,
    out: &mut [f32; 4],
) {
    let w = w.as_ptr();
    let nb = a.k / 256;
    let mut acc = [_mm512_setzero_ps(); MR];
    let low = _mm512_set1_epi8(0x0F);
    let two_bits = _mm512_set1_epi8(3);
    let spread: [__m512i; 4] = std::array::from_fn(|g| quarters(4 * g as i16));
    for b in 0..nb {
        // SAFETY: block `b < nb` of `w` (`nb` blocks of 210 bytes, the contract): 128 bytes
        // of low bits at 0 and 64 of high bits at 128 (the loads below), 16 scales at 192
        // and `d` at 208, all inside its 210 bytes.
        let blk = w.add(210 * b);
        super::prefetch_ahead::<256>(blk);
        // SAFETY: the last two scales and `d`, bytes 206..210 of the block.
        let d = f16_pair(blk.add(206)).1;
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
        let scz = _mm512_castsi256_si512(sc16);
        let mut sumi = [_mm512_setzero_si512(); MR];
        // SAFETY: `i0 + MR <= a.rows` (the contract): row `i0 + r`'s super-block `b < nb`,
        // values `256 * b..256 * (b + 1)` of its `a.k` (four loads of 64).
        let x = a.qs.as_ptr().add(i0 * a.k + 256 * b);
        for half in 0..2 {
            // SAFETY: bytes `64 * half..64 * half + 64` and `128 + 32 * half..160 + 32 * half`
            // of the block, below 192.
            let l0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
            let l1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
            let h = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
            // Groups of 32: `l0`'s low nibbles with bits 0-1 of `h`, `l1`'s with bits 2-3,
            // `l0`'s high nibbles with bits 4-5, `l1`'s with bits 6-7.
            let lows = _mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1);
            let highs = _mm512_inserti64x4(_mm512_castsi256_si512(h), _mm256_srli_epi16(h, 2), 1);
            let q = [
                _mm512_or_si512(
                    _mm512_and_si512(lows, low),
                    _mm512_slli_epi16(_mm512_and_si512(highs, two_bits), 4),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16(lows, 4), low),
                    _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(highs, 4), two_bits), 4),
                ),
            ];
            for (p, q) in q.iter().enumerate() {
                // Values `64 * g..64 * g + 64` of the super-block, its scales `4g..4g + 4`.
                let g = 2 * half + p;
                let sc = _mm512_permutexvar_epi16(spread[g], scz);
                for r in 0..MR {
                    let prod =
                        _mm512_maddubs_epi16(*q, _mm512_loadu_si512(x.add(r * a.k + 64 * g) as _));
                    sumi[r] = _mm512_dpwssd_epi32(sumi[r], prod, sc);
                }
            }
        }
        for r in 0..MR {
            let row = i0 + r;
            // SAFETY: `row < a.rows`: its 16 sums of `a.bsums` (`a.rows * nb * 16`) and its
            // scale `row * nb + b` of `a.d` (`a.rows * nb`).
            let bs =
                _mm256_loadu_si256(a.bsums.as_ptr().add((row * nb + b) * 16) as *const __m256i);
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            let xd = *a.d.get_unchecked(row * nb + b);
            acc[r] = _mm512_fmadd_ps(
                _mm512_set1_ps(d * xd),
                _mm512_cvtepi32_ps(_mm512_sub_epi32(sumi[r], _mm512_zextsi256_si512(offset))),
                acc[r],
            );
        }
    }
    for r in 0..MR {
        out[r] = _mm512_reduce_add_ps(acc[r]);
    }
}
