//! The latency model, measured on this device (docs/design.md, "The allocator"): prefill seconds
//! against prompt length, and one batched decode step's seconds against (width, context length). A
//! configuration's latency for a prompt is its prefill plus its sequential decode steps:
//!
//!   L = prefill(P) + S * step(T / S, P + S / 2)
//!
//! (A scorer model's time is not the device's generation time: `route` adds it, at the speed
//! the scorer's session measured, outside the correction factors below.)
//!
//! with T the tokens it generates and S its sequential steps (from the token model). A step's
//! time is close to linear in the width, so S steps at the mean width T/S cost what the real
//! steps at shrinking widths cost. Beam search's steps are sequential and add up in S; a
//! best-of-N run is one batched run whose S is its longest sample.
//!
//! Profiles are stored per (model file, device, threads). Finished requests refine a profile:
//! the ratio of measured to predicted latency, given the tokens and steps the request really
//! took, updates a correction factor per kind of run (greedy, parallel, search). What the step
//! grid does not see (per-request set-up, forks and copies, beam bookkeeping) differs by kind;
//! the factors measured on this project's machines are in the README.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, SessionOptions};

use crate::error::{io_err, AllocatorError, Result};

/// What a profile was measured on; a profile is only used where all three match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileKey {
    /// The model's file name and size in bytes.
    pub model: String,
    pub device: String,
    pub threads: usize,
}

impl ProfileKey {
    pub fn for_engine(engine: &Engine, threads: usize) -> Self {
        let file = engine.resolved.paths.first();
        let name = file
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| engine.name.clone());
        let bytes: u64 = engine
            .resolved
            .paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let device = if engine.model.device().is_cpu() {
            "cpu".to_string()
        } else {
            format!("{:?}", engine.model.device().location())
        };
        Self {
            model: format!("{name}:{bytes}"),
            device,
            threads,
        }
    }

    /// The profile's file in the cache.
    pub fn default_path(&self) -> PathBuf {
        let name = format!("{}-{}-t{}.json", self.model, self.device, self.threads);
        ttc_engine::download::cache_dir()
            .join("profiles")
            .join(crate::probe::sanitize(&name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrefillPoint {
    pub prompt_len: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodePoint {
    pub width: usize,
    pub context: usize,
    /// Seconds of one batched step (sampling included).
    pub seconds: f64,
}

/// Version 2: corrections per kind of run. Version 3: measured on ttc's own CPU kernels
/// (several times faster than candle's). Version 4: every timed step runs its forward pass
/// (earlier grids timed one that did not, and under-predicted steps by 1/steps). Older profiles
/// are re-measured, not trusted.
const PROFILE_VERSION: u32 = 4;

/// The bounds of one run's measured / predicted ratio, and so of a correction factor (a mean
/// of such ratios).
const RATIO_BOUNDS: std::ops::RangeInclusive<f64> = 0.25..=4.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyProfile {
    pub ttc_profile: u32,
    pub key: ProfileKey,
    pub prefill: Vec<PrefillPoint>,
    pub decode: Vec<DecodePoint>,
    /// Per kind of run: measured / predicted latency of finished requests, smoothed.
    #[serde(default)]
    pub corrections: std::collections::BTreeMap<WorkKind, Correction>,
}

/// What kind of run a [`Work`] is: its overheads beyond the decode steps differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkKind {
    Greedy,
    #[default]
    Parallel,
    Search,
}

impl WorkKind {
    pub fn of(method: ttc_methods::Method) -> Self {
        match method {
            ttc_methods::Method::Greedy | ttc_methods::Method::Sample => Self::Greedy,
            m if m.is_search() => Self::Search,
            _ => Self::Parallel,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    pub factor: f64,
    pub observations: usize,
}

/// Estimated cost of a configuration on one prompt, before the device turns it into seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Work {
    pub prompt_len: usize,
    /// Prompt tokens the prefill computes (fewer than `prompt_len` when the prefix cache holds
    /// the rest; more when a request prefills two forms of its prompt); None: `prompt_len`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_tokens: Option<usize>,
    /// Sequences other requests decode in the same passes (a server's load): each step then
    /// runs at this much more width.
    #[serde(skip_serializing_if = "is_zero")]
    pub background_width: f64,
    /// Generated tokens (all samples and beams).
    pub tokens: f64,
    /// Sequential decode steps.
    pub steps: f64,
    /// Tokens read by a scorer model.
    pub scorer_tokens: f64,
    pub kind: WorkKind,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The measurement grid of `profile`.
#[derive(Debug, Clone)]
pub struct Grid {
    pub contexts: Vec<usize>,
    pub widths: Vec<usize>,
    /// Timed steps per (width, context), after one untimed step.
    pub steps: usize,
}

impl Grid {
    /// The full grid of `ttc-run profile`.
    pub fn full() -> Self {
        Self {
            contexts: vec![32, 128, 384, 768],
            widths: vec![1, 2, 4, 8, 16],
            steps: 4,
        }
    }

    /// What the first `auto` request measures when there is no profile yet (a few seconds).
    pub fn brief() -> Self {
        Self {
            contexts: vec![48, 256],
            widths: vec![1, 4, 16],
            steps: 2,
        }
    }

    pub fn measurements(&self) -> usize {
        self.contexts.len() * (1 + self.widths.len())
    }
}

impl LatencyProfile {
    /// Times prefill at each context length of `grid` (random ids, as llama-bench does), and
    /// from each prefilled prompt one decode step at each width. `on_progress(done, total, what)`
    /// is called after each measurement.
    pub fn measure(
        engine: &Engine,
        key: ProfileKey,
        grid: &Grid,
        mut on_progress: impl FnMut(usize, usize, &str),
    ) -> Result<Self> {
        if grid.contexts.is_empty() || grid.widths.is_empty() || grid.steps == 0 {
            return Err(AllocatorError::Invalid("the profile grid is empty".into()));
        }
        let total = grid.measurements();
        let mut done = 0;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Random prompts of ordinary tokens; a vocabulary with none is refused, not searched.
        let ordinary = engine.tokenizer.ordinary_ids();
        if ordinary.is_empty() {
            return Err(AllocatorError::Invalid(
                "the model's vocabulary has no ordinary token to profile with".into(),
            ));
        }
        let widest = *grid.widths.iter().max().expect("not empty");
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for &context in &grid.contexts {
            let context = context
                .min(engine.context_limit().saturating_sub(grid.steps + 2))
                .max(1);
            let prompt: Vec<u32> = (0..context)
                .map(|_| ordinary[rng.random_range(0..ordinary.len())])
                .collect();
            // The sampling every method but greedy uses by default.
            let opts = SessionOptions {
                params: SamplingParams::default(),
                seed: 1,
                // The untimed step, the timed ones, and one more: the step that reaches
                // `max_tokens` samples but runs no forward pass, and must not be among the timed.
                max_tokens: grid.steps + 2,
                stop: vec![],
                ignore_eos: true,
                prefix_cache: false,
            };
            let mut session = engine.session(prompt.len(), widest, opts)?;
            let t = Instant::now();
            let root = session.prefill(&prompt)?;
            prefill.push(PrefillPoint {
                prompt_len: context,
                seconds: t.elapsed().as_secs_f64(),
            });
            done += 1;
            on_progress(done, total, &format!("prefill {context}"));
            for &width in &grid.widths {
                let seqs = session.fork(root, width)?;
                session.step(&seqs)?; // untimed: first touches of fresh blocks
                let forwarded = session.counters().decode_forward_tokens;
                let t = Instant::now();
                for _ in 0..grid.steps {
                    session.step(&seqs)?;
                }
                let seconds = t.elapsed().as_secs_f64() / grid.steps as f64;
                // A timed step that skips a sequence's forward pass (one that ended) would make
                // every prediction short by that share.
                if session.counters().decode_forward_tokens - forwarded != grid.steps * width {
                    return Err(AllocatorError::Invalid(format!(
                        "a profile step at width {width}, context {context} ran no forward pass"
                    )));
                }
                decode.push(DecodePoint {
                    width,
                    context,
                    seconds,
                });
                for s in seqs {
                    session.free(s);
                }
                done += 1;
                on_progress(
                    done,
                    total,
                    &format!("decode width {width} context {context}"),
                );
            }
        }
        Ok(Self {
            ttc_profile: PROFILE_VERSION,
            key,
            prefill,
            decode,
            corrections: Default::default(),
        })
    }

    /// Seconds to prefill `prompt_len` tokens: piecewise linear through the origin and the
    /// measured points, extended by the last segment's slope.
    pub fn prefill_s(&self, prompt_len: usize) -> f64 {
        let mut pts: Vec<(f64, f64)> = vec![(0.0, 0.0)];
        pts.extend(
            self.prefill
                .iter()
                .map(|p| (p.prompt_len as f64, p.seconds)),
        );
        interpolate(&pts, prompt_len as f64).max(0.0)
    }

    /// Seconds of one decode step of `width` sequences at `context` tokens: piecewise linear in
    /// the width at each measured context, then in the context between them.
    pub fn step_s(&self, width: f64, context: f64) -> f64 {
        let mut contexts: Vec<usize> = self.decode.iter().map(|d| d.context).collect();
        contexts.sort_unstable();
        contexts.dedup();
        let at_context: Vec<(f64, f64)> = contexts
            .iter()
            .map(|&c| {
                let mut pts: Vec<(f64, f64)> = self
                    .decode
                    .iter()
                    .filter(|d| d.context == c)
                    .map(|d| (d.width as f64, d.seconds))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                (c as f64, interpolate(&pts, width))
            })
            .collect();
        interpolate(&at_context, context).max(1e-6)
    }

    /// Predicted seconds for `work`, before the correction factor.
    pub fn raw_latency_s(&self, work: &Work) -> f64 {
        let mut s = self.prefill_s(work.prefill_tokens.unwrap_or(work.prompt_len));
        if work.steps > 0.0 {
            let width = (work.tokens / work.steps).max(1.0) + work.background_width.max(0.0);
            s += work.steps * self.step_s(width, work.prompt_len as f64 + work.steps / 2.0);
        }
        s
    }

    /// The correction factor for `kind` (1 until a request of that kind finished).
    pub fn correction(&self, kind: WorkKind) -> f64 {
        self.corrections.get(&kind).map_or(1.0, |c| c.factor)
    }

    /// Predicted seconds for `work` on this device.
    pub fn latency_s(&self, work: &Work) -> f64 {
        self.correction(work.kind) * self.raw_latency_s(work)
    }

    /// Refines the correction factor of `work.kind` with a finished request: `work` as it really
    /// happened (its real tokens and steps) and the seconds it took. Returns the new factor.
    pub fn observe(&mut self, work: &Work, measured_s: f64) -> f64 {
        let predicted = self.raw_latency_s(work);
        let c = self.corrections.entry(work.kind).or_insert(Correction {
            factor: 1.0,
            observations: 0,
        });
        if predicted > 0.0 && measured_s.is_finite() && measured_s > 0.0 {
            // One wild run (a page fault storm, a descheduled thread) moves the factor by at
            // most this much; a mean of bounded ratios stays within the same bounds, so the
            // factor is never clamped afterwards and its first values are a plain mean.
            let ratio = (measured_s / predicted).clamp(*RATIO_BOUNDS.start(), *RATIO_BOUNDS.end());
            // A running mean for the first observations, then exponential smoothing.
            let alpha = (1.0 / (c.observations as f64 + 1.0)).max(0.1);
            c.factor = (1.0 - alpha) * c.factor + alpha * ratio;
            c.observations += 1;
        }
        c.factor
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| AllocatorError::Profile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let p: Self = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a ttc latency profile ({e})")))?;
        if p.ttc_profile != PROFILE_VERSION {
            return Err(bad(format!(
                "is a version {} profile; this ttc reads version {PROFILE_VERSION}",
                p.ttc_profile
            )));
        }
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if p.prefill.is_empty()
            || p.decode.is_empty()
            || !p.prefill.iter().all(|q| finite(q.seconds))
            || !p.decode.iter().all(|q| finite(q.seconds) && q.width > 0)
            || !p
                .corrections
                .values()
                .all(|c| RATIO_BOUNDS.contains(&c.factor))
        {
            return Err(bad("has no usable measurements".into()));
        }
        Ok(p)
    }

    /// Writes the profile (through a temporary file, so a reader never sees half of it).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(self).expect("profile serializes"),
        )
        .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    }
}

/// Piecewise-linear interpolation through `pts` (sorted by x), extended linearly past both ends.
fn interpolate(pts: &[(f64, f64)], x: f64) -> f64 {
    match pts.len() {
        0 => 0.0,
        1 => pts[0].1,
        n => {
            let i = pts
                .iter()
                .position(|p| p.0 >= x)
                .unwrap_or(n - 1)
                .clamp(1, n - 1);
            let (x0, y0) = pts[i - 1];
            let (x1, y1) = pts[i];
            if (x1 - x0).abs() < 1e-12 {
                return y1;
            }
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn synthetic() -> LatencyProfile {
        // prefill 10 ms per token; a step costs 20 ms + 10 ms per sequence + 0.01 ms per context token.
        let mut decode = Vec::new();
        for c in [64, 512] {
            for w in [1, 4, 16] {
                decode.push(DecodePoint {
                    width: w,
                    context: c,
                    seconds: 0.02 + 0.01 * w as f64 + 1e-5 * c as f64,
                });
            }
        }
        LatencyProfile {
            ttc_profile: PROFILE_VERSION,
            key: ProfileKey {
                model: "m".into(),
                device: "cpu".into(),
                threads: 2,
            },
            prefill: vec![
                PrefillPoint {
                    prompt_len: 64,
                    seconds: 0.64,
                },
                PrefillPoint {
                    prompt_len: 512,
                    seconds: 5.12,
                },
            ],
            decode,
            corrections: Default::default(),
        }
    }

    #[test]
    fn interpolates_and_extrapolates_the_grid() {
        let p = synthetic();
        assert!((p.prefill_s(128) - 1.28).abs() < 1e-9);
        assert!((p.prefill_s(1024) - 10.24).abs() < 1e-9);
        assert!((p.step_s(8.0, 64.0) - (0.02 + 0.08 + 64e-5)).abs() < 1e-9);
        assert!((p.step_s(32.0, 1024.0) - (0.02 + 0.32 + 1024e-5)).abs() < 1e-9);
        // 4 samples of 10 tokens, 11 steps: prefill + 11 steps at width 40/11.
        let w = Work {
            prompt_len: 64,
            prefill_tokens: None,
            background_width: 0.0,
            tokens: 40.0,
            steps: 11.0,
            scorer_tokens: 0.0,
            kind: WorkKind::Parallel,
        };
        let expect = 0.64 + 11.0 * (0.02 + 0.01 * 40.0 / 11.0 + 1e-5 * (64.0 + 5.5));
        assert!((p.latency_s(&w) - expect).abs() < 1e-9);
    }

    #[test]
    fn observations_move_the_correction_toward_the_measured_ratio() {
        let mut p = synthetic();
        let w = Work {
            prompt_len: 64,
            prefill_tokens: None,
            background_width: 0.0,
            tokens: 10.0,
            steps: 10.0,
            scorer_tokens: 0.0,
            kind: WorkKind::Search,
        };
        let raw = p.raw_latency_s(&w);
        p.observe(&w, raw * 1.3);
        // The first observation sets the factor; other kinds are untouched.
        assert!((p.correction(WorkKind::Search) - 1.3).abs() < 1e-9);
        for _ in 0..50 {
            p.observe(&w, raw * 1.1);
        }
        assert!(
            (p.correction(WorkKind::Search) - 1.1).abs() < 0.02,
            "{}",
            p.correction(WorkKind::Search)
        );
        assert_eq!(p.corrections[&WorkKind::Search].observations, 51);
        assert_eq!(p.correction(WorkKind::Greedy), 1.0);
        assert!((p.latency_s(&w) - 1.1 * raw).abs() < 0.02 * raw);
    }

    #[test]
    fn a_bad_profile_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("ttc-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = LatencyProfile::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("latency profile ") && err.contains("not a ttc latency profile"),
            "{err}"
        );
        let mut p = synthetic();
        p.save(&path).unwrap();
        assert_eq!(LatencyProfile::load(&path).unwrap(), p);
        p.decode.clear();
        p.save(&path).unwrap();
        assert!(LatencyProfile::load(&path)
            .unwrap_err()
            .to_string()
            .contains("no usable"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
