//! Weights and activations re-laid for the 512-bit kernels, and for AVX2's 4-bit ones
//! (llama.cpp repacks weights at load for the same reason: `ggml-cpu/repack.cpp`).
//!
//! GGUF interleaves each block's f16 scales with its quants, so a kernel must convert scales
//! one block at a time and shuffle quants into place: more instructions than multiply-adds
//! for a single activation row. Packed, a row is `[quants][scales][mins]`, in groups of blocks
//! that one 512-bit register holds (4 blocks of 4-bit quants, 2 of 8-bit), zero-padded to
//! whole groups. Then one group costs one load, one nibble split, two `vpdpbusd`, and one
//! scale multiply for four blocks at once. Activations are reordered to match: for 4-bit
//! formats, the 16 values that meet each block's low nibbles, block after block, then those
//! that meet the high nibbles. Packing is lossless: [`PackedMatrix::ggml_row`] gives back the
//! GGUF bytes.

use crate::activations::QuantizedActs;
use crate::dispatch::Isa;
use crate::formats::{ActivationFormat, WeightType};
use crate::KernelError;

/// Blocks per group: what one 512-bit load of quants holds.
pub(crate) fn group_blocks(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4_0 | WeightType::Q4_1 => 4,
        WeightType::Q8_0 => 2,
        _ => unreachable!("only 32-blocks are packed"),
    }
}

pub(crate) fn packable(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
}

/// Whether `ty` is packed for the kernels of `isa`: every 32-block format for AVX-512 VNNI;
/// the 4-bit ones for AVX2 (Q8_0's products overflow `vpmaddubsw`'s i16 pairs unless
/// signed, which the GGUF-layout kernel already does block by block).
pub(crate) fn packed_on(isa: Isa, ty: WeightType) -> bool {
    match isa {
        Isa::Avx512Vnni => packable(ty),
        Isa::Avx2 => matches!(ty, WeightType::Q4_0 | WeightType::Q4_1),
        _ => false,
    }
}

/// A weight matrix in packed rows: `[quants of every block][f16 scales][f16 mins (Q4_1)]`,
/// exactly GGUF's bytes per row (a last, partial group is loaded with a mask, not padded: the
/// weights stream from memory at m = 1, and padding would add to every byte read).
#[derive(Debug, Clone)]
pub(crate) struct PackedMatrix {
    pub ty: WeightType,
    /// Blocks per row.
    pub blocks: usize,
    pub row_stride: usize,
    pub data: Vec<u8>,
}

/// Bytes of quants per block.
pub(crate) fn quant_bytes(ty: WeightType) -> usize {
    if ty == WeightType::Q8_0 {
        32
    } else {
        16
    }
}

impl PackedMatrix {
    pub fn scales_at(&self) -> usize {
        self.blocks * quant_bytes(self.ty)
    }

    pub fn mins_at(&self) -> usize {
        self.scales_at() + self.blocks * 2
    }

    /// Packs `rows` GGUF rows of `cols` weights. The 512-bit kernels read `data` by
    /// `j * row_stride` for `j < rows` without bounds checks, so this is where
    /// `data.len() == rows * row_stride` (with `row_stride` holding `cols / 32` whole
    /// blocks) is established, and `ggml` must be exactly that many bytes.
    pub fn pack(
        ty: WeightType,
        rows: usize,
        cols: usize,
        ggml: &[u8],
    ) -> Result<Self, KernelError> {
        ty.check_row_len(cols)?;
        if !packable(ty) {
            return Err(KernelError::Unsupported(format!(
                "{} is not packed",
                ty.name()
            )));
        }
        let bb = ty.block_bytes();
        let nb = cols / 32;
        let row_stride = ty.row_bytes(cols);
        // Checked: `rows` comes from a model file (`QMatrix::new_for` checks it too, but this
        // is the length the kernels rely on, so it does not lean on that).
        let len = rows
            .checked_mul(row_stride)
            .filter(|&n| n == ggml.len())
            .ok_or_else(|| {
                KernelError::Shape(format!(
                    "{} rows of {cols} {} weights are not {} bytes",
                    rows,
                    ty.name(),
                    ggml.len()
                ))
            })?;
        let mut data = vec![0u8; len];
        let qlen = quant_bytes(ty);
        let qoff = bb - qlen;
        let mut out = Self {
            ty,
            blocks: nb,
            row_stride,
            data: Vec::new(),
        };
        let (sa, ma) = (out.scales_at(), out.mins_at());
        for (src, dst) in ggml
            .chunks_exact(nb * bb)
            .zip(data.chunks_exact_mut(row_stride))
        {
            for b in 0..nb {
                let blk = &src[b * bb..(b + 1) * bb];
                dst[b * qlen..(b + 1) * qlen].copy_from_slice(&blk[qoff..qoff + qlen]);
                dst[sa + 2 * b..sa + 2 * b + 2].copy_from_slice(&blk[0..2]);
                if ty == WeightType::Q4_1 {
                    dst[ma + 2 * b..ma + 2 * b + 2].copy_from_slice(&blk[2..4]);
                }
            }
        }
        out.data = data;
        Ok(out)
    }

    pub fn row(&self, j: usize) -> &[u8] {
        &self.data[j * self.row_stride..(j + 1) * self.row_stride]
    }

    /// Row `j` back in GGUF layout (`cols` weights).
    pub fn ggml_row(&self, j: usize, cols: usize) -> Vec<u8> {
        let (ty, row) = (self.ty, self.row(j));
        let nb = cols / 32;
        let (sa, ma) = (self.scales_at(), self.mins_at());
        let mut out = Vec::with_capacity(nb * ty.block_bytes());
        for b in 0..nb {
            out.extend_from_slice(&row[sa + 2 * b..sa + 2 * b + 2]);
            match ty {
                WeightType::Q4_1 => {
                    out.extend_from_slice(&row[ma + 2 * b..ma + 2 * b + 2]);
                    out.extend_from_slice(&row[16 * b..16 * (b + 1)]);
                }
                WeightType::Q4_0 => out.extend_from_slice(&row[16 * b..16 * (b + 1)]),
                _ => out.extend_from_slice(&row[32 * b..32 * (b + 1)]),
            }
        }
        out
    }
}

/// Activations quantized as [`QuantizedActs`] (same numbers), padded to whole groups and, for
/// 4-bit weights, reordered to meet packed nibbles.
#[derive(Debug, Clone, Default)]
pub(crate) struct PackedActs {
    /// Blocks per row before padding.
    pub nb: usize,
    /// Padded row length in values.
    pub kp: usize,
    /// Padded blocks per row.
    pub nbp: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub isum: Vec<i32>,
}

impl PackedActs {
    /// Packs `a` (quantized for a 32-block format) for `ty`'s kernels. Leaves, for the
    /// kernels' unchecked reads of rows `0..a.rows`: `qs.len() == a.rows * kp` and
    /// `d`, `s`, `isum` each `a.rows * nbp` long, with `nbp` a multiple of `ty`'s group and
    /// `kp == nbp * 32`.
    pub fn pack(&mut self, ty: WeightType, a: &QuantizedActs) {
        // A real check (once per call): Q8K activations have no `s` or `isum`.
        assert_eq!(
            a.format,
            ActivationFormat::Q8,
            "packed weights meet Q8 activations"
        );
        let gb = group_blocks(ty);
        let nb = a.k / 32;
        let nbp = nb.div_ceil(gb) * gb;
        // Checked although `a.rows * a.k` values exist in memory: padding makes rows longer.
        let kp = nbp.checked_mul(32);
        let values = kp.and_then(|kp| a.rows.checked_mul(kp));
        let blocks = a.rows.checked_mul(nbp);
        let (Some(kp), Some(values), Some(blocks)) = (kp, values, blocks) else {
            panic!(
                "{} padded activation rows of {nbp} blocks overflow usize",
                a.rows
            );
        };
        self.nb = nb;
        self.nbp = nbp;
        self.kp = kp;
        self.qs.clear();
        self.qs.resize(values, 0);
        for v in [&mut self.d, &mut self.s] {
            v.clear();
            v.resize(blocks, 0.0);
        }
        self.isum.clear();
        self.isum.resize(blocks, 0);
        let interleave = gb == 4;
        for r in 0..a.rows {
            let src = &a.qs[r * a.k..(r + 1) * a.k];
            let dst = &mut self.qs[r * self.kp..(r + 1) * self.kp];
            for b in 0..nb {
                let x = &src[32 * b..32 * (b + 1)];
                if interleave {
                    // Group g = b / 4 holds 128 values: 64 meeting low nibbles (16 per block),
                    // then 64 meeting high nibbles.
                    let (g, i) = (b / 4, b % 4);
                    dst[128 * g + 16 * i..128 * g + 16 * i + 16].copy_from_slice(&x[..16]);
                    dst[128 * g + 64 + 16 * i..128 * g + 64 + 16 * i + 16]
                        .copy_from_slice(&x[16..]);
                } else {
                    dst[32 * b..32 * (b + 1)].copy_from_slice(x);
                }
            }
            for (dst, src) in [(&mut self.d, &a.d), (&mut self.s, &a.s)] {
                dst[r * nbp..r * nbp + nb].copy_from_slice(&src[r * nb..(r + 1) * nb]);
            }
            self.isum[r * nbp..r * nbp + nb].copy_from_slice(&a.isum[r * nb..(r + 1) * nb]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pack` establishes the length the 512-bit kernels read by, so it checks it itself: a
    /// row count whose byte product wraps, or bytes that are not exactly the rows, are errors.
    #[test]
    fn pack_checks_the_length_the_kernels_rely_on() {
        let ty = WeightType::Q8_0;
        let wraps = usize::MAX / ty.row_bytes(32) + 2;
        assert!(PackedMatrix::pack(ty, wraps, 32, &[0; 34]).is_err());
        assert!(PackedMatrix::pack(ty, 2, 32, &[0; 34]).is_err());
        assert!(PackedMatrix::pack(ty, 1, 48, &[0; 51]).is_err());
        assert!(PackedMatrix::pack(WeightType::Q4K, 1, 256, &[0; 144]).is_err());
        let p = PackedMatrix::pack(ty, 2, 64, &[0; 136]).unwrap();
        assert_eq!(p.data.len(), 2 * p.row_stride);
    }
}
