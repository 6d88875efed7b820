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

use super::{ModelConfig, RopeLayout};
use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;
use crate::kv_cache::KvCache;

struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    fn load(gguf: &GgufModel, name: &str, with_bias: bool, device: &Device) -> Result<Self> {
        let weight = QMatMul::from_qtensor(gguf.tensor(&format!("{name}.weight"), device)?)?;
        let bias_name = format!("{name}.bias");
        let bias = if with_bias && gguf.has_tensor(&bias_name) {
            Some(gguf.tensor(&bias_name, device)?.dequantize(device)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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
    fn load(gguf: &GgufModel, name: &str, eps: f32, device: &Device) -> Result<Self> {
        Ok(Self { weight: gguf.tensor(name, device)?.dequantize(device)?, eps })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

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
    lm_head: QMatMul,
    /// `(context_length, rope_dim / 2)` tables, indexed by absolute position.
    rope_cos: Tensor,
    rope_sin: Tensor,
    device: Device,
}

impl Model {
    pub fn load(gguf: &GgufModel, config: ModelConfig, device: &Device) -> Result<Self> {
        let with_bias = config.architecture == super::Architecture::Qwen2;
        let embeddings = Arc::new(gguf.tensor("token_embd.weight", device)?);
        // Small models tie the output projection to the embeddings (no `output.weight`).
        let lm_head = if gguf.has_tensor("output.weight") {
            QMatMul::from_qtensor(gguf.tensor("output.weight", device)?)?
        } else {
            QMatMul::from_arc(embeddings.clone())?
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let p = format!("blk.{i}");
            let eps = config.rms_eps;
            layers.push(Layer {
                attn_norm: RmsNorm::load(gguf, &format!("{p}.attn_norm.weight"), eps, device)?,
                q: Linear::load(gguf, &format!("{p}.attn_q"), with_bias, device)?,
                k: Linear::load(gguf, &format!("{p}.attn_k"), with_bias, device)?,
                v: Linear::load(gguf, &format!("{p}.attn_v"), with_bias, device)?,
                o: Linear::load(gguf, &format!("{p}.attn_output"), false, device)?,
                ffn_norm: RmsNorm::load(gguf, &format!("{p}.ffn_norm.weight"), eps, device)?,
                gate: Linear::load(gguf, &format!("{p}.ffn_gate"), false, device)?,
                up: Linear::load(gguf, &format!("{p}.ffn_up"), false, device)?,
                down: Linear::load(gguf, &format!("{p}.ffn_down"), false, device)?,
            });
        }
        let output_norm = RmsNorm::load(gguf, "output_norm.weight", config.rms_eps, device)?;
        // Llama 3.x scales the rotary frequencies (long-context "llama3" rope); llama.cpp's
        // converter stores the per-frequency divisors as `rope_freqs.weight`.
        let freq_factors = if gguf.has_tensor("rope_freqs.weight") {
            Some(gguf.tensor("rope_freqs.weight", &Device::Cpu)?.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        } else {
            None
        };
        let (rope_cos, rope_sin) = rope_tables(&config, freq_factors.as_deref(), device)?;
        Ok(Self { config, embeddings, layers, output_norm, lm_head, rope_cos, rope_sin, device: device.clone() })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One forward pass over a ragged batch: every entry's new tokens at their own positions,
    /// K/V written into `cache`'s pool, attention through each entry's slots.
    pub fn forward_batch(&self, batch: &[BatchEntry], cache: &KvCache) -> Result<BatchOutput> {
        let dev = &self.device;
        let mut tokens = Vec::new();
        let mut positions = Vec::new();
        let mut new_slots = Vec::new();
        let mut output_rows = Vec::new();
        for e in batch {
            let n = e.tokens.len();
            if n == 0 || e.slots.len() < n {
                return Err(EngineError::InvalidArgument("a batch entry needs tokens and their slots".into()));
            }
            let start = e.slots.len() - n;
            if start + n > self.config.context_length {
                return Err(EngineError::PromptTooLong { prompt_tokens: start + n, context: self.config.context_length });
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
            return Err(EngineError::InvalidArgument("forward over zero tokens".into()));
        }
        let ids = Tensor::from_vec(tokens, t, dev)?;
        let pos = Tensor::from_vec(positions, t, dev)?;
        let cos = self.rope_cos.index_select(&pos, 0)?.contiguous()?;
        let sin = self.rope_sin.index_select(&pos, 0)?.contiguous()?;
        let kv_dim = cache.kv_dim();
        let write_idx = Tensor::from_vec(new_slots, (t, 1), dev)?.broadcast_as((t, kv_dim))?.contiguous()?;
        let read_idx: Vec<Tensor> = batch.iter().map(|e| Tensor::new(e.slots, dev)).collect::<candle_core::Result<_>>()?;
        let masks: Vec<Option<Tensor>> =
            batch.iter().map(|e| causal_mask(e.tokens.len(), e.slots.len() - e.tokens.len(), dev)).collect::<Result<_>>()?;

        let mut x = self.embeddings.embedding(&ids)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let (k_pool, v_pool) = cache.layer(l);
            let h = layer.attn_norm.forward(&x)?;
            let h = self.attention(layer, &h, &cos, &sin, batch, k_pool, v_pool, &write_idx, &read_idx, &masks)?;
            let x1 = (&x + h)?;
            let h = layer.ffn_norm.forward(&x1)?;
            let h = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x1 + layer.down.forward(&h)?)?;
        }
        if output_rows.is_empty() {
            return Ok(BatchOutput { logits: None, hidden: None });
        }
        let n_out = output_rows.len();
        let rows = x.index_select(&Tensor::from_vec(output_rows, n_out, dev)?, 0)?;
        let hidden = self.output_norm.forward(&rows)?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(BatchOutput { logits: Some(logits), hidden: Some(hidden) })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        batch: &[BatchEntry],
        k_pool: &Tensor,
        v_pool: &Tensor,
        write_idx: &Tensor,
        read_idx: &[Tensor],
        masks: &[Option<Tensor>],
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (t, _) = x.dims2()?;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let q = layer.q.forward(x)?.reshape((t, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let k = layer.k.forward(x)?.reshape((t, nkv, hd))?.transpose(0, 1)?.contiguous()?;
        let v = layer.v.forward(x)?;
        let q = self.rope(&q, cos, sin)?;
        let k = self.rope(&k, cos, sin)?.transpose(0, 1)?.reshape((t, nkv * hd))?.contiguous()?;
        k_pool.scatter_set(write_idx, &k, 0)?;
        v_pool.scatter_set(write_idx, &v.contiguous()?, 0)?;

        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(batch.len());
        let mut row = 0;
        for ((e, idx), mask) in batch.iter().zip(read_idx).zip(masks) {
            let n = e.tokens.len();
            let total = e.slots.len();
            // This sequence's keys and values, read through its block table.
            let ks = k_pool.index_select(idx, 0)?.reshape((total, nkv, hd))?.transpose(0, 1)?.contiguous()?;
            let vs = v_pool.index_select(idx, 0)?.reshape((total, nkv, hd))?.transpose(0, 1)?.contiguous()?;
            // GQA: the `group` query heads that share one KV head become rows of one matmul.
            let qs = q.narrow(1, row, n)?.reshape((nkv, group * n, hd))?;
            let scores = (qs.matmul(&ks.t()?)? * scale)?;
            let scores = match mask {
                Some(m) => scores.reshape((nkv, group, n, total))?.broadcast_add(m)?.reshape((nkv, group * n, total))?,
                None => scores,
            };
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let out = probs.matmul(&vs)?; // (nkv, group * n, hd)
            outs.push(out.reshape((nh, n, hd))?.transpose(0, 1)?.reshape((n, nh * hd))?);
            row += n;
        }
        let out = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        layer.o.forward(&out)
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

fn rope_tables(c: &ModelConfig, freq_factors: Option<&[f32]>, device: &Device) -> Result<(Tensor, Tensor)> {
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
    Ok((angles.cos()?.to_device(device)?, angles.sin()?.to_device(device)?))
}

/// Mask for `n` new tokens at positions `start..start+n` over `start+n` keys; None for one token.
fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let total = start + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(mask, (n, total), device)?))
}
