//! The token model: each configuration's generated tokens and sequential decode steps on a
//! prompt, from the predicted length of one sampled answer to it (the probe's length head)
//! and ratios measured in calibration. The latency model turns these into seconds.
//!
//! An answer's length varies more than any probe predicts (a sampled answer runs on or stops
//! early; a parallel run lasts as long as its longest sample), so each configuration's cost is
//! a distribution around the prediction. The ratios are fitted against the length head's own
//! predictions on the training questions, as a ratio of sums: the mean predicted cost over
//! them is the mean measured cost, whatever the head's bias (a log-length regression predicts
//! a geometric mean, below the mean). The 90th percentile of each question's cost over its
//! prediction gives a p90 factor, for a bound the user wants to hold per request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibrate::QuestionLabels;
use crate::latency::{Work, WorkKind};
use crate::menu::Config;

/// A configuration's tokens and steps relative to the predicted length of one sampled answer
/// of the same question: the mean, and the 90th percentile over questions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub tokens: f64,
    pub steps: f64,
    /// 0 in a probe made before percentiles were kept: the mean stands in.
    #[serde(default)]
    pub tokens_p90: f64,
    #[serde(default)]
    pub steps_p90: f64,
}

/// Which point of a configuration's cost distribution to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostPoint {
    /// The expected cost: what budgets over many prompts add up.
    Mean,
    /// The 90th percentile: what a bound on one request should hold to.
    P90,
}

/// Predicted generated tokens and sequential steps per configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenModel {
    /// Mean tokens of one sampled answer over the training questions.
    pub mean_sample_tokens: f64,
    /// Per configuration label: its tokens (steps) over the questions' predicted sampled-answer
    /// lengths.
    pub ratios: BTreeMap<String, Ratio>,
    /// The answer length cap the statistics were measured under.
    pub max_tokens: usize,
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

impl TokenModel {
    /// Fits the ratios of each of `menu` on `questions`, whose sampled answers the length head
    /// predicts to be `predicted` tokens long (one per question).
    pub fn fit(
        questions: &[&QuestionLabels],
        predicted: &[f64],
        menu: &[Config],
        max_tokens: usize,
    ) -> Self {
        debug_assert_eq!(questions.len(), predicted.len());
        let mut ratios = BTreeMap::new();
        for c in menu {
            let (mut tokens, mut steps, mut length) = (0.0, 0.0, 0.0);
            let (mut per_tokens, mut per_steps) = (Vec::new(), Vec::new());
            for (q, &len) in questions.iter().zip(predicted) {
                if let Some(o) = q.outcome(c) {
                    let len = len.max(1.0);
                    tokens += o.tokens;
                    steps += o.steps;
                    length += len;
                    per_tokens.push(o.tokens / len);
                    per_steps.push(o.steps / len);
                }
            }
            if length > 0.0 {
                ratios.insert(
                    c.label(),
                    Ratio {
                        tokens: tokens / length,
                        steps: steps / length,
                        tokens_p90: quantile(per_tokens, 0.9),
                        steps_p90: quantile(per_steps, 0.9),
                    },
                );
            }
        }
        let mean = questions
            .iter()
            .map(|q| q.mean_sample_tokens())
            .sum::<f64>()
            / questions.len().max(1) as f64;
        Self {
            mean_sample_tokens: mean,
            ratios,
            max_tokens,
        }
    }

    /// `config`'s work on a prompt of `prompt_len` whose sampled answers are expected to be
    /// `sample_tokens` long. None for a configuration without statistics.
    pub fn work(&self, config: &Config, sample_tokens: f64, prompt_len: usize) -> Option<Work> {
        self.work_at(config, sample_tokens, prompt_len, CostPoint::Mean)
    }

    /// [`TokenModel::work`] at a point of the cost distribution.
    pub fn work_at(
        &self,
        config: &Config,
        sample_tokens: f64,
        prompt_len: usize,
        point: CostPoint,
    ) -> Option<Work> {
        let r = self.ratios.get(&config.label())?;
        let cap = self.max_tokens as f64;
        let (rt, rs) = match point {
            CostPoint::P90 if r.tokens_p90 > 0.0 => (r.tokens_p90, r.steps_p90),
            _ => (r.tokens, r.steps),
        };
        let (mut tokens, mut steps) = (rt * sample_tokens, rs * sample_tokens);
        if !config.method.is_search() {
            // A parallel run cannot outlast one capped answer.
            steps = steps.min(cap + 1.0);
            tokens = tokens.min(config.n as f64 * cap);
        }
        Some(Work {
            prompt_len,
            prefill_tokens: None,
            background_width: 0.0,
            tokens: tokens.max(1.0),
            steps: steps.max(1.0),
            scorer_tokens: 0.0,
            kind: WorkKind::of(config.method),
        })
    }

    /// Like [`TokenModel::work`], for any configuration: one off the menu borrows the ratios of
    /// the nearest configuration of the same method (by width), its tokens scaled by the width.
    pub fn work_nearest(&self, config: &Config, sample_tokens: f64, prompt_len: usize) -> Work {
        if let Some(w) = self.work(config, sample_tokens, prompt_len) {
            return w;
        }
        let nearest = self
            .ratios
            .keys()
            .filter_map(|l| l.parse::<Config>().ok())
            .filter(|c| c.method == config.method)
            .min_by(|a, b| {
                let d = |c: &Config| ((c.n as f64).ln() - (config.n as f64).ln()).abs();
                d(a).total_cmp(&d(b))
            });
        match nearest.and_then(|c| self.work(&c, sample_tokens, prompt_len).map(|w| (c, w))) {
            Some((c, w)) => {
                let scale = config.n as f64 / c.n as f64;
                Work {
                    tokens: w.tokens * scale,
                    ..w
                }
            }
            None => {
                // No statistics for the method at all: n answers of the mean length.
                let n = config.n.max(1) as f64;
                Work {
                    prompt_len,
                    prefill_tokens: None,
                    background_width: 0.0,
                    tokens: n * sample_tokens,
                    steps: sample_tokens + 1.0,
                    scorer_tokens: 0.0,
                    kind: WorkKind::of(config.method),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::{RunRecord, SampleRecord};
    use ttc_methods::Method;

    fn question(i: usize, len: usize) -> QuestionLabels {
        QuestionLabels {
            id: format!("q{i}"),
            reference: "1".into(),
            prompt_tokens: 10,
            hidden: vec![0.0],
            greedy: RunRecord {
                answer: None,
                correct: false,
                tokens: len,
                steps: len + 1,
                latency_s: 0.1,
            },
            samples: (0..4)
                .map(|k| SampleRecord {
                    answer: None,
                    score: -1.0,
                    tokens: len + k,
                    steps: len + k + 1,
                })
                .collect(),
            search: Default::default(),
        }
    }

    #[test]
    fn predictions_are_right_on_average_whatever_the_length_heads_bias() {
        // Lengths 10..100; a head that predicts half of each (a geometric-mean-like bias).
        let qs: Vec<QuestionLabels> = (0..10).map(|i| question(i, 10 + 10 * i)).collect();
        let refs: Vec<&QuestionLabels> = qs.iter().collect();
        let predicted: Vec<f64> = qs.iter().map(|q| q.mean_sample_tokens() / 2.0).collect();
        let menu = [Config::GREEDY, Config::parallel(Method::Majority, 4)];
        let m = TokenModel::fit(&refs, &predicted, &menu, 1000);
        for c in &menu {
            let predicted_mean: f64 = predicted
                .iter()
                .map(|&p| m.work(c, p, 10).unwrap().tokens)
                .sum::<f64>()
                / 10.0;
            let measured_mean: f64 = refs
                .iter()
                .map(|q| q.outcome(c).unwrap().tokens)
                .sum::<f64>()
                / 10.0;
            assert!(
                (predicted_mean / measured_mean - 1.0).abs() < 1e-9,
                "{c}: {predicted_mean} vs {measured_mean}"
            );
            let p90 = m.work_at(c, 50.0, 10, CostPoint::P90).unwrap().tokens;
            assert!(p90 >= m.work(c, 50.0, 10).unwrap().tokens, "{c}");
        }
    }
}
