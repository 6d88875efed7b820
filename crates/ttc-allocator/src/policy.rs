//! The policy (arXiv 2509.09864, "The decision, per query"): for each configuration on the menu,
//! predict accuracy a, tokens T and latency L for this prompt, and choose the one that
//! maximizes U = a - lambda_T * T - lambda_L * L. Or, given a budget (mean latency or mean
//! tokens over a batch of prompts), solve for the smallest lambda that meets it.
//!
//! Ties are broken toward lower latency, then fewer tokens, then menu order, so the choice is a
//! deterministic function of the predictions; with that, raising lambda_L never raises the
//! chosen configuration's predicted latency, and raising lambda_T never raises its tokens
//! (the usual exchange argument on argmax choices; tested below).

use serde::Serialize;

use crate::latency::{LatencyProfile, Work, WorkKind};
use crate::menu::{Config, PARALLEL_WIDTHS};
use crate::probe::{CostPoint, Probe};
use crate::Result;
use ttc_methods::Method;

/// The user's prices: utility points per generated token and per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lambdas {
    pub tokens: f64,
    pub latency: f64,
}

impl Lambdas {
    /// One point of accuracy is worth one second: majority@16 (about 6 s on a 2-core CPU with
    /// the default model) must beat greedy (about 1 s) by 5 points to be chosen. Tokens are
    /// free by default: on a local device they cost time, which lambda_L already prices.
    pub const DEFAULT: Lambdas = Lambdas {
        tokens: 0.0,
        latency: 0.01,
    };
}

/// What the allocator predicts for one configuration on one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    pub config: Config,
    /// P(correct); None without a probe.
    pub accuracy: Option<f64>,
    /// Generated tokens (all samples and beams).
    pub tokens: f64,
    /// Expected seconds.
    pub latency_s: f64,
    /// The 90th percentile of its seconds (answers run longer than predicted as often as
    /// shorter): what a bound on this one request holds to. The mean where nothing says more.
    pub latency_p90_s: f64,
    #[serde(skip)]
    pub work: Work,
}

impl Prediction {
    pub fn utility(&self, l: Lambdas) -> f64 {
        self.accuracy.unwrap_or(0.0) - l.tokens * self.tokens - l.latency * self.latency_s
    }
}

/// Index of the configuration with the highest utility (ties: lower latency, fewer tokens,
/// earlier on the menu).
pub fn choose(preds: &[Prediction], l: Lambdas) -> usize {
    let mut best = 0;
    for i in 1..preds.len() {
        let (a, b) = (&preds[i], &preds[best]);
        let (ua, ub) = (a.utility(l), b.utility(l));
        let better = ua > ub || (ua == ub && (a.latency_s, a.tokens) < (b.latency_s, b.tokens));
        if better {
            best = i;
        }
    }
    best
}

/// Which budget to meet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Mean predicted seconds per prompt.
    Latency(f64),
    /// Mean predicted generated tokens per prompt.
    Tokens(f64),
}

/// A budget met in expectation. Over a discrete menu the mean cost of the choices is a step
/// function of the price, so the price alone lands under the budget by as much as one step (on a
/// single prompt, the whole gap to the next configuration). The standard remedy for a
/// constrained choice over discrete options is to mix the two choices either side of the
/// step: the prices `within` (mean cost at most the budget) and `over` (just below it, over
/// the budget), the latter taken with probability `p_over`, so that the expected mean cost is
/// the budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BudgetMix {
    pub within: Lambdas,
    pub over: Lambdas,
    pub p_over: f64,
}

impl BudgetMix {
    /// The prices to run with, given a uniform draw `u` in [0, 1).
    pub fn draw(&self, u: f64) -> Lambdas {
        if u < self.p_over {
            self.over
        } else {
            self.within
        }
    }
}

/// The mean cost of the choices at `l` over `batch`, in the unit of `target`.
fn mean_cost(batch: &[Vec<Prediction>], target: Target, l: Lambdas) -> f64 {
    let total: f64 = batch
        .iter()
        .map(|preds| {
            let p = &preds[choose(preds, l)];
            match target {
                Target::Latency(_) => p.latency_s,
                Target::Tokens(_) => p.tokens,
            }
        })
        .sum();
    total / batch.len().max(1) as f64
}

/// The lambdas (the targeted one raised from `base`) whose choices meet `target` on average
/// over `batch` (one prediction list per prompt): the smallest such lambda, found by bisection,
/// since the mean cost of the choices never rises with it. If no lambda meets it (the cheapest
/// configurations are over budget), the result chooses the cheapest.
pub fn solve(batch: &[Vec<Prediction>], target: Target, base: Lambdas) -> Lambdas {
    solve_mix(batch, target, base).within
}

/// [`solve`], and the price just below it with the probability that makes the expected mean
/// cost equal the budget ([`BudgetMix`]). When the base prices already meet the budget, or no
/// price does, nothing is mixed (`p_over` = 0).
pub fn solve_mix(batch: &[Vec<Prediction>], target: Target, base: Lambdas) -> BudgetMix {
    let with = |x: f64| match target {
        Target::Latency(_) => Lambdas { latency: x, ..base },
        Target::Tokens(_) => Lambdas { tokens: x, ..base },
    };
    let cost = |x: f64| mean_cost(batch, target, with(x));
    let budget = match target {
        Target::Latency(s) => s,
        Target::Tokens(t) => t,
    };
    let start = match target {
        Target::Latency(_) => base.latency,
        Target::Tokens(_) => base.tokens,
    };
    let alone = |x: f64| BudgetMix {
        within: with(x),
        over: with(x),
        p_over: 0.0,
    };
    if cost(start) <= budget {
        return alone(start);
    }
    // Accuracy differences are at most 1, so past 1/(smallest cost gap) nothing changes; 1e6
    // is beyond any gap between real configurations.
    let (mut lo, mut hi) = (start, 1e6);
    if cost(hi) > budget {
        return alone(hi);
    }
    for _ in 0..100 {
        let mid = if lo <= 0.0 {
            hi * 1e-6
        } else {
            (lo * hi).sqrt()
        };
        if cost(mid) <= budget {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi / lo.max(1e-12) < 1.0 + 1e-6 {
            break;
        }
    }
    let (c_within, c_over) = (cost(hi), cost(lo));
    let p_over = if c_over > c_within {
        ((budget - c_within) / (c_over - c_within)).clamp(0.0, 1.0)
    } else {
        0.0
    };
    BudgetMix {
        within: with(hi),
        over: with(lo),
        p_over,
    }
}

/// The configuration `auto` runs for a model without a probe, where no accuracy can be
/// predicted: majority vote over 4 samples, the smallest width at which voting clearly beat a
/// single sample in our measurements (README, "Methods").
pub fn fallback_config() -> Config {
    debug_assert!(PARALLEL_WIDTHS.contains(&4));
    Config::parallel(Method::Majority, 4)
}

/// Without a probe, a sampled answer is assumed to use this share of the token cap.
pub const FALLBACK_SAMPLE_SHARE: f64 = 0.25;

/// The allocator for one model on one device: a latency profile, and (when calibrated) the
/// probe and token model.
pub struct Allocator {
    pub profile: LatencyProfile,
    pub probe: Option<Probe>,
    pub menu: Vec<Config>,
}

impl Allocator {
    pub fn new(profile: LatencyProfile, probe: Option<Probe>) -> Self {
        let menu = probe
            .as_ref()
            .map(|p| p.meta.menu.clone())
            .unwrap_or_else(crate::menu::default_menu);
        Self {
            profile,
            probe,
            menu,
        }
    }

    /// The answer length cap the predictions assume.
    pub fn max_tokens(&self) -> Option<usize> {
        self.probe.as_ref().map(|p| p.meta.tokens.max_tokens)
    }

    /// Predictions for every menu configuration for a prompt of `prompt_len` tokens whose final
    /// hidden state is `hidden`.
    pub fn predict(&self, hidden: &[f32], prompt_len: usize) -> Result<Vec<Prediction>> {
        match &self.probe {
            Some(probe) => {
                let acc = probe.accuracy(hidden, prompt_len, &self.menu)?;
                let sample = probe.sample_tokens(hidden, prompt_len)?;
                Ok(self
                    .menu
                    .iter()
                    .zip(acc)
                    .filter_map(|(c, a)| {
                        let work = probe.meta.tokens.work(c, sample, prompt_len)?;
                        let p90 =
                            probe
                                .meta
                                .tokens
                                .work_at(c, sample, prompt_len, CostPoint::P90)?;
                        Some(Prediction {
                            config: *c,
                            accuracy: Some(a),
                            tokens: work.tokens,
                            latency_s: self.profile.latency_s(&work),
                            latency_p90_s: self.profile.latency_s(&p90),
                            work,
                        })
                    })
                    .collect())
            }
            None => Ok(Vec::new()),
        }
    }

    /// The prediction for `config` when no probe can say more: parallel samples of an assumed
    /// length ([`FALLBACK_SAMPLE_SHARE`] of `max_tokens`), timed by the profile.
    pub fn predict_without_probe(
        &self,
        config: &Config,
        prompt_len: usize,
        max_tokens: usize,
    ) -> Prediction {
        let sample = (max_tokens as f64 * FALLBACK_SAMPLE_SHARE).max(1.0);
        let n = config.n.max(1) as f64;
        let work = Work {
            prompt_len,
            prefill_tokens: None,
            background_width: 0.0,
            tokens: n * sample,
            steps: sample + 1.0,
            scorer_tokens: 0.0,
            kind: WorkKind::of(config.method),
        };
        let latency_s = self.profile.latency_s(&work);
        Prediction {
            config: *config,
            accuracy: None,
            tokens: work.tokens,
            latency_s,
            latency_p90_s: latency_s,
            work,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_menu(rng: &mut impl Rng) -> Vec<Prediction> {
        crate::menu::default_menu()
            .into_iter()
            .map(|config| {
                let tokens = rng.random_range(5.0..2000.0f64).round();
                Prediction {
                    config,
                    accuracy: Some(rng.random_range(0.0..1.0)),
                    tokens,
                    latency_s: rng.random_range(0.2..30.0f64),
                    latency_p90_s: 0.0,
                    work: Work::default(),
                }
            })
            .collect()
    }

    #[test]
    fn raising_a_lambda_never_raises_its_cost() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..300 {
            let preds = random_menu(&mut rng);
            let lt = rng.random_range(0.0..1e-3);
            let mut last = f64::INFINITY;
            for step in 0..200 {
                let l = Lambdas {
                    tokens: lt,
                    latency: step as f64 * 0.002,
                };
                let lat = preds[choose(&preds, l)].latency_s;
                assert!(lat <= last + 1e-12, "latency rose from {last} to {lat}");
                last = lat;
            }
            let ll = rng.random_range(0.0..0.05);
            let mut last = f64::INFINITY;
            for step in 0..200 {
                let l = Lambdas {
                    tokens: step as f64 * 2e-5,
                    latency: ll,
                };
                let tok = preds[choose(&preds, l)].tokens;
                assert!(tok <= last, "tokens rose from {last} to {tok}");
                last = tok;
            }
        }
    }

    #[test]
    fn zero_prices_choose_the_most_accurate_and_high_prices_the_cheapest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let preds = random_menu(&mut rng);
        let best = preds
            .iter()
            .map(|p| p.accuracy.unwrap())
            .fold(0.0, f64::max);
        assert_eq!(
            preds[choose(
                &preds,
                Lambdas {
                    tokens: 0.0,
                    latency: 0.0
                }
            )]
            .accuracy
            .unwrap(),
            best
        );
        let fastest = preds
            .iter()
            .map(|p| p.latency_s)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(
            preds[choose(
                &preds,
                Lambdas {
                    tokens: 0.0,
                    latency: 1e3
                }
            )]
            .latency_s,
            fastest
        );
    }

    #[test]
    fn solved_lambda_meets_the_budget_and_is_the_smallest() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let batch: Vec<Vec<Prediction>> = (0..20).map(|_| random_menu(&mut rng)).collect();
        let mean = |l: Lambdas| {
            batch.iter().map(|p| p[choose(p, l)].latency_s).sum::<f64>() / batch.len() as f64
        };
        let free = mean(Lambdas {
            tokens: 0.0,
            latency: 0.0,
        });
        let cheapest = mean(Lambdas {
            tokens: 0.0,
            latency: 1e6,
        });
        let budget = (free + cheapest) / 2.0;
        let l = solve(
            &batch,
            Target::Latency(budget),
            Lambdas {
                tokens: 0.0,
                latency: 0.0,
            },
        );
        assert!(mean(l) <= budget, "{} > {budget}", mean(l));
        assert!(
            mean(Lambdas {
                latency: l.latency * 0.99,
                ..l
            }) > budget
        );
        // A budget below the cheapest: the cheapest is chosen.
        let l = solve(
            &batch,
            Target::Latency(cheapest / 2.0),
            Lambdas {
                tokens: 0.0,
                latency: 0.0,
            },
        );
        assert!((mean(l) - cheapest).abs() < 1e-9);
    }

    #[test]
    fn a_mixed_budget_costs_the_budget_in_expectation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let base = Lambdas {
            tokens: 0.0,
            latency: 0.0,
        };
        for size in [1, 3, 20] {
            let batch: Vec<Vec<Prediction>> = (0..size).map(|_| random_menu(&mut rng)).collect();
            let target = Target::Latency(0.0);
            let free = mean_cost(&batch, target, base);
            let cheapest = mean_cost(
                &batch,
                target,
                Lambdas {
                    latency: 1e6,
                    ..base
                },
            );
            for share in [0.1, 0.3, 0.5, 0.9] {
                let budget = cheapest + share * (free - cheapest);
                let mix = solve_mix(&batch, Target::Latency(budget), base);
                let (w, o) = (
                    mean_cost(&batch, target, mix.within),
                    mean_cost(&batch, target, mix.over),
                );
                assert!(w <= budget && o > budget, "{w} {budget} {o}");
                let expected = (1.0 - mix.p_over) * w + mix.p_over * o;
                assert!(
                    (expected - budget).abs() < 1e-9 * budget,
                    "{expected} != {budget}"
                );
                assert_eq!(mix.within, solve(&batch, Target::Latency(budget), base));
            }
            // Looser than the free choice, or tighter than the cheapest: nothing to mix.
            let loose = solve_mix(&batch, Target::Latency(free * 2.0), base);
            assert_eq!((loose.within, loose.p_over), (base, 0.0));
            let tight = solve_mix(&batch, Target::Latency(cheapest / 2.0), base);
            assert_eq!(tight.p_over, 0.0);
        }
    }
}
