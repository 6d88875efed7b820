//! Process reward models (PRMs): a second model, on the same device, that scores each step of a
//! solution. The layout is Qwen2.5-Math-PRM's (`Qwen2ForProcessRewardModel`): a Qwen2 decoder
//! read from a Hugging Face safetensors checkpoint, and a reward head `score.0` (Linear) ->
//! ReLU -> `score.2` (Linear to 2 classes) applied to the final hidden state at each step
//! separator `<extra_0>`; a step's reward is the probability of the second class.
//!
//! The input follows the PRM's model card: a ChatML conversation whose assistant turn is the
//! steps, each followed by the separator. ttc aggregates by the last step's reward, as the
//! paper's experiments do.
//!
//! The layers' matrices are quantized to Q8_0 as they load (ttc's kernels run them), and only
//! hidden states are computed (no vocabulary head). A [`PrmSession`] scores the candidates of
//! one question incrementally over its own paged KV cache: the question is prefilled once, and
//! a candidate that extends one already scored (a beam's next step) prefills only its new
//! steps, from a fork of the cached prefix.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use crate::error::{EngineError, Result};
use crate::kv_cache::{KvCache, SeqId, DEFAULT_BLOCK_SIZE};
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
        let weights = SafetensorsWeights::load(dir)?
            .with_layer_matrices(candle_core::quantized::GgmlDType::Q8_0);
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

    /// The tokens before the first step: the system prompt, the question, the assistant
    /// header.
    fn prefix_ids(&self, question: &str) -> Result<Vec<u32>> {
        let text = format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n");
        self.tokenizer.encode(&text, true)
    }

    /// One step's tokens, ending with the separator. The separator is a special token, which
    /// the pre-tokenizer splits at, so a solution tokenized step by step is the solution
    /// tokenized whole (a separator written inside a step's text stays text).
    fn step_ids(&self, step: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(step, false)?;
        ids.push(self.separator_id);
        Ok(ids)
    }

    /// Rewards of each of `steps` of a solution to `question`, from scratch (one forward pass
    /// per step over a fresh cache): the reference for [`PrmSession::score`].
    pub fn score_steps(&self, question: &str, steps: &[&str]) -> Result<StepRewards> {
        if steps.is_empty() {
            return Ok(StepRewards {
                rewards: Vec::new(),
                tokens: 0,
            });
        }
        let prefix = self.prefix_ids(question)?;
        let chunks = steps
            .iter()
            .map(|s| self.step_ids(s))
            .collect::<Result<Vec<_>>>()?;
        let total = prefix.len() + chunks.iter().map(Vec::len).sum::<usize>();
        self.check_context(total)?;
        let mut cache = KvCache::new(
            self.model.config(),
            total.div_ceil(DEFAULT_BLOCK_SIZE) + 1,
            DEFAULT_BLOCK_SIZE,
            self.model.device(),
        )?;
        let seq = cache.new_sequence();
        self.extend(&mut cache, seq, &prefix)?;
        let mut rewards = Vec::with_capacity(steps.len());
        for chunk in &chunks {
            let hidden = self.extend(&mut cache, seq, chunk)?;
            rewards.push(self.head(&hidden)?);
        }
        Ok(StepRewards {
            rewards,
            tokens: total,
        })
    }

    fn check_context(&self, tokens: usize) -> Result<()> {
        let ctx = self.model.config().context_length;
        if tokens > ctx {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: tokens,
                context: ctx,
            });
        }
        Ok(())
    }

    /// Runs `tokens` after what `seq` holds; the final hidden state at the last of them.
    fn extend(&self, cache: &mut KvCache, seq: SeqId, tokens: &[u32]) -> Result<Tensor> {
        let start = cache.len(seq);
        cache.reserve(seq, tokens.len())?;
        let slots = cache.slots(seq, 0..start + tokens.len())?;
        let hidden = self.model.forward_hidden(
            &[BatchEntry {
                tokens,
                slots: &slots,
                want_output: true,
            }],
            cache,
        )?;
        cache.commit(seq, tokens)?;
        hidden.ok_or_else(|| EngineError::InvalidArgument("no hidden state came back".into()))
    }

    /// A session scoring candidate solutions to `question` with at most `kv_bytes` of KV cache.
    pub fn session(self: &Arc<Self>, question: &str, kv_bytes: usize) -> Result<PrmSession> {
        let block_bytes = DEFAULT_BLOCK_SIZE * self.model.config().kv_bytes_per_token();
        let prefix = self.prefix_ids(question)?;
        self.check_context(prefix.len())?;
        let blocks =
            (kv_bytes / block_bytes.max(1)).max(prefix.len().div_ceil(DEFAULT_BLOCK_SIZE) + 2);
        let mut cache = KvCache::new(
            self.model.config(),
            blocks,
            DEFAULT_BLOCK_SIZE,
            self.model.device(),
        )?;
        let root = cache.new_sequence();
        let t0 = std::time::Instant::now();
        self.extend(&mut cache, root, &prefix)?;
        Ok(PrmSession {
            prm: self.clone(),
            cache,
            root,
            prefix_tokens: prefix.len(),
            nodes: HashMap::new(),
            clock: 0,
            computed: (prefix.len(), t0.elapsed().as_secs_f64()),
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

/// A scored prefix of steps: the cache sequence holding it, and the rewards of its steps.
struct Node {
    seq: SeqId,
    rewards: Vec<f32>,
    last_used: u64,
}

/// Scores candidate solutions of one question over one paged cache, reusing the KV of every
/// step prefix already scored (least recently used prefixes make room when the cache is full).
pub struct PrmSession {
    prm: Arc<RewardModel>,
    cache: KvCache,
    /// The question's prefix, prefilled once.
    root: SeqId,
    prefix_tokens: usize,
    nodes: HashMap<Vec<String>, Node>,
    clock: u64,
    /// Tokens this session's reward model computed, and the seconds that took: its speed on
    /// this device, measured from the question's prefill on.
    computed: (usize, f64),
}

impl PrmSession {
    /// Rewards of each of `steps`; `tokens` counts only what this call computed.
    pub fn score(&mut self, steps: &[&str]) -> Result<StepRewards> {
        self.clock += 1;
        let key = |k: usize| steps[..k].iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cached = (1..=steps.len())
            .rev()
            .find(|&k| self.nodes.contains_key(&key(k)));
        let (done, from, mut rewards) = match cached {
            Some(k) => {
                let node = self.nodes.get_mut(&key(k)).expect("found above");
                node.last_used = self.clock;
                (k, node.seq, node.rewards.clone())
            }
            None => (0, self.root, Vec::new()),
        };
        if done == steps.len() {
            return Ok(StepRewards { rewards, tokens: 0 });
        }
        let chunks = steps[done..]
            .iter()
            .map(|s| self.prm.step_ids(s))
            .collect::<Result<Vec<_>>>()?;
        let total = self.cache.len(from) + chunks.iter().map(Vec::len).sum::<usize>();
        self.prm.check_context(total)?;
        let work = self.cache.fork(from)?;
        let mut tokens = 0;
        let t0 = std::time::Instant::now();
        for (i, chunk) in chunks.iter().enumerate() {
            let hidden = loop {
                match self.prm.extend(&mut self.cache, work, chunk) {
                    Ok(h) => break h,
                    Err(EngineError::KvCacheFull { .. }) if self.evict_one() => continue,
                    Err(e) => {
                        self.cache.free(work);
                        return Err(e);
                    }
                }
            };
            tokens += chunk.len();
            rewards.push(self.prm.head(&hidden)?);
            let seq = self.cache.fork(work)?;
            self.nodes.insert(
                key(done + i + 1),
                Node {
                    seq,
                    rewards: rewards.clone(),
                    last_used: self.clock,
                },
            );
        }
        self.cache.free(work);
        self.computed.0 += tokens;
        self.computed.1 += t0.elapsed().as_secs_f64();
        Ok(StepRewards { rewards, tokens })
    }

    /// Seconds per token the reward model took in this session so far (from the question's
    /// prefill on): what the allocator prices a scored configuration's tokens at.
    pub fn seconds_per_token(&self) -> f64 {
        self.computed.1 / self.computed.0.max(1) as f64
    }

    /// Step prefixes whose KV the session holds.
    pub fn cached_prefixes(&self) -> usize {
        self.nodes.len()
    }

    /// Tokens of the question's prefix (computed once, when the session opened).
    pub fn prefix_tokens(&self) -> usize {
        self.prefix_tokens
    }

    /// Frees the least recently used cached prefix; false when none is left to free.
    fn evict_one(&mut self) -> bool {
        let Some(oldest) = self
            .nodes
            .iter()
            .min_by_key(|(_, n)| n.last_used)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let node = self.nodes.remove(&oldest).expect("found above");
        self.cache.free(node.seq);
        true
    }

    /// KV blocks in use (the question's prefix, cached step prefixes, nothing else between
    /// calls).
    pub fn blocks_in_use(&self) -> usize {
        self.cache.allocator().in_use()
    }
}
