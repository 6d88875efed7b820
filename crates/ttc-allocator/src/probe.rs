//! The accuracy probe and the token model (PAPER.md, "The accuracy probe").
//!
//! Features: the generator's final-layer hidden state at the prompt's last token (standardized
//! with the training set's mean and spread and projected on its first principal components),
//! the configuration's features ([`Config::features`]) and the log of the prompt length. One small MLP (GELU) for all configurations, trained with
//! binary cross-entropy on soft labels from [`crate::calibrate`], early-stopped and then
//! Platt-scaled on held-out questions. A linear head on the same standardized hidden state
//! predicts the log of one sampled answer's length; the token model turns that into each
//! configuration's tokens and sequential steps with ratios measured in calibration.
//!
//! A probe is one safetensors file: the weights, and a JSON header (`ttc_probe` in the file's
//! metadata) with the menu, the Platt parameters, the token model and the training report.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, Optimizer, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::calibrate::QuestionLabels;
use crate::error::{AllocatorError, Result};
use crate::latency::{Work, WorkKind};
use crate::menu::{Config, CONFIG_FEATURES};

/// Where `calibrate` writes a model's probe, and where `auto` looks first.
pub fn default_path(model: &str) -> PathBuf {
    ttc_engine::download::cache_dir()
        .join("probes")
        .join(format!("{}.probe.safetensors", sanitize(model)))
}

pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

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
            tokens: tokens.max(1.0),
            steps: steps.max(1.0),
            scorer_tokens: 0.0,
            kind: WorkKind::of(config.method),
        })
    }
}

impl TokenModel {
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
                    tokens: n * sample_tokens,
                    steps: sample_tokens + 1.0,
                    scorer_tokens: 0.0,
                    kind: WorkKind::of(config.method),
                }
            }
        }
    }
}

/// How well the probe did on questions it was not trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    pub train_questions: usize,
    pub heldout_questions: usize,
    pub rows: usize,
    pub epochs: usize,
    /// Binary cross-entropy on held-out rows (soft labels): the probe before Platt scaling,
    /// a constant (the training base rate), and each configuration's training mean.
    pub heldout_log_loss: f64,
    pub constant_log_loss: f64,
    pub per_config_log_loss: f64,
    /// Mean |log predicted - log actual| of a sampled answer's length, held out.
    pub heldout_length_log_error: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeMeta {
    pub ttc_probe: u32,
    /// The model the hidden states came from (`Engine::name`).
    pub model: String,
    pub hidden_dim: usize,
    /// Principal components of the standardized hidden state the probe reads.
    pub components: usize,
    pub mlp_width: usize,
    pub instruction: String,
    pub samples: usize,
    pub menu: Vec<Config>,
    /// P = sigmoid(a * logit + b).
    pub platt: [f64; 2],
    pub tokens: TokenModel,
    pub datasets: Vec<String>,
    pub report: TrainingReport,
}

/// The network: the accuracy MLP and the length head.
struct Net {
    l1: Linear,
    l2: Linear,
    l3: Linear,
    length: Linear,
}

impl Net {
    /// `features`: the hidden-state features (principal components), before the prompt length.
    fn new(vb: &VarBuilder, features: usize, width: usize) -> candle_core::Result<Self> {
        let input = features + CONFIG_FEATURES + 1;
        Ok(Self {
            l1: candle_nn::linear(input, width, vb.pp("mlp.0"))?,
            l2: candle_nn::linear(width, width, vb.pp("mlp.1"))?,
            l3: candle_nn::linear(width, 1, vb.pp("mlp.2"))?,
            length: candle_nn::linear(features + 1, 1, vb.pp("length"))?,
        })
    }

    /// x: [rows, hidden + config + 1] -> accuracy logits [rows].
    fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.l1.forward(x)?.gelu()?;
        let h = self.l2.forward(&h)?.gelu()?;
        self.l3.forward(&h)?.squeeze(D::Minus1)
    }

    /// h: [rows, hidden + 1] -> log sampled-answer length [rows].
    fn log_length(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        self.length.forward(h)?.squeeze(D::Minus1)
    }
}

fn prompt_feature(prompt_len: usize) -> f32 {
    (prompt_len.max(1) as f32).ln() / 6.0
}

/// What the probe reads of a hidden state: standardized with the training questions' mean and
/// spread, then projected on their first principal components (whitened). With a few hundred
/// labelled questions and a hidden state of hundreds of dimensions, an MLP on the raw state
/// learns each question by heart; on the components it has to learn what they share.
struct Features {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// components x hidden, row-major, each row scaled by 1/sqrt(its variance).
    projection: Vec<f32>,
    components: usize,
}

impl Features {
    fn fit(hidden: &[&[f32]], components: usize) -> Self {
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
    fn row(&self, hidden: &[f32], prompt_len: usize) -> Vec<f32> {
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

/// The top `k` principal directions of the rows of `z` (centred), by orthogonal iteration on
/// their covariance, each scaled by 1/sqrt(its variance) so the projections are whitened.
fn principal_components(z: &[Vec<f64>], k: usize) -> Vec<f32> {
    let (n, d) = (z.len(), z[0].len());
    let mut cov = vec![0f64; d * d];
    for row in z {
        for i in 0..d {
            let ri = row[i];
            if ri == 0.0 {
                continue;
            }
            for j in 0..d {
                cov[i * d + j] += ri * row[j];
            }
        }
    }
    cov.iter_mut().for_each(|c| *c /= n as f64);
    // A deterministic start: basis-like vectors with a little of everything.
    let mut v: Vec<Vec<f64>> = (0..k)
        .map(|c| {
            (0..d)
                .map(|j| {
                    if j % k == c {
                        1.0
                    } else {
                        0.01 * ((j * 7 + c * 13) % 11) as f64
                    }
                })
                .collect()
        })
        .collect();
    let mut eig = vec![0f64; k];
    for _ in 0..200 {
        let mut w: Vec<Vec<f64>> = v
            .iter()
            .map(|vc| {
                (0..d)
                    .map(|i| {
                        cov[i * d..(i + 1) * d]
                            .iter()
                            .zip(vc)
                            .map(|(a, b)| a * b)
                            .sum()
                    })
                    .collect()
            })
            .collect();
        // Modified Gram-Schmidt.
        for c in 0..k {
            for p in 0..c {
                let dot: f64 = w[c].iter().zip(&w[p]).map(|(a, b)| a * b).sum();
                let (head, tail) = w.split_at_mut(c);
                tail[0]
                    .iter_mut()
                    .zip(&head[p])
                    .for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w[c].iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
            eig[c] = norm;
            w[c].iter_mut().for_each(|a| *a /= norm);
        }
        v = w;
    }
    v.iter()
        .zip(&eig)
        .flat_map(|(vc, &e)| vc.iter().map(move |x| (x / e.max(1e-9).sqrt()) as f32))
        .collect()
}

fn probe_row(hidden_row: &[f32], config: &Config) -> Vec<f32> {
    let (z, len) = hidden_row.split_at(hidden_row.len() - 1);
    let mut row = z.to_vec();
    row.extend_from_slice(&config.features());
    row.extend_from_slice(len);
    row
}

/// Binary cross-entropy with logits against soft labels, the stable way:
/// mean(max(z, 0) - y z + ln(1 + e^-|z|)).
fn bce_with_logits(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let pos = z.relu()?;
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((pos - (y * z)?)? + soft)?.mean_all()
}

fn log_loss(p: &[f64], y: &[f64]) -> f64 {
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

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Fits P = sigmoid(a z + b) to (logit, label) pairs by Newton's method, with a weak prior
/// toward (1, 0) so a handful of held-out questions cannot push it far.
fn fit_platt(z: &[f64], y: &[f64]) -> [f64; 2] {
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

/// Training settings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Principal components of the hidden state the probe reads.
    pub components: usize,
    pub mlp_width: usize,
    pub max_epochs: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            components: 8,
            mlp_width: 32,
            max_epochs: 1500,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            seed: 0,
        }
    }
}

/// Which questions are held out: about one in five, by a hash of the id.
pub fn is_heldout(id: &str) -> bool {
    crate::dataset::fnv1a(id.as_bytes()) % 5 == 1
}

pub struct Probe {
    pub meta: ProbeMeta,
    net: Net,
    features: Features,
    tensors: HashMap<String, Tensor>,
}

impl Probe {
    /// Trains a probe on `questions` (labels of one model, one header) for `menu`.
    pub fn train(
        questions: &[QuestionLabels],
        menu: &[Config],
        meta_base: ProbeMetaBase,
        opts: &TrainOptions,
    ) -> Result<Self> {
        let dev = Device::Cpu;
        let dim = questions
            .first()
            .map(|q| q.hidden.len())
            .ok_or_else(|| AllocatorError::Invalid("no labelled questions".into()))?;
        if questions.iter().any(|q| q.hidden.len() != dim) {
            return Err(AllocatorError::Invalid(
                "labelled questions have hidden states of different sizes".into(),
            ));
        }
        let (train, heldout): (Vec<&QuestionLabels>, Vec<&QuestionLabels>) =
            questions.iter().partition(|q| !is_heldout(&q.id));
        if train.len() < 4 || heldout.is_empty() {
            return Err(AllocatorError::Invalid(format!(
                "too few labelled questions to train and hold out ({} questions)",
                questions.len()
            )));
        }
        // Standardization and components from the training questions.
        let features = Features::fit(
            &train
                .iter()
                .map(|q| q.hidden.as_slice())
                .collect::<Vec<_>>(),
            opts.components,
        );
        let fdim = features.components;
        // (probe rows, labels, their configurations, length-head rows, log lengths)
        #[allow(clippy::type_complexity)]
        let rows =
            |qs: &[&QuestionLabels]| -> (Vec<f32>, Vec<f32>, Vec<Config>, Vec<f32>, Vec<f32>) {
                let (mut x, mut y, mut cfgs, mut hx, mut ly) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for q in qs {
                    let h = features.row(&q.hidden, q.prompt_tokens);
                    for c in menu {
                        if let Some(o) = q.outcome(c) {
                            x.extend(probe_row(&h, c));
                            y.push(o.accuracy as f32);
                            cfgs.push(*c);
                        }
                    }
                    hx.extend(h);
                    ly.push(q.mean_sample_tokens().max(1.0).ln() as f32);
                }
                (x, y, cfgs, hx, ly)
            };
        let (xt, yt, ct, hxt, lyt) = rows(&train);
        let (xh, yh, ch, hxh, lyh) = rows(&heldout);
        let input = fdim + CONFIG_FEATURES + 1;
        let to_t = |v: &[f32], cols: usize| Tensor::from_slice(v, (v.len() / cols, cols), &dev);
        let (x_train, y_train) = (to_t(&xt, input)?, Tensor::new(yt.as_slice(), &dev)?);
        let (x_held, y_held) = (to_t(&xh, input)?, Tensor::new(yh.as_slice(), &dev)?);
        let (h_train, l_train) = (to_t(&hxt, fdim + 1)?, Tensor::new(lyt.as_slice(), &dev)?);
        let (h_held, l_held) = (to_t(&hxh, fdim + 1)?, Tensor::new(lyh.as_slice(), &dev)?);

        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let net = Net::new(&vb, fdim, opts.mlp_width)?;
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
            varmap.set_one(&name, Tensor::from_vec(values, dims, &dev)?)?;
        }
        // The length head starts at the mean log length.
        let mean_log_len = lyt.iter().sum::<f32>() / lyt.len() as f32;
        varmap.set_one("length.bias", Tensor::new(&[mean_log_len], &dev)?)?;
        let params = candle_nn::ParamsAdamW {
            lr: opts.learning_rate,
            weight_decay: opts.weight_decay,
            ..Default::default()
        };
        let mut adam = candle_nn::AdamW::new(varmap.all_vars(), params)?;
        let snapshot = |vm: &VarMap| -> candle_core::Result<HashMap<String, Tensor>> {
            vm.data()
                .lock()
                .expect("varmap lock")
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
                .collect()
        };
        let held_loss = |net: &Net| -> candle_core::Result<f32> {
            let acc = bce_with_logits(&net.logits(&x_held)?, &y_held)?.to_scalar::<f32>()?;
            let len = (net.log_length(&h_held)? - &l_held)?
                .sqr()?
                .mean_all()?
                .to_scalar::<f32>()?;
            Ok(acc + 0.1 * len)
        };
        let (mut best, mut best_loss, mut best_epoch) = (snapshot(&varmap)?, f32::INFINITY, 0);
        for epoch in 1..=opts.max_epochs {
            let acc = bce_with_logits(&net.logits(&x_train)?, &y_train)?;
            let len = (net.log_length(&h_train)? - &l_train)?.sqr()?.mean_all()?;
            adam.backward_step(&(acc + (len * 0.1)?)?)?;
            if epoch % 5 == 0 {
                let l = held_loss(&net)?;
                if l < best_loss {
                    (best, best_loss, best_epoch) = (snapshot(&varmap)?, l, epoch);
                }
            }
        }
        // The best epoch's weights, then Platt scaling on the held-out logits.
        let vb = VarBuilder::from_tensors(best.clone(), DType::F32, &dev);
        let net = Net::new(&vb, fdim, opts.mlp_width)?;
        let z: Vec<f64> = net
            .logits(&x_held)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect();
        let yh64: Vec<f64> = yh.iter().map(|&v| f64::from(v)).collect();
        let platt = fit_platt(&z, &yh64);
        let raw: Vec<f64> = z.iter().map(|&zi| sigmoid(zi)).collect();
        let base = yt.iter().map(|&v| f64::from(v)).sum::<f64>() / yt.len().max(1) as f64;
        let per_config_mean = |c: &Config| {
            let v: Vec<f64> = ct
                .iter()
                .zip(&yt)
                .filter(|(ci, _)| *ci == c)
                .map(|(_, &y)| f64::from(y))
                .collect();
            if v.is_empty() {
                base
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let per_config: Vec<f64> = ch.iter().map(per_config_mean).collect();
        let pred_len = net.log_length(&h_held)?.to_vec1::<f32>()?;
        let length_err = pred_len
            .iter()
            .zip(&lyh)
            .map(|(p, a)| f64::from((p - a).abs()))
            .sum::<f64>()
            / lyh.len().max(1) as f64;
        let report = TrainingReport {
            train_questions: train.len(),
            heldout_questions: heldout.len(),
            rows: yt.len() + yh.len(),
            epochs: best_epoch,
            heldout_log_loss: log_loss(&raw, &yh64),
            constant_log_loss: log_loss(&vec![base; yh64.len()], &yh64),
            per_config_log_loss: log_loss(&per_config, &yh64),
            heldout_length_log_error: length_err,
        };
        let tokens = TokenModel::fit(&train, menu, meta_base.max_tokens);
        let mut tensors = best;
        tensors.insert(
            "hidden_mean".into(),
            Tensor::new(features.mean.as_slice(), &dev)?,
        );
        tensors.insert(
            "hidden_std".into(),
            Tensor::new(features.std.as_slice(), &dev)?,
        );
        tensors.insert(
            "projection".into(),
            Tensor::from_slice(&features.projection, (fdim, dim), &dev)?,
        );
        let meta = ProbeMeta {
            ttc_probe: 1,
            model: meta_base.model,
            hidden_dim: dim,
            components: fdim,
            mlp_width: opts.mlp_width,
            instruction: meta_base.instruction,
            samples: meta_base.samples,
            menu: menu.to_vec(),
            platt,
            tokens,
            datasets: meta_base.datasets,
            report,
        };
        Ok(Self {
            meta,
            net,
            features,
            tensors,
        })
    }

    /// Calibrated P(correct) of each of `configs` for a prompt with this hidden state.
    pub fn accuracy(
        &self,
        hidden: &[f32],
        prompt_len: usize,
        configs: &[Config],
    ) -> Result<Vec<f64>> {
        self.check_dim(hidden)?;
        let h = self.features.row(hidden, prompt_len);
        let x: Vec<f32> = configs.iter().flat_map(|c| probe_row(&h, c)).collect();
        let x = Tensor::from_vec(x, (configs.len(), h.len() + CONFIG_FEATURES), &Device::Cpu)?;
        let z = self.net.logits(&x)?.to_vec1::<f32>()?;
        let [a, b] = self.meta.platt;
        Ok(z.into_iter()
            .map(|zi| sigmoid(a * f64::from(zi) + b))
            .collect())
    }

    /// Predicted tokens of one sampled answer to this prompt.
    pub fn sample_tokens(&self, hidden: &[f32], prompt_len: usize) -> Result<f64> {
        self.check_dim(hidden)?;
        let h = self.features.row(hidden, prompt_len);
        let n = h.len();
        let x = Tensor::from_vec(h, (1, n), &Device::Cpu)?;
        let log_len = self.net.log_length(&x)?.to_vec1::<f32>()?[0];
        Ok(f64::from(log_len)
            .exp()
            .clamp(1.0, self.meta.tokens.max_tokens.max(1) as f64))
    }

    fn check_dim(&self, hidden: &[f32]) -> Result<()> {
        if hidden.len() != self.meta.hidden_dim {
            return Err(AllocatorError::Invalid(format!(
                "the probe expects a hidden state of {} values, the model gave {} (a probe of another model?)",
                self.meta.hidden_dim,
                hidden.len()
            )));
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let meta = HashMap::from([(
            "ttc_probe".to_string(),
            serde_json::to_string(&self.meta).expect("meta serializes"),
        )]);
        let mut named: Vec<(&String, &Tensor)> = self.tensors.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        safetensors::serialize(named, Some(meta))
            .map_err(|e| AllocatorError::Invalid(format!("cannot serialize the probe: {e}")))
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, self.to_bytes()?).map_err(crate::error::io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(crate::error::io_err(path))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AllocatorError::Probe {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|reason| AllocatorError::Probe {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Reads a probe file's bytes; the error says what is wrong with them.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors file ({e})"))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("ttc_probe"))
            .ok_or("not a ttc probe (no ttc_probe metadata)")?;
        let meta: ProbeMeta =
            serde_json::from_str(json).map_err(|e| format!("bad probe metadata ({e})"))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| format!("bad probe weights ({})", first_line(&e.to_string())))?;
        let vec = |name: &str| -> std::result::Result<Vec<f32>, String> {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("missing tensor {name}"))?;
            let v = t
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("tensor {name}: {}", first_line(&e.to_string())))?;
            if v.len() != meta.hidden_dim {
                return Err(format!(
                    "tensor {name} has {} values, expected {}",
                    v.len(),
                    meta.hidden_dim
                ));
            }
            Ok(v)
        };
        let (mean, std) = (vec("hidden_mean")?, vec("hidden_std")?);
        let projection = tensors
            .get("projection")
            .ok_or("missing tensor projection")?
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32)?.to_vec1::<f32>())
            .map_err(|e| format!("tensor projection: {}", first_line(&e.to_string())))?;
        if projection.len() != meta.components * meta.hidden_dim {
            return Err(format!(
                "tensor projection has {} values, expected {}",
                projection.len(),
                meta.components * meta.hidden_dim
            ));
        }
        let features = Features {
            mean,
            std,
            projection,
            components: meta.components,
        };
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
        let net = Net::new(&vb, meta.components, meta.mlp_width)
            .map_err(|e| format!("bad probe weights ({})", first_line(&e.to_string())))?;
        Ok(Self {
            meta,
            net,
            features,
            tensors,
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What a probe records about where it came from.
#[derive(Debug, Clone)]
pub struct ProbeMetaBase {
    pub model: String,
    pub instruction: String,
    pub samples: usize,
    pub max_tokens: usize,
    pub datasets: Vec<String>,
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

    #[test]
    fn bad_probe_bytes_are_a_clear_error() {
        assert!(Probe::from_bytes(b"garbage")
            .err()
            .unwrap()
            .contains("not a safetensors file"));
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let plain = safetensors::serialize([("x", &t)], None).unwrap();
        assert!(Probe::from_bytes(&plain)
            .err()
            .unwrap()
            .contains("no ttc_probe"));
    }
}
