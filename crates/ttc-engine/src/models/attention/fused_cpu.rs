//! Attention on ttc's own CPU kernels (`ttc_kernels::attention`): the CPU back-end. The block
//! is three operations instead of fourteen: the stacked Q/K/V projection; K (rotated) and V
//! written into the pools in place; the queries rotated and attended in one fused op that reads
//! the paged pools directly, rows sharing a prompt reading its keys once for the group.

use candle_core::Tensor;
use ttc_kernels::Isa;

use super::AttentionDims;
use crate::error::Result;
use crate::kernel_ops::{self, RopeTables};
use crate::models::linear::{Linear, Projections};
use crate::models::{BatchEntry, RopeLayout};

/// What every layer's fused attention block needs from one forward pass.
pub(crate) struct Step<'a> {
    positions: &'a [u32],
    /// Pool row of each new token.
    slots: &'a [u32],
    /// Visible slots of each query row: its sequence's slots up to its own position.
    rows: Vec<&'a [u32]>,
}

impl<'a> Step<'a> {
    pub(crate) fn new(batch: &'a [BatchEntry<'a>], positions: &'a [u32], slots: &'a [u32]) -> Self {
        let mut rows: Vec<&[u32]> = Vec::with_capacity(positions.len());
        for e in batch {
            let start = e.slots.len() - e.tokens.len();
            rows.extend((1..=e.tokens.len()).map(|i| &e.slots[..start + i]));
        }
        Self {
            positions,
            slots,
            rows,
        }
    }
}

/// The rotary tables on the host, as the kernels read them.
pub(crate) fn host_tables(cos: &Tensor, sin: &Tensor) -> Result<RopeTables> {
    let half = cos.dim(1)?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    Ok(RopeTables {
        cos: flat(cos)?,
        sin: flat(sin)?,
        half,
    })
}

/// The attention block on ttc's CPU kernels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_block(
    d: &AttentionDims,
    tables: &RopeTables,
    share_prefixes: bool,
    isa: Isa,
    qkv: &Projections,
    o: &Linear,
    x: &Tensor,
    step: &Step,
    k_pool: &Tensor,
    v_pool: &Tensor,
) -> candle_core::Result<Tensor> {
    let qkv = match qkv.stacked(x)? {
        Some(y) => y,
        None => Tensor::cat(&qkv.forward(x)?, 1)?,
    }
    .contiguous()?;
    let layout = kernel_ops::QkvLayout {
        n_heads: d.n_heads,
        n_kv_heads: d.n_kv_heads,
        head_dim: d.head_dim,
        rope_dim: d.rope_dim,
        rope: match d.rope {
            RopeLayout::Interleaved => ttc_kernels::rope::RopeLayout::Interleaved,
            RopeLayout::Halves => ttc_kernels::rope::RopeLayout::Halves,
        },
    };
    for (pool, part) in [
        (k_pool, kernel_ops::KvPart::Keys),
        (v_pool, kernel_ops::KvPart::Values),
    ] {
        let op = kernel_ops::WriteKvOp {
            part,
            layout,
            positions: step.positions,
            slots: step.slots,
            tables,
        };
        pool.inplace_op2(&qkv, &op)?;
    }
    let op = kernel_ops::QkvAttentionOp {
        layout,
        positions: step.positions,
        tables,
        rows: &step.rows,
        scale: 1.0 / (d.head_dim as f32).sqrt(),
        share_prefixes,
        isa,
    };
    o.forward(&qkv.apply_op3_no_bwd(k_pool, v_pool, &op)?)
}
