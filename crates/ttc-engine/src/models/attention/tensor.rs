//! Attention in candle tensor operations: the back-end of every device but the CPU (CUDA,
//! Metal), and on the CPU when ttc's fused kernel is turned off (for testing the GPU's code
//! path here). K and V are written into the paged pools with `scatter_set`; each sequence
//! attends its own slots through an index tensor, and decode rows that share a prompt use
//! cascade attention: one matmul over the shared prefix for all members, one padded batched
//! matmul over their own suffixes, merged by log-sum-exp.
//!
//! Reference: FlashInfer's cascade attention (shared-prefix decoding), vLLM's paged attention
//! (block tables), read, not copied.

use candle_core::{Device, Tensor, D};

use super::AttentionDims;
use crate::error::Result;
use crate::models::linear::{Linear, Projections};
use crate::models::{BatchEntry, RopeLayout};

/// What every layer's attention needs from one forward pass on this back-end.
pub(crate) struct Step {
    /// Rotary tables at each new token's position.
    cos: Tensor,
    sin: Tensor,
    /// Pool row of each new token, broadcast over the KV width (for `scatter_set`).
    write_idx: Tensor,
    plan: AttentionPlan,
}

impl Step {
    pub(crate) fn new(
        batch: &[BatchEntry],
        positions: &[u32],
        new_slots: &[u32],
        kv_dim: usize,
        tables: (&Tensor, &Tensor),
        cascade_min_prefix: usize,
        dev: &Device,
    ) -> Result<Self> {
        let t = positions.len();
        let pos = Tensor::from_vec(positions.to_vec(), t, dev)?;
        let cos = tables.0.index_select(&pos, 0)?.contiguous()?;
        let sin = tables.1.index_select(&pos, 0)?.contiguous()?;
        let write_idx = Tensor::from_vec(new_slots.to_vec(), (t, 1), dev)?
            .broadcast_as((t, kv_dim))?
            .contiguous()?;
        let plan = AttentionPlan::new(batch, cascade_min_prefix, dev)?;
        Ok(Self {
            cos,
            sin,
            write_idx,
            plan,
        })
    }
}

/// The attention block: Q/K/V projections, rotary embeddings, K and V into the pools,
/// attention per unit of the plan, the output projection.
pub(crate) fn attention_block(
    d: &AttentionDims,
    qkv: &Projections,
    o: &Linear,
    x: &Tensor,
    step: &Step,
    k_pool: &Tensor,
    v_pool: &Tensor,
) -> candle_core::Result<Tensor> {
    let (t, _) = x.dims2()?;
    let (hd, nh, nkv) = (d.head_dim, d.n_heads, d.n_kv_heads);
    let (cos, sin, plan) = (&step.cos, &step.sin, &step.plan);
    let qkv = qkv.forward(x)?;
    let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
    let q = q.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?;
    let k = k.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
    let q = rope(d, &q, cos, sin)?;
    let k = rope(d, &k, cos, sin)?
        .transpose(0, 1)?
        .reshape((t, nkv * hd))?
        .contiguous()?;
    k_pool.scatter_set(&step.write_idx, &k, 0)?;
    v_pool.scatter_set(&step.write_idx, &v.contiguous()?, 0)?;
    let mut outs: Vec<Tensor> = Vec::with_capacity(plan.units.len());
    for unit in &plan.units {
        outs.push(match unit {
            AttentionUnit::Single {
                row,
                n,
                read_idx,
                mask,
            } => attend_one(
                &q.narrow(1, *row, *n)?,
                k_pool,
                v_pool,
                read_idx,
                mask.as_ref(),
                nkv,
            )?,
            AttentionUnit::Group(g) => attend_group(&q, k_pool, v_pool, g, nkv)?,
        });
    }
    // Units are in entry order except groups, whose rows `plan.order` puts back in place.
    let out = if outs.len() == 1 {
        outs.pop().expect("one")
    } else {
        Tensor::cat(&outs, 0)?
    };
    let out = match &plan.order {
        Some(order) => out.index_select(order, 0)?,
        None => out,
    };
    o.forward(&out)
}

/// Rotates `(heads, n, head_dim)`; only the first `rope_dim` dimensions when smaller.
fn rope(d: &AttentionDims, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let x4 = x.unsqueeze(0)?;
    let rotate = |t: &Tensor| match d.rope {
        RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(t, cos, sin),
        RopeLayout::Halves => candle_nn::rotary_emb::rope(t, cos, sin),
    };
    let y = if d.rope_dim == d.head_dim {
        rotate(&x4)?
    } else {
        let head = x4.narrow(D::Minus1, 0, d.rope_dim)?.contiguous()?;
        let tail = x4.narrow(D::Minus1, d.rope_dim, d.head_dim - d.rope_dim)?;
        Tensor::cat(&[&rotate(&head)?, &tail], D::Minus1)?
    };
    y.squeeze(0)
}

/// Mask for `n` new tokens at positions `start..start+n` over `start+n` keys; None for one token.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let total = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (n, total), device)?))
}

/// Plain attention of one sequence's `n` query rows `(heads, n, head_dim)` over its own
/// keys and values, read through its block table.
fn attend_one(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    read_idx: &Tensor,
    mask: Option<&Tensor>,
    nkv: usize,
) -> candle_core::Result<Tensor> {
    let (nh, _, hd) = q.dims3()?;
    let n = q.dim(1)?;
    let total = read_idx.dim(0)?;
    let ks = gather_heads(k_pool, read_idx, nkv, hd)?;
    let vs = gather_heads(v_pool, read_idx, nkv, hd)?;
    // GQA: the `group` query heads that share one KV head become rows of one matmul.
    let group = nh / nkv;
    let qs = q.reshape((nkv, group * n, hd))?;
    let scores = (qs.matmul(&ks.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores
            .reshape((nkv, group, n, total))?
            .broadcast_add(m)?
            .reshape((nkv, group * n, total))?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&vs)?; // (nkv, group * n, hd)
    out.reshape((nh, n, hd))?
        .transpose(0, 1)?
        .reshape((n, nh * hd))
}

/// Cascade attention for decode rows that share a prefix: the prefix K/V is read once and
/// attended by every member's queries in one matmul; each member's own suffix is attended
/// in one padded batched matmul; the two partial softmaxes merge by log-sum-exp.
fn attend_group(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    g: &CascadeGroup,
    nkv: usize,
) -> candle_core::Result<Tensor> {
    let (nh, _, hd) = q.dims3()?;
    let group = nh / nkv;
    let w = g.width;
    let scale = 1.0 / (hd as f64).sqrt();
    // (nh, W, hd) -> (nkv, W, group, hd): rows of one KV head, member-major.
    let qg = q
        .index_select(&g.rows, 1)?
        .reshape((nkv, group, w, hd))?
        .transpose(1, 2)?
        .contiguous()?;

    let kp = gather_heads(k_pool, &g.prefix_idx, nkv, hd)?; // (nkv, L, hd)
    let vp = gather_heads(v_pool, &g.prefix_idx, nkv, hd)?;
    let sp = (qg.reshape((nkv, w * group, hd))?.matmul(&kp.t()?)? * scale)?; // (nkv, W*group, L)
    let mp = sp.max_keepdim(D::Minus1)?;
    let ep = sp.broadcast_sub(&mp)?.exp()?;
    let lp = ep.sum_keepdim(D::Minus1)?.reshape((nkv, w, group, 1))?;
    let op = ep.matmul(&vp)?.reshape((nkv, w, group, hd))?;
    let mp = mp.reshape((nkv, w, group, 1))?;

    let s_max = g.suffix_len;
    let gather_suffix = |pool: &Tensor| -> candle_core::Result<Tensor> {
        pool.index_select(&g.suffix_idx, 0)?
            .reshape((w, s_max, nkv, hd))?
            .permute((2, 0, 1, 3))?
            .contiguous()
    };
    let ks = gather_suffix(k_pool)?; // (nkv, W, S, hd)
    let vs = gather_suffix(v_pool)?;
    let ss = (qg.matmul(&ks.transpose(2, 3)?)? * scale)?; // (nkv, W, group, S)
    let ss = match &g.suffix_mask {
        Some(m) => ss.broadcast_add(m)?,
        None => ss,
    };
    let ms = ss.max_keepdim(D::Minus1)?;
    let es = ss.broadcast_sub(&ms)?.exp()?;
    let ls = es.sum_keepdim(D::Minus1)?;
    let os = es.matmul(&vs)?; // (nkv, W, group, hd)

    let m = mp.maximum(&ms)?;
    let a = (mp - &m)?.exp()?;
    let b = (ms - &m)?.exp()?;
    let num = (op.broadcast_mul(&a)? + os.broadcast_mul(&b)?)?;
    let den = ((lp * &a)? + (ls * &b)?)?;
    let out = num.broadcast_div(&den)?; // (nkv, W, group, hd)
    out.permute((1, 0, 2, 3))?.reshape((w, nh * hd))
}

/// `(rows, kv_dim)` pool rows at `idx`, as `(n_kv_heads, rows, head_dim)`.
fn gather_heads(pool: &Tensor, idx: &Tensor, nkv: usize, hd: usize) -> candle_core::Result<Tensor> {
    let n = idx.dim(0)?;
    pool.index_select(idx, 0)?
        .reshape((n, nkv, hd))?
        .transpose(0, 1)?
        .contiguous()
}

/// Decode rows (one new token each) whose sequences share their first `prefix_len` slots.
struct CascadeGroup {
    width: usize,
    /// Row of each member's query among the batch's tokens.
    rows: Tensor,
    prefix_idx: Tensor,
    /// Each member's slots after the prefix, padded to `suffix_len` (`width * suffix_len`).
    suffix_idx: Tensor,
    suffix_len: usize,
    /// `(width, 1, suffix_len)`: -inf on padding; None when no member is padded.
    suffix_mask: Option<Tensor>,
}

enum AttentionUnit {
    Single {
        row: usize,
        n: usize,
        read_idx: Tensor,
        mask: Option<Tensor>,
    },
    Group(CascadeGroup),
}

/// How one forward pass attends: built once, used by every layer.
struct AttentionPlan {
    units: Vec<AttentionUnit>,
    /// Output row permutation back to entry order, when groups reorder rows.
    order: Option<Tensor>,
}

impl AttentionPlan {
    fn new(batch: &[BatchEntry], min_prefix: usize, dev: &Device) -> Result<Self> {
        let mut first_row = Vec::with_capacity(batch.len());
        let mut row = 0;
        for e in batch {
            first_row.push(row);
            row += e.tokens.len();
        }
        // Candidate groups: decode entries keyed by their first slot (same first block).
        let mut by_first: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        if min_prefix > 0 {
            for (i, e) in batch.iter().enumerate() {
                if e.tokens.len() == 1 && e.slots.len() > min_prefix {
                    by_first.entry(e.slots[0]).or_default().push(i);
                }
            }
        }
        let mut grouped = vec![false; batch.len()];
        let mut units = Vec::new();
        let mut out_rows: Vec<u32> = Vec::new(); // entry row of each output row, in unit order
        for members in by_first.values().filter(|m| m.len() >= 2) {
            // The longest prefix of slots all members share (the new token's slot never is).
            let first = batch[members[0]].slots;
            let mut prefix = members
                .iter()
                .map(|&i| batch[i].slots.len() - 1)
                .min()
                .unwrap_or(0);
            for &i in &members[1..] {
                let s = batch[i].slots;
                prefix = prefix.min(first.iter().zip(s).take_while(|(a, b)| a == b).count());
            }
            if prefix < min_prefix {
                continue;
            }
            let width = members.len();
            let suffix_len = members
                .iter()
                .map(|&i| batch[i].slots.len() - prefix)
                .max()
                .unwrap_or(1);
            let mut suffix = Vec::with_capacity(width * suffix_len);
            let mut mask = Vec::with_capacity(width * suffix_len);
            for &i in members {
                let own = &batch[i].slots[prefix..];
                suffix.extend_from_slice(own);
                // Padding reads slot of the member's own last token and is masked out.
                suffix.extend(std::iter::repeat_n(
                    *own.last().expect("suffix"),
                    suffix_len - own.len(),
                ));
                mask.extend(std::iter::repeat_n(0f32, own.len()));
                mask.extend(std::iter::repeat_n(
                    f32::NEG_INFINITY,
                    suffix_len - own.len(),
                ));
                grouped[i] = true;
                out_rows.push(first_row[i] as u32);
            }
            let padded = mask.iter().any(|m| m.is_infinite());
            units.push(AttentionUnit::Group(CascadeGroup {
                width,
                rows: Tensor::from_vec(
                    members
                        .iter()
                        .map(|&i| first_row[i] as u32)
                        .collect::<Vec<_>>(),
                    width,
                    dev,
                )?,
                prefix_idx: Tensor::new(&first[..prefix], dev)?,
                suffix_idx: Tensor::from_vec(suffix, width * suffix_len, dev)?,
                suffix_len,
                suffix_mask: if padded {
                    Some(Tensor::from_vec(mask, (width, 1, suffix_len), dev)?)
                } else {
                    None
                },
            }));
        }
        for (i, e) in batch.iter().enumerate().filter(|(i, _)| !grouped[*i]) {
            let n = e.tokens.len();
            units.push(AttentionUnit::Single {
                row: first_row[i],
                n,
                read_idx: Tensor::new(e.slots, dev)?,
                mask: causal_mask(n, e.slots.len() - n, dev)?,
            });
            out_rows.extend((first_row[i]..first_row[i] + n).map(|r| r as u32));
        }
        // out_rows[k] = entry row of output row k; invert it to read outputs in entry order.
        let in_order = out_rows.windows(2).all(|w| w[0] < w[1]);
        let order = if in_order {
            None
        } else {
            let mut inverse = vec![0u32; out_rows.len()];
            for (k, &r) in out_rows.iter().enumerate() {
                inverse[r as usize] = k as u32;
            }
            Some(Tensor::from_vec(inverse, out_rows.len(), dev)?)
        };
        Ok(Self { units, order })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cascade attention against plain attention, member by member, on random K/V: members
    /// share a prefix of slots and have suffixes of different lengths (padded and masked).
    #[test]
    fn cascade_group_equals_plain_attention_per_member() {
        let dev = Device::Cpu;
        let (nkv, group, hd) = (2, 3, 8);
        let nh = nkv * group;
        let k_pool = Tensor::randn(0f32, 1.0, (64, nkv * hd), &dev).unwrap();
        let v_pool = Tensor::randn(0f32, 1.0, (64, nkv * hd), &dev).unwrap();
        let prefix: Vec<u32> = (0..10).collect();
        // Four members, so that members, KV heads and the query group differ in size.
        let suffixes: [Vec<u32>; 4] = [
            vec![20, 21],
            vec![30, 31, 32, 33, 34],
            vec![40],
            vec![50, 51, 52],
        ];
        let slots: Vec<Vec<u32>> = suffixes
            .iter()
            .map(|s| prefix.iter().chain(s).copied().collect())
            .collect();
        let entries: Vec<BatchEntry> = slots
            .iter()
            .map(|s| BatchEntry {
                tokens: &[7],
                slots: s,
                want_output: true,
            })
            .collect();
        let plan = AttentionPlan::new(&entries, 4, &dev).unwrap();
        let AttentionUnit::Group(g) = &plan.units[0] else {
            panic!("expected one cascade group")
        };
        assert_eq!((plan.units.len(), g.width, g.suffix_len), (1, 4, 5));
        let q = Tensor::randn(0f32, 1.0, (nh, 4, hd), &dev).unwrap();
        let cascade = attend_group(&q, &k_pool, &v_pool, g, nkv)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (m, s) in slots.iter().enumerate() {
            let idx = Tensor::new(s.as_slice(), &dev).unwrap();
            let plain = attend_one(
                &q.narrow(1, m, 1).unwrap(),
                &k_pool,
                &v_pool,
                &idx,
                None,
                nkv,
            )
            .unwrap();
            let plain = plain.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
            let diff = plain
                .iter()
                .zip(&cascade[m])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "member {m}: {diff}");
        }
    }
}
