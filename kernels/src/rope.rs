//! Rotary position embeddings applied in place to one token's heads, as the fused attention
//! block needs them (queries before attending, keys before they enter the KV pool).
//!
//! The arithmetic is candle-nn's `rope_i` / `rope` (`rotary_emb.rs`) operation for operation, so
//! the fused path computes the same bits as the tensor path it replaces.

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
pub fn rotate_heads(
    x: &mut [f32],
    head_dim: usize,
    rope_dim: usize,
    layout: RopeLayout,
    cos: &[f32],
    sin: &[f32],
) {
    let half = rope_dim / 2;
    debug_assert!(cos.len() >= half && sin.len() >= half && rope_dim <= head_dim);
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
}
