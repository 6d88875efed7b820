//! Generating one answer: the single-sequence path of `ttc-run --method plain`, the chat and
//! the tests, written over the sequence API ([`crate::session`]) like every method.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::Result;
use crate::sampler::SamplingParams;
use crate::session::{SessionOptions, StopReason};

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub params: SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    /// Extra stop strings, beside the model's own.
    pub stop: Vec<String>,
    /// Keep generating past EOS (benchmarks: a fixed number of tokens).
    pub ignore_eos: bool,
    /// Set from another thread (Ctrl-C) to stop between two decode steps.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Start from (and leave behind) the prefix cache's blocks of this prompt.
    pub prefix_cache: bool,
}

impl GenerateRequest {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            params: SamplingParams::greedy(),
            seed: 0,
            max_tokens,
            stop: Vec::new(),
            ignore_eos: false,
            cancel: None,
            prefix_cache: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub prompt_tokens: usize,
    /// Prompt tokens computed (the rest came from the prefix cache).
    pub prefill_tokens: usize,
    pub stop_reason: StopReason,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Engine {
    /// Generates one answer from `prompt` token ids; `on_text` receives each new piece of text
    /// (whole UTF-8 characters) as soon as it is known not to be part of a stop string.
    pub fn generate(
        &self,
        prompt: &[u32],
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        let opts = SessionOptions {
            params: req.params.clone(),
            seed: req.seed,
            max_tokens: req.max_tokens,
            stop: req.stop.clone(),
            ignore_eos: req.ignore_eos,
            prefix_cache: req.prefix_cache,
        };
        let max_new = req
            .max_tokens
            .min(self.context_limit().saturating_sub(prompt.len()));
        let mut session = self.session(
            prompt.len(),
            1,
            SessionOptions {
                max_tokens: max_new.max(1),
                ..opts
            },
        )?;
        let seq = session.prefill(prompt)?;
        let stop_reason = if req.max_tokens == 0 {
            StopReason::MaxTokens
        } else {
            loop {
                if req
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::Relaxed))
                {
                    break StopReason::Cancelled;
                }
                let ev = session.step(&[seq])?.pop().expect("one event per sequence");
                if !ev.piece.is_empty() {
                    on_text(&ev.piece);
                }
                if let Some(reason) = ev.finished {
                    break reason;
                }
            }
        };
        let c = session.counters();
        Ok(Generation {
            text: session.text(seq)?.to_string(),
            tokens: session.generated(seq)?.to_vec(),
            logprobs: session.logprobs(seq)?.to_vec(),
            prompt_tokens: prompt.len(),
            prefill_tokens: c.prefill_tokens,
            stop_reason,
            prefill_s: c.prefill_s,
            decode_s: c.decode_s,
        })
    }
}
