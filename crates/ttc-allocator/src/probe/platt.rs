//! Platt scaling: the map P = sigmoid(a * logit + b) from the network's logits to calibrated
//! probabilities, fitted on the training questions' out-of-fold logits (see [`super::split`]).

pub(super) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Fits P = sigmoid(a z + b) to (logit, label) pairs by Newton's method, with a weak prior
/// toward (1, 0) so a handful of questions cannot push it far.
pub(super) fn fit_platt(z: &[f64], y: &[f64]) -> [f64; 2] {
    let (mut a, mut b) = (1.0f64, 0.0f64);
    let prior = 0.5;
    for _ in 0..50 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
            (prior * (a - 1.0), prior * b, prior, 0.0, prior);
        for (&zi, &yi) in z.iter().zip(y) {
            let p = sigmoid(a * zi + b);
            let w = p * (1.0 - p);
            ga += (p - yi) * zi;
            gb += p - yi;
            haa += w * zi * zi;
            hab += w * zi;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-9 {
            break;
        }
    }
    [a, b]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_scaling() {
        // Labels drawn from sigmoid(2z - 1) (as expected values).
        let z: Vec<f64> = (-40..=40).map(|i| i as f64 / 10.0).collect();
        let y: Vec<f64> = z.iter().map(|&zi| sigmoid(2.0 * zi - 1.0)).collect();
        let [a, b] = fit_platt(&z, &y);
        assert!((a - 2.0).abs() < 0.15 && (b + 1.0).abs() < 0.15, "{a} {b}");
    }
}
