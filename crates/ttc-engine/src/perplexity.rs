//! The perplexity of a text under the model, computed as llama.cpp's `llama-perplexity` does:
//! the tokens (with the model's BOS when it adds one) are cut into non-overlapping windows of
//! `context` tokens, each evaluated from an empty cache with its first token replaced by BOS
//! (when the model adds one), and the second half of each window is scored: the logits at
//! position `j` (`context / 2 <= j < context - 1`) against token `j + 1`.
//!
//! Beside the figure, every scored row's log-probabilities can be handed out, so that two runs
//! (two devices, kernel sets or quantizations) can be compared by their KL divergence and
//! top-token agreement, as `llama-perplexity --kl-divergence` compares them.
//!
//! Reference: llama.cpp `tools/perplexity/perplexity.cpp` (`perplexity`, `log_softmax`,
//! `process_logits`); read, not copied.

use candle_core::{DType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::models::BatchEntry;
use crate::Engine;

#[derive(Debug, Clone)]
pub struct PerplexityOptions {
    /// Tokens per window (llama.cpp's `-c`).
    pub context: usize,
    /// Tokens per forward pass (llama.cpp's `-ub`, 512 by default): quantized activations
    /// make the logits depend on how a window is cut, so both engines must cut it alike.
    pub batch: usize,
    /// At most this many windows (llama.cpp's `--chunks`); `None`: all that fit.
    pub max_windows: Option<usize>,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self {
            context: 512,
            batch: 512,
            max_windows: None,
        }
    }
}

/// Receives a scored row's log-probabilities and the token it is scored against.
pub type RowSink<'a> = dyn FnMut(&[f32], u32) + 'a;

/// The result, in llama.cpp's terms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    /// One standard error of `ppl` (llama.cpp's `+/-`).
    pub ppl_err: f64,
    /// Mean negative log-likelihood per scored token, nats.
    pub nll: f64,
    pub windows: usize,
    pub scored_tokens: usize,
    pub context: usize,
    pub text_tokens: usize,
}

/// `max(logits)` and `ln sum exp(logits - max)` (the sum in double precision, as llama.cpp's
/// `log_softmax` takes it): `log softmax(logits)[i] = logits[i] - max - ln_sum`.
fn log_normalizer(logits: &[f32]) -> (f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (max, sum.ln())
}

/// `log softmax(logits)[target]`, as llama.cpp computes it.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    log_prob(logits, log_normalizer(logits), target)
}

/// Every entry of `log softmax(logits)`.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    log_probs(logits, log_normalizer(logits))
}

fn log_prob(logits: &[f32], (max, ln_sum): (f32, f64), i: usize) -> f64 {
    (logits[i] - max) as f64 - ln_sum
}

fn log_probs(logits: &[f32], (max, ln_sum): (f32, f64)) -> Vec<f32> {
    logits
        .iter()
        .map(|&l| ((l - max) as f64 - ln_sum) as f32)
        .collect()
}

/// `KL(base || other)` of two rows of log-probabilities, nats.
pub fn kl_divergence(base: &[f32], other: &[f32]) -> f64 {
    base.iter()
        .zip(other)
        .map(|(&b, &o)| (b as f64).exp() * (b as f64 - o as f64))
        .sum()
}

/// The tokens `llama-perplexity` scores for `text`: the model's BOS first where it adds one,
/// control tokens read as text.
pub fn text_tokens(engine: &Engine, text: &str) -> Result<Vec<u32>> {
    let mut tokens = Vec::new();
    if engine.tokenizer.add_bos {
        tokens.extend(engine.tokenizer.bos_id);
    }
    tokens.extend(engine.tokenizer.encode(text, false)?);
    Ok(tokens)
}

/// How one run's next-token distributions part from a base run's, gathered row by row
/// (log-probabilities of the same scored positions).
#[derive(Debug, Default)]
pub struct Divergence {
    klds: Vec<f64>,
    same_top: usize,
    base_nll: f64,
}

/// [`Divergence`] summed up, as `llama-perplexity --kl-divergence` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DivergenceSummary {
    /// Perplexity of the base run over the same targets.
    pub base_ppl: f64,
    /// This run's perplexity over the base run's.
    pub ppl_ratio: f64,
    pub mean_kld: f64,
    pub p99_kld: f64,
    pub max_kld: f64,
    /// Share of rows whose most likely token is the base run's.
    pub same_top: f64,
    pub rows: usize,
}

impl Divergence {
    /// One scored row: both runs' log-probabilities and the token it is scored against.
    pub fn add(&mut self, base: &[f32], other: &[f32], target: u32) {
        let argmax = crate::sampler::argmax;
        self.klds.push(kl_divergence(base, other));
        self.same_top += usize::from(argmax(base) == argmax(other));
        self.base_nll -= base[target as usize] as f64;
    }

    pub fn rows(&self) -> usize {
        self.klds.len()
    }

    /// The summary against this run's perplexity `ppl`; `None` before any row.
    pub fn summary(&self, ppl: f64) -> Option<DivergenceSummary> {
        let rows = self.rows();
        if rows == 0 {
            return None;
        }
        let mut sorted = self.klds.clone();
        sorted.sort_by(f64::total_cmp);
        let base_ppl = (self.base_nll / rows as f64).exp();
        Some(DivergenceSummary {
            base_ppl,
            ppl_ratio: ppl / base_ppl,
            mean_kld: self.klds.iter().sum::<f64>() / rows as f64,
            p99_kld: sorted[((rows - 1) as f64 * 0.99).round() as usize],
            max_kld: sorted[rows - 1],
            same_top: self.same_top as f64 / rows as f64,
            rows,
        })
    }
}

/// The text's perplexity. `on_window(done, of, running_ppl)` follows progress;
/// `on_row(log_probs, target)` receives every scored row's log-probabilities, when given.
pub fn perplexity(
    engine: &Engine,
    tokens: &[u32],
    opts: &PerplexityOptions,
    mut on_window: impl FnMut(usize, usize, f64),
    mut on_row: Option<&mut RowSink>,
) -> Result<Perplexity> {
    let n_ctx = opts.context;
    if n_ctx < 4 {
        return Err(EngineError::InvalidArgument(format!(
            "a perplexity window needs at least 4 tokens, got {n_ctx}"
        )));
    }
    if n_ctx > engine.context_limit() {
        return Err(EngineError::PromptTooLong {
            prompt_tokens: n_ctx,
            context: engine.context_limit(),
        });
    }
    if opts.batch == 0 {
        return Err(EngineError::InvalidArgument(
            "the batch size must be at least 1".into(),
        ));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(EngineError::InvalidArgument(format!(
            "the text has {} tokens; a context of {n_ctx} needs at least {} (llama-perplexity \
             asks the same)",
            tokens.len(),
            2 * n_ctx
        )));
    }
    let windows = (tokens.len() / n_ctx).min(opts.max_windows.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let bos = engine
        .tokenizer
        .add_bos
        .then_some(engine.tokenizer.bos_id)
        .flatten();
    let vocab = engine.model.config().vocab_size;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    let mut kv = KvCache::new(
        engine.model.config(),
        KvCache::blocks_for(n_ctx, crate::kv_cache::DEFAULT_BLOCK_SIZE),
        crate::kv_cache::DEFAULT_BLOCK_SIZE,
        engine.model.device(),
    )?;
    for w in 0..windows {
        let mut window = tokens[w * n_ctx..(w + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            window[0] = b;
        }
        let seq = kv.new_sequence();
        let result = (|| {
            for chunk_start in (0..n_ctx).step_by(opts.batch) {
                let chunk = &window[chunk_start..(chunk_start + opts.batch).min(n_ctx)];
                kv.reserve(seq, chunk.len())?;
                let slots = kv.slots(seq, 0..chunk_start + chunk.len())?;
                let logits = engine.model.forward_every_position(
                    &BatchEntry {
                        tokens: chunk,
                        slots: &slots,
                        want_output: true,
                    },
                    &kv,
                )?;
                kv.commit(seq, chunk)?;
                // Rows `first ..= n_ctx - 2` predict the next token of the window.
                let lo = first.max(chunk_start);
                let hi = (chunk_start + chunk.len()).min(n_ctx - 1);
                if lo >= hi {
                    continue;
                }
                let rows = logits
                    .narrow(0, lo - chunk_start, hi - lo)?
                    .to_dtype(DType::F32)?
                    .to_vec2::<f32>()?;
                for (i, row) in rows.iter().enumerate() {
                    if row.len() != vocab {
                        return Err(EngineError::InvalidArgument(format!(
                            "logits of {} entries for a vocabulary of {vocab}",
                            row.len()
                        )));
                    }
                    let target = window[lo + i + 1];
                    // One normalizer for the scored entry and, when asked, the whole row.
                    let norm = log_normalizer(row);
                    let lp = log_prob(row, norm, target as usize);
                    nll -= lp;
                    nll2 += lp * lp;
                    count += 1;
                    if let Some(f) = on_row.as_mut() {
                        f(&log_probs(row, norm), target);
                    }
                }
            }
            Ok::<_, EngineError>(())
        })();
        kv.free(seq);
        result?;
        on_window(w + 1, windows, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let ppl_err = if var > 0.0 && count > 1 {
        ppl * (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(Perplexity {
        ppl,
        ppl_err,
        nll: mean,
        windows,
        scored_tokens: count,
        context: n_ctx,
        text_tokens: tokens.len(),
    })
}

/// Writes scored rows' log-probabilities (`rows * vocab`, row-major) and their targets as
/// safetensors (`logprobs`, `targets`), for [`load_logprobs`].
pub fn save_logprobs(
    path: &std::path::Path,
    logprobs: Vec<f32>,
    targets: Vec<u32>,
    vocab: usize,
) -> Result<()> {
    let rows = targets.len();
    if logprobs.len() != rows * vocab {
        return Err(EngineError::InvalidArgument(format!(
            "{} log-probabilities for {rows} rows of {vocab}",
            logprobs.len()
        )));
    }
    let t = std::collections::HashMap::from([
        (
            "logprobs".to_string(),
            Tensor::from_vec(logprobs, (rows, vocab), &Device::Cpu)?,
        ),
        (
            "targets".to_string(),
            Tensor::from_vec(targets, rows, &Device::Cpu)?,
        ),
    ]);
    candle_core::safetensors::save(&t, path)?;
    Ok(())
}

/// Reads what [`save_logprobs`] wrote, checked against a vocabulary of `vocab` before use:
/// `(rows * vocab log-probabilities, targets)`.
pub fn load_logprobs(path: &std::path::Path, vocab: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    let bad = |reason: String| EngineError::InvalidArgument(reason);
    let t = candle_core::safetensors::load(path, &Device::Cpu)?;
    let (Some(lp), Some(targets)) = (t.get("logprobs"), t.get("targets")) else {
        return Err(bad(
            "no 'logprobs' and 'targets' (write them with --save-logprobs)".into(),
        ));
    };
    let (rows, cols) = lp
        .dims2()
        .map_err(|_| bad("logprobs must be (rows, vocab)".into()))?;
    if cols != vocab || targets.dims() != [rows] {
        return Err(bad(format!(
            "{rows} rows of {cols} log-probabilities and {:?} targets, for a vocabulary of \
             {vocab}",
            targets.dims()
        )));
    }
    let lp = lp.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if targets.iter().any(|&t| t as usize >= vocab) {
        return Err(bad("a target outside the vocabulary".into()));
    }
    Ok((lp, targets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_its_definition_and_kl_of_a_row_with_itself_is_zero() {
        let logits = [1.0f32, 2.0, 3.0, -4.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (t, &l) in logits.iter().enumerate() {
            assert!((log_softmax_at(&logits, t) - (l as f64 - z.ln())).abs() < 1e-9);
        }
        let lp = log_softmax(&logits);
        let total: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(kl_divergence(&lp, &lp).abs() < 1e-9);
        let other = log_softmax(&[3.0, 2.0, 1.0, -4.0]);
        assert!(kl_divergence(&lp, &other) > 0.1);
    }
}
