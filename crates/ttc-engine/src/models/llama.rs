//! The Llama-family decoder (Llama 2/3.x, SmolLM2) and Qwen2 (Qwen2.5), with quantized weights
//! read from GGUF.
//!
//! Reference: candle-transformers `models/quantized_llama.rs` and `quantized_qwen2.rs` (tensor
//! names, weight layout), llama.cpp `src/models/llama.cpp` and `qwen2.cpp` (RoPE types, Llama 3
//! `rope_freqs`). Unlike those, the KV cache is not inside the layers: the caller owns it
//! ([`SequenceCache`]), and grouped-query attention reads the shared K/V heads without
//! `repeat_kv` copies by folding the query heads of a group into the row dimension.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::{ModelConfig, RopeLayout};
use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;

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

/// The keys and values of one sequence, per layer, as `(n_kv_heads, len, head_dim)` tensors.
pub struct SequenceCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl SequenceCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What one forward pass returns.
pub struct ForwardOutput {
    /// Logits of the last input token, `(vocab,)`.
    pub logits: Tensor,
    /// The final-layer hidden state (after the output norm) at the last input token,
    /// `(hidden,)`: the allocator's per-prompt feature.
    pub hidden: Tensor,
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

    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache { layers: (0..self.config.n_layers).map(|_| None).collect(), len: 0 }
    }

    /// Runs `tokens` (one chunk of a prompt, or one decode token) after what `cache` holds,
    /// appends their K/V to it and returns the last token's logits and hidden state.
    pub fn forward(&self, tokens: &[u32], cache: &mut SequenceCache) -> Result<ForwardOutput> {
        let n = tokens.len();
        let start = cache.len;
        if n == 0 {
            return Err(EngineError::InvalidArgument("forward over zero tokens".into()));
        }
        if start + n > self.config.context_length {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: start + n,
                context: self.config.context_length,
            });
        }
        let ids = Tensor::from_slice(tokens, n, &self.device)?;
        let mut x = self.embeddings.embedding(&ids)?;
        let cos = self.rope_cos.narrow(0, start, n)?;
        let sin = self.rope_sin.narrow(0, start, n)?;
        let mask = causal_mask(n, start, &self.device)?;
        for (layer, slot) in self.layers.iter().zip(cache.layers.iter_mut()) {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let h = self.attention(layer, &h, &cos, &sin, mask.as_ref(), slot)?;
            let x1 = (residual + h)?;
            let h = layer.ffn_norm.forward(&x1)?;
            let h = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x1 + layer.down.forward(&h)?)?;
        }
        cache.len += n;
        let last = x.narrow(0, n - 1, 1)?;
        let hidden = self.output_norm.forward(&last)?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(ForwardOutput { logits: logits.squeeze(0)?, hidden: hidden.squeeze(0)? })
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        slot: &mut Option<(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (n, _) = x.dims2()?;
        let (hd, nh, nkv) = (c.head_dim, c.n_heads, c.n_kv_heads);
        let q = layer.q.forward(x)?.reshape((n, nh, hd))?.transpose(0, 1)?.contiguous()?;
        let k = layer.k.forward(x)?.reshape((n, nkv, hd))?.transpose(0, 1)?.contiguous()?;
        let v = layer.v.forward(x)?.reshape((n, nkv, hd))?.transpose(0, 1)?.contiguous()?;
        let q = self.rope(&q, cos, sin)?;
        let k = self.rope(&k, cos, sin)?;
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 1)?, Tensor::cat(&[&pv, &v], 1)?),
            None => (k, v),
        };
        let total = k.dim(1)?;
        // GQA: the `group` query heads that share one KV head become rows of one matmul.
        let group = nh / nkv;
        let q = q.reshape((nkv, group * n, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.reshape((nkv, group, n, total))?.broadcast_add(m)?.reshape((nkv, group * n, total))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?; // (nkv, group * n, hd)
        *slot = Some((k, v));
        let out = out.reshape((nh, n, hd))?.transpose(0, 1)?.reshape((n, nh * hd))?;
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
