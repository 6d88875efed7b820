//! The engine's error type: every failure a user can cause (bad file, unknown alias, prompt too
//! long, no network) is a variant with a message that says what happened and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model file not found: {0}")]
    ModelNotFound(PathBuf),
    #[error("{path} is not a GGUF file ({reason})")]
    NotGguf { path: PathBuf, reason: String },
    #[error("{path} is corrupt or truncated: {reason}")]
    CorruptGguf { path: PathBuf, reason: String },
    #[error("unsupported model architecture '{0}' (ttc runs: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("GGUF metadata key '{0}' is missing")]
    MissingMetadata(String),
    #[error("unknown model alias '{alias}' (known: {known}); or pass a path to a .gguf file")]
    UnknownAlias { alias: String, known: String },
    #[error("could not get model '{alias}': {tried}")]
    Download { alias: String, tried: String },
    #[error("the prompt has {prompt_tokens} tokens, more than the context of {context} tokens leaves room for")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    #[error("the KV cache is full: {needed_blocks} more blocks of {block_bytes} bytes needed, {free_blocks} free (raise --kv-memory, or lower the width or --max-tokens)")]
    KvCacheFull {
        needed_blocks: usize,
        free_blocks: usize,
        block_bytes: usize,
    },
    #[error("the request needs {needed_bytes} bytes of KV cache, more than the budget of {budget_bytes} bytes (raise --kv-memory, or lower the width or --max-tokens)")]
    OverKvBudget {
        needed_bytes: usize,
        budget_bytes: usize,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The sandbox stopped the template (time or memory), or could not run it.
    #[error("chat template: {0}")]
    TemplateRefused(String),
    #[error("registry file {file}: {reason}")]
    Registry { file: String, reason: String },
    #[error("device: {0}")]
    Device(String),
    #[error("cancelled")]
    Cancelled,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Candle(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// candle attaches a backtrace to its errors when RUST_BACKTRACE is set and prints it with the
/// message; a user gets the message alone.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string(),
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(candle_message(&e))
    }
}
