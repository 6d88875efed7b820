//! ttc's own CPU kernels (`ttc-kernels`) as candle operations: quantized matmul and fused
//! paged attention. candle tensors stay the engine's currency; on the CPU these two ops, which
//! hold nearly all of a forward pass's arithmetic, run ttc's kernels on candle's storage
//! without copies. Other devices keep candle's own path.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape};
use ttc_kernels::attention::AttentionDims;
use ttc_kernels::{Isa, QMatrix, WeightType};

/// The kernels' format for a GGML type they cover.
pub fn weight_type(dtype: GgmlDType) -> Option<WeightType> {
    match dtype {
        GgmlDType::Q4_0 => Some(WeightType::Q4_0),
        GgmlDType::Q4_1 => Some(WeightType::Q4_1),
        GgmlDType::Q8_0 => Some(WeightType::Q8_0),
        GgmlDType::Q4K => Some(WeightType::Q4K),
        GgmlDType::Q6K => Some(WeightType::Q6K),
        _ => None,
    }
}

/// `t`'s bytes as a kernel matrix for `isa`'s kernels, when it is a CPU tensor of a covered
/// format.
pub fn qmatrix(t: &QTensor, isa: Isa) -> candle_core::Result<Option<QMatrix>> {
    let Some(ty) = weight_type(t.dtype()) else {
        return Ok(None);
    };
    if !t.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = t.shape().dims2()?;
    if ty.check_row_len(cols).is_err() {
        return Ok(None);
    }
    let m = QMatrix::new_for(isa, ty, rows, cols, t.data()?.into_owned())
        .map_err(candle_core::Error::wrap)?;
    Ok(Some(m))
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what} must be f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// `x (.., k) -> x W^T (.., n)` with a kernel matrix.
pub struct QMatMulOp(pub Arc<QMatrix>);

impl CustomOp1 for QMatMulOp {
    fn name(&self) -> &'static str {
        "ttc-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "matmul input")?;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.0.cols() {
            candle_core::bail!(
                "matmul input has {k} columns, the weights {}",
                self.0.cols()
            );
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * self.0.rows()];
        self.0
            .matmul(x, m, &mut y)
            .map_err(candle_core::Error::wrap)?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("dims") = self.0.rows();
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Where Q, K and V sit in a row of the stacked projection output, and how to rotate them.
#[derive(Debug, Clone, Copy)]
pub struct QkvLayout {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope: ttc_kernels::rope::RopeLayout,
}

impl QkvLayout {
    fn width(&self) -> usize {
        (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    }
}

/// Cosine and sine tables, `(context, rope_dim / 2)` row-major, on the host.
pub struct RopeTables {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTables {
    fn at(&self, pos: u32) -> (&[f32], &[f32]) {
        let p = pos as usize * self.half;
        (&self.cos[p..p + self.half], &self.sin[p..p + self.half])
    }
}

/// Which pool [`WriteKvOp`] fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPart {
    Keys,
    Values,
}

/// Writes each new token's K (rotated at its position) or V from the stacked projection
/// output into the pool rows `slots`, in place: no gathered copy, no scatter index tensor.
pub struct WriteKvOp<'a> {
    pub part: KvPart,
    pub layout: QkvLayout,
    pub positions: &'a [u32],
    pub slots: &'a [u32],
    pub tables: &'a RopeTables,
}

impl candle_core::InplaceOp2 for WriteKvOp<'_> {
    fn name(&self) -> &'static str {
        "ttc-write-kv"
    }

    fn cpu_fwd(
        &self,
        pool: &mut CpuStorage,
        pl: &Layout,
        qkv: &CpuStorage,
        ql: &Layout,
    ) -> candle_core::Result<()> {
        let src = f32_slice(qkv, ql, "projections")?;
        let CpuStorage::F32(dst) = pool else {
            candle_core::bail!("the KV pool must be f32")
        };
        let Some((p0, p1)) = pl.contiguous_offsets() else {
            candle_core::bail!("the KV pool must be contiguous")
        };
        let dst = &mut dst[p0..p1];
        let l = &self.layout;
        let (w, kvd) = (l.width(), l.n_kv_heads * l.head_dim);
        let offset = match self.part {
            KvPart::Keys => l.n_heads * l.head_dim,
            KvPart::Values => (l.n_heads + l.n_kv_heads) * l.head_dim,
        };
        if src.len() != self.slots.len() * w || self.positions.len() != self.slots.len() {
            candle_core::bail!(
                "{} new tokens need {} projection values",
                self.slots.len(),
                self.slots.len() * w
            );
        }
        for (t, (&slot, &pos)) in self.slots.iter().zip(self.positions).enumerate() {
            let row = &mut dst
                .get_mut(slot as usize * kvd..(slot as usize + 1) * kvd)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("slot {slot} is outside the pool"))
                })?;
            row.copy_from_slice(&src[t * w + offset..t * w + offset + kvd]);
            if self.part == KvPart::Keys {
                let (cos, sin) = self.tables.at(pos);
                ttc_kernels::rope::rotate_heads(row, l.head_dim, l.rope_dim, l.rope, cos, sin);
            }
        }
        Ok(())
    }
}

/// The queries of the stacked projection output, rotated, attending the pools through each
/// row's slot list: `(t, n_heads * head_dim)`.
pub struct QkvAttentionOp<'a> {
    pub layout: QkvLayout,
    pub positions: &'a [u32],
    pub tables: &'a RopeTables,
    pub rows: &'a [&'a [u32]],
    pub scale: f32,
    /// Rows sharing a prompt attend it together (see `ttc_kernels::attention::attend`).
    pub share_prefixes: bool,
    /// The instruction set the attention kernel runs on.
    pub isa: Isa,
}

impl CustomOp3 for QkvAttentionOp<'_> {
    fn name(&self) -> &'static str {
        "ttc-qkv-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(qs, ql, "projections")?;
        let k = f32_slice(ks, kl, "key pool")?;
        let v = f32_slice(vs, vl, "value pool")?;
        let l = &self.layout;
        let (w, qd) = (l.width(), l.n_heads * l.head_dim);
        let t = self.rows.len();
        if qkv.len() != t * w || self.positions.len() != t {
            candle_core::bail!("{t} query rows need {} projection values", t * w);
        }
        let mut q = vec![0f32; t * qd];
        for (r, (row, &pos)) in q.chunks_exact_mut(qd).zip(self.positions).enumerate() {
            row.copy_from_slice(&qkv[r * w..r * w + qd]);
            let (cos, sin) = self.tables.at(pos);
            ttc_kernels::rope::rotate_heads(row, l.head_dim, l.rope_dim, l.rope, cos, sin);
        }
        let dims = AttentionDims {
            n_heads: l.n_heads,
            n_kv_heads: l.n_kv_heads,
            head_dim: l.head_dim,
        };
        let mut out = vec![0f32; t * qd];
        ttc_kernels::attention::attend_on(
            self.isa,
            dims,
            self.scale,
            &q,
            k,
            v,
            self.rows,
            self.share_prefixes,
            &mut out,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(out), Shape::from((t, qd))))
    }
}

struct SyncPtr(*mut f32);
// SAFETY: shared only by tasks that write disjoint parts of the buffer.
unsafe impl Sync for SyncPtr {}

/// `silu(gate) * up` from the stacked gate/up output `(t, 2f)`: `(t, f)`, with candle's
/// `silu` arithmetic (`x / (1 + e^-x)`).
pub struct SwiGluOp;

impl CustomOp1 for SwiGluOp {
    fn name(&self) -> &'static str {
        "ttc-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gate/up")?;
        let (t, two_f) = l.shape().dims2()?;
        let f = two_f / 2;
        let mut out = vec![0f32; t * f];
        // Spread over the pool in runs of whole rows' halves: `exp` is most of the cost.
        const RUN: usize = 512;
        let runs = f.div_ceil(RUN);
        let out_ptr = SyncPtr(out.as_mut_ptr());
        ttc_kernels::threads::parallel_for(t * runs, &|task| {
            let (row, c0) = (task / runs, task % runs * RUN);
            let c1 = (c0 + RUN).min(f);
            let (gate, up) = (
                &x[row * two_f + c0..row * two_f + c1],
                &x[row * two_f + f + c0..row * two_f + f + c1],
            );
            let out_ptr = &out_ptr;
            // SAFETY: tasks write disjoint runs of `out`.
            let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * f + c0), c1 - c0) };
            for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((t, f))))
    }
}
