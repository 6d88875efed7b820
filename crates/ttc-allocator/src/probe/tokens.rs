//! The token model: each configuration's generated tokens and sequential decode steps on a
//! prompt, from the predicted length of one sampled answer to it (the probe's length head)
//! and ratios measured in calibration. The latency model turns these into seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibrate::QuestionLabels;
use crate::latency::{Work, WorkKind};
use crate::menu::Config;

/// A configuration's tokens and steps relative to one sampled answer of the same question.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub tokens: f64,
    pub steps: f64,
}

/// Predicted generated tokens and sequential steps per configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenModel {
    /// Mean tokens of one sampled answer over the training questions.
    pub mean_sample_tokens: f64,
    /// Per configuration label: mean over questions of its tokens (steps) divided by the
    /// question's mean sampled-answer length.
    pub ratios: BTreeMap<String, Ratio>,
    /// The answer length cap the statistics were measured under.
    pub max_tokens: usize,
}

impl TokenModel {
    pub fn fit(questions: &[&QuestionLabels], menu: &[Config], max_tokens: usize) -> Self {
        let mut ratios = BTreeMap::new();
        for c in menu {
            let (mut t, mut s, mut k) = (0.0, 0.0, 0.0);
            for q in questions {
                if let Some(o) = q.outcome(c) {
                    let len = q.mean_sample_tokens().max(1.0);
                    t += o.tokens / len;
                    s += o.steps / len;
                    k += 1.0;
                }
            }
            if k > 0.0 {
                ratios.insert(
                    c.label(),
                    Ratio {
                        tokens: t / k,
                        steps: s / k,
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
        let r = self.ratios.get(&config.label())?;
        let cap = self.max_tokens as f64;
        let (mut tokens, mut steps) = (r.tokens * sample_tokens, r.steps * sample_tokens);
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
