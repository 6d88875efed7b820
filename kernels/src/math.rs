//! Vectorizable elementwise math: `exp` without a libm call, and log-sum-exp over a vocabulary
//! (the sampler reports every token's log-probability, which needs one over 49,152 logits).

use crate::dispatch::Isa;

/// `e^x` to about one ulp on the range softmax uses, branch-free so that loops over it
/// vectorize (Cephes `expf`: range reduction by powers of two and a degree-5 polynomial).
/// Inputs below -87 give about 1e-38, not 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    // floor(t) by truncation and a correction: `f32::floor` is a library call in code built
    // without SSE4.1.
    let t = x * std::f32::consts::LOG2_E + 0.5;
    let i = t as i32;
    let n = (i - (t < i as f32) as i32) as f32;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    // Plain multiply-adds, not `mul_add`: without FMA in the build that is a library call.
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Sum in eight independent lanes (so the compiler may vectorize it).
#[inline(always)]
pub(crate) fn sum8(a: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let c = a.chunks_exact(8);
    let tail: f32 = c.remainder().iter().sum();
    for x in c {
        for l in 0..8 {
            lanes[l] += x[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `log(sum(exp(x)))`, stable for any finite `x`; vectorized where the CPU allows.
pub fn log_sum_exp(x: &[f32]) -> f32 {
    log_sum_exp_on(Isa::active(), x)
}

/// As [`log_sum_exp`], compiled for `isa` (the same bits on every instruction set).
pub fn log_sum_exp_on(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.at_most_best() >= Isa::Avx2 {
        // SAFETY: an available set from AVX2 up: AVX2 and FMA are present.
        return unsafe { log_sum_exp_avx2(x) };
    }
    let _ = isa;
    log_sum_exp_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn log_sum_exp_avx2(x: &[f32]) -> f32 {
    log_sum_exp_body(x)
}

#[inline(always)]
fn log_sum_exp_body(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for l in 0..8 {
            lanes[l] = lanes[l].max(c[l]);
        }
    }
    max = lanes.iter().fold(max, |m, &v| m.max(v));
    if !max.is_finite() {
        return max;
    }
    let mut sums = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - max)).sum();
    for c in chunks {
        for l in 0..8 {
            sums[l] += exp(c[l] - max);
        }
    }
    (sums.iter().sum::<f32>() + tail).ln() + max
}

/// `out[i] = exp((x[i] - max) * scale)`; returns their sum. For drawing from a whole
/// vocabulary's softmax without a library `exp` per logit.
pub fn exp_into(x: &[f32], max: f32, scale: f32, out: &mut [f32]) -> f32 {
    exp_into_on(Isa::active(), x, max, scale, out)
}

/// As [`exp_into`], compiled for `isa` (the same bits on every instruction set).
pub fn exp_into_on(isa: Isa, x: &[f32], max: f32, scale: f32, out: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.at_most_best() >= Isa::Avx2 {
        // SAFETY: an available set from AVX2 up: AVX2 and FMA are present.
        return unsafe { exp_into_avx2(x, max, scale, out) };
    }
    let _ = isa;
    exp_into_body(x, max, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_into_avx2(x: &[f32], max: f32, scale: f32, out: &mut [f32]) -> f32 {
    exp_into_body(x, max, scale, out)
}

#[inline(always)]
fn exp_into_body(x: &[f32], max: f32, scale: f32, out: &mut [f32]) -> f32 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp((v - max) * scale);
    }
    sum8(&out[..x.len().min(out.len())])
}

/// `max(x)` and `sum(x)` in eight lanes (vectorized where the CPU allows).
pub fn max_and_sum(x: &[f32]) -> (f32, f32) {
    max_and_sum_on(Isa::active(), x)
}

/// As [`max_and_sum`], compiled for `isa` (the same bits on every instruction set).
pub fn max_and_sum_on(isa: Isa, x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if isa.at_most_best() >= Isa::Avx2 {
        // SAFETY: an available set from AVX2 up: AVX2 and FMA are present.
        return unsafe { max_and_sum_avx2(x) };
    }
    let _ = isa;
    max_and_sum_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn max_and_sum_avx2(x: &[f32]) -> (f32, f32) {
    max_and_sum_body(x)
}

#[inline(always)]
fn max_and_sum_body(x: &[f32]) -> (f32, f32) {
    let mut m = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail_max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    for c in chunks {
        for l in 0..8 {
            m[l] = m[l].max(c[l]);
        }
    }
    (m.iter().fold(tail_max, |a, &v| a.max(v)), sum8(x))
}
