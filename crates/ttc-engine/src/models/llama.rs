//! The Llama-family decoder (Llama 3.x, SmolLM2) and Qwen2 (Qwen2.5), with quantized weights
//! read from GGUF: embeddings, the layers (attention block and SwiGLU feed-forward), the
//! output norm and head. Weights are in [`super::linear`], attention in [`super::attention`].
//!
//! Reference: candle-transformers `models/quantized_llama.rs` and `quantized_qwen2.rs` (tensor
//! names, weight layout), llama.cpp `src/models/llama.cpp` and `qwen2.cpp` (RoPE types, Llama 3
//! `rope_freqs`). Unlike those, the KV cache is not inside the layers: one forward pass runs a
//! ragged batch of sequences (each with its own positions and length) over the engine's paged
//! [`KvCache`], and grouped-query attention reads the shared K/V heads without `repeat_kv`
//! copies by folding the query heads of a group into the row dimension.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use ttc_kernels::Isa;

use super::attention::{Attention, AttentionBackend};
use super::compute_path::ComputePath;
use super::linear::{Linear, Projections, RmsNorm, Weight};
use super::ModelConfig;
use crate::error::{EngineError, Result};
use crate::kernel_ops;
use crate::kv_cache::KvCache;
use crate::weights::WeightSource;

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

impl Layer {
    /// `silu(gate) * up`: one fused op over the stacked projection when ttc's kernels run it.
    fn swiglu(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        match self.gate_up.stacked(h)? {
            Some(gu) => gu.apply_op1_no_bwd(&kernel_ops::SwiGluOp),
            None => {
                let gu = self.gate_up.forward(h)?;
                candle_nn::ops::silu(&gu[0])? * &gu[1]
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

/// Which rows of a pass come out: each entry's last token (when it asks), or every token.
#[derive(Clone, Copy)]
enum Rows {
    Last,
    All,
}

pub struct Model {
    config: ModelConfig,
    embeddings: Arc<QTensor>,
    layers: Vec<Layer>,
    output_norm: RmsNorm,
    lm_head: Weight,
    attention: Attention,
    device: Device,
    /// The code this model's forward pass runs.
    path: ComputePath,
}

impl Model {
    /// Loads the decoder from `gguf` (or any weight source using GGUF tensor names) on the
    /// CPU's default path ([`ComputePath::from_env`]: ttc's kernels for the best instruction
    /// set this machine has, unless `TTC_COMPUTE_PATH` or `TTC_KERNELS` says otherwise).
    pub fn load(gguf: &dyn WeightSource, config: ModelConfig, device: &Device) -> Result<Self> {
        Self::load_on(gguf, config, device, ComputePath::from_env()?)
    }

    /// As [`load`](Self::load), with ttc's CPU kernels of `kernels` (one of
    /// [`Isa::available`]): the tests run the same model on every instruction set.
    pub fn load_with_kernels(
        gguf: &dyn WeightSource,
        config: ModelConfig,
        device: &Device,
        kernels: Isa,
    ) -> Result<Self> {
        Self::load_on(gguf, config, device, ComputePath::Kernels(kernels))
    }

    /// As [`load`](Self::load), on `path`. Off the CPU every path is the tensor path.
    pub fn load_on(
        gguf: &dyn WeightSource,
        config: ModelConfig,
        device: &Device,
        path: ComputePath,
    ) -> Result<Self> {
        let path = if device.is_cpu() {
            path
        } else {
            ComputePath::Tensor
        };
        if let ComputePath::Kernels(isa) = path {
            if !Isa::available().contains(&isa) {
                return Err(EngineError::InvalidArgument(format!(
                    "this CPU cannot run the {} kernels",
                    isa.name()
                )));
            }
        }
        let kernels = path.kernels();
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
        let attention = Attention::new(&config, freq_factors.as_deref(), device, kernels)?;
        Ok(Self {
            config,
            embeddings,
            layers,
            output_norm,
            lm_head,
            attention,
            device: device.clone(),
            path,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The code this model's forward pass runs.
    pub fn compute_path(&self) -> ComputePath {
        self.path
    }

    /// Turns shared-prefix attention on or off: cascade attention on the tensor back-end,
    /// grouped rows in the fused CPU kernel (for measuring it; the fused kernel's results are
    /// the same bits, the cascade ones agree to rounding).
    pub fn set_cascade(&mut self, on: bool) {
        self.attention.set_cascade(on);
    }

    /// Which code computes attention.
    pub fn attention_backend(&self) -> AttentionBackend {
        self.attention.backend()
    }

    /// Chooses the attention back-end alone, matmuls unchanged: the tensor one runs on every
    /// device, the fused one on the kernel path only. For telling the two attention codes
    /// apart; [`load_on`](Self::load_on) with [`ComputePath::Tensor`] runs the whole pass as a
    /// GPU does.
    pub fn set_attention_backend(&mut self, backend: AttentionBackend) -> Result<()> {
        self.attention.set_backend(backend)
    }

    /// One forward pass over a ragged batch: every entry's new tokens at their own positions,
    /// K/V written into `cache`'s pool, attention through each entry's slots.
    pub fn forward_batch(&self, batch: &[BatchEntry], cache: &KvCache) -> Result<BatchOutput> {
        self.forward_on_pool(batch, cache, Rows::Last, true, None)
    }

    /// One forward pass over one sequence's new tokens, with the logits at every one of them,
    /// `(tokens, vocab)`: what a perplexity run scores.
    pub fn forward_every_position(&self, entry: &BatchEntry, cache: &KvCache) -> Result<Tensor> {
        let out =
            self.forward_on_pool(std::slice::from_ref(entry), cache, Rows::All, true, None)?;
        out.logits
            .ok_or_else(|| EngineError::InvalidArgument("forward over zero tokens".into()))
    }

    /// As [`forward_batch`](Self::forward_batch) without the output head: only the final
    /// hidden states (a reward model reads those; a vocabulary's logits would be wasted).
    pub fn forward_hidden(&self, batch: &[BatchEntry], cache: &KvCache) -> Result<Option<Tensor>> {
        Ok(self
            .forward_on_pool(batch, cache, Rows::Last, false, None)?
            .hidden)
    }

    fn forward_on_pool(
        &self,
        batch: &[BatchEntry],
        cache: &KvCache,
        rows: Rows,
        logits: bool,
        observe: Option<&mut LayerObserver>,
    ) -> Result<BatchOutput> {
        if self.device.is_cpu() {
            // On a pool thread, the caller takes part in each parallel kernel instead of
            // sleeping until the pool wakes it: one hand-off per pass instead of one per op.
            ttc_kernels::threads::on_pool(|| {
                self.forward_batch_here(batch, cache, rows, logits, observe)
            })
        } else {
            self.forward_batch_here(batch, cache, rows, logits, observe)
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
        self.forward_on_pool(batch, cache, Rows::Last, true, Some(observe))
    }

    fn forward_batch_here(
        &self,
        batch: &[BatchEntry],
        cache: &KvCache,
        rows: Rows,
        want_logits: bool,
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
            match rows {
                Rows::All => output_rows.extend((tokens.len() - n..tokens.len()).map(|r| r as u32)),
                Rows::Last if e.want_output => output_rows.push((tokens.len() - 1) as u32),
                Rows::Last => {}
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
        let step = self
            .attention
            .prepare(batch, &positions, &new_slots, cache)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let (k_pool, v_pool) = cache.layer(l);
            let h = layer.attn_norm.forward(&x)?;
            seen(l, "attn_norm", &h);
            let h = self
                .attention
                .forward(&layer.qkv, &layer.o, &h, &step, k_pool, v_pool)?;
            seen(l, "attn_out", &h);
            let x1 = (&x + h)?;
            let h = layer.ffn_norm.forward(&x1)?;
            seen(l, "ffn_norm", &h);
            let h = layer.down.forward(&layer.swiglu(&h)?)?;
            seen(l, "ffn_out", &h);
            x = (x1 + h)?;
            seen(l, "residual", &x);
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
        let logits = if want_logits {
            Some(self.lm_head.forward(&hidden)?)
        } else {
            None
        };
        Ok(BatchOutput {
            logits,
            hidden: Some(hidden),
        })
    }
}
