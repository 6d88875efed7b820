//! The engine: a loaded model with its tokenizer and chat template, and single-sequence
//! generation (chunked prefill, then one token per step) with streaming and timings.

use std::time::Instant;

use candle_core::{DType, Device};

use crate::chat_template::{ChatTemplate, Message, CHATML_TEMPLATE};
use crate::device::DeviceKind;
use crate::download::{self, ResolvedModel};
use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;
use crate::models::{Architecture, Model, ModelConfig};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Tokens per prefill forward. Quantized logits depend on the chunking (activations are
/// quantized per block), so golden tests fix it; 512 is llama.cpp's default batch.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

pub struct LoadOptions {
    pub device: DeviceKind,
    pub show_progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: DeviceKind::Cpu, show_progress: false }
    }
}

pub struct Engine {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub resolved: ResolvedModel,
    /// A short name: the alias, or the file name.
    pub name: String,
    stop_strings: Vec<String>,
    pub prefill_chunk: usize,
    /// Tokens a sequence may hold (prompt + generated): the model's context unless lowered.
    context_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    StopString,
    ContextFull,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub params: SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    /// Extra stop strings, beside the model's own.
    pub stop: Vec<String>,
    /// Keep generating past EOS (benchmarks: a fixed number of tokens).
    pub ignore_eos: bool,
}

impl GenerateRequest {
    pub fn greedy(max_tokens: usize) -> Self {
        Self { params: SamplingParams::greedy(), seed: 0, max_tokens, stop: Vec::new(), ignore_eos: false }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub prompt_tokens: usize,
    pub stop_reason: StopReason,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl Engine {
    /// Loads `spec` (an alias or a `.gguf` path).
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let device = opts.device.open()?;
        let resolved = download::resolve(spec, opts.show_progress)?;
        Self::load_resolved(resolved, &device)
    }

    pub fn load_resolved(resolved: ResolvedModel, device: &Device) -> Result<Self> {
        let gguf = GgufModel::open(&resolved.paths)?;
        let config = ModelConfig::from_gguf(&gguf)?;
        if let Some(entry) = &resolved.entry {
            let expected = Architecture::from_gguf_name(&entry.architecture)?;
            if expected != config.architecture {
                return Err(EngineError::CorruptGguf {
                    path: gguf.path().to_path_buf(),
                    reason: format!("the registry says {}, the file says {}", entry.architecture, config.architecture.name()),
                });
            }
        }
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let token_text = |id: Option<u32>| id.map(|i| tokenizer.token_text(i)).unwrap_or_default();
        let template_src = resolved
            .entry
            .as_ref()
            .and_then(|e| e.chat_template.clone())
            .or_else(|| gguf.get_opt_str("tokenizer.chat_template"))
            .unwrap_or_else(|| CHATML_TEMPLATE.to_string());
        let template = ChatTemplate::new(&template_src, &token_text(tokenizer.bos_id), &token_text(tokenizer.eos_ids.first().copied()))?;
        let model = Model::load(&gguf, config, device)?;
        let name = match &resolved.entry {
            Some(e) => e.alias.clone(),
            None => gguf.path().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let stop_strings = resolved.entry.as_ref().map(|e| e.stop.clone()).unwrap_or_default();
        let context_limit = model.config().context_length;
        Ok(Self { model, tokenizer, template, resolved, name, stop_strings, prefill_chunk: DEFAULT_PREFILL_CHUNK, context_limit })
    }

    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    pub fn context_limit(&self) -> usize {
        self.context_limit
    }

    /// Lowers the context (never above what the model was trained for).
    pub fn set_context_limit(&mut self, tokens: usize) -> Result<()> {
        let max = self.config().context_length;
        if tokens == 0 || tokens > max {
            return Err(EngineError::InvalidArgument(format!("context must be in 1..={max}, got {tokens}")));
        }
        self.context_limit = tokens;
        Ok(())
    }

    /// The prompt text for one user turn, with an optional system prompt (without one, the
    /// template's default system prompt applies, as in llama.cpp).
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, true)
    }

    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.tokenizer.encode_prompt(&self.render_chat(messages)?)
    }

    /// Generates from `prompt` token ids; `on_text` receives each new piece of text (whole
    /// UTF-8 characters) as soon as it is known not to be part of a stop string.
    pub fn generate(
        &self,
        prompt: &[u32],
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        req.params.validate().map_err(EngineError::InvalidArgument)?;
        let ctx = self.context_limit;
        if prompt.is_empty() {
            return Err(EngineError::InvalidArgument("empty prompt".into()));
        }
        if prompt.len() >= ctx {
            return Err(EngineError::PromptTooLong { prompt_tokens: prompt.len(), context: ctx });
        }
        let stops: Vec<&str> = self.stop_strings.iter().chain(&req.stop).map(String::as_str).filter(|s| !s.is_empty()).collect();
        let mut cache = self.model.new_cache();
        let t0 = Instant::now();
        let mut out = None;
        for chunk in prompt.chunks(self.prefill_chunk.max(1)) {
            out = Some(self.model.forward(chunk, &mut cache)?);
        }
        let mut logits = out.expect("prompt is not empty").logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let prefill_s = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let mut sampler = Sampler::new(req.params.clone(), req.seed);
        let mut tokens = Vec::new();
        let mut logprobs = Vec::new();
        let mut decoder = StreamDecoder::default();
        let mut text = String::new();
        let mut emitted = 0; // bytes of `text` already passed to on_text
        let stop_reason = loop {
            if tokens.len() >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            let s = sampler.sample(&logits);
            if self.tokenizer.is_eos(s.token) && !req.ignore_eos {
                break StopReason::Eos;
            }
            tokens.push(s.token);
            logprobs.push(s.logprob);
            text.push_str(&decoder.push(&self.tokenizer, s.token));
            if let Some(pos) = stops.iter().filter_map(|st| text.find(st)).min() {
                text.truncate(pos);
                if pos > emitted {
                    on_text(&text[emitted..]);
                }
                emitted = text.len();
                break StopReason::StopString;
            }
            // Hold back a tail that could still become a stop string.
            let safe = safe_emit_len(&text, &stops);
            if safe > emitted {
                on_text(&text[emitted..safe]);
                emitted = safe;
            }
            if cache.len() >= ctx {
                break StopReason::ContextFull;
            }
            logits = self.model.forward(&[s.token], &mut cache)?.logits.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        };
        if stop_reason != StopReason::StopString {
            text.push_str(&decoder.finish());
            if text.len() > emitted {
                on_text(&text[emitted..]);
            }
        }
        Ok(Generation {
            text,
            tokens,
            logprobs,
            prompt_tokens: prompt.len(),
            stop_reason,
            prefill_s,
            decode_s: t1.elapsed().as_secs_f64(),
        })
    }
}

/// The length of the prefix of `text` that cannot be the start of a stop string.
fn safe_emit_len(text: &str, stops: &[&str]) -> usize {
    let mut safe = text.len();
    for stop in stops {
        for (i, _) in text.char_indices().rev().take(stop.len()) {
            if stop.starts_with(&text[i..]) {
                safe = safe.min(i);
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::safe_emit_len;

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        assert_eq!(safe_emit_len("hello <|im", &["<|im_end|>"]), 6);
        assert_eq!(safe_emit_len("hello", &["<|im_end|>"]), 5);
        assert_eq!(safe_emit_len("a\n", &["\n\n"]), 1);
    }
}
