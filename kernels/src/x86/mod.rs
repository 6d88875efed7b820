//! x86-64 kernels: the dot products of quantized weight rows with up to four activation rows
//! at once, so that a weight block is loaded and unpacked once for every row it meets.
//!
//! One source (`row_kernels!`) is compiled twice: for AVX2 (`vpmaddubsw` + `vpmaddwd` make
//! u8 x i8 dot products) and for AVX-VNNI (`vpdpbusd` does it in one instruction). `avx512`
//! adds 512-bit versions of the 32-block formats for CPUs with AVX-512 VNNI. All are chosen at
//! run time (`crate::dispatch`). Reference: llama.cpp `ggml-cpu/arch/x86/quants.c`
//! (`ggml_vec_dot_q4_1_q8_1`, `..._q4_K_q8_K`, `..._q6_K_q8_K`), read, not copied.

pub(crate) mod avx512;

/// The per-format kernels over `MR` (1..=4) activation rows. `$dot` multiplies unsigned bytes
/// by signed bytes and sums each four adjacent products into an i32 lane.
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
    ($features:literal, $dot:ident) => {
        use std::arch::x86_64::*;

        use crate::activations::QuantizedActs;
        use crate::formats::q4k_scale_min;

        /// # Safety
        ///
        /// `$features`; `p` is valid for reading 2 bytes (any alignment).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16(p: *const u8) -> f32 {
            // SAFETY: 2 bytes at `p`, this function's contract; `read_unaligned` needs no
            // alignment.
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                std::ptr::read_unaligned(p as *const u16) as i32,
            )))
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
                let d = f16(blk);
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
                let (d, m) = (f16(blk), f16(blk.add(2)));
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

        /// Q4_K: a super-block's 256 nibbles are unpacked once into eight vectors (one per
        /// sub-block); each row's integer sums are scaled per sub-block, and the mins are
        /// applied through the activation's sums of 16.
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
            let mut mins = [0f32; MR];
            let low = _mm256_set1_epi8(0x0F);
            for b in 0..nb {
                // SAFETY: block `b < nb` of `w` (`nb` blocks of 144 bytes, the contract):
                // `d` at 0, `dmin` at 2, 12 scale bytes at 4, and below 128 quant bytes at
                // 16 (four loads of 32), all inside its 144 bytes.
                let blk = w.add(144 * b);
                let (d, dmin) = (f16(blk), f16(blk.add(2)));
                let scales = std::slice::from_raw_parts(blk.add(4), 12);
                let mut sc = [_mm256_setzero_si256(); 8];
                let mut mn = [0i32; 8];
                let mut q = [_mm256_setzero_si256(); 8];
                for j in 0..8 {
                    let (s, m) = q4k_scale_min(j, scales);
                    sc[j] = _mm256_set1_epi32(s as i32);
                    mn[j] = m as i32;
                }
                for c in 0..4 {
                    // SAFETY: bytes `16 + 32 * c..48 + 32 * c <= 144` of the block.
                    let raw = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                    q[2 * c] = _mm256_and_si256(raw, low);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                }
                for r in 0..MR {
                    let row = i0 + r;
                    // SAFETY: `row < a.rows` (the contract): its super-block `b < nb`, values
                    // `256 * b..256 * (b + 1)` of `a.k` (eight loads of 32), its scale
                    // `row * nb + b` of `a.d` (`a.rows * nb`) and its 16 sums of `a.bsums`
                    // (`a.rows * nb * 16`), all Q8K activations.
                    let x = a.qs.as_ptr().add(row * a.k + 256 * b);
                    let mut sumi = _mm256_setzero_si256();
                    for j in 0..8 {
                        sumi = _mm256_add_epi32(
                            sumi,
                            _mm256_mullo_epi32($dot(q[j], load(x.add(32 * j))), sc[j]),
                        );
                    }
                    let xd = *a.d.get_unchecked(row * nb + b);
                    let bs = a.bsums.as_ptr().add((row * nb + b) * 16);
                    let mut summ = 0i32;
                    for j in 0..8 {
                        summ += mn[j] * (*bs.add(2 * j) as i32 + *bs.add(2 * j + 1) as i32);
                    }
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(sumi), acc[r]);
                    mins[r] += dmin * xd * summ as f32;
                }
            }
            for r in 0..MR {
                out[r] = hsum(acc[r]) - mins[r];
            }
        }

        /// Q6_K: the 6-bit values are unpacked once per super-block as unsigned (0..64); each
        /// row subtracts 32 * its sums of 16, scaled per sub-block of 16.
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
                let d = f16(blk.add(208));
                let sc: &[i8] = std::slice::from_raw_parts(blk.add(192) as *const i8, 16);
                let mut q = [_mm256_setzero_si256(); 8];
                for half in 0..2 {
                    // SAFETY: bytes `64 * half..64 * half + 64` and
                    // `128 + 32 * half..160 + 32 * half` of the block, below 192.
                    let l0 = _mm256_loadu_si256(blk.add(64 * half) as *const __m256i);
                    let l1 = _mm256_loadu_si256(blk.add(64 * half + 32) as *const __m256i);
                    let h = _mm256_loadu_si256(blk.add(128 + 32 * half) as *const __m256i);
                    let h0 = _mm256_slli_epi16(_mm256_and_si256(h, two_bits), 4);
                    let h2 =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), two_bits), 4);
                    let h4 =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), two_bits), 4);
                    let h6 =
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), two_bits), 4);
                    q[4 * half] = _mm256_or_si256(_mm256_and_si256(l0, low), h0);
                    q[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(l1, low), h2);
                    q[4 * half + 2] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low), h4);
                    q[4 * half + 3] =
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low), h6);
                }
                let mut scv = [_mm256_setzero_si256(); 8];
                for v in 0..8 {
                    scv[v] = _mm256_set_m128i(
                        _mm_set1_epi32(sc[2 * v + 1] as i32),
                        _mm_set1_epi32(sc[2 * v] as i32),
                    );
                }
                for r in 0..MR {
                    let row = i0 + r;
                    // SAFETY: `row < a.rows` (the contract): its super-block `b < nb`, values
                    // `256 * b..256 * (b + 1)` (eight loads of 32), its 16 sums of `a.bsums`
                    // (`a.rows * nb * 16`) and scale `row * nb + b` of `a.d` (`a.rows * nb`).
                    let x = a.qs.as_ptr().add(row * a.k + 256 * b);
                    let mut sumi = _mm256_setzero_si256();
                    for v in 0..8 {
                        sumi = _mm256_add_epi32(
                            sumi,
                            _mm256_mullo_epi32($dot(q[v], load(x.add(32 * v))), scv[v]),
                        );
                    }
                    let bs = a.bsums.as_ptr().add((row * nb + b) * 16);
                    let mut offset = 0i32;
                    for g in 0..16 {
                        offset += sc[g] as i32 * *bs.add(g) as i32;
                    }
                    let sumi =
                        _mm256_sub_epi32(sumi, _mm256_set_epi32(0, 0, 0, 0, 0, 0, 0, 32 * offset));
                    let xd = *a.d.get_unchecked(row * nb + b);
                    acc[r] =
                        _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(sumi), acc[r]);
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
    row_kernels!("avx2,fma,f16c", dot_u8i8);
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
    row_kernels!("avx2,fma,f16c,avxvnni", dot_u8i8);
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
    row_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", dot_u8i8);
}
