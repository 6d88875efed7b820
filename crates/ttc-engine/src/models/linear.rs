//! A decoder's weight matrices and norms: each matrix runs on ttc's CPU kernels where the
//! model is on the kernel path and they cover its format and device (`ttc-kernels`, through
//! [`crate::kernel_ops`]), on candle's `QMatMul` otherwise. Projections that read one input
//! (Q/K/V; gate/up) are stacked into one matrix when the kernels run them all: one call, one
//! activation quantization.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use ttc_kernels::{Isa, QMatrix};

use crate::error::Result;
use crate::kernel_ops;
use crate::weights::WeightSource;

/// A weight matrix: ttc's CPU kernels where they cover the format, candle's otherwise.
#[derive(Clone)]
pub(crate) enum Weight {
    Kernel(Arc<QMatrix>),
    Candle(QMatMul),
}

/// `t` as a kernel matrix for `kernels`, when the model is on the kernel path and they cover
/// `t`'s format and device.
fn kernel_matrix(t: &QTensor, kernels: Option<Isa>) -> Result<Option<QMatrix>> {
    match kernels {
        Some(isa) => Ok(kernel_ops::qmatrix(t, isa)?),
        None => Ok(None),
    }
}

impl Weight {
    /// `kernels`: the instruction set of ttc's kernels, or `None` for candle's matmul.
    pub(crate) fn new(t: QTensor, kernels: Option<Isa>) -> Result<Self> {
        match kernel_matrix(&t, kernels)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(t)?)),
        }
    }

    pub(crate) fn from_arc(t: Arc<QTensor>, kernels: Option<Isa>) -> Result<Self> {
        match kernel_matrix(&t, kernels)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_arc(t)?)),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Kernel(m) => x
                .contiguous()?
                .apply_op1_no_bwd(&kernel_ops::QMatMulOp(m.clone())),
            Self::Candle(m) => m.forward(x),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn load(
        w: &dyn WeightSource,
        name: &str,
        with_bias: bool,
        device: &Device,
        kernels: Option<Isa>,
    ) -> Result<Self> {
        let weight = Weight::new(w.tensor(&format!("{name}.weight"), device)?, kernels)?;
        let bias_name = format!("{name}.bias");
        let bias = if with_bias && w.has_tensor(&bias_name) {
            Some(w.tensor(&bias_name, device)?.dequantize(device)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    fn out_features(&self) -> Option<usize> {
        match &self.weight {
            Weight::Kernel(m) => Some(m.rows()),
            Weight::Candle(_) => None,
        }
    }

    /// The parts' output features side by side in one matrix, when all run on ttc's kernels
    /// with one format (Q, K and V; gate and up): one call, one activation quantization.
    fn stack(parts: &[&Linear]) -> Result<Option<Self>> {
        if parts.len() < 2 {
            return Ok(None);
        }
        let mut mats = Vec::with_capacity(parts.len());
        for p in parts {
            match &p.weight {
                Weight::Kernel(m) => mats.push(m.as_ref()),
                Weight::Candle(_) => return Ok(None),
            }
        }
        let Ok(stacked) = QMatrix::stack(&mats) else {
            return Ok(None);
        };
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(Tensor::cat(
                &parts
                    .iter()
                    .map(|p| p.bias.clone().expect("bias"))
                    .collect::<Vec<_>>(),
                0,
            )?)
        } else if parts.iter().all(|p| p.bias.is_none()) {
            None
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            weight: Weight::Kernel(Arc::new(stacked)),
            bias,
        }))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(
        w: &dyn WeightSource,
        name: &str,
        eps: f32,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(name, device)?.dequantize(device)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// Projections of one input: stacked into one matrix when ttc's kernels run them all (one
/// call, one activation quantization), else kept apart.
pub(crate) enum Projections {
    Stacked(Linear, Vec<usize>),
    Separate(Vec<Linear>),
}

impl Projections {
    pub(crate) fn new(parts: Vec<Linear>) -> Result<Self> {
        let widths = parts
            .iter()
            .map(|p| p.out_features())
            .collect::<Option<Vec<_>>>();
        match (Linear::stack(&parts.iter().collect::<Vec<_>>())?, widths) {
            (Some(stacked), Some(widths)) => Ok(Self::Stacked(stacked, widths)),
            _ => Ok(Self::Separate(parts)),
        }
    }

    /// All outputs side by side, when stacked.
    pub(crate) fn stacked(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self {
            Self::Stacked(stacked, _) => Ok(Some(stacked.forward(x)?)),
            Self::Separate(_) => Ok(None),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Self::Stacked(stacked, widths) => {
                let y = stacked.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&w| {
                        at += w;
                        y.narrow(1, at - w, w)
                    })
                    .collect()
            }
        }
    }
}
