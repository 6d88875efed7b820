//! Attention over the paged KV cache, with two back-ends chosen explicitly when a model loads
//! ([`AttentionBackend`]): ttc's fused CPU kernel (`fused_cpu`), and candle tensor operations
//! with cascade attention (`tensor`), which CUDA and Metal run and which the CPU runs on
//! request so that the GPU's code path is tested on every machine.

mod fused_cpu;
mod tensor;

use candle_core::{DType, Device, Tensor};
use ttc_kernels::Isa;

use super::linear::{Linear, Projections};
use super::{BatchEntry, ModelConfig, RopeLayout};
use crate::error::{EngineError, Result};
use crate::kernel_ops::RopeTables;
use crate::kv_cache::KvCache;

/// Which code computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionBackend {
    /// ttc's fused kernel over the paged pools (CPU only; the CPU's default).
    FusedCpu,
    /// candle operations: scatter into the pools, gather per sequence, cascade attention over
    /// shared prefixes (every device; the default off the CPU).
    Tensor,
}

impl AttentionBackend {
    pub fn name(self) -> &'static str {
        match self {
            Self::FusedCpu => "fused-cpu",
            Self::Tensor => "tensor",
        }
    }
}

/// A shared prefix shorter than this is not worth a group pass.
const DEFAULT_CASCADE_MIN_PREFIX: usize = 32;

/// The shape of attention in one model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionDims {
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rope_dim: usize,
    pub(crate) rope: RopeLayout,
}

/// One model's attention: its shape, rotary tables and back-end.
pub(crate) struct Attention {
    dims: AttentionDims,
    backend: AttentionBackend,
    /// `(context_length, rope_dim / 2)` tables on the model's device, by absolute position.
    rope_cos: Tensor,
    rope_sin: Tensor,
    /// Host copies of the tables, while the fused CPU back-end runs.
    host_tables: Option<RopeTables>,
    /// Decode rows sharing at least this many leading KV slots attend them together
    /// (0: never).
    cascade_min_prefix: usize,
    /// Instruction set of the fused kernel; `None` on the tensor path.
    isa: Option<Isa>,
    device: Device,
}

/// What one forward pass prepared for every layer's attention.
pub(crate) enum Step<'a> {
    FusedCpu(fused_cpu::Step<'a>),
    Tensor(tensor::Step),
}

impl Attention {
    pub(crate) fn new(
        config: &ModelConfig,
        freq_factors: Option<&[f32]>,
        device: &Device,
        isa: Option<Isa>,
    ) -> Result<Self> {
        let (rope_cos, rope_sin) = rope_tables(config, freq_factors, device)?;
        let mut a = Self {
            dims: AttentionDims {
                n_heads: config.n_heads,
                n_kv_heads: config.n_kv_heads,
                head_dim: config.head_dim,
                rope_dim: config.rope_dim,
                rope: config.rope_layout,
            },
            backend: AttentionBackend::Tensor,
            rope_cos,
            rope_sin,
            host_tables: None,
            cascade_min_prefix: DEFAULT_CASCADE_MIN_PREFIX,
            isa,
            device: device.clone(),
        };
        if device.is_cpu() && isa.is_some() {
            a.set_backend(AttentionBackend::FusedCpu)?;
        }
        Ok(a)
    }

    pub(crate) fn backend(&self) -> AttentionBackend {
        self.backend
    }

    /// Switches the back-end; the fused one exists on the CPU's kernel path only.
    pub(crate) fn set_backend(&mut self, backend: AttentionBackend) -> Result<()> {
        match backend {
            AttentionBackend::FusedCpu if !self.device.is_cpu() || self.isa.is_none() => {
                return Err(EngineError::InvalidArgument(
                    "the fused attention kernel runs on the CPU's kernel path only".into(),
                ));
            }
            AttentionBackend::FusedCpu => {
                self.host_tables = Some(fused_cpu::host_tables(&self.rope_cos, &self.rope_sin)?);
            }
            AttentionBackend::Tensor => self.host_tables = None,
        }
        self.backend = backend;
        Ok(())
    }

    pub(crate) fn set_cascade(&mut self, on: bool) {
        self.cascade_min_prefix = if on { DEFAULT_CASCADE_MIN_PREFIX } else { 0 };
    }

    /// Prepares a forward pass over `batch`, whose new tokens sit at `positions` and go to
    /// pool rows `new_slots`.
    pub(crate) fn prepare<'a>(
        &self,
        batch: &'a [BatchEntry<'a>],
        positions: &'a [u32],
        new_slots: &'a [u32],
        cache: &KvCache,
    ) -> Result<Step<'a>> {
        Ok(match self.backend {
            AttentionBackend::FusedCpu => {
                Step::FusedCpu(fused_cpu::Step::new(batch, positions, new_slots))
            }
            AttentionBackend::Tensor => Step::Tensor(tensor::Step::new(
                batch,
                positions,
                new_slots,
                cache.kv_dim(),
                (&self.rope_cos, &self.rope_sin),
                self.cascade_min_prefix,
                &self.device,
            )?),
        })
    }

    /// One layer's attention block on `x` (after its norm), output projection included.
    pub(crate) fn forward(
        &self,
        qkv: &Projections,
        o: &Linear,
        x: &Tensor,
        step: &Step,
        k_pool: &Tensor,
        v_pool: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match step {
            Step::FusedCpu(s) => {
                let (Some(tables), Some(isa)) = (self.host_tables.as_ref(), self.isa) else {
                    candle_core::bail!("fused attention off the kernel path")
                };
                let share = self.cascade_min_prefix > 0;
                fused_cpu::attention_block(
                    &self.dims, tables, share, isa, qkv, o, x, s, k_pool, v_pool,
                )
            }
            Step::Tensor(s) => tensor::attention_block(&self.dims, qkv, o, x, s, k_pool, v_pool),
        }
    }
}

/// Cosine and sine of every position's rotary angles, `(context_length, rope_dim / 2)`.
/// Llama 3.x divides the frequencies by `rope_freqs` (its long-context "llama3" rope).
fn rope_tables(
    c: &ModelConfig,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let half = c.rope_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f32 / c.rope_dim as f32);
            match freq_factors {
                Some(ff) if i < ff.len() => f / ff[i],
                _ => f,
            }
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), &Device::Cpu)?;
    let positions = Tensor::arange(0u32, c.context_length as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((c.context_length, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((
        angles.cos()?.to_device(device)?,
        angles.sin()?.to_device(device)?,
    ))
}
