//! ttc's own CPU kernels (`ttc-kernels`) as candle operations: quantized matmul and fused
//! paged attention. candle tensors stay the engine's currency; on the CPU these two ops, which
//! hold nearly all of a forward pass's arithmetic, run ttc's kernels on candle's storage
//! without copies. Other devices keep candle's own path.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};
use ttc_kernels::attention::AttentionDims;
use ttc_kernels::{QMatrix, WeightType};

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

/// `t`'s bytes as a kernel matrix, when it is a CPU tensor of a covered format.
pub fn qmatrix(t: &QTensor) -> candle_core::Result<Option<QMatrix>> {
    let Some(ty) = weight_type(t.dtype()) else { return Ok(None) };
    if !t.device().is_cpu() {
        return Ok(None);
    }
    let (rows, cols) = t.shape().dims2()?;
    if ty.check_row_len(cols).is_err() {
        return Ok(None);
    }
    let m = QMatrix::new(ty, rows, cols, t.data()?.into_owned()).map_err(candle_core::Error::wrap)?;
    Ok(Some(m))
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else { candle_core::bail!("{what} must be f32") };
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
            candle_core::bail!("matmul input has {k} columns, the weights {}", self.0.cols());
        }
        let m = x.len() / k.max(1);
        let mut y = vec![0f32; m * self.0.rows()];
        self.0.matmul(x, m, &mut y).map_err(candle_core::Error::wrap)?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("dims") = self.0.rows();
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

/// Attention of query rows `(t, n_heads * head_dim)` over the layer's K and V pools, each row
/// through its own slot list.
pub struct PagedAttentionOp<'a> {
    pub dims: AttentionDims,
    pub scale: f32,
    pub rows: &'a [&'a [u32]],
}

impl CustomOp3 for PagedAttentionOp<'_> {
    fn name(&self) -> &'static str {
        "ttc-paged-attention"
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
        let q = f32_slice(qs, ql, "queries")?;
        let k = f32_slice(ks, kl, "key pool")?;
        let v = f32_slice(vs, vl, "value pool")?;
        let mut out = vec![0f32; q.len()];
        ttc_kernels::attention::attend(self.dims, self.scale, q, k, v, self.rows, &mut out).map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

/// Runs [`PagedAttentionOp`] (CPU tensors only).
pub fn paged_attention(q: &Tensor, k_pool: &Tensor, v_pool: &Tensor, op: PagedAttentionOp) -> candle_core::Result<Tensor> {
    q.apply_op3_no_bwd(k_pool, v_pool, &op)
}
