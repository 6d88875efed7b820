//! Decoder-only transformer models read from GGUF.
//!
//! The engine runs the Llama family (Llama 2/3.x, SmolLM2) and Qwen2 (Qwen2.5). They share one
//! decoder (`llama.rs`); what differs between the two architectures is small and lives in
//! [`Architecture`]: the metadata prefix, bias on the Q/K/V projections, and the RoPE layout.

pub mod llama;

use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;

pub use llama::{BatchEntry, BatchOutput, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs (2i, 2i+1): llama.cpp's LLAMA_ROPE_TYPE_NORM. llama.cpp's converter
    /// permutes Llama's Q/K weights so that this layout is the right one for GGUF files.
    Interleaved,
    /// Halves (i, i + d/2): LLAMA_ROPE_TYPE_NEOX, used by Qwen2.
    Halves,
}

impl Architecture {
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    pub fn rope_layout(self) -> RopeLayout {
        match self {
            Self::Llama => RopeLayout::Interleaved,
            Self::Qwen2 => RopeLayout::Halves,
        }
    }
}

/// Hyper-parameters of a decoder, all read from the GGUF metadata.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The context the model was trained for (`{arch}.context_length`), not capped.
    pub context_length: usize,
    pub vocab_size: usize,
}

impl ModelConfig {
    pub fn from_gguf(gguf: &GgufModel) -> Result<Self> {
        let architecture = Architecture::from_gguf_name(&gguf.get_str("general.architecture")?)?;
        let p = architecture.name();
        let key = |k: &str| format!("{p}.{k}");
        let hidden_size = gguf.get_usize(&key("embedding_length"))?;
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let n_kv_heads = gguf
            .get_opt_usize(&key("attention.head_count_kv"))
            .unwrap_or(n_heads);
        let head_dim = gguf
            .get_opt_usize(&key("attention.key_length"))
            .unwrap_or(hidden_size / n_heads);
        let rope_dim = gguf
            .get_opt_usize(&key("rope.dimension_count"))
            .unwrap_or(head_dim);
        let rope_theta = gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let vocab_size = match gguf.get_opt_usize(&key("vocab_size")) {
            Some(v) => v,
            None => gguf.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        if n_heads % n_kv_heads != 0 {
            return Err(EngineError::CorruptGguf {
                path: gguf.path().to_path_buf(),
                reason: format!("{n_heads} heads is not a multiple of {n_kv_heads} KV heads"),
            });
        }
        Ok(Self {
            architecture,
            n_layers: gguf.get_usize(&key("block_count"))?,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_theta,
            rms_eps,
            context_length: gguf.get_usize(&key("context_length"))?,
            vocab_size,
        })
    }

    /// Bytes of K and V stored per token across all layers, in f32.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}
