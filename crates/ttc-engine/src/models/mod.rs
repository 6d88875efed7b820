//! Decoder-only transformer models read from GGUF.
//!
//! The engine runs the Llama family with byte-level BPE vocabularies (Llama 3.x, SmolLM2) and Qwen2
//! (Qwen2.5); SentencePiece vocabularies (Llama 2, TinyLlama) are refused by the tokenizer. They
//! share one decoder (`llama.rs`); what differs between the two architectures is small and lives in
//! [`Architecture`]: the metadata prefix, bias on the Q/K/V projections, and the RoPE layout.

pub(crate) mod attention;
pub mod compute_path;
pub(crate) mod linear;
pub mod llama;

use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;

pub use attention::AttentionBackend;
pub use compute_path::ComputePath;
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

    /// The layout of this architecture's GGUF files.
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
    /// How rotary embeddings pair a head's dimensions, which depends on the weights' layout
    /// as much as on the architecture: GGUF's converter permutes Llama's Q/K rows so that
    /// adjacent pairs are right, Hugging Face checkpoints keep the halves layout.
    #[serde(skip)]
    pub rope_layout: RopeLayout,
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
        // Every count is bounded before anything is divided by it or sized from it.
        let count = |k: &str, max: usize| -> Result<usize> {
            let name = key(k);
            let v = gguf.get_usize(&name)?;
            check_count(gguf, &name, v, max)
        };
        let opt_count = |k: &str, max: usize| -> Result<Option<usize>> {
            match gguf.get_opt_usize(&key(k)) {
                Some(v) => check_count(gguf, &key(k), v, max).map(Some),
                None => Ok(None),
            }
        };
        let hidden_size = count("embedding_length", limits::MAX_HIDDEN)?;
        let n_heads = count("attention.head_count", limits::MAX_HEADS)?;
        let n_kv_heads =
            opt_count("attention.head_count_kv", limits::MAX_HEADS)?.unwrap_or(n_heads);
        let head_dim = opt_count("attention.key_length", limits::MAX_HEAD_DIM)?
            .unwrap_or(hidden_size / n_heads);
        let rope_dim = opt_count("rope.dimension_count", limits::MAX_HEAD_DIM)?.unwrap_or(head_dim);
        let rope_theta = gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        let rms_eps = gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let vocab_size = match opt_count("vocab_size", limits::MAX_VOCAB)? {
            Some(v) => v,
            None => gguf.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let corrupt = |reason: String| EngineError::CorruptGguf {
            path: gguf.path().to_path_buf(),
            reason,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(corrupt(format!(
                "{n_heads} heads is not a multiple of {n_kv_heads} KV heads"
            )));
        }
        if head_dim == 0
            || head_dim % 2 != 0
            || rope_dim == 0
            || rope_dim % 2 != 0
            || rope_dim > head_dim
        {
            return Err(corrupt(format!(
                "head dimension {head_dim} and rotary dimension {rope_dim} must be even, positive, \
                 and the second at most the first"
            )));
        }
        if !(1..=limits::MAX_VOCAB).contains(&vocab_size) {
            return Err(corrupt(format!("vocabulary of {vocab_size} tokens")));
        }
        let sane =
            rope_theta.is_finite() && rope_theta > 0.0 && rms_eps.is_finite() && rms_eps >= 0.0;
        if !sane {
            return Err(corrupt(format!(
                "rope.freq_base {rope_theta} or rms epsilon {rms_eps}"
            )));
        }
        Ok(Self {
            architecture,
            n_layers: count("block_count", limits::MAX_LAYERS)?,
            hidden_size,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_layout: architecture.rope_layout(),
            rope_theta,
            rms_eps,
            context_length: count("context_length", limits::MAX_CONTEXT)?,
            vocab_size,
        })
    }

    /// Bytes of K and V stored per token across all layers, in f32.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// `key`'s value `v`, if it is in `1..=max`.
fn check_count(gguf: &GgufModel, key: &str, v: usize, max: usize) -> Result<usize> {
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(EngineError::CorruptGguf {
            path: gguf.path().to_path_buf(),
            reason: format!("metadata '{key}' is {v}, outside 1..={max}"),
        })
    }
}

/// Upper bounds on a model's shape that no real model reaches (the largest open models of
/// 2026 have hidden sizes near 16k, 128 layers, 128 heads of 128-256 dimensions, vocabularies
/// near 260k and contexts of 1M), checked before anything is sized from a file's metadata.
pub mod limits {
    pub const MAX_HIDDEN: usize = 1 << 16;
    pub const MAX_LAYERS: usize = 1 << 10;
    pub const MAX_HEADS: usize = 1 << 10;
    pub const MAX_HEAD_DIM: usize = 1 << 11;
    pub const MAX_VOCAB: usize = 1 << 22;
    /// The rotary tables are `context x rope_dim / 2` floats each, so this bounds them too.
    pub const MAX_CONTEXT: usize = 1 << 20;
}
