//! Next-token sampling: greedy, temperature, top-k, top-p, min-p, with a seeded RNG per
//! sequence, and the chosen token's log-probability under the model (temperature 1), which
//! the scorers of test-time scaling read.
//!
//! The order of the filters follows llama.cpp's default sampler chain (top-k, top-p, min-p,
//! then temperature); with temperature 0 the choice is the argmax (ties: the lowest id).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off.
    pub min_p: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p must be in [0, 1], got {}", self.min_p));
        }
        Ok(())
    }
}

/// One sampled token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// log p(token) under the model's own distribution (temperature 1, no filters).
    pub logprob: f32,
    /// Self-certainty of the distribution the token was drawn from: KL(uniform || p), the
    /// divergence from uniform (Kang et al., "Scalable Best-of-N Selection via Self-Certainty").
    pub self_certainty: f32,
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Scratch for [`Sampler::draw_all`]: one weight per vocabulary entry, kept between draws.
    weights: Vec<f32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            weights: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let token = if self.params.temperature <= 0.0 {
            argmax(logits)
        } else {
            self.sample_filtered(logits)
        };
        let lse = log_sum_exp(logits);
        Sampled {
            token,
            logprob: logits[token as usize] - lse,
            self_certainty: self_certainty(logits, lse),
        }
    }

    fn sample_filtered(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No filter needs the candidates in order: sample the whole distribution.
            return self.draw_all(logits);
        }
        let mut cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        // Sorted by logit, descending; ties by id so that the order never depends on the sort.
        let k = if p.top_k > 0 {
            p.top_k.min(cands.len())
        } else {
            cands.len()
        };
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, cmp);
            cands.truncate(k);
        }
        cands.sort_by(cmp);
        let probs = softmax(&cands.iter().map(|c| c.1).collect::<Vec<_>>(), 1.0);
        let mut keep = cands.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, q) in probs.iter().enumerate() {
                cum += q;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p;
            keep = keep.min(probs.iter().take_while(|&&q| q >= floor).count().max(1));
        }
        cands.truncate(keep);
        self.draw(&cands)
    }

    /// Draws a token from the whole vocabulary with probability softmax(logit / temperature):
    /// the unnormalized weights go into a reused buffer (vectorized `exp`), and the draw walks
    /// their running sum up to `r * total`.
    fn draw_all(&mut self, logits: &[f32]) -> u32 {
        let (max, _) = ttc_kernels::math::max_and_sum(logits);
        self.weights.resize(logits.len(), 0.0);
        let total = ttc_kernels::math::exp_into(
            logits,
            max,
            1.0 / self.params.temperature,
            &mut self.weights,
        );
        let target = self.rng.random::<f32>() * total;
        let mut cum = 0.0;
        for (i, &w) in self.weights.iter().enumerate() {
            cum += w;
            if target < cum {
                return i as u32;
            }
        }
        // Rounding left `cum` a hair short of `total`: the last token with any weight.
        self.weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }

    /// Draws one of `cands` (id, logit) with probability softmax(logit / temperature).
    fn draw(&mut self, cands: &[(u32, f32)]) -> u32 {
        let probs = softmax(
            &cands.iter().map(|c| c.1).collect::<Vec<_>>(),
            self.params.temperature,
        );
        let r: f32 = self.rng.random();
        let mut cum = 0.0;
        for (c, q) in cands.iter().zip(&probs) {
            cum += q;
            if r < cum {
                return c.0;
            }
        }
        cands.last().map(|c| c.0).unwrap_or(0)
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits
        .iter()
        .map(|&l| ttc_kernels::math::exp((l - max) / temperature))
        .collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Vectorized (ttc's kernels): every sampled token's log-probability needs one over the whole
/// vocabulary, which with libm's `expf` cost a few percent of batched decoding.
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    ttc_kernels::math::log_sum_exp(logits)
}

pub fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    logits[index] - log_sum_exp(logits)
}

/// KL(U || p) = -log V - mean_i log p_i, for p = softmax(logits) with log-sum-exp `lse`:
/// 0 for a uniform distribution, larger the more peaked it is.
pub fn self_certainty(logits: &[f32], lse: f32) -> f32 {
    let v = logits.len() as f32;
    let mean_logit = ttc_kernels::math::max_and_sum(logits).1 / v;
    lse - mean_logit - v.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0);
        let out = s.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(out.token, 1);
        let expected = 2.0 - (1.0f32 + 2.0f32.exp() + 1.0f32.exp()).ln();
        assert!((out.logprob - expected).abs() < 1e-5);
    }

    #[test]
    fn self_certainty_is_zero_for_uniform_and_grows_with_peakedness() {
        let flat = [1.0f32; 8];
        assert!(self_certainty(&flat, log_sum_exp(&flat)).abs() < 1e-6);
        let peaked = [5.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let sharper = [9.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let (a, b) = (
            self_certainty(&peaked, log_sum_exp(&peaked)),
            self_certainty(&sharper, log_sum_exp(&sharper)),
        );
        assert!(a > 0.5 && b > a, "{a} {b}");
        // Direct definition: sum_i (1/V) log((1/V) / p_i).
        let p: Vec<f32> = peaked
            .iter()
            .map(|&l| (l - log_sum_exp(&peaked)).exp())
            .collect();
        let kl: f32 = p
            .iter()
            .map(|&pi| (1.0 / 8.0) * ((1.0 / 8.0) / pi).ln())
            .sum();
        assert!((kl - a).abs() < 1e-4, "{kl} {a}");
    }

    #[test]
    fn top_k_one_is_greedy() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            min_p: 0.0,
        };
        let mut s = Sampler::new(params, 7);
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.5, 0.1, 3.0, 2.9]).token, 2);
        }
    }

    #[test]
    fn min_p_removes_unlikely_tokens() {
        // p(0) ~ 0.98, p(1) ~ 0.018: min-p 0.1 keeps only token 0.
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
        };
        let mut s = Sampler::new(params, 3);
        for _ in 0..50 {
            assert_eq!(s.sample(&[5.0, 1.0]).token, 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        };
        let run = |seed| {
            let mut s = Sampler::new(params.clone(), seed);
            (0..32).map(|_| s.sample(&logits).token).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        // logits ln(3), 0 -> p = 0.75, 0.25.
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        };
        let mut s = Sampler::new(params, 11);
        let n = 4000;
        let zeros = (0..n)
            .filter(|_| s.sample(&[3f32.ln(), 0.0]).token == 0)
            .count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.03, "{frac}");
    }
}
