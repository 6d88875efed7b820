//! 512-bit kernels for the 32-block formats (Q4_0, Q4_1, Q8_0) over packed rows
//! ([`crate::packed`]), on CPUs with AVX-512 VNNI.
//!
//! One group is four 4-bit blocks (or two 8-bit blocks) in one register: its low and high
//! nibbles meet the reordered activations in two `vpdpbusd`, giving four lanes per block; the
//! four blocks' scales are multiplied at once and spread over their lanes by one permute.
//! AVX-512 has no `vpsignb`, so signed weights are offset to unsigned (`q` for Q4_0,
//! `w + 128` for Q8_0) and the offset times the activation block's exact integer sum is
//! subtracted in integers.

use std::arch::x86_64::*;

use crate::formats::WeightType;
use crate::packed::PackedActs;

pub(crate) const Q4_0: u8 = 0;
pub(crate) const Q4_1: u8 = 1;
pub(crate) const Q8_0: u8 = 2;

pub(crate) fn type_code(ty: WeightType) -> u8 {
    match ty {
        WeightType::Q4_0 => Q4_0,
        WeightType::Q4_1 => Q4_1,
        _ => Q8_0,
    }
}

/// A group's f16 scales (or mins) as f32 lanes; `present` of them exist.
///
/// # Safety
///
/// AVX-512 (F, BW, VL), F16C; `p` is valid for reading `present` f16 values, which is all of
/// the group's (2 for Q8_0, 4 otherwise) when `full`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn group_f16<const T: u8>(p: *const u8, present: usize, full: bool) -> __m128 {
    if full && T == Q8_0 {
        // SAFETY: 4 bytes: the 2 f16 of a full Q8_0 group (contract).
        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)))
    } else if full {
        // SAFETY: 8 bytes: the 4 f16 of a full 4-bit group (contract).
        _mm_cvtph_ps(_mm_loadl_epi64(p as *const __m128i))
    } else {
        // SAFETY: the mask enables only the `present` values that exist (contract); masked
        // lanes are not read (AVX-512 masked loads suppress faults on them).
        _mm_cvtph_ps(_mm_maskz_loadu_epi16((1u8 << present) - 1, p as *const i16))
    }
}

packed_range!("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c");

/// `T` is one of [`Q4_0`], [`Q4_1`], [`Q8_0`]; `MR` activation rows (1..=4); `w` one packed row.
///
/// # Safety
///
/// - the CPU has this function's features (`Storage::Packed` exists only for
///   `Isa::Avx512Vnni`, which `QMatrix::new_for` checked is available);
/// - `w` is one packed row of `a.nb` blocks of `T`: `a.nb * qlen` quant bytes, then
///   `a.nb` f16 scales, then (Q4_1) `a.nb` f16 mins, `a.nb * block_bytes` bytes in all
///   (`PackedMatrix::pack`, from `cols` with `cols == a.nb * 32`);
/// - `a` was packed by `PackedActs::pack` for `T` from `a_rows >= i0 + MR` rows, so
///   `a.qs` holds `a_rows * a.kp` values and `a.d`, `a.s`, `a.isum` `a_rows * a.nbp`, with
///   `a.nbp` a multiple of the group and `a.kp == a.nbp * 32` (`QMatrix::tiled` gives
///   `i0 + MR <= m`, the rows quantized).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn packed<const T: u8, const MR: usize>(
    w: &[u8],
    a: &PackedActs,
    i0: usize,
    out: &mut [f32; 4],
) {
    let gb = if T == Q8_0 { 2 } else { 4 };
    let qlen = if T == Q8_0 { 32 } else { 16 };
    let (nb, groups) = (a.nb, a.nbp / gb);
    let wq = w.as_ptr();
    // SAFETY: the scales start after `nb * qlen` quant bytes and the mins (Q4_1) after
    // `nb * 2` scale bytes, inside (or, for a type without mins, one past the end of) the
    // `nb * block_bytes`-byte row `w` (contract).
    let wd = wq.add(nb * qlen);
    let wm = wd.add(nb * 2);
    let low = _mm512_set1_epi8(0x0F);
    // Lane l of a group's 16 i32 sums belongs to block l / (16 / gb).
    let spread = if T == Q8_0 {
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
    } else {
        _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
    };
    // The first lane of each block, where its offset correction goes.
    let first_lanes: __mmask16 = if T == Q8_0 { 0x0101 } else { 0x1111 };
    let offset_shift = if T == Q8_0 { 7 } else { 3 };
    let mut acc = [_mm512_setzero_ps(); MR];
    let mut mins = [_mm_setzero_ps(); MR];
    for g in 0..groups {
        super::prefetch_ahead::<64>(wq.wrapping_add(64 * g));
        // Blocks of this group that exist; a short last group is read under a mask.
        // `g < groups = nbp / gb` and `nbp - nb < gb`, so `1 <= present <= gb`.
        let present = (nb - gb * g).min(gb);
        let full = present == gb;
        // SAFETY: group `g`'s quants are bytes `64 * g..64 * g + present * qlen` of `w`
        // (`gb * qlen == 64`), inside its `nb * qlen` quant bytes (contract); a short group's
        // mask enables only those (`present * qlen < 64`), and masked bytes are not read.
        let raw = if full {
            _mm512_loadu_si512(wq.add(64 * g) as *const _)
        } else {
            _mm512_maskz_loadu_epi8((1u64 << (present * qlen)) - 1, wq.add(64 * g) as *const i8)
        };
        let (q0, q1) = if T == Q8_0 {
            (
                _mm512_xor_si512(raw, _mm512_set1_epi8(-128)),
                _mm512_setzero_si512(),
            )
        } else {
            (
                _mm512_and_si512(raw, low),
                _mm512_and_si512(_mm512_srli_epi16(raw, 4), low),
            )
        };
        // SAFETY: group `g`'s `present` scales (and mins) are f16 `gb * g..gb * g + present`
        // of the row's `nb` (contract), all of them when `full`.
        let d = group_f16::<T>(wd.add(2 * gb * g), present, full);
        let m = if T == Q4_1 {
            // SAFETY: as the scales above.
            group_f16::<T>(wm.add(2 * gb * g), present, full)
        } else {
            _mm_setzero_ps()
        };
        for r in 0..MR {
            let row = i0 + r;
            // SAFETY (the activation reads of this row): `row < a_rows` (contract). Its
            // values `32 * gb * g..32 * gb * (g + 1)` (one 512-bit load for Q8_0, two for
            // 4-bit) lie in its `a.kp = 32 * a.nbp` values since `g < a.nbp / gb`; its blocks
            // `gb * g..gb * (g + 1)` of `a.d`, `a.s`, `a.isum` (2 or 4 values per load) lie in
            // its `a.nbp`: all padded to whole groups by `PackedActs::pack`.
            let x = a.qs.as_ptr().add(row * a.kp + 32 * gb * g);
            // SAFETY: values `0..64` from `x`, inside the group's `32 * gb` (above).
            let mut p = _mm512_dpbusd_epi32(
                _mm512_setzero_si512(),
                q0,
                _mm512_loadu_si512(x as *const _),
            );
            if T != Q8_0 {
                // SAFETY: values `64..128` from `x`, inside the 4-bit group's 128 (above).
                p = _mm512_dpbusd_epi32(p, q1, _mm512_loadu_si512(x.add(64) as *const _));
            }
            let blk = row * a.nbp + gb * g;
            // SAFETY: `gb` (2 or 4) values from block `blk` of `a.d`, the group's (above).
            let xd = if T == Q8_0 {
                _mm_castpd_ps(_mm_load_sd(a.d.as_ptr().add(blk) as *const f64))
            } else {
                _mm_loadu_ps(a.d.as_ptr().add(blk))
            };
            if T != Q4_1 {
                // SAFETY: `gb` values from block `blk` of `a.isum`, the group's (above).
                let isum = if T == Q8_0 {
                    _mm_loadl_epi64(a.isum.as_ptr().add(blk) as *const __m128i)
                } else {
                    _mm_loadu_si128(a.isum.as_ptr().add(blk) as *const __m128i)
                };
                let c = _mm512_maskz_permutexvar_epi32(
                    first_lanes,
                    spread,
                    _mm512_castsi128_si512(isum),
                );
                let c = if offset_shift == 7 {
                    _mm512_slli_epi32(c, 7)
                } else {
                    _mm512_slli_epi32(c, 3)
                };
                p = _mm512_sub_epi32(p, c);
            }
            let s = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(d, xd)));
            acc[r] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[r]);
            if T == Q4_1 {
                // SAFETY: 4 values from block `blk` of `a.s`, the group's (above).
                mins[r] = _mm_fmadd_ps(m, _mm_loadu_ps(a.s.as_ptr().add(blk)), mins[r]);
            }
        }
    }
    for r in 0..MR {
        let mut s = _mm512_reduce_add_ps(acc[r]);
        if T == Q4_1 {
            let v = mins[r];
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            s += _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)));
        }
        out[r] = s;
    }
}
