//! The Llama-family decoder (Llama 2/3.x, SmolLM2) and Qwen2 (Qwen2.5), with quantized weights
//! read from GGUF.
//!
//! Reference: candle-transformers `models/quantized_llama.rs` and `quantized_qwen2.rs` (tensor
//! names, weight layout), llama.cpp `src/models/llama.cpp` and `qwen2.cpp` (RoPE types, Llama 3
//! `rope_freqs`). Unlike those, the KV cache is not inside the layers: one forward pass runs a
//! ragged batch of sequences (each with its own positions and length) over the engine's paged
//! [`KvCache`], and grouped-query attention reads the shared K/V heads without `repeat_kv`
//! copies by folding the query heads of a group into the row dimension.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};
use ttc_kernels::{Isa, QMatrix};

use super::{ModelConfig, RopeLayout};
use crate::error::{EngineError, Result};
use crate::kernel_ops;
use crate::kv_cache::KvCache;
use crate::weights::WeightSource;

/// A weight matrix: ttc's CPU kernels where they cover the format, candle's otherwise.
#[derive(Clone)]
enum Weight {
    Kernel(Arc<QMatrix>),
    Candle(QMatMul),
}

impl Weight {
    fn new(t: QTensor, isa: Isa) -> Result<Self> {
        match kernel_ops::qmatrix(&t, isa)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(t)?)),
        }
    }

    fn from_arc(t: Arc<QTensor>, isa: Isa) -> Result<Self> {
        match kernel_ops::qmatrix(&t, isa)? {
            Some(m) => Ok(Self::Kernel(Arc::new(m))),
            None => Ok(Self::Candle(QMatMul::from_arc(t)?)),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
        isa: Isa,
    ) -> Result<Self> {
        let weight = Weight::new(w.tensor(&format!("{name}.weight"), device)?, isa)?;
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

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &dyn WeightSource, name: &str, eps: f32, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: w.tensor(name, device)?.dequantize(device)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Layer {
    attn_norm: RmsNorm,
    /// Q, K and V projections (they read the same input).
    qkv: Projections,
    o: Linear,
    ffn_norm: RmsNorm,
    /// Gate and up projections.
    gate_up: Projections,
    down: Linear,
}

/// Projections of one input: stacked into one matrix when ttc's kernels run them all (one
/// call, one activation quantization), else kept apart.
enum Projections {
    Stacked(Linear, Vec<usize>),
    Separate(Vec<Linear>),
}

impl Projections {
    fn new(parts: Vec<Linear>) -> Result<Self> {
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
    fn stacked(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self {
            Self::Stacked(stacked, _) => Ok(Some(stacked.forward(x)?)),
            Self::Separate(_) => Ok(None),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
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

/// Sees each layer's intermediate results: `(layer, point, rows)`
/// ([`Model::forward_batch_observed`]).
pub type LayerObserver<'a> = dyn FnMut(usize, &str, &Tensor) + Send + 'a;

/// One sequence's part of a batched forward pass.
pub struct BatchEntry<'a> {
    /// New tokens (a prompt chunk, or one decode token).
    pub tokens: &'a [u32],
    /// Pool rows of every position of the sequence up to and including the new tokens
    /// (`KvCache::slots(seq, 0..len + tokens.len())`): the last `tokens.len()` are written.
    pub slots: &'a [u32],
    /// Whether to return logits and hidden state at this entry's last token.
    pub want_output: bool,
}

/// Logits and final hidden state (after the output norm) at the last token of each entry that
/// asked for them, in entry order: `(rows, vocab)` and `(rows, hidden)`. The hidden state at a
/// prompt's last token is the allocator's per-prompt feature.
pub struct BatchOutput {
    pub logits: Option<Tensor>,
    pub hidden: Option<Tensor>,
}

pub struct Model {
    config: ModelConfig,
    embeddings: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: RmsNorm,
    lm_head: Weight,
    /// `(context_length, rope_dim / 2)` tables, indexed by absolute position.
    rope_cos: Tensor,
    rope_sin: Tensor,
    device: Device,
    /// Decode rows sharing at least this many leading KV slots use cascade attention (0: never).
    cascade_min_prefix: usize,
    /// Host copies of the rope tables when ttc's fused CPU attention runs (CPU only).
    host_rope: Option<kernel_ops::RopeTables>,
    /// The instruction set of ttc's CPU kernels for this model's matmuls and attention.
    kernels: Isa,
}

impl Model {
    /// Loads the decoder from `gguf` (or any weight source using GGUF tensor names), on the
    /// CPU with the best kernels this machine has ([`Isa::active`]).
    pub fn load(gguf: &dyn WeightSource, config: ModelConfig, device: &Device) -> Result<Self> {
        Self::load_with_kernels(gguf, config, device, Isa::active())
    }

    /// As [`load`](Self::load), with ttc's CPU kernels of `kernels` (one of
    /// [`Isa::available`]): the tests run the same model on every instruction set.
    pub fn load_with_kernels(
        gguf: &dyn WeightSource,
        config: ModelConfig,
        device: &Device,
        kernels: Isa,
    ) -> Result<Self> {
        if !Isa::available().contains(&kernels) {
            return Err(EngineError::InvalidArgument(format!(
                "this CPU cannot run the {} kernels",
                kernels.name()
            )));
        }
        let with_bias = config.architecture == super::Architecture::Qwen2;
        let embeddings = Arc::new(gguf.tensor("token_embd.weight", device)?);
        // Small models tie the output projection to the embeddings (no `output.weight`).
        let lm_head = if gguf.has_tensor("output.weight") {
            Weight::new(gguf.tensor("output.weight", device)?, kernels)?
        } else {
            Weight::from_arc(embeddings.clone(), kernels)?
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            let eps = config.rms_eps;
            let qkv = ["attn_q", "attn_k", "attn_v"]
                .iter()
                .map(|n| Linear::load(gguf, &format!("{p}.{n}"), with_bias, device, kernels))
                .collect::<Result<Vec<_>>>()?;
            let gate_up = ["ffn_gate", "ffn_up"]
                .iter()
                .map(|n| Linear::load(gguf, &format!("{p}.{n}"), false, device, kernels))
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer {
                attn_norm: RmsNorm::load(gguf, &format!("{p}.attn_norm.weight"), eps, device)?,
                qkv: Projections::new(qkv)?,
                o: Linear::load(gguf, &format!("{p}.attn_output"), false, device, kernels)?,
                ffn_norm: RmsNorm::load(gguf, &format!("{p}.ffn_norm.weight"), eps, device)?,
                gate_up: Projections::new(gate_up)?,
                down: Linear::load(gguf, &format!("{p}.ffn_down"), false, device, kernels)?,
            });
        }
        let output_norm = RmsNorm::load(gguf, "output_norm.weight", config.rms_eps, device)?;
        // Llama 3.x scales the rotary frequencies (long-context "llama3" rope); llama.cpp's
        // converter stores the per-frequency divisors as `rope_freqs.weight`.
        let freq_factors = if gguf.has_tensor("rope_freqs.weight") {
            Some(
                gguf.tensor("rope_freqs.weight", &Device::Cpu)?
                    .dequantize(&Device::Cpu)?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        let (rope_cos, rope_sin) = rope_tables(&config, freq_factors.as_deref(), device)?;
        let host_rope = if device.is_cpu() {
            Some(host_rope_tables(&rope_cos, &rope_sin)?)
        } else {
            None
        };
        Ok(Self {
            config,
            embeddings,
            layers,
            output_norm,
            lm_head,
            rope_cos,
            rope_sin,
            host_rope,
            device: device.clone(),
            cascade_min_prefix: DEFAULT_CASCADE_MIN_PREFIX,
            kernels,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The instruction set of ttc's CPU kernels this model runs on.
    pub fn kernels(&self) -> Isa {
        self.kernels
    }

    /// Turns shared-prefix attention on or off: cascade attention on CUDA/Metal, grouped rows
    /// in the fused CPU kernel (for measuring it; the CPU results are the same bits, the
    /// cascade ones agree to rounding).
    pub fn set_cascade(&mut self, on: bool) {
        self.cascade_min_prefix = if on { DEFAULT_CASCADE_MIN_PREFIX } else { 0 };
    }

    /// Turns ttc's fused CPU attention on or off (for comparing it with candle's tensor
    /// path; matmuls of covered formats use ttc's kernels either way).
    pub fn set_cpu_kernels(&mut self, on: bool) -> Result<()> {
        self.host_rope = if on && self.device.is_cpu() {
            Some(host_rope_tables(&self.rope_cos, &self.rope_sin)?)
        } else {
            None
        };
        Ok(())
    }

    /// One forward pass over a ragged batch: every entry's new tokens at their own positions,
    /// K/V written into `cache`'s pool, attention through each entry's slots.
    pub fn forward_batch(&self, batch: &[BatchEntry], cache: &KvCache) -> Result<BatchOutput> {
        if self.device.is_cpu() {
            // On a pool thread, the caller takes part in each parallel kernel instead of
            // sleeping until the pool wakes it: one hand-off per pass instead of one per op.
            ttc_kernels::threads::on_pool(|| self.forward_batch_here(batch, cache, None))
        } else {
            self.forward_batch_here(batch, cache, None)
        }
    }

    /// As [`forward_batch`](Self::forward_batch), handing every layer's intermediate results
    /// to `observe(layer, point, rows)` as they are computed (llama.cpp's eval callback): for
    /// finding where two kernel sets or two devices part. The points, all `(tokens, width)`:
    /// `attn_norm`, `attn_out` (after the output projection), `ffn_norm`, `ffn_out`, and
    /// `residual` (the layer's output).
    pub fn forward_batch_observed(
        &self,
        batch: &[BatchEntry],
        cache: &KvCache,
        observe: &mut LayerObserver,
    ) -> Result<BatchOutput> {
        if self.device.is_cpu() {
            ttc_kernels::threads::on_pool(|| self.forward_batch_here(batch, cache, Some(observe)))
        } else {
            self.forward_batch_here(batch, cache, Some(observe))
        }
    }

    fn forward_batch_here(
        &self,
        batch: &[BatchEntry],
        cache: &KvCache,
        mut observe: Option<&mut LayerObserver>,
    ) -> Result<BatchOutput> {
        let mut seen = |l: usize, point: &str, t: &Tensor| {
            if let Some(f) = observe.as_mut() {
                f(l, point, t)
            }
        };
        let dev = &self.device;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut new_slots = Vec::new();
        let mut output_rows = Vec::new();
        for e in batch {
            let n = e.tokens.len();
            if n == 0 || e.slots.len() < n {
                return Err(EngineError::InvalidArgument(
                    "a batch entry needs tokens and their slots".into(),
                ));
            }
            let start = e.slots.len() - n;
            if start + n > self.config.context_length {
                return Err(EngineError::PromptTooLong {
                    prompt_tokens: start + n,
                    context: self.config.context_length,
                });
            }
            tokens.extend_from_slice(e.tokens);
            positions.extend((start..start + n).map(|p| p as u32));
            new_slots.extend_from_slice(&e.slots[start..]);
            if e.want_output {
                output_rows.push((tokens.len() - 1) as u32);
            }
        }
        let t = tokens.len();
        if t == 0 {
            return Err(EngineError::InvalidArgument(
                "forward over zero tokens".into(),
            ));
        }
        let ids = Tensor::from_vec(tokens, t, dev)?;
        let mut x = self.embeddings.embedding(&ids)?;
        match &self.host_rope {
            Some(tables) => {
                // Each query row's visible slots: its sequence's slots up to its own position.
                let mut rows: Vec<&[u32]> = Vec::with_capacity(t);
                for e in batch {
                    let start = e.slots.len() - e.tokens.len();
                    rows.extend((1..=e.tokens.len()).map(|i| &e.slots[..start + i]));
                }
                let fused = FusedStep {
                    positions: &positions,
                    slots: &new_slots,
                    rows: &rows,
                    tables,
                };
                for (l, layer) in self.layers.iter().enumerate() {
                    let (k_pool, v_pool) = cache.layer(l);
                    let h = layer.attn_norm.forward(&x)?;
                    seen(l, "attn_norm", &h);
                    let h = self.fused_attention(layer, &h, &fused, k_pool, v_pool)?;
                    seen(l, "attn_out", &h);
                    let x1 = (&x + h)?;
                    let h = layer.ffn_norm.forward(&x1)?;
                    seen(l, "ffn_norm", &h);
                    let h = match layer.gate_up.stacked(&h)? {
                        Some(gu) => gu.apply_op1_no_bwd(&kernel_ops::SwiGluOp)?,
                        None => {
                            let gu = layer.gate_up.forward(&h)?;
                            (candle_nn::ops::silu(&gu[0])? * &gu[1])?
                        }
                    };
                    let h = layer.down.forward(&h)?;
                    seen(l, "ffn_out", &h);
                    x = (x1 + h)?;
                    seen(l, "residual", &x);
                }
            }
            None => {
                let pos = Tensor::from_vec(positions, t, dev)?;
                let cos = self.rope_cos.index_select(&pos, 0)?.contiguous()?;
                let sin = self.rope_sin.index_select(&pos, 0)?.contiguous()?;
                let kv_dim = cache.kv_dim();
                let write_idx = Tensor::from_vec(new_slots, (t, 1), dev)?
                    .broadcast_as((t, kv_dim))?
                    .contiguous()?;
                let plan = AttentionPlan::new(batch, self.cascade_min_prefix, dev)?;
                for (l, layer) in self.layers.iter().enumerate() {
                    let (k_pool, v_pool) = cache.layer(l);
                    let h = layer.attn_norm.forward(&x)?;
                    seen(l, "attn_norm", &h);
                    let h =
                        self.attention(layer, &h, &cos, &sin, &plan, k_pool, v_pool, &write_idx)?;
                    seen(l, "attn_out", &h);
                    let x1 = (&x + h)?;
                    let h = layer.ffn_norm.forward(&x1)?;
                    seen(l, "ffn_norm", &h);
                    let gu = layer.gate_up.forward(&h)?;
                    let h = (candle_nn::ops::silu(&gu[0])? * &gu[1])?;
                    let h = layer.down.forward(&h)?;
                    seen(l, "ffn_out", &h);
                    x = (x1 + h)?;
                    seen(l, "residual", &x);
                }
            }
        }
        if output_rows.is_empty() {
            return Ok(BatchOutput {
                logits: None,
                hidden: None,
            });
        }
        let n_out = output_rows.len();
        let rows = x.index_select(&Tensor::from_vec(output_rows, n_out, dev)?, 0)?;
        let hidden = self.output_norm.forward(&rows)?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(BatchOutput {
            logits: Some(logits),
            hidden: Some(hidden),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        plan: &AttentionPlan,
        k_pool: &Tensor,
        v_pool: &Tensor,
        write_idx: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (t, _) = x.dims2()?;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let qkv = layer.qkv.forward(x)?;
        let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
        let q = q.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let k = k.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
        let q = self.rope(&q, cos, sin)?;
        let k = self
            .rope(&k, cos, sin)?
            .transpose(0, 1)?
            .reshape((t, nkv * hd))?
            .contiguous()?;
        k_pool.scatter_set(write_idx, &k, 0)?;
        v_pool.scatter_set(write_idx, &v.contiguous()?, 0)?;
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
        layer.o.forward(&out)
    }

    /// The attention block on ttc's CPU kernels: one stacked Q/K/V projection; K (rotated)
    /// and V written into the pools in place; queries rotated and attended in one fused op.
    fn fused_attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        step: &FusedStep,
        k_pool: &Tensor,
        v_pool: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let qkv = match layer.qkv.stacked(x)? {
            Some(y) => y,
            None => Tensor::cat(&layer.qkv.forward(x)?, 1)?,
        }
        .contiguous()?;
        let c = &self.config;
        let layout = kernel_ops::QkvLayout {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            rope_dim: c.rope_dim,
            rope: match c.architecture.rope_layout() {
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
                tables: step.tables,
            };
            pool.inplace_op2(&qkv, &op)?;
        }
        let op = kernel_ops::QkvAttentionOp {
            layout,
            positions: step.positions,
            tables: step.tables,
            rows: step.rows,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            share_prefixes: self.cascade_min_prefix > 0,
            isa: self.kernels,
        };
        layer.o.forward(&qkv.apply_op3_no_bwd(k_pool, v_pool, &op)?)
    }

    /// Rotates `(heads, n, head_dim)`; only the first `rope_dim` dimensions when smaller.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let x4 = x.unsqueeze(0)?;
        let rd = self.config.rope_dim;
        let rotate = |t: &Tensor| match self.config.architecture.rope_layout() {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(t, cos, sin),
            RopeLayout::Halves => candle_nn::rotary_emb::rope(t, cos, sin),
        };
        let y = if rd == self.config.head_dim {
            rotate(&x4)?
        } else {
            let head = x4.narrow(D::Minus1, 0, rd)?.contiguous()?;
            let tail = x4.narrow(D::Minus1, rd, self.config.head_dim - rd)?;
            Tensor::cat(&[&rotate(&head)?, &tail], D::Minus1)?
        };
        y.squeeze(0)
    }
}

fn host_rope_tables(cos: &Tensor, sin: &Tensor) -> Result<kernel_ops::RopeTables> {
    let half = cos.dim(1)?;
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    Ok(kernel_ops::RopeTables {
        cos: flat(cos)?,
        sin: flat(sin)?,
        half,
    })
}

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

/// What every layer's fused attention block needs from one forward pass.
struct FusedStep<'a> {
    positions: &'a [u32],
    /// Pool row of each new token.
    slots: &'a [u32],
    /// Visible slots of each query row.
    rows: &'a [&'a [u32]],
    tables: &'a kernel_ops::RopeTables,
}

/// A shared prefix shorter than this is not worth a group pass.
const DEFAULT_CASCADE_MIN_PREFIX: usize = 32;

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
