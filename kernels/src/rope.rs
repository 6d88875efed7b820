//! Rotary position embeddings applied in place to one token's heads, as the fused attention
//! block needs them (queries before attending, keys before they enter the KV pool).
//!
//! The arithmetic is candle-nn's `rope_i` / `rope` (`rotary_emb.rs`) operation for operation, so
//! the fused path computes the same bits as the tensor path it replaces.

use crate::KernelError;

/// How a head's dimensions pair up for rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): GGUF Llama, whose converter permutes Q and K for it.
    Interleaved,
    /// Pairs (i, i + rope_dim/2): Qwen2 (NeoX style).
    Halves,
}

/// Rotates the first `rope_dim` dimensions of each `head_dim`-wide head in `x` by the angles
/// whose cosines and sines are `cos`, `sin` (`rope_dim / 2` each, for this token's position).
///
/// # Panics
///
/// If the shapes are inconsistent (see [`try_rotate_heads`]). The engine checks
/// `rope_dim <= head_dim` once when it reads a model (`ttc-engine`'s `models` module), so a
/// panic here means a caller that skipped that check; this function does not rely on it.
pub fn rotate_heads(
    x: &mut [f32],
    head_dim: usize,
    rope_dim: usize,
    layout: RopeLayout,
    cos: &[f32],
    sin: &[f32],
) {
    if let Err(e) = try_rotate_heads(x, head_dim, rope_dim, layout, cos, sin) {
        panic!("{e}");
    }
}

/// As [`rotate_heads`], returning an error, and leaving `x` untouched, where `head_dim` is 0,
/// `x` is not whole heads, `rope_dim > head_dim`, or `cos` or `sin` has fewer than
/// `rope_dim / 2` values. Checked once per call, not per head.
pub fn try_rotate_heads(
    x: &mut [f32],
    head_dim: usize,
    rope_dim: usize,
    layout: RopeLayout,
    cos: &[f32],
    sin: &[f32],
) -> Result<(), KernelError> {
    let half = rope_dim / 2;
    if head_dim == 0 || !x.len().is_multiple_of(head_dim) {
        return Err(KernelError::Shape(format!(
            "{} values are not whole heads of {head_dim}",
            x.len()
        )));
    }
    if rope_dim > head_dim {
        return Err(KernelError::Shape(format!(
            "rope_dim {rope_dim} exceeds head_dim {head_dim}"
        )));
    }
    if cos.len() < half || sin.len() < half {
        return Err(KernelError::Shape(format!(
            "rotating {rope_dim} dimensions needs {half} cosines and sines, got {} and {}",
            cos.len(),
            sin.len()
        )));
    }
    // Safe indexing throughout; the checks above make every index valid (`i1`, `i2` are
    // below `rope_dim <= head_dim`, `i < half`), so its bounds checks never fire.
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (i1, i2) = match layout {
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                RopeLayout::Halves => (i, i + half),
            };
            let (a, b) = (head[i1], head[i2]);
            head[i1] = a * cos[i] - b * sin[i];
            head[i2] = a * sin[i] + b * cos[i];
        }
    }
    Ok(())
}
