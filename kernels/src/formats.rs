//! The GGML weight block formats the kernels read, byte for byte as GGUF stores them.
//!
//! Reference: llama.cpp `ggml/src/ggml-common.h` (`block_q4_0`, `block_q4_1`, `block_q8_0`,
//! `block_q4_K`, `block_q6_K`). A row of a weight matrix is a run of whole blocks; the kernels
//! never copy or repack them.

use crate::KernelError;

/// A quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32 weights: f16 scale `d`, 16 bytes of 4-bit `q`; w = d * (q - 8).
    Q4_0,
    /// 32 weights: f16 scale `d` and min `m`, 16 bytes of 4-bit `q`; w = d * q + m.
    Q4_1,
    /// 32 weights: f16 scale `d`, 32 signed bytes; w = d * q.
    Q8_0,
    /// 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins; w = d*sc*q - dmin*m.
    Q4K,
    /// 256 weights in 16 sub-blocks of 16 with 8-bit scales, 6-bit `q`; w = d*sc*(q - 32).
    Q6K,
}

impl WeightType {
    pub const ALL: [WeightType; 5] = [Self::Q4_0, Self::Q4_1, Self::Q8_0, Self::Q4K, Self::Q6K];

    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    /// Bytes of one row of `k` weights.
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_len() * self.block_bytes()
    }

    /// How the activations multiplied by this format are quantized.
    pub fn activation_format(self) -> ActivationFormat {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => ActivationFormat::Q8,
            Self::Q4K | Self::Q6K => ActivationFormat::Q8K,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_K",
            Self::Q6K => "q6_K",
        }
    }

    /// Checks that `k` splits into whole blocks.
    pub fn check_row_len(self, k: usize) -> Result<(), KernelError> {
        if k == 0 || !k.is_multiple_of(self.block_len()) {
            return Err(KernelError::Shape(format!(
                "{} rows need a multiple of {} weights, got {k}",
                self.name(),
                self.block_len()
            )));
        }
        Ok(())
    }
}

/// Activation quantization matching a weight format (llama.cpp's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationFormat {
    /// Blocks of 32 signed bytes with an f16-rounded scale and (for Q4_1) an f16-rounded
    /// `d * sum(q)`: llama.cpp's `block_q8_0` / `block_q8_1`.
    Q8,
    /// Blocks of 256 signed bytes with an f32 scale and sums of each 16: `block_q8_K`.
    Q8K,
}

impl ActivationFormat {
    pub fn block_len(self) -> usize {
        match self {
            Self::Q8 => 32,
            Self::Q8K => 256,
        }
    }
}

#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Q4_K's eight 6-bit scales and eight mins from its 12 packed bytes at once, as
/// [`q4k_scale_min`] gives them one by one: three 32-bit words rearranged with masks, the
/// way llama.cpp's x86 kernels decode them (no per-sub-block branches).
#[inline(always)]
pub(crate) fn q4k_scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    let scales_lo = w0 & LOW6;
    let scales_hi = (w2 & LOW4) | (((w0 >> 6) & TOP2) << 4);
    let mins_lo = w1 & LOW6;
    let mins_hi = ((w2 >> 4) & LOW4) | (((w1 >> 6) & TOP2) << 4);
    let cat = |a: u32, b: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&a.to_le_bytes());
        out[4..].copy_from_slice(&b.to_le_bytes());
        out
    };
    (cat(scales_lo, scales_hi), cat(mins_lo, mins_hi))
}

/// Q4_K's 6-bit scale and min of sub-block `j` (0..8) from its 12 packed bytes
/// (llama.cpp `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4k_scales_decode_at_once_as_one_by_one() {
        // Every bit of the 12 bytes set and cleared in turn, and a few dense patterns.
        let mut patterns: Vec<[u8; 12]> = (0..96)
            .map(|bit| {
                let mut q = [0u8; 12];
                q[bit / 8] = 1 << (bit % 8);
                q
            })
            .collect();
        patterns.extend([
            [0xFF; 12],
            [0xA5; 12],
            std::array::from_fn(|i| (i * 37 + 11) as u8),
        ]);
        for q in patterns {
            let (scales, mins) = q4k_scales_mins(&q);
            for j in 0..8 {
                assert_eq!(
                    (scales[j], mins[j]),
                    q4k_scale_min(j, &q),
                    "sub-block {j} of {q:?}"
                );
            }
        }
    }
}
