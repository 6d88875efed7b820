//! The length head: the log of one sampled answer's mean length, predicted from the probe's
//! features (the hidden state's principal components and the log prompt length) by ridge
//! regression, solved in closed form; the penalty is chosen by cross-validation on the
//! training questions ([`super::split`]'s folds), and the test part is not read.
//!
//! Why apart from the accuracy network: trained inside it, the head took the weight decay that
//! cross-validation chose for accuracy and shrank toward the mean length, over-predicting
//! short answers and under-predicting long ones (README, "The allocator"); because the
//! allocator picks wide votes on exactly the short-answer questions, the budgets it solved
//! came in well under their targets. A closed-form fit has no epochs or learning rate that
//! interact with the accuracy loss.
//!
//! The penalty is on the standardized features' weights, not on the intercept. The features
//! come from the principal components of the whole training part, which the folds share: that
//! fit never sees the lengths, so only the penalty's choice is touched by it, not the labels.

use nalgebra::{DMatrix, DVector};

use super::split::FOLDS;

/// Penalties tried by cross-validation (the features are whitened: unit variance).
pub const PENALTY_GRID: [f64; 7] = [0.01, 0.1, 1.0, 10.0, 30.0, 100.0, 1000.0];

/// A fitted length head: log length = weight . features + bias.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthHead {
    pub weight: Vec<f32>,
    pub bias: f32,
    /// The penalty cross-validation chose, and its mean absolute error of the log length out
    /// of fold.
    pub penalty: f64,
    pub cv_log_error: f64,
}

/// Ridge regression of `y` on `rows` (row-major, `cols` wide), the rows `use_row` selects:
/// centred, so the intercept is the mean and is not penalized. None when no row is selected or
/// the system is singular (it cannot be with a positive penalty).
fn ridge(
    rows: &[f32],
    cols: usize,
    y: &[f32],
    penalty: f64,
    use_row: impl Fn(usize) -> bool,
) -> Option<(Vec<f64>, f64)> {
    let picked: Vec<usize> = (0..y.len()).filter(|&i| use_row(i)).collect();
    if picked.is_empty() {
        return None;
    }
    let n = picked.len() as f64;
    let mut mean_x = vec![0.0; cols];
    let mut mean_y = 0.0;
    for &i in &picked {
        for (c, m) in mean_x.iter_mut().enumerate() {
            *m += f64::from(rows[i * cols + c]) / n;
        }
        mean_y += f64::from(y[i]) / n;
    }
    let mut gram = DMatrix::<f64>::identity(cols, cols) * penalty;
    let mut rhs = DVector::<f64>::zeros(cols);
    for &i in &picked {
        let x: Vec<f64> = (0..cols)
            .map(|c| f64::from(rows[i * cols + c]) - mean_x[c])
            .collect();
        let yi = f64::from(y[i]) - mean_y;
        for a in 0..cols {
            rhs[a] += x[a] * yi;
            for b in 0..cols {
                gram[(a, b)] += x[a] * x[b];
            }
        }
    }
    let w = gram.cholesky()?.solve(&rhs);
    let bias = mean_y - (0..cols).map(|c| w[c] * mean_x[c]).sum::<f64>();
    Some((w.iter().copied().collect(), bias))
}

/// Fits the head on `rows` (one per training question, `cols` features each) and their log
/// lengths `y`, the penalty chosen by cross-validation over `fold` (each row's fold, in
/// `0..FOLDS`).
pub fn fit(rows: &[f32], cols: usize, y: &[f32], fold: &[usize]) -> Option<LengthHead> {
    debug_assert_eq!(rows.len(), y.len() * cols);
    debug_assert_eq!(fold.len(), y.len());
    let predict = |(w, b): &(Vec<f64>, f64), i: usize| {
        b + (0..cols)
            .map(|c| w[c] * f64::from(rows[i * cols + c]))
            .sum::<f64>()
    };
    let mut best: Option<(f64, f64)> = None;
    for &penalty in &PENALTY_GRID {
        let mut err = 0.0;
        for f in 0..FOLDS {
            let Some(fitted) = ridge(rows, cols, y, penalty, |i| fold[i] != f) else {
                continue;
            };
            for i in (0..y.len()).filter(|&i| fold[i] == f) {
                err += (predict(&fitted, i) - f64::from(y[i])).abs();
            }
        }
        let err = err / y.len().max(1) as f64;
        if best.is_none_or(|(_, e)| err < e) {
            best = Some((penalty, err));
        }
    }
    let (penalty, cv_log_error) = best?;
    let (w, b) = ridge(rows, cols, y, penalty, |_| true)?;
    Some(LengthHead {
        weight: w.iter().map(|&v| v as f32).collect(),
        bias: b as f32,
        penalty,
        cv_log_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn predict(head: &LengthHead, row: &[f32]) -> f32 {
        head.bias + head.weight.iter().zip(row).map(|(w, x)| w * x).sum::<f32>()
    }

    #[test]
    fn the_head_recovers_a_linear_length_and_cross_validation_prefers_a_small_penalty() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (n, cols) = (200, 5);
        let truth = [0.8f32, -0.5, 0.0, 0.3, 0.1];
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let noise: f32 = rng.random_range(-0.05..0.05);
            y.push(3.0 + truth.iter().zip(&x).map(|(w, v)| w * v).sum::<f32>() + noise);
            rows.extend(x);
        }
        let fold: Vec<usize> = (0..n).map(|i| i % FOLDS).collect();
        let head = fit(&rows, cols, &y, &fold).unwrap();
        for (w, t) in head.weight.iter().zip(&truth) {
            assert!((w - t).abs() < 0.05, "{:?} against {truth:?}", head.weight);
        }
        assert!((head.bias - 3.0).abs() < 0.05, "{}", head.bias);
        assert!(head.penalty <= 1.0, "{}", head.penalty);
        assert!(head.cv_log_error < 0.05, "{}", head.cv_log_error);
        assert!((predict(&head, &rows[..cols]) - y[0]).abs() < 0.1);
    }

    #[test]
    fn features_that_say_nothing_get_a_large_penalty_and_predict_the_mean() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (n, cols) = (60, 8);
        let rows: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.random_range(2.0..4.0)).collect();
        let fold: Vec<usize> = (0..n).map(|i| i % FOLDS).collect();
        let head = fit(&rows, cols, &y, &fold).unwrap();
        assert!(head.penalty >= 30.0, "{}", head.penalty);
        let mean = y.iter().sum::<f32>() / n as f32;
        assert!((predict(&head, &rows[..cols]) - mean).abs() < 0.3);
    }
}
