//! The allocator's errors: each says what file or input was wrong and why, in one line.

#[derive(Debug, thiserror::Error)]
pub enum AllocatorError {
    #[error("{0}")]
    Engine(#[from] ttc_engine::EngineError),
    #[error("dataset: {0}")]
    Dataset(String),
    #[error("latency profile {path}: {reason}")]
    Profile { path: String, reason: String },
    #[error("probe {path}: {reason}")]
    Probe { path: String, reason: String },
    #[error("labels {path}: {reason}")]
    Labels { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Candle(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<candle_core::Error> for AllocatorError {
    fn from(e: candle_core::Error) -> Self {
        // candle appends a backtrace to some messages: keep the first line.
        Self::Candle(
            e.to_string()
                .lines()
                .next()
                .unwrap_or("candle error")
                .to_string(),
        )
    }
}

pub type Result<T> = std::result::Result<T, AllocatorError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AllocatorError + '_ {
    move |source| AllocatorError::Io {
        path: path.display().to_string(),
        source,
    }
}
