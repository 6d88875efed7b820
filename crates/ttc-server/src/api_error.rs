//! Errors as OpenAI's API returns them: a status and `{"error": {"message", "type", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ttc_allocator::AllocatorError;
use ttc_engine::EngineError;

use crate::wire::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub code: &'static str,
    /// Seconds a client should wait before retrying (429).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code,
            retry_after: None,
        }
    }

    pub fn busy(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            kind: "rate_limit_error",
            code: "server_busy",
            retry_after: Some(1),
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "a valid API key is needed: Authorization: Bearer KEY".into(),
            kind: "invalid_request_error",
            code: "invalid_api_key",
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            code: "not_found",
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            code: "internal_error",
            retry_after: None,
        }
    }

    /// The client went away; nobody reads this.
    pub fn cancelled() -> Self {
        Self {
            status: StatusCode::from_u16(499).expect("a valid status"),
            message: "the client closed the request".into(),
            kind: "invalid_request_error",
            code: "cancelled",
            retry_after: None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                code: self.code,
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::PromptTooLong { .. } => {
                Self::bad_request("context_length_exceeded", e.to_string())
            }
            EngineError::OverKvBudget { .. } => {
                Self::bad_request("kv_budget_exceeded", e.to_string())
            }
            // Other requests hold the pool now: it frees as they finish.
            EngineError::KvCacheFull { .. } => Self::busy(e.to_string()),
            EngineError::InvalidArgument(m) => Self::bad_request("invalid_value", m),
            EngineError::Cancelled => Self::cancelled(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<AllocatorError> for ApiError {
    fn from(e: AllocatorError) -> Self {
        match e {
            AllocatorError::Engine(e) => e.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
