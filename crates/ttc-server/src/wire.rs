//! The wire types of OpenAI's chat and completions API (the fields ttc reads and writes), and
//! ttc's `ttc` extension object. Unknown fields are ignored, as OpenAI's own server does; a
//! known field of the wrong type is a 400.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message's content: a string, or a list of parts of which the text ones are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter(|p| p.kind == "text")
                .filter_map(|p| p.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// ttc's extension: how to spend test-time compute on this request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtcOptions {
    /// "auto" (the allocator chooses), "plain"/"sample", "greedy", "best-of-n", "majority",
    /// "weighted", "beam", "dvts".
    pub method: Option<String>,
    pub n: Option<u32>,
    pub beam_width: Option<u32>,
    pub max_iters: Option<u32>,
    pub lambda_latency: Option<f64>,
    pub lambda_tokens: Option<f64>,
    pub target_latency_s: Option<f64>,
    /// Seconds this request may take: the allocator holds each configuration's predicted 90th
    /// percentile of latency to it.
    pub max_latency_s: Option<f64>,
}

/// The fields `/v1/chat/completions` and `/v1/completions` share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    // `model` is not read: the server serves one model, whatever name a client sends.
    /// Negative values fail to parse: a 400.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `top_logprobs` is not read: each token's entry has an empty `top_logprobs`.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub ttc: Option<TtcOptions>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: one string, or a list of exactly one.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Logprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// What test-time scaling chose and spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttc: Option<Value>,
}

/// OpenAI's error shape.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
}
