//! Plain reference implementations: dequantization of each weight format, and each format's
//! dot product with quantized activations in scalar integer arithmetic. Every fast kernel is
//! tested against these; they are also the portable fallback.
//!
//! Reference: llama.cpp `ggml-quants.c` (`dequantize_row_*`) and `ggml-cpu/quants.c`
//! (`ggml_vec_dot_*_generic`).

use crate::activations::QuantizedActs;
use crate::formats::{f16_at, q4k_scale_min, ActivationFormat, WeightType};

/// Dequantizes one row of weights (`w` holds whole blocks) into `out`.
pub fn dequantize_row(t: WeightType, w: &[u8], out: &mut [f32]) {
    let bb = t.block_bytes();
    assert_eq!(w.len() / bb * t.block_len(), out.len(), "row length");
    for (b, y) in w.chunks_exact(bb).zip(out.chunks_exact_mut(t.block_len())) {
        match t {
            WeightType::Q4_0 | WeightType::Q4_1 => {
                let d = f16_at(b, 0);
                let (m, qs) = if t == WeightType::Q4_1 {
                    (f16_at(b, 2), &b[4..20])
                } else {
                    (-8.0 * d, &b[2..18])
                };
                for (j, &q) in qs.iter().enumerate() {
                    y[j] = d * (q & 0xF) as f32 + m;
                    y[j + 16] = d * (q >> 4) as f32 + m;
                }
            }
            WeightType::Q8_0 => {
                let d = f16_at(b, 0);
                for (y, &q) in y.iter_mut().zip(&b[2..34]) {
                    *y = d * q as i8 as f32;
                }
            }
            WeightType::Q4K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qs) = (&b[4..16], &b[16..144]);
                for c in 0..4 {
                    let (sc0, m0) = q4k_scale_min(2 * c, scales);
                    let (sc1, m1) = q4k_scale_min(2 * c + 1, scales);
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        y[64 * c + l] = d * sc0 as f32 * (q & 0xF) as f32 - dmin * m0 as f32;
                        y[64 * c + 32 + l] = d * sc1 as f32 * (q >> 4) as f32 - dmin * m1 as f32;
                    }
                }
            }
            WeightType::Q6K => {
                let mut q6 = [0i8; 256];
                q6k_values(b, &mut q6);
                let d = f16_at(b, 208);
                for (i, y) in y.iter_mut().enumerate() {
                    *y = d * b[192 + i / 16] as i8 as f32 * q6[i] as f32;
                }
            }
        }
    }
}

/// Q6_K's 256 values (`q - 32`, in -32..32) in element order.
pub(crate) fn q6k_values(b: &[u8], out: &mut [i8; 256]) {
    let (ql, qh) = (&b[0..128], &b[128..192]);
    for half in 0..2 {
        let (ql, qh, a) = (&ql[64 * half..], &qh[32 * half..], &mut out[128 * half..]);
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
}

/// Dot product of one weight row with activation row `row` of `a`.
pub fn dot_row(t: WeightType, w: &[u8], a: &QuantizedActs, row: usize) -> f32 {
    assert_eq!(a.format, t.activation_format(), "activation format");
    // Before the products below, which could wrap for a `row` far past the end.
    assert!(row < a.rows, "row {row} of {} activation rows", a.rows);
    let k = a.k;
    let x = &a.qs[row * k..(row + 1) * k];
    let nb = k / t.block_len();
    let bb = t.block_bytes();
    let mut sumf = 0f32;
    match t.activation_format() {
        ActivationFormat::Q8 => {
            let (xd, xs) = (
                &a.d[row * nb..(row + 1) * nb],
                &a.s[row * nb..(row + 1) * nb],
            );
            for i in 0..nb {
                let (b, x) = (&w[i * bb..(i + 1) * bb], &x[32 * i..32 * (i + 1)]);
                let d = f16_at(b, 0);
                match t {
                    WeightType::Q4_0 | WeightType::Q4_1 => {
                        let (off, qs) = if t == WeightType::Q4_1 {
                            (0, &b[4..20])
                        } else {
                            (8, &b[2..18])
                        };
                        let mut sumi = 0i32;
                        for j in 0..16 {
                            sumi += ((qs[j] & 0xF) as i32 - off) * x[j] as i32
                                + ((qs[j] >> 4) as i32 - off) * x[j + 16] as i32;
                        }
                        sumf += d * xd[i] * sumi as f32;
                        if t == WeightType::Q4_1 {
                            sumf += f16_at(b, 2) * xs[i];
                        }
                    }
                    WeightType::Q8_0 => {
                        let sumi: i32 = b[2..34]
                            .iter()
                            .zip(x)
                            .map(|(&q, &x)| q as i8 as i32 * x as i32)
                            .sum();
                        sumf += d * xd[i] * sumi as f32;
                    }
                    _ => unreachable!("32-blocks"),
                }
            }
        }
        ActivationFormat::Q8K => {
            let xd = &a.d[row * nb..(row + 1) * nb];
            let bsums = &a.bsums[row * nb * 16..(row + 1) * nb * 16];
            for i in 0..nb {
                let (b, x, bs) = (
                    &w[i * bb..(i + 1) * bb],
                    &x[256 * i..256 * (i + 1)],
                    &bsums[16 * i..16 * (i + 1)],
                );
                match t {
                    WeightType::Q4K => {
                        let (d, dmin) = (f16_at(b, 0) * xd[i], f16_at(b, 2) * xd[i]);
                        let (scales, qs) = (&b[4..16], &b[16..144]);
                        let (mut sumi, mut summ) = (0i32, 0i32);
                        for j in 0..8 {
                            let (sc, m) = q4k_scale_min(j, scales);
                            let (c, shift) = (j / 2, 4 * (j % 2));
                            let mut s = 0i32;
                            for l in 0..32 {
                                s +=
                                    ((qs[32 * c + l] >> shift) & 0xF) as i32 * x[32 * j + l] as i32;
                            }
                            sumi += sc as i32 * s;
                            summ += m as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                        }
                        sumf += d * sumi as f32 - dmin * summ as f32;
                    }
                    WeightType::Q6K => {
                        let mut q6 = [0i8; 256];
                        q6k_values(b, &mut q6);
                        let mut sumi = 0i32;
                        for g in 0..16 {
                            let s: i32 = (16 * g..16 * (g + 1))
                                .map(|e| q6[e] as i32 * x[e] as i32)
                                .sum();
                            sumi += b[192 + g] as i8 as i32 * s;
                        }
                        sumf += f16_at(b, 208) * xd[i] * sumi as f32;
                    }
                    _ => unreachable!("256-blocks"),
                }
            }
        }
    }
    sumf
}
