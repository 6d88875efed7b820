//! The prompt-kind head: does this prompt have a short, checkable final answer (arithmetic, a
//! word problem, a multiple choice, a fact), so that answer voting can help, or is it open-ended
//! (a poem, advice, an explanation), so that it should be answered plainly?
//!
//! Read from the same feature as the accuracy probe, the model's final hidden state at the
//! prompt's last token, but of the prompt as a person typed it (templated, no answer-format
//! instruction): the decision comes before the instruction is added. The head is an
//! L2-regularized logistic regression on the standardized hidden state, fitted by Newton's
//! method (iteratively reweighted least squares) with the two kinds weighted equally; the
//! strength of the penalty is chosen by cross-validation ([`super::split`]'s folds) and the
//! accuracy on prompts held out of every fit is what the report gives.
//!
//! The head also carries the lengths of plain answers to open-ended training prompts, so the
//! allocator can predict an open-ended answer's tokens at whatever cap is used.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use super::split::{folds, split, FOLDS};
use crate::error::{AllocatorError, Result};

/// Penalties tried by cross-validation (on standardized features).
pub const L2_GRID: [f64; 5] = [0.1, 1.0, 10.0, 100.0, 1000.0];

/// One labelled prompt: its id (which fixes its split), hidden state and kind.
#[derive(Debug, Clone)]
pub struct KindExample {
    pub id: String,
    pub hidden: Vec<f32>,
    pub final_answer: bool,
}

/// What the probe file records about the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindMeta {
    pub bias: f64,
    pub l2: f64,
    /// Training prompts of each kind (the held-out ones not counted).
    pub final_answer_prompts: usize,
    pub open_ended_prompts: usize,
    /// Accuracy on the training prompts predicted out of fold, at the chosen penalty.
    pub cv_accuracy: f64,
    /// Accuracy on the held-out prompts, which no fit saw.
    pub heldout_accuracy: f64,
    pub heldout_prompts: usize,
    pub sources: Vec<String>,
    /// Tokens of plain answers to open-ended training prompts, sorted; an answer that reached
    /// `length_cap` counts as `length_cap`.
    pub open_lengths: Vec<u32>,
    pub length_cap: usize,
}

/// The fitted head: P(final answer) = sigmoid(w . (h - mean) / std + bias).
#[derive(Debug, Clone, PartialEq)]
pub struct KindHead {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub weight: Vec<f32>,
    pub bias: f64,
}

impl KindHead {
    /// Fits the head on `examples` with penalty `l2` (the bias is not penalized).
    pub fn fit(examples: &[&KindExample], l2: f64) -> Result<Self> {
        let d = examples
            .first()
            .map(|e| e.hidden.len())
            .ok_or_else(|| AllocatorError::Invalid("no prompts to fit the kind head on".into()))?;
        let n = examples.len() as f32;
        let mean: Vec<f32> = (0..d)
            .map(|j| examples.iter().map(|e| e.hidden[j]).sum::<f32>() / n)
            .collect();
        let std: Vec<f32> = (0..d)
            .map(|j| {
                (examples
                    .iter()
                    .map(|e| (e.hidden[j] - mean[j]).powi(2))
                    .sum::<f32>()
                    / n)
                    .sqrt()
                    .max(1e-3)
            })
            .collect();
        let x = DMatrix::from_fn(examples.len(), d + 1, |i, j| {
            if j == d {
                1.0
            } else {
                f64::from((examples[i].hidden[j] - mean[j]) / std[j])
            }
        });
        let y = DVector::from_iterator(
            examples.len(),
            examples.iter().map(|e| f64::from(u8::from(e.final_answer))),
        );
        // Each kind weighs as much as the other, however many prompts each has.
        let positives = y.sum();
        let negatives = y.len() as f64 - positives;
        if positives == 0.0 || negatives == 0.0 {
            return Err(AllocatorError::Invalid(
                "the kind head needs prompts of both kinds".into(),
            ));
        }
        let class_weight = |yi: f64| {
            if yi > 0.5 {
                y.len() as f64 / (2.0 * positives)
            } else {
                y.len() as f64 / (2.0 * negatives)
            }
        };
        let mut w = DVector::<f64>::zeros(d + 1);
        let mut penalty = DMatrix::<f64>::identity(d + 1, d + 1) * l2;
        penalty[(d, d)] = 0.0;
        for _ in 0..30 {
            let z = &x * &w;
            let p = z.map(sigmoid);
            let s: DVector<f64> =
                DVector::from_fn(y.len(), |i, _| class_weight(y[i]) * p[i] * (1.0 - p[i]));
            let r: DVector<f64> =
                DVector::from_fn(y.len(), |i, _| class_weight(y[i]) * (p[i] - y[i]));
            let grad = x.transpose() * r + &penalty * &w;
            let mut xs = x.clone();
            for (i, mut row) in xs.row_iter_mut().enumerate() {
                row *= s[i];
            }
            let hessian = x.transpose() * xs + &penalty + DMatrix::identity(d + 1, d + 1) * 1e-9;
            let Some(chol) = hessian.cholesky() else {
                return Err(AllocatorError::Invalid(
                    "the kind head's Newton step is singular".into(),
                ));
            };
            let step = chol.solve(&grad);
            w -= &step;
            if step.amax() < 1e-6 {
                break;
            }
        }
        Ok(Self {
            mean,
            std,
            weight: w.iter().take(d).map(|&v| v as f32).collect(),
            bias: w[d],
        })
    }

    /// P(the prompt has a final answer) for a prompt with this hidden state.
    pub fn p_final_answer(&self, hidden: &[f32]) -> f64 {
        let z: f64 = hidden
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .zip(&self.weight)
            .map(|(((h, m), s), w)| f64::from((h - m) / s) * f64::from(*w))
            .sum();
        sigmoid(z + self.bias)
    }
}

/// The fitted head and its report: the penalty chosen by cross-validation on the training
/// part, the head fitted on all of it, and its accuracy on the held-out part.
pub fn train(examples: &[KindExample]) -> Result<(KindHead, KindMeta)> {
    let (train_part, test_part) = split(examples, |e| e.id.as_str());
    if train_part.len() < 2 * FOLDS {
        return Err(AllocatorError::Invalid(format!(
            "too few prompts to train the kind head ({})",
            train_part.len()
        )));
    }
    let fold = folds(&train_part, |e| e.id.as_str());
    let mut best = (f64::NEG_INFINITY, L2_GRID[0]);
    for l2 in L2_GRID {
        let mut right = 0usize;
        for f in 0..FOLDS {
            let fit_on: Vec<&KindExample> = train_part
                .iter()
                .zip(&fold)
                .filter(|(_, &k)| k != f)
                .map(|(e, _)| *e)
                .collect();
            let head = KindHead::fit(&fit_on, l2)?;
            right += train_part
                .iter()
                .zip(&fold)
                .filter(|(e, &k)| {
                    k == f && (head.p_final_answer(&e.hidden) > 0.5) == e.final_answer
                })
                .count();
        }
        let acc = right as f64 / train_part.len() as f64;
        if acc > best.0 {
            best = (acc, l2);
        }
    }
    let (cv_accuracy, l2) = best;
    let head = KindHead::fit(&train_part, l2)?;
    let heldout_right = test_part
        .iter()
        .filter(|e| (head.p_final_answer(&e.hidden) > 0.5) == e.final_answer)
        .count();
    let meta = KindMeta {
        bias: head.bias,
        l2,
        final_answer_prompts: train_part.iter().filter(|e| e.final_answer).count(),
        open_ended_prompts: train_part.iter().filter(|e| !e.final_answer).count(),
        cv_accuracy,
        heldout_accuracy: heldout_right as f64 / test_part.len().max(1) as f64,
        heldout_prompts: test_part.len(),
        sources: Vec::new(),
        open_lengths: Vec::new(),
        length_cap: 0,
    };
    Ok((head, meta))
}

impl KindMeta {
    /// Expected tokens of a plain answer to an open-ended prompt under a cap of `cap`: the
    /// measured lengths, each cut at `cap`; one that reached the measuring cap is taken to run
    /// on to `cap` (it was still going). None when no lengths were measured.
    pub fn open_tokens(&self, cap: usize) -> Option<f64> {
        if self.open_lengths.is_empty() {
            return None;
        }
        let total: f64 = self
            .open_lengths
            .iter()
            .map(|&l| {
                let l = l as usize;
                if l >= self.length_cap {
                    cap
                } else {
                    l.min(cap)
                }
            } as f64)
            .sum();
        Some(total / self.open_lengths.len() as f64)
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(n: usize) -> Vec<KindExample> {
        (0..n)
            .map(|i| {
                let final_answer = i % 3 == 0;
                let noise = |k: usize| ((i * 31 + k * 17) % 13) as f32 / 13.0 - 0.5;
                let mut hidden: Vec<f32> = (0..12).map(noise).collect();
                hidden[3] += if final_answer { 1.0 } else { -1.0 };
                KindExample {
                    id: format!("p{i}"),
                    hidden,
                    final_answer,
                }
            })
            .collect()
    }

    #[test]
    fn the_head_learns_the_direction_that_separates_the_kinds_and_reports_held_out_accuracy() {
        let ex = examples(200);
        let (head, meta) = train(&ex).unwrap();
        assert!(meta.heldout_prompts > 20, "{meta:?}");
        assert!(meta.heldout_accuracy > 0.95, "{meta:?}");
        assert!(meta.cv_accuracy > 0.95, "{meta:?}");
        // The unbalanced kinds (1 in 3 final-answer) are weighed equally.
        let mut h = vec![0.0; 12];
        h[3] = 5.0;
        assert!(head.p_final_answer(&h) > 0.9);
        h[3] = -5.0;
        assert!(head.p_final_answer(&h) < 0.1);
        // One kind alone cannot be learned.
        let one: Vec<&KindExample> = ex.iter().filter(|e| e.final_answer).collect();
        assert!(KindHead::fit(&one, 1.0).is_err());
    }

    #[test]
    fn open_answer_tokens_follow_the_cap_and_run_on_past_the_measuring_cap() {
        let meta = KindMeta {
            bias: 0.0,
            l2: 1.0,
            final_answer_prompts: 0,
            open_ended_prompts: 0,
            cv_accuracy: 0.0,
            heldout_accuracy: 0.0,
            heldout_prompts: 0,
            sources: vec![],
            open_lengths: vec![10, 100, 512],
            length_cap: 512,
        };
        assert_eq!(meta.open_tokens(50), Some((10.0 + 50.0 + 50.0) / 3.0));
        assert_eq!(meta.open_tokens(512), Some((10.0 + 100.0 + 512.0) / 3.0));
        assert_eq!(meta.open_tokens(1000), Some((10.0 + 100.0 + 1000.0) / 3.0));
    }
}
