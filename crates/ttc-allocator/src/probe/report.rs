//! How well a trained probe does on questions it was not tuned on: the training report stored
//! in the probe file, and the log-loss it is measured in.

use serde::{Deserialize, Serialize};

/// How well the probe did on the test part of the questions (see [`super::split`]), which
/// neither its weights nor its early stopping nor its Platt scaling saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    /// Questions fitted on (the training part).
    pub train_questions: usize,
    /// Folds of the cross-validation on the training part that chose the epoch and the Platt
    /// scaling. 0 in a probe trained before: its held-out figures came from the questions it
    /// was also early-stopped and Platt-scaled on, so they are optimistic.
    #[serde(default)]
    pub cv_folds: usize,
    /// Questions tested on: the held-out figures below.
    pub heldout_questions: usize,
    /// Accuracy rows of both parts.
    pub rows: usize,
    /// The epoch early stopping chose.
    pub epochs: usize,
    /// Binary cross-entropy on the test rows (soft labels): the probe as it predicts
    /// (Platt-scaled), a constant (the training part's base rate), and each configuration's
    /// mean on the training part.
    pub heldout_log_loss: f64,
    pub constant_log_loss: f64,
    pub per_config_log_loss: f64,
    /// Mean |log predicted - log actual| of a sampled answer's length on the test questions.
    pub heldout_length_log_error: f64,
    /// The length head's ridge penalty and its out-of-fold error of the log length on the
    /// training part (0 in a probe whose head was trained inside the accuracy network).
    #[serde(default)]
    pub length_penalty: f64,
    #[serde(default)]
    pub length_cv_log_error: f64,
    /// The chosen hyperparameters' out-of-fold log-loss on the training part.
    #[serde(default)]
    pub cv_log_loss: f64,
    /// Every set of hyperparameters cross-validation compared (empty in older probes, whose
    /// settings were fixed by hand).
    #[serde(default)]
    pub hyperparameters: Vec<HyperPoint>,
}

/// One set of hyperparameters and how it did out of fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HyperPoint {
    pub components: usize,
    pub mlp_width: usize,
    pub weight_decay: f64,
    /// The epoch early stopping chose for it.
    pub epochs: usize,
    pub cv_log_loss: f64,
}

/// Mean binary cross-entropy of predictions `p` against soft labels `y`; predictions are
/// clamped away from 0 and 1 so one confident miss cannot make it infinite.
pub(super) fn log_loss(p: &[f64], y: &[f64]) -> f64 {
    let n = p.len().max(1) as f64;
    p.iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-6, 1.0 - 1e-6);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_loss_is_smallest_at_the_labels_and_finite_when_confidently_wrong() {
        let y = [1.0, 0.0, 0.5];
        assert!(log_loss(&y, &y) < log_loss(&[0.5, 0.5, 0.5], &y));
        assert!(log_loss(&[0.0], &[1.0]).is_finite());
    }

    #[test]
    fn a_report_of_an_older_probe_reads_with_no_folds() {
        let json = r#"{"train_questions": 43, "heldout_questions": 9, "rows": 832, "epochs": 290,
            "heldout_log_loss": 0.47, "constant_log_loss": 0.52, "per_config_log_loss": 0.51,
            "heldout_length_log_error": 0.37}"#;
        let r: TrainingReport = serde_json::from_str(json).unwrap();
        assert_eq!((r.cv_folds, r.heldout_questions), (0, 9));
    }
}
