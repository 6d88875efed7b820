//! The paper's experiment on this engine (Huang et al., arXiv 2509.09864, its evaluation): every
//! static configuration of the menu against the allocator at a sweep of prices, on labelled
//! held-out questions.
//!
//! Runs are shared the way calibration labels its data: per question, greedy and each search
//! configuration run for real (their latency is measured), and K samples are drawn once; a
//! parallel configuration's accuracy, tokens and steps are estimated by resampling N of the K,
//! and its latency is the calibrated latency model's prediction for those tokens and steps (one
//! batched run of N). Each row says which (`latency_source`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::calibrate::{LabelHeader, QuestionLabels};
use crate::latency::{Work, WorkKind};
use crate::menu::Config;
use crate::policy::{choose, solve_mix, Allocator, Lambdas, Prediction, Target};
use crate::{AllocatorError, Result};

/// One question's outcome under one configuration.
#[derive(Debug, Clone, Copy)]
struct Cell {
    accuracy: f64,
    tokens: f64,
    latency_s: f64,
}

/// A static configuration's figures over the dataset.
#[derive(Debug, Clone, Serialize)]
pub struct StaticRow {
    pub config: Config,
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub mean_latency_s: f64,
    pub p50_latency_s: f64,
    pub p95_latency_s: f64,
    /// "measured" (the configuration ran on each question) or "predicted" (shared samples; the
    /// latency model's prediction for the tokens and steps they took).
    pub latency_source: &'static str,
    pub questions: usize,
}

/// The allocator's figures at one price point.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptiveRow {
    pub lambda_tokens: f64,
    pub lambda_latency: f64,
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub mean_latency_s: f64,
    pub p50_latency_s: f64,
    pub p95_latency_s: f64,
    /// Share of questions on which each configuration was chosen.
    pub chosen: BTreeMap<String, f64>,
    pub questions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    #[serde(rename = "static")]
    pub static_rows: Vec<StaticRow>,
    pub adaptive: Vec<AdaptiveRow>,
    pub oracle: OracleRow,
    /// Per menu configuration: what the allocator predicted against what it took.
    pub predictions: Vec<PredictionRow>,
    /// Budgets solved on these questions' predictions, and what the choices then took.
    pub budgets: Vec<BudgetRow>,
    pub target: TargetCheck,
}

/// The best configuration of the menu per question in hindsight (most accurate, then
/// fastest): the bound no allocator that chooses per question can pass.
#[derive(Debug, Clone, Serialize)]
pub struct OracleRow {
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub mean_latency_s: f64,
    /// The allocator's best accuracy at no more than the best static configuration's mean
    /// latency, as a share of the way from that configuration's accuracy to the oracle's
    /// (None when the oracle is no better than it).
    pub gap_closed: Option<f64>,
}

/// A menu configuration's predicted and measured means over the questions.
#[derive(Debug, Clone, Serialize)]
pub struct PredictionRow {
    pub config: Config,
    pub predicted_tokens: f64,
    pub measured_tokens: f64,
    pub predicted_latency_s: f64,
    pub measured_latency_s: f64,
    /// As in [`StaticRow`]: measured runs, or the latency model on the tokens and steps the
    /// shared samples took.
    pub latency_source: &'static str,
    /// Share of questions whose latency was within the predicted 90th percentile.
    pub within_p90: f64,
}

/// A budget (`--target-latency` / `--target-tokens`) met on average over the questions.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// "latency" (seconds) or "tokens".
    pub budget: &'static str,
    pub target: f64,
    /// The price solved for it; the choices of the price just below it are mixed in with
    /// probability `p_over` so that the expected predicted mean is the target.
    pub lambda: f64,
    pub p_over: f64,
    /// Mean predicted and realized cost of the choices (in expectation over the mix).
    pub predicted_mean: f64,
    pub realized_mean: f64,
    pub accuracy: f64,
}

/// The target, checked: against the most accurate static configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub best_static: Config,
    pub best_static_accuracy: f64,
    /// The allocator's best accuracy at no more than the best static point's mean latency.
    pub adaptive_accuracy_at_its_latency: Option<f64>,
    /// The cheapest allocator point within 2 points of the best static accuracy, as a share of
    /// that configuration's mean latency and mean tokens (the target: at most half its
    /// latency).
    pub latency_share_within_2_points: Option<f64>,
    pub token_share_within_2_points: Option<f64>,
    pub met: bool,
}

fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

fn cell(alloc: &Allocator, q: &QuestionLabels, c: &Config) -> Option<Cell> {
    let o = q.outcome(c)?;
    let latency_s = if c.method == ttc_methods::Method::Greedy {
        q.greedy.latency_s
    } else if c.method.is_search() {
        q.search.get(&c.label())?.latency_s
    } else {
        alloc.profile.latency_s(&Work {
            prompt_len: q.prompt_tokens,
            prefill_tokens: None,
            background_width: 0.0,
            tokens: o.tokens,
            steps: o.steps,
            scorer_tokens: 0.0,
            kind: WorkKind::Parallel,
        })
    };
    Some(Cell {
        accuracy: o.accuracy,
        tokens: o.tokens,
        latency_s,
    })
}

/// Lambda pairs of the default sweep: latency prices from 0 up (tokens free), then token prices
/// (latency free).
pub fn default_sweep() -> Vec<Lambdas> {
    let mut v: Vec<Lambdas> = [
        0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    ]
    .iter()
    .map(|&l| Lambdas {
        tokens: 0.0,
        latency: l,
    })
    .collect();
    v.extend([1e-5, 3e-5, 1e-4, 3e-4, 1e-3].iter().map(|&t| Lambdas {
        tokens: t,
        latency: 0.0,
    }));
    v
}

/// Mean accuracy, tokens and latency of `cells`, and latency percentiles.
struct Summary {
    accuracy: f64,
    mean_tokens: f64,
    mean_latency_s: f64,
    p50_latency_s: f64,
    p95_latency_s: f64,
}

fn summarize(cells: &[Cell]) -> Summary {
    let lat: Vec<f64> = cells.iter().map(|x| x.latency_s).collect();
    Summary {
        accuracy: mean(cells.iter().map(|x| x.accuracy)),
        mean_tokens: mean(cells.iter().map(|x| x.tokens)),
        mean_latency_s: mean(lat.iter().copied()),
        p50_latency_s: percentile(&lat, 0.5),
        p95_latency_s: percentile(&lat, 0.95),
    }
}

/// Why labels with `samples` sampled answers per question and real runs of the search
/// configurations `searched` cannot score `config`; None when they can.
fn unscorable(config: &Config, samples: usize, searched: &[String]) -> Option<String> {
    let label = config.label();
    match config.method {
        ttc_methods::Method::Greedy => None,
        m if m.is_search() => (!searched.contains(&label)).then(|| {
            let ran = if searched.is_empty() {
                "none".to_string()
            } else {
                searched.join(", ")
            };
            format!("cannot evaluate {label}: it was not run when the questions were labelled (search configurations labelled: {ran})")
        }),
        _ => (config.n > samples).then(|| {
            format!("cannot evaluate {label}: it needs {} sampled answers per question, the labels have {samples}", config.n)
        }),
    }
}

/// Checks before labelling that labels made with `header` can score every one of `configs`,
/// so a run fails at once rather than after labelling.
pub fn check_configs(header: &LabelHeader, configs: &[Config]) -> Result<()> {
    let searched: Vec<String> = header.search.iter().map(Config::label).collect();
    match configs
        .iter()
        .find_map(|c| unscorable(c, header.samples, &searched))
    {
        Some(why) => Err(AllocatorError::Invalid(why)),
        None => Ok(()),
    }
}

/// Evaluates `configs` and the allocator at each of `sweep` on the labelled `questions`. Every
/// configuration must be scorable on every question (a static row over a subset of the
/// questions would not compare with the others): an error names the first that is not.
pub fn evaluate(
    alloc: &Allocator,
    questions: &[QuestionLabels],
    configs: &[Config],
    sweep: &[Lambdas],
    budgets: &[Target],
) -> Result<Evaluation> {
    // Both make a static row for check_target to compare with.
    if configs.is_empty() || questions.is_empty() {
        return Err(AllocatorError::Invalid(
            "nothing to evaluate: no configuration or no labelled question".into(),
        ));
    }
    for q in questions {
        let searched: Vec<String> = q.search.keys().cloned().collect();
        if let Some(why) = configs
            .iter()
            .find_map(|c| unscorable(c, q.samples.len(), &searched))
        {
            return Err(AllocatorError::Invalid(format!(
                "{why} (question {})",
                q.id
            )));
        }
    }
    // Each question's outcome under each configuration, estimated once (resampling is the
    // costly part), for the static rows and every price point alike.
    let table: Vec<HashMap<Config, Cell>> = questions
        .iter()
        .map(|q| {
            configs
                .iter()
                .chain(&alloc.menu)
                .filter_map(|c| Some((*c, cell(alloc, q, c)?)))
                .collect()
        })
        .collect();
    let mut static_rows = Vec::new();
    for c in configs {
        let cells: Vec<Cell> = table.iter().filter_map(|t| t.get(c).copied()).collect();
        if cells.is_empty() {
            continue;
        }
        let sum = summarize(&cells);
        static_rows.push(StaticRow {
            config: *c,
            accuracy: sum.accuracy,
            mean_tokens: sum.mean_tokens,
            mean_latency_s: sum.mean_latency_s,
            p50_latency_s: sum.p50_latency_s,
            p95_latency_s: sum.p95_latency_s,
            latency_source: latency_source(c),
            questions: cells.len(),
        });
    }
    // Predictions per question once (those the labels can score); each price point only
    // re-chooses.
    let predictions: Vec<Vec<_>> = questions
        .iter()
        .zip(&table)
        .map(|(q, t)| {
            alloc.predict(&q.hidden, q.prompt_tokens).map(|p| {
                p.into_iter()
                    .filter(|p| t.contains_key(&p.config))
                    .collect::<Vec<_>>()
            })
        })
        .collect::<Result<_>>()?;
    let mut adaptive = Vec::new();
    for &l in sweep {
        let mut cells = Vec::new();
        let mut chosen: BTreeMap<String, f64> = BTreeMap::new();
        for (t, preds) in table.iter().zip(&predictions) {
            if preds.is_empty() {
                continue;
            }
            let c = preds[choose(preds, l)].config;
            cells.push(t[&c]);
            *chosen.entry(c.label()).or_default() += 1.0;
        }
        let n = cells.len().max(1) as f64;
        chosen.values_mut().for_each(|v| *v /= n);
        let sum = summarize(&cells);
        adaptive.push(AdaptiveRow {
            lambda_tokens: l.tokens,
            lambda_latency: l.latency,
            accuracy: sum.accuracy,
            mean_tokens: sum.mean_tokens,
            mean_latency_s: sum.mean_latency_s,
            p50_latency_s: sum.p50_latency_s,
            p95_latency_s: sum.p95_latency_s,
            chosen,
            questions: cells.len(),
        });
    }
    let target = check_target(&static_rows, &adaptive);
    let oracle = oracle_row(&table, &alloc.menu, &target);
    let prediction_table = prediction_rows(&alloc.menu, &table, &predictions);
    let budgets = budgets
        .iter()
        .map(|&t| budget_row(&table, &predictions, t))
        .collect();
    Ok(Evaluation {
        static_rows,
        adaptive,
        oracle,
        predictions: prediction_table,
        budgets,
        target,
    })
}

/// Per question, the most accurate menu configuration (then the fastest).
fn oracle_row(table: &[HashMap<Config, Cell>], menu: &[Config], target: &TargetCheck) -> OracleRow {
    let cells: Vec<Cell> = table
        .iter()
        .filter_map(|t| {
            menu.iter()
                .filter_map(|c| t.get(c))
                .max_by(|a, b| {
                    a.accuracy
                        .total_cmp(&b.accuracy)
                        .then(b.latency_s.total_cmp(&a.latency_s))
                })
                .copied()
        })
        .collect();
    let sum = summarize(&cells);
    let best = target.best_static_accuracy;
    let at_latency = target.adaptive_accuracy_at_its_latency;
    OracleRow {
        accuracy: sum.accuracy,
        mean_tokens: sum.mean_tokens,
        mean_latency_s: sum.mean_latency_s,
        gap_closed: at_latency
            .filter(|_| sum.accuracy > best + 1e-9)
            .map(|a| (a - best) / (sum.accuracy - best)),
    }
}

/// Each menu configuration's mean predicted tokens and latency against the measured means, on
/// the questions where both exist.
fn prediction_rows(
    menu: &[Config],
    table: &[HashMap<Config, Cell>],
    predictions: &[Vec<Prediction>],
) -> Vec<PredictionRow> {
    menu.iter()
        .filter_map(|c| {
            let pairs: Vec<(&Prediction, &Cell)> = table
                .iter()
                .zip(predictions)
                .filter_map(|(t, preds)| Some((preds.iter().find(|p| p.config == *c)?, t.get(c)?)))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            Some(PredictionRow {
                config: *c,
                predicted_tokens: mean(pairs.iter().map(|(p, _)| p.tokens)),
                measured_tokens: mean(pairs.iter().map(|(_, m)| m.tokens)),
                predicted_latency_s: mean(pairs.iter().map(|(p, _)| p.latency_s)),
                measured_latency_s: mean(pairs.iter().map(|(_, m)| m.latency_s)),
                latency_source: latency_source(c),
                within_p90: mean(
                    pairs
                        .iter()
                        .map(|(p, m)| f64::from(u8::from(m.latency_s <= p.latency_p90_s))),
                ),
            })
        })
        .collect()
}

/// The prices that meet `budget` in expectation over the questions' predictions (the choices at
/// the solved price, mixed with those just below it: [`solve_mix`]), and what the choices
/// realized, in expectation over the mix.
fn budget_row(
    table: &[HashMap<Config, Cell>],
    predictions: &[Vec<Prediction>],
    budget: Target,
) -> BudgetRow {
    let batch: Vec<Vec<Prediction>> = predictions
        .iter()
        .filter(|p| !p.is_empty())
        .cloned()
        .collect();
    let base = Lambdas {
        tokens: 0.0,
        latency: 0.0,
    };
    let mix = solve_mix(&batch, budget, base);
    // Mean predicted cost, realized cost and accuracy of the choices at `l`.
    let at = |l: Lambdas| {
        let (mut predicted, mut realized, mut correct) = (Vec::new(), Vec::new(), Vec::new());
        for (t, preds) in table.iter().zip(predictions) {
            if preds.is_empty() {
                continue;
            }
            let p = &preds[choose(preds, l)];
            let m = t[&p.config];
            let (pc, mc) = match budget {
                Target::Latency(_) => (p.latency_s, m.latency_s),
                Target::Tokens(_) => (p.tokens, m.tokens),
            };
            predicted.push(pc);
            realized.push(mc);
            correct.push(m.accuracy);
        }
        [
            mean(predicted.into_iter()),
            mean(realized.into_iter()),
            mean(correct.into_iter()),
        ]
    };
    let (within, over) = (at(mix.within), at(mix.over));
    let expect = |i: usize| (1.0 - mix.p_over) * within[i] + mix.p_over * over[i];
    let (name, target, lambda) = match budget {
        Target::Latency(s) => ("latency", s, mix.within.latency),
        Target::Tokens(t) => ("tokens", t, mix.within.tokens),
    };
    BudgetRow {
        budget: name,
        target,
        lambda,
        p_over: mix.p_over,
        predicted_mean: expect(0),
        realized_mean: expect(1),
        accuracy: expect(2),
    }
}

fn latency_source(c: &Config) -> &'static str {
    if c.method == ttc_methods::Method::Greedy || c.method.is_search() {
        "measured"
    } else {
        "predicted"
    }
}

fn check_target(static_rows: &[StaticRow], adaptive: &[AdaptiveRow]) -> TargetCheck {
    // The most accurate static configuration (ties: the faster).
    let best = static_rows
        .iter()
        .max_by(|a, b| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.mean_latency_s.total_cmp(&a.mean_latency_s))
        })
        .expect("at least one static row");
    let at_latency = adaptive
        .iter()
        .filter(|a| a.mean_latency_s <= best.mean_latency_s + 1e-9)
        .map(|a| a.accuracy)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    // Allocator points within 2 points of it, by their share of its latency and tokens; the
    // target needs one at no more than half its latency.
    let shares: Vec<(f64, f64)> = adaptive
        .iter()
        .filter(|a| a.accuracy >= best.accuracy - 0.02)
        .map(|a| {
            (
                a.mean_latency_s / best.mean_latency_s,
                a.mean_tokens / best.mean_tokens,
            )
        })
        .collect();
    let cheapest = shares.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0));
    let (lat_share, tok_share) = (cheapest.map(|s| s.0), cheapest.map(|s| s.1));
    let met = at_latency.is_some_and(|a| a >= best.accuracy - 1e-9)
        && shares.iter().any(|&(l, _)| l <= 0.5);
    TargetCheck {
        best_static: best.config,
        best_static_accuracy: best.accuracy,
        adaptive_accuracy_at_its_latency: at_latency,
        latency_share_within_2_points: lat_share,
        token_share_within_2_points: tok_share,
        met,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ttc_methods::Method;

    fn stat(c: Config, accuracy: f64, tokens: f64, latency: f64) -> StaticRow {
        StaticRow {
            config: c,
            accuracy,
            mean_tokens: tokens,
            mean_latency_s: latency,
            p50_latency_s: latency,
            p95_latency_s: latency,
            latency_source: "measured",
            questions: 10,
        }
    }

    fn point(accuracy: f64, tokens: f64, latency: f64) -> AdaptiveRow {
        AdaptiveRow {
            lambda_tokens: 0.0,
            lambda_latency: 0.0,
            accuracy,
            mean_tokens: tokens,
            mean_latency_s: latency,
            p50_latency_s: latency,
            p95_latency_s: latency,
            chosen: BTreeMap::new(),
            questions: 10,
        }
    }

    #[test]
    fn the_target_needs_one_point_at_half_the_latency_and_no_loss_at_equal_latency() {
        let statics = [
            stat(Config::GREEDY, 0.3, 10.0, 1.0),
            stat(Config::parallel(Method::Majority, 16), 0.5, 400.0, 8.0),
        ];
        // As accurate at its latency, and within 2 points at 50% of its latency and tokens.
        let t = check_target(&statics, &[point(0.5, 300.0, 8.0), point(0.49, 200.0, 4.0)]);
        assert_eq!(t.best_static, Config::parallel(Method::Majority, 16));
        assert!(t.met, "{t:?}");
        assert_eq!(t.latency_share_within_2_points, Some(0.5));
        // Within 2 points only at 60% of its latency: not met.
        let t = check_target(&statics, &[point(0.5, 300.0, 8.0), point(0.49, 390.0, 4.8)]);
        assert!(!t.met, "{t:?}");
        // Less accurate at the same latency: not met.
        let t = check_target(&statics, &[point(0.45, 100.0, 2.0)]);
        assert!(
            !t.met && t.adaptive_accuracy_at_its_latency == Some(0.45),
            "{t:?}"
        );
    }

    /// One question labelled with `samples` sampled answers and no search runs.
    fn question(samples: usize) -> QuestionLabels {
        use crate::calibrate::{RunRecord, SampleRecord};
        QuestionLabels {
            id: "q".into(),
            reference: "7".into(),
            prompt_tokens: 10,
            hidden: vec![0.0; 4],
            greedy: RunRecord {
                answer: Some("7".into()),
                correct: true,
                tokens: 5,
                steps: 6,
                latency_s: 0.1,
            },
            samples: (0..samples)
                .map(|i| SampleRecord {
                    answer: Some("7".into()),
                    score: -1.0,
                    tokens: 10 + i,
                    steps: 11 + i,
                })
                .collect(),
            search: BTreeMap::new(),
        }
    }

    #[test]
    fn a_configuration_the_labels_cannot_score_is_an_error_naming_it() {
        let alloc = Allocator::new(crate::latency::tests::synthetic(), None);
        let qs = [question(2)];
        let sweep = [Lambdas {
            tokens: 0.0,
            latency: 0.0,
        }];
        for (c, why) in [
            (Config::search(Method::Beam, 2, 2, 3), "not run"),
            (Config::parallel(Method::Majority, 8), "8 sampled answers"),
        ] {
            let e = evaluate(&alloc, &qs, &[Config::GREEDY, c], &sweep, &[])
                .err()
                .unwrap_or_else(|| panic!("{c} was scored"))
                .to_string();
            assert!(e.contains(&c.label()) && e.contains(why), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(evaluate(
            &alloc,
            &qs,
            &[Config::parallel(Method::Majority, 2)],
            &sweep,
            &[]
        )
        .is_ok());
    }

    #[test]
    fn percentiles_interpolate() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert!(
            (percentile(&(1..=100).map(f64::from).collect::<Vec<_>>(), 0.95) - 95.05).abs() < 1e-9
        );
    }
}
