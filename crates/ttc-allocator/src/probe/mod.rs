//! The accuracy probe and the token model (arXiv 2509.09864, "The accuracy probe").
//!
//! Features ([`features`]): the generator's final-layer hidden state at the prompt's last token
//! (standardized with the training set's mean and spread and projected on its first principal
//! components), the configuration's features ([`Config::features`]) and the log of the prompt
//! length. One small MLP (GELU) for all configurations ([`net`]), trained with binary cross-entropy
//! on soft labels from [`crate::calibrate`], early-stopped and Platt-scaled ([`platt`]) by
//! cross-validation on the training questions, and reported on test questions used for none of that
//! ([`split`], [`report`]). A linear head on the same standardized hidden state predicts the log of
//! one sampled answer's length; the token model ([`tokens`]) turns that into each configuration's
//! tokens and sequential steps with ratios measured in calibration.
//!
//! A probe is one safetensors file ([`io`]): the weights, and a JSON header (`ttc_probe` in
//! the file's metadata) with the menu, the Platt parameters, the token model and the training
//! report. [`paths`] says where probe files live.

mod features;
mod io;
pub mod kind;
mod length;
mod net;
mod paths;
mod platt;
mod report;
mod split;
mod tokens;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::calibrate::QuestionLabels;
use crate::error::{AllocatorError, Result};
use crate::menu::{Config, CONFIG_FEATURES};
use features::Features;
use net::{probe_row, Net, Rows, CHECK_EVERY};
use platt::{fit_platt, sigmoid};
use report::log_loss;

pub use paths::default_path;
pub(crate) use paths::sanitize;
pub use report::{HyperPoint, TrainingReport};
pub use split::{part_of, Part, FOLDS};
pub use tokens::{CostPoint, Ratio, TokenModel};

/// A probe file's header: what the probe reads, how it was trained and how well it did.
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
    /// The prompt-kind head ([`kind`]), when the probe has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<kind::KindMeta>,
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
    /// Hyperparameters to choose among by cross-validation (the three above are then
    /// ignored); None: those three as they are.
    pub search: Option<HyperGrid>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            components: 8,
            mlp_width: 32,
            max_epochs: 600,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            seed: 0,
            search: Some(HyperGrid::default()),
        }
    }
}

/// The hyperparameters cross-validation chooses among: every combination.
#[derive(Debug, Clone)]
pub struct HyperGrid {
    pub components: Vec<usize>,
    pub mlp_width: Vec<usize>,
    pub weight_decay: Vec<f64>,
}

impl Default for HyperGrid {
    /// From a few principal components of a 576-wide hidden state to many, with light and
    /// strong weight decay (AdamW's decay is lr x wd per step: 0.1 changed nothing in a few
    /// hundred epochs, 1.0 shrinks the weights by a fifth). One network width: each setting
    /// costs a full cross-validation.
    fn default() -> Self {
        Self {
            components: vec![8, 16, 32],
            mlp_width: vec![32],
            weight_decay: vec![0.01, 1.0],
        }
    }
}

impl TrainOptions {
    /// The settings cross-validation compares: each point of the grid, or these alone.
    pub fn candidates(&self) -> Vec<TrainOptions> {
        let Some(grid) = &self.search else {
            return vec![self.clone()];
        };
        let mut out = Vec::new();
        for &components in &grid.components {
            for &mlp_width in &grid.mlp_width {
                for &weight_decay in &grid.weight_decay {
                    out.push(TrainOptions {
                        components,
                        mlp_width,
                        weight_decay,
                        search: None,
                        ..self.clone()
                    });
                }
            }
        }
        out
    }
}

/// A trained probe: predicts each configuration's P(correct) and one sampled answer's length
/// from a prompt's hidden state.
pub struct Probe {
    pub meta: ProbeMeta,
    net: Net,
    features: Features,
    /// Everything the file stores: the network's weights, and the features' mean, spread and
    /// projection.
    tensors: HashMap<String, Tensor>,
    kind: Option<kind::KindHead>,
}

impl Probe {
    /// Trains a probe on `questions` (labels of one model, one header) for `menu`. The
    /// questions are split ([`split`]): the epoch to stop at and the Platt scaling are chosen
    /// by cross-validation on the training part, the probe is then fitted on all of it, and
    /// the report is measured on the test part, which none of that saw.
    pub fn train(
        questions: &[QuestionLabels],
        menu: &[Config],
        meta_base: ProbeMetaBase,
        opts: &TrainOptions,
        mut on_setting: impl FnMut(usize, usize, &HyperPoint),
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
        let (train, test) = split::split(questions, |q| q.id.as_str());
        if train.len() < 2 * FOLDS || test.is_empty() {
            return Err(AllocatorError::Invalid(format!(
                "too few labelled questions to train and hold out ({} questions: {} to train on, {} to test on; at least {} and 1)",
                questions.len(),
                train.len(),
                test.len(),
                2 * FOLDS
            )));
        }
        let checks = opts.max_epochs / CHECK_EVERY;
        if checks == 0 {
            return Err(AllocatorError::Invalid(format!(
                "train for at least {CHECK_EVERY} epochs"
            )));
        }

        // Hyperparameters, the epoch to stop at and the Platt scaling, all by cross-validation
        // on the training part: the test part is read once, for the report.
        let mut tried = Vec::new();
        let mut best: Option<(TrainOptions, CrossValidation)> = None;
        let candidates = opts.candidates();
        for (i, candidate) in candidates.iter().enumerate() {
            let cv = cross_validate(&train, menu, candidate, checks, &dev)?;
            let point = HyperPoint {
                components: candidate.components,
                mlp_width: candidate.mlp_width,
                weight_decay: candidate.weight_decay,
                epochs: cv.epoch,
                cv_log_loss: cv.log_loss,
            };
            on_setting(i + 1, candidates.len(), &point);
            tried.push(point);
            if best.as_ref().is_none_or(|(_, b)| cv.log_loss < b.log_loss) {
                best = Some((candidate.clone(), cv));
            }
        }
        let (opts, cv) = best.expect("at least one candidate");
        let opts = &opts;
        let (best_epoch, platt) = (cv.epoch, cv.platt);

        // The probe: fitted on the whole training part for the chosen epochs.
        let features = Features::fit(&hidden_states(&train), opts.components);
        let fdim = features.components;
        let fit_rows = Rows::of(&features, menu, &train);
        let weights = net::train(
            &fit_rows.tensors(fdim, &dev)?,
            fdim,
            opts,
            best_epoch,
            &dev,
            |_, _| Ok(()),
        )?;
        // The length head, fitted apart from the accuracy network ([`length`]): its weights
        // replace the ones trained with it.
        let fold = split::folds(&train, |q| q.id.as_str());
        let head =
            length::fit(&fit_rows.h, fdim + 1, &fit_rows.log_len, &fold).ok_or_else(|| {
                AllocatorError::Invalid("the length head has no solution on these questions".into())
            })?;
        let mut weights = weights;
        weights.insert(
            "length.weight".into(),
            Tensor::from_vec(head.weight.clone(), (1, fdim + 1), &dev)?,
        );
        weights.insert(
            "length.bias".into(),
            Tensor::from_vec(vec![head.bias], 1, &dev)?,
        );
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
        let net = Net::new(&vb, fdim, opts.mlp_width)?;

        // The report, on the test part only.
        let test_rows = Rows::of(&features, menu, &test);
        let [a, b] = platt;
        let held = test_rows.tensors(fdim, &dev)?;
        let y = test_rows.labels();
        let predicted: Vec<f64> = net
            .logits_f64(&held.x)?
            .into_iter()
            .map(|z| sigmoid(a * z + b))
            .collect();
        let fit_y = fit_rows.labels();
        let base = fit_y.iter().sum::<f64>() / fit_y.len().max(1) as f64;
        let per_config_mean = |c: &Config| {
            let v: Vec<f64> = fit_rows
                .configs
                .iter()
                .zip(&fit_y)
                .filter(|(ci, _)| *ci == c)
                .map(|(_, &y)| y)
                .collect();
            if v.is_empty() {
                base
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let per_config: Vec<f64> = test_rows.configs.iter().map(per_config_mean).collect();
        let pred_len = net.log_length(&held.h)?.to_vec1::<f32>()?;
        let length_err = pred_len
            .iter()
            .zip(&test_rows.log_len)
            .map(|(p, a)| f64::from((p - a).abs()))
            .sum::<f64>()
            / test_rows.log_len.len().max(1) as f64;
        let report = TrainingReport {
            train_questions: train.len(),
            cv_folds: FOLDS,
            heldout_questions: test.len(),
            rows: fit_rows.y.len() + test_rows.y.len(),
            epochs: best_epoch,
            heldout_log_loss: log_loss(&predicted, &y),
            constant_log_loss: log_loss(&vec![base; y.len()], &y),
            per_config_log_loss: log_loss(&per_config, &y),
            heldout_length_log_error: length_err,
            length_penalty: head.penalty,
            length_cv_log_error: head.cv_log_error,
            cv_log_loss: cv.log_loss,
            hyperparameters: tried,
        };
        // The token model's ratios, against the length head's predictions on the training part.
        let cap = meta_base.max_tokens.max(1) as f64;
        let train_len: Vec<f64> = net
            .log_length(&fit_rows.tensors(fdim, &dev)?.h)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(|l| f64::from(l).exp().clamp(1.0, cap))
            .collect();
        let tokens = TokenModel::fit(&train, &train_len, menu, meta_base.max_tokens);
        let mut tensors = weights;
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
            kind: None,
        };
        Ok(Self {
            meta,
            net,
            features,
            tensors,
            kind: None,
        })
    }

    /// The prompt-kind head and its record, when the probe has one.
    pub fn kind_head(&self) -> Option<(kind::KindHead, kind::KindMeta)> {
        Some((self.kind.clone()?, self.meta.kind.clone()?))
    }

    /// This probe with `head` as its prompt-kind head (replacing any it had).
    pub fn with_kind_head(mut self, head: kind::KindHead, meta: kind::KindMeta) -> Result<Self> {
        let d = self.meta.hidden_dim;
        if head.mean.len() != d || head.std.len() != d || head.weight.len() != d {
            return Err(AllocatorError::Invalid(format!(
                "a kind head of {} values for a probe of hidden size {d}",
                head.weight.len()
            )));
        }
        for (name, v) in [
            ("kind.mean", &head.mean),
            ("kind.std", &head.std),
            ("kind.weight", &head.weight),
        ] {
            self.tensors
                .insert(name.to_string(), Tensor::new(v.as_slice(), &Device::Cpu)?);
        }
        self.meta.kind = Some(meta);
        self.kind = Some(head);
        Ok(self)
    }

    /// P(the prompt has a short final answer) from the hidden state of the prompt as typed
    /// (no instruction); None when the probe has no kind head.
    pub fn p_final_answer(&self, hidden: &[f32]) -> Result<Option<f64>> {
        self.check_dim(hidden)?;
        Ok(self.kind.as_ref().map(|k| k.p_final_answer(hidden)))
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
        let [a, b] = self.meta.platt;
        Ok(self
            .net
            .logits_f64(&x)?
            .into_iter()
            .map(|z| sigmoid(a * z + b))
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
}

/// What cross-validation on the training part found for one set of hyperparameters.
struct CrossValidation {
    /// Out-of-fold log-loss (Platt-scaled) at the best epoch, per row.
    log_loss: f64,
    epoch: usize,
    platt: [f64; 2],
}

/// [`FOLDS`]-fold cross-validation of `opts` on `train`: per fold, features and a network fitted
/// on the other folds; at every check, the fold's loss (weighted by its rows) and its logits.
/// The first check with the lowest loss out of fold is the epoch; the Platt scaling is fitted
/// on the out-of-fold logits there, and the loss reported is of the scaled predictions.
fn cross_validate(
    train: &[&QuestionLabels],
    menu: &[Config],
    opts: &TrainOptions,
    checks: usize,
    dev: &Device,
) -> Result<CrossValidation> {
    let fold = split::folds(train, |q| q.id.as_str());
    let mut cv_loss = vec![0f64; checks];
    let mut cv_logits: Vec<Vec<f64>> = vec![Vec::new(); checks];
    let mut cv_labels = Vec::new();
    for f in 0..FOLDS {
        let in_fold = |want: bool| -> Vec<&QuestionLabels> {
            train
                .iter()
                .zip(&fold)
                .filter(|&(_, &k)| (k == f) == want)
                .map(|(q, _)| *q)
                .collect()
        };
        let (held, fitted) = (in_fold(true), in_fold(false));
        let features = Features::fit(&hidden_states(&fitted), opts.components);
        let fdim = features.components;
        let fit_batch = Rows::of(&features, menu, &fitted).tensors(fdim, dev)?;
        let held_rows = Rows::of(&features, menu, &held);
        let held_batch = held_rows.tensors(fdim, dev)?;
        let weight = held_rows.y.len() as f64;
        cv_labels.extend(held_rows.labels());
        net::train(
            &fit_batch,
            fdim,
            opts,
            opts.max_epochs,
            dev,
            |epoch, net| {
                let i = epoch / CHECK_EVERY - 1;
                cv_loss[i] += f64::from(net::loss(net, &held_batch)?.to_scalar::<f32>()?) * weight;
                cv_logits[i].extend(net.logits_f64(&held_batch.x)?);
                Ok(())
            },
        )?;
    }
    // The first check with the lowest loss out of fold, and the Platt scaling of the
    // out-of-fold logits there.
    let best = (0..checks)
        .min_by(|&a, &b| cv_loss[a].total_cmp(&cv_loss[b]))
        .expect("at least one check");
    let platt = fit_platt(&cv_logits[best], &cv_labels);
    let [a, b] = platt;
    let scaled: Vec<f64> = cv_logits[best]
        .iter()
        .map(|&z| sigmoid(a * z + b))
        .collect();
    Ok(CrossValidation {
        log_loss: log_loss(&scaled, &cv_labels),
        epoch: (best + 1) * CHECK_EVERY,
        platt,
    })
}

/// The hidden states of `questions`, for fitting the features.
fn hidden_states<'a>(questions: &[&'a QuestionLabels]) -> Vec<&'a [f32]> {
    questions.iter().map(|q| q.hidden.as_slice()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::RunRecord;
    use std::collections::BTreeMap;

    /// Questions whose greedy answer is right exactly when the hidden state's first value is
    /// positive.
    fn questions(count: usize) -> Vec<QuestionLabels> {
        (0..count)
            .map(|i| {
                let right = i % 2 == 0;
                let noise = |k: usize| ((i * 31 + k * 17) % 13) as f32 / 13.0 - 0.5;
                let mut hidden: Vec<f32> = (0..6).map(noise).collect();
                hidden[0] = if right { 2.0 } else { -2.0 } + 0.3 * noise(9);
                QuestionLabels {
                    id: format!("synthetic-{i}"),
                    reference: "1".into(),
                    prompt_tokens: 20,
                    hidden,
                    greedy: RunRecord {
                        answer: Some(if right { "1" } else { "2" }.into()),
                        correct: right,
                        tokens: 10,
                        steps: 11,
                        latency_s: 0.1,
                    },
                    samples: vec![],
                    search: BTreeMap::new(),
                }
            })
            .collect()
    }

    #[test]
    fn training_holds_the_test_part_out_and_learns_what_the_hidden_state_shows() {
        let qs = questions(60);
        let opts = TrainOptions {
            components: 4,
            max_epochs: 300,
            learning_rate: 1e-2,
            search: Some(HyperGrid {
                components: vec![1, 4],
                mlp_width: vec![8],
                weight_decay: vec![0.01, 0.1],
            }),
            ..TrainOptions::default()
        };
        let p = Probe::train(&qs, &[Config::GREEDY], meta_base(), &opts, |_, _, _| {}).unwrap();
        let r = &p.meta.report;
        // Each point of the grid was cross-validated, and the chosen one is the best of them.
        assert_eq!(r.hyperparameters.len(), 4);
        let best = r
            .hyperparameters
            .iter()
            .map(|h| h.cv_log_loss)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(r.cv_log_loss, best);
        let chosen = r
            .hyperparameters
            .iter()
            .find(|h| h.cv_log_loss == best)
            .unwrap();
        assert_eq!(
            (p.meta.components, p.meta.mlp_width, r.epochs),
            (chosen.components, chosen.mlp_width, chosen.epochs)
        );
        let tested = qs.iter().filter(|q| part_of(&q.id) == Part::Test).count();
        assert_eq!(
            (r.heldout_questions, r.train_questions),
            (tested, 60 - tested)
        );
        assert_eq!(r.cv_folds, FOLDS);
        assert!(r.heldout_log_loss < r.constant_log_loss, "{r:?}");
        // Too few questions to cross-validate and hold out is a clear error.
        let e = Probe::train(
            &qs[..5],
            &[Config::GREEDY],
            meta_base(),
            &opts,
            |_, _, _| {},
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("too few labelled questions"), "{e}");
    }

    fn meta_base() -> ProbeMetaBase {
        ProbeMetaBase {
            model: "m".into(),
            instruction: String::new(),
            samples: 0,
            max_tokens: 16,
            datasets: vec![],
        }
    }
}
