//! What the probe reads of a hidden state: standardization with the training questions' mean
//! and spread, and projection on their first principal components (whitened), plus the
//! prompt-length feature.

use nalgebra::DMatrix;

/// The log of the prompt length, scaled to about [0, 1] for prompts up to a few hundred tokens.
pub(super) fn prompt_feature(prompt_len: usize) -> f32 {
    (prompt_len.max(1) as f32).ln() / 6.0
}

/// What the probe reads of a hidden state: standardized with the training questions' mean and
/// spread, then projected on their first principal components (whitened). With a few hundred
/// labelled questions and a hidden state of hundreds of dimensions, an MLP on the raw state
/// learns each question by heart; on the components it has to learn what they share.
pub(super) struct Features {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// components x hidden, row-major, each row scaled by 1/sqrt(its variance).
    pub projection: Vec<f32>,
    pub components: usize,
}

impl Features {
    pub fn fit(hidden: &[&[f32]], components: usize) -> Self {
        let (n, d) = (hidden.len() as f32, hidden[0].len());
        let mean: Vec<f32> = (0..d)
            .map(|j| hidden.iter().map(|h| h[j]).sum::<f32>() / n)
            .collect();
        let std: Vec<f32> = (0..d)
            .map(|j| {
                (hidden.iter().map(|h| (h[j] - mean[j]).powi(2)).sum::<f32>() / n)
                    .sqrt()
                    .max(1e-3)
            })
            .collect();
        let z: Vec<Vec<f64>> = hidden
            .iter()
            .map(|h| {
                (0..d)
                    .map(|j| f64::from((h[j] - mean[j]) / std[j]))
                    .collect()
            })
            .collect();
        let components = components.min(hidden.len().saturating_sub(1)).min(d).max(1);
        let projection = principal_components(&z, components);
        Self {
            mean,
            std,
            projection,
            components,
        }
    }

    /// The components, then the prompt-length feature.
    pub fn row(&self, hidden: &[f32], prompt_len: usize) -> Vec<f32> {
        let d = self.mean.len();
        let z: Vec<f32> = hidden
            .iter()
            .zip(&self.mean)
            .zip(&self.std)
            .map(|((h, m), s)| (h - m) / s)
            .collect();
        let mut row: Vec<f32> = (0..self.components)
            .map(|c| {
                self.projection[c * d..(c + 1) * d]
                    .iter()
                    .zip(&z)
                    .map(|(p, x)| p * x)
                    .sum()
            })
            .collect();
        row.push(prompt_feature(prompt_len));
        row
    }
}

/// The top `k` principal directions of the rows of `z` (centred), each scaled by
/// 1/sqrt(its variance) so the projections are whitened: `k` rows of `z`'s width, row-major.
///
/// From the singular value decomposition Z = U S V^T: the directions are the rows of V^T
/// with the largest singular values, and a direction's variance is s^2 / rows. Each
/// direction's sign is fixed (its largest entry positive), as an SVD's is arbitrary and the
/// same questions should give the same probe.
pub(super) fn principal_components(z: &[Vec<f64>], k: usize) -> Vec<f32> {
    let (n, d) = (z.len(), z[0].len());
    let svd = DMatrix::from_fn(n, d, |i, j| z[i][j]).svd(false, true);
    let v_t = svd.v_t.expect("the SVD was asked for V^T");
    let s = &svd.singular_values;
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    let mut out = Vec::with_capacity(k * d);
    for &c in order.iter().take(k) {
        let row = v_t.row(c);
        let largest = row
            .iter()
            .copied()
            .fold(0.0, |m: f64, x| if x.abs() > m.abs() { x } else { m });
        let sign = if largest < 0.0 { -1.0 } else { 1.0 };
        let std = (s[c] * s[c] / n as f64).max(1e-9).sqrt();
        out.extend(row.iter().map(|x| (sign * x / std) as f32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_components_find_the_dominant_directions_whitened() {
        // Rows spread 10x along (1,1,0,0)/sqrt2, 3x along (0,0,1,0), a little elsewhere.
        let z: Vec<Vec<f64>> = (0..400)
            .map(|i| {
                let (a, b, c) = (
                    ((i * 37) % 101) as f64 / 50.0 - 1.0,
                    ((i * 53) % 97) as f64 / 48.0 - 1.0,
                    ((i * 11) % 89) as f64 / 44.0 - 1.0,
                );
                vec![
                    10.0 * a / 2f64.sqrt(),
                    10.0 * a / 2f64.sqrt() + 0.1 * c,
                    3.0 * b,
                    0.1 * c,
                ]
            })
            .collect();
        let p = principal_components(&z, 2);
        let first: Vec<f64> = p[..4].iter().map(|&x| f64::from(x)).collect();
        let cos =
            (first[0] + first[1]) / 2f64.sqrt() / first.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(cos.abs() > 0.999, "{first:?}");
        // Whitened: projections have unit variance.
        for c in 0..2 {
            let var = z
                .iter()
                .map(|r| {
                    r.iter()
                        .zip(&p[c * 4..c * 4 + 4])
                        .map(|(x, w)| x * f64::from(*w))
                        .sum::<f64>()
                        .powi(2)
                })
                .sum::<f64>()
                / z.len() as f64;
            assert!((var - 1.0).abs() < 0.05, "component {c}: variance {var}");
        }
    }
}
