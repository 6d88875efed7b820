//! ttc-engine: runs quantized Llama and Qwen2 GGUF models on CPU, CUDA or Metal.
//!
//! Layers (docs/design.md): [`gguf`] reads files, [`models`] holds the decoder, [`tokenizer`] and
//! [`chat_template`] turn conversations into ids, [`sampler`] picks tokens, [`registry`] and
//! [`download`] turn an alias into files, and [`engine`] puts them together.

pub mod batcher;
pub mod chat_template;
pub mod device;
pub mod download;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_header;
pub mod kernel_ops;
pub mod kv_cache;
pub mod models;
pub mod perplexity;
pub mod registry;
pub mod reward_model;
pub mod sampler;
pub mod sandbox;
pub mod session;
pub mod tokenizer;
pub mod weights;

pub use engine::{Engine, LoadOptions};
pub use error::{EngineError, Result};
pub use generate::{GenerateRequest, Generation};
pub use kv_cache::KvStats;
pub use kv_cache::SeqId;
pub use session::{Counters, KvUsage, Session, SessionOptions, StepEvent, StopReason};
/// ttc's CPU kernels, for their thread pool and instruction-set report.
pub use ttc_kernels as kernels;
