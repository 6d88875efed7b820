//! The probe's network and its training: a small MLP (GELU) from the hidden-state features, a
//! configuration's features and the prompt length to the logit of that configuration being
//! right, trained with AdamW on binary cross-entropy against soft labels; and beside it the
//! linear length head from the same features to the log of one sampled answer's length, which
//! the file stores with the network's weights but [`super::length`] fits (in closed form).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, Optimizer, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::features::Features;
use super::TrainOptions;
use crate::calibrate::QuestionLabels;
use crate::error::Result;
use crate::menu::{Config, CONFIG_FEATURES};

/// Epochs between two looks at the held-out loss for early stopping.
pub(super) const CHECK_EVERY: usize = 5;

/// The network: the accuracy MLP and the length head.
pub(super) struct Net {
    l1: Linear,
    l2: Linear,
    l3: Linear,
    length: Linear,
}

impl Net {
    /// `features`: the hidden-state features (principal components), before the prompt length.
    pub fn new(vb: &VarBuilder, features: usize, width: usize) -> candle_core::Result<Self> {
        let input = features + CONFIG_FEATURES + 1;
        Ok(Self {
            l1: candle_nn::linear(input, width, vb.pp("mlp.0"))?,
            l2: candle_nn::linear(width, width, vb.pp("mlp.1"))?,
            l3: candle_nn::linear(width, 1, vb.pp("mlp.2"))?,
            length: candle_nn::linear(features + 1, 1, vb.pp("length"))?,
        })
    }

    /// x: [rows, hidden + config + 1] -> accuracy logits [rows].
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.l1.forward(x)?.gelu()?;
        let h = self.l2.forward(&h)?.gelu()?;
        self.l3.forward(&h)?.squeeze(D::Minus1)
    }

    /// h: [rows, hidden + 1] -> log sampled-answer length [rows].
    pub fn log_length(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        self.length.forward(h)?.squeeze(D::Minus1)
    }

    /// The accuracy logits of `x` as f64.
    pub fn logits_f64(&self, x: &Tensor) -> candle_core::Result<Vec<f64>> {
        Ok(self
            .logits(x)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect())
    }
}

/// The network's input for `config` on a prompt whose features (components, then the
/// prompt-length feature) are `hidden_row`: components, configuration, prompt length.
pub(super) fn probe_row(hidden_row: &[f32], config: &Config) -> Vec<f32> {
    let (z, len) = hidden_row.split_at(hidden_row.len() - 1);
    let mut row = z.to_vec();
    row.extend_from_slice(&config.features());
    row.extend_from_slice(len);
    row
}

/// The training rows of some questions: one accuracy row per (question, configuration the
/// labels can score), one length row per question.
pub(super) struct Rows {
    /// Accuracy rows, row-major, `features + CONFIG_FEATURES + 1` wide.
    pub x: Vec<f32>,
    /// Their soft labels and configurations.
    pub y: Vec<f32>,
    pub configs: Vec<Config>,
    /// Length rows, row-major, `features + 1` wide, and their log sampled-answer lengths.
    pub h: Vec<f32>,
    pub log_len: Vec<f32>,
}

impl Rows {
    pub fn of(features: &Features, menu: &[Config], questions: &[&QuestionLabels]) -> Self {
        let mut r = Self {
            x: Vec::new(),
            y: Vec::new(),
            configs: Vec::new(),
            h: Vec::new(),
            log_len: Vec::new(),
        };
        for q in questions {
            let h = features.row(&q.hidden, q.prompt_tokens);
            // A configuration that answers as another does adds no accuracy rows of its own.
            for c in menu.iter().filter(|c| c.accuracy_twin() == **c) {
                if let Some(o) = q.outcome(c) {
                    r.x.extend(probe_row(&h, c));
                    r.y.push(o.accuracy as f32);
                    r.configs.push(*c);
                }
            }
            r.h.extend(h);
            r.log_len.push(q.mean_sample_tokens().max(1.0).ln() as f32);
        }
        r
    }

    /// The labels as f64.
    pub fn labels(&self) -> Vec<f64> {
        self.y.iter().map(|&v| f64::from(v)).collect()
    }

    /// The rows as tensors, for `features` hidden-state features.
    pub fn tensors(&self, features: usize, dev: &Device) -> candle_core::Result<Batch> {
        let matrix = |v: &[f32], cols: usize| Tensor::from_slice(v, (v.len() / cols, cols), dev);
        Ok(Batch {
            x: matrix(&self.x, features + CONFIG_FEATURES + 1)?,
            y: Tensor::new(self.y.as_slice(), dev)?,
            h: matrix(&self.h, features + 1)?,
        })
    }
}

/// [`Rows`] as tensors.
pub(super) struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub h: Tensor,
}

/// Binary cross-entropy with logits against soft labels, the stable way:
/// mean(max(z, 0) - y z + ln(1 + e^-|z|)).
fn bce_with_logits(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let pos = z.relu()?;
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((pos - (y * z)?)? + soft)?.mean_all()
}

/// The training loss on `b`: the accuracy cross-entropy.
pub(super) fn loss(net: &Net, b: &Batch) -> candle_core::Result<Tensor> {
    bce_with_logits(&net.logits(&b.x)?, &b.y)
}

/// Trains a network on `fit` for `epochs`, calling `on_check(epoch, net)` every
/// [`CHECK_EVERY`] epochs (for early stopping), and returns its weights.
pub(super) fn train(
    fit: &Batch,
    features: usize,
    opts: &TrainOptions,
    epochs: usize,
    dev: &Device,
    mut on_check: impl FnMut(usize, &Net) -> Result<()>,
) -> Result<HashMap<String, Tensor>> {
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let net = Net::new(&vb, features, opts.mlp_width)?;
    // A seeded initialization (candle's CPU init is not seedable), so training is
    // reproducible: uniform in +-1/sqrt(fan_in), biases zero.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut names: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    for (name, dims) in names {
        let count: usize = dims.iter().product();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; count]
        } else {
            let bound = 1.0 / (*dims.last().unwrap_or(&1) as f32).sqrt();
            (0..count)
                .map(|_| rng.random_range(-bound..bound))
                .collect()
        };
        varmap.set_one(&name, Tensor::from_vec(values, dims, dev)?)?;
    }
    let params = candle_nn::ParamsAdamW {
        lr: opts.learning_rate,
        weight_decay: opts.weight_decay,
        ..Default::default()
    };
    // The length head is fitted apart (`super::length`) and its weights replaced: the optimizer
    // leaves it alone.
    let trained: Vec<candle_core::Var> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .filter(|(name, _)| !name.starts_with("length."))
        .map(|(_, v)| v.clone())
        .collect();
    let mut adam = candle_nn::AdamW::new(trained, params)?;
    for epoch in 1..=epochs {
        adam.backward_step(&loss(&net, fit)?)?;
        if epoch % CHECK_EVERY == 0 {
            on_check(epoch, &net)?;
        }
    }
    let weights = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect::<candle_core::Result<_>>()?;
    Ok(weights)
}
