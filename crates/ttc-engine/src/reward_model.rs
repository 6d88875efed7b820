//! Process reward models (PRMs): a second model, on the same device, that scores each step of a
//! solution. The layout is Qwen2.5-Math-PRM's (`Qwen2ForProcessRewardModel`): a Qwen2 decoder
//! read from a Hugging Face safetensors checkpoint, and a reward head `score.0` (Linear) ->
//! ReLU -> `score.2` (Linear to 2 classes) applied to the final hidden state at each step
//! separator `<extra_0>`; a step's reward is the probability of the second class.
//!
//! The input follows the PRM's model card: a ChatML conversation whose assistant turn is the
//! steps, each followed by the separator. ttc aggregates by the last step's reward, as the
//! paper's experiments do.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::models::{Architecture, BatchEntry, Model};
use crate::tokenizer::Tokenizer;
use crate::weights::{config_from_hf, SafetensorsWeights};

pub const STEP_SEPARATOR: &str = "<extra_0>";
const SYSTEM: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

pub struct RewardModel {
    model: Model,
    tokenizer: Tokenizer,
    head_hidden: candle_nn::Linear,
    head_out: candle_nn::Linear,
    separator_id: u32,
}

/// What scoring one solution cost and found.
pub struct StepRewards {
    /// One reward in [0, 1] per step.
    pub rewards: Vec<f32>,
    /// Tokens the reward model read.
    pub tokens: usize,
}

impl RewardModel {
    /// Loads a PRM directory: `config.json`, `*.safetensors`, `tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(EngineError::ModelNotFound(dir.to_path_buf()));
        }
        let config = config_from_hf(&dir.join("config.json"))?;
        if config.architecture != Architecture::Qwen2 {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "{} (reward models: qwen2)",
                config.architecture.name()
            )));
        }
        let weights = SafetensorsWeights::load(dir)?;
        let linear = |name: &str| -> Result<candle_nn::Linear> {
            let w = weights.raw(&format!("{name}.weight"), device)?;
            let b = if weights.has_raw(&format!("{name}.bias")) {
                Some(weights.raw(&format!("{name}.bias"), device)?)
            } else {
                None
            };
            Ok(candle_nn::Linear::new(w, b))
        };
        let head_hidden = linear("score.0")?;
        let head_out = linear("score.2")?;
        let model = Model::load(&weights, config, device)?;
        let tokenizer = Tokenizer::from_json(&dir.join("tokenizer.json"), None, Vec::new())?;
        let sep = tokenizer.encode(STEP_SEPARATOR, true)?;
        let [separator_id] = sep[..] else {
            return Err(EngineError::Tokenizer(format!(
                "the reward model's vocabulary has no single {STEP_SEPARATOR} token"
            )));
        };
        Ok(Self {
            model,
            tokenizer,
            head_hidden,
            head_out,
            separator_id,
        })
    }

    /// Rewards of each of `steps` of a solution to `question`.
    pub fn score_steps(&self, question: &str, steps: &[&str]) -> Result<StepRewards> {
        if steps.is_empty() {
            return Ok(StepRewards {
                rewards: Vec::new(),
                tokens: 0,
            });
        }
        let mut text = format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
        for s in steps {
            text.push_str(s);
            text.push_str(STEP_SEPARATOR);
        }
        let ids = self.tokenizer.encode(&text, true)?;
        let ctx = self.model.config().context_length;
        if ids.len() > ctx {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: ids.len(),
                context: ctx,
            });
        }
        // One forward pass per step, each ending at its separator: the hidden state there is
        // what the head reads.
        let mut cache = KvCache::new(
            self.model.config(),
            ids.len().div_ceil(16) + 1,
            16,
            self.model.device(),
        )?;
        let seq = cache.new_sequence();
        let mut rewards = Vec::with_capacity(steps.len());
        let mut start = 0;
        for (i, _) in ids
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == self.separator_id)
        {
            let chunk = &ids[start..=i];
            cache.reserve(seq, chunk.len())?;
            let slots = cache.slots(seq, 0..i + 1)?;
            let out = self.model.forward_batch(
                &[BatchEntry {
                    tokens: chunk,
                    slots: &slots,
                    want_output: true,
                }],
                &cache,
            )?;
            cache.commit(seq, chunk.len())?;
            let hidden = out.hidden.expect("asked for output");
            rewards.push(self.head(&hidden)?);
            start = i + 1;
        }
        Ok(StepRewards {
            rewards,
            tokens: ids.len(),
        })
    }

    fn head(&self, hidden: &Tensor) -> Result<f32> {
        let h = self.head_hidden.forward(hidden)?.relu()?;
        let logits = self.head_out.forward(&h)?;
        let p = candle_nn::ops::softmax_last_dim(&logits)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        p.get(1).copied().ok_or_else(|| {
            EngineError::InvalidArgument("the reward head must have 2 outputs".into())
        })
    }
}
