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
    PromptTooLong { prompt_tokens: usize, context: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("registry file {file}: {reason}")]
    Registry { file: String, reason: String },
    #[error("device: {0}")]
    Device(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, EngineError>;
