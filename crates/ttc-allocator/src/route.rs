//! One request through the allocator: prefill the prompt once, read its hidden state, predict
//! every configuration's accuracy, tokens and latency, choose, and run the choice from the same
//! prefill (so deciding costs only the probe and the predictions, not a second prefill). A
//! forced method runs the same way and carries its own prediction.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use ttc_engine::{Engine, SessionOptions};
use ttc_methods::{MethodConfig, MethodResult};

use crate::latency::{Grid, LatencyProfile, ProfileKey, Work, WorkKind};
use crate::menu::Config;
use crate::policy::{choose, fallback_config, solve_mix, Allocator, Lambdas, Prediction, Target};
use crate::probe::CostPoint;
use crate::probe::Probe;
use crate::prompt_kind::KindDecision;
use crate::Result;

/// Probes shipped in the repository's `models/` folder, compiled in: (the GGUF file name the
/// probe was trained on, the probe file). Matched by file name, so an alias and a path to the
/// same file both find it.
const SHIPPED_PROBES: &[(&str, &[u8])] = &[(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    include_bytes!("../../../models/smollm2-135m.probe.safetensors"),
)];

/// Where the allocator's parts came from, for messages and `--explain`.
#[derive(Debug, Clone, Serialize)]
pub struct Sources {
    pub profile: String,
    pub probe: Option<String>,
}

impl Allocator {
    /// The allocator for `engine` running on `threads` CPU threads: the latency profile from
    /// the cache (measured briefly now when there is none, or when it is unreadable), and the
    /// probe from `probe_path`, else the cache, else the one shipped for the model's alias.
    /// A bad file is reported through `notice` and replaced, never fatal.
    pub fn for_engine(
        engine: &Engine,
        threads: usize,
        probe_path: Option<&Path>,
        mut notice: impl FnMut(&str),
        on_progress: impl FnMut(usize, usize, &str),
    ) -> Result<(Self, Sources)> {
        let key = ProfileKey::for_engine(engine, threads);
        let path = key.default_path();
        let existing = if path.exists() {
            match LatencyProfile::load(&path) {
                Ok(p) if p.key == key => Some(p),
                Ok(_) => {
                    notice(&format!("{} was measured for another model, device or thread count; measuring again", path.display()));
                    None
                }
                Err(e) => {
                    notice(&format!("{e}; measuring again"));
                    None
                }
            }
        } else {
            None
        };
        let profile = match existing {
            Some(p) => p,
            None => {
                notice("no latency profile for this model, device and thread count yet: measuring a brief one (`ttc-run profile` measures the full grid)");
                let p = LatencyProfile::measure(engine, key, &Grid::brief(), on_progress)?;
                if let Err(e) = p.save(&path) {
                    notice(&format!("could not save the latency profile: {e}"));
                }
                p
            }
        };
        let (probe, probe_source) = load_probe(engine, probe_path, &mut notice);
        Ok((
            Self::new(profile, probe),
            Sources {
                profile: path.display().to_string(),
                probe: probe_source,
            },
        ))
    }

    /// Saves the profile (with its refined correction) where `for_engine` finds it.
    pub fn save_profile(&self) -> Result<()> {
        self.profile.save(&self.profile.key.default_path())
    }
}

fn load_probe(
    engine: &Engine,
    explicit: Option<&Path>,
    notice: &mut impl FnMut(&str),
) -> (Option<Probe>, Option<String>) {
    let hidden = engine.config().hidden_size;
    let usable = |p: Probe,
                  from: String,
                  notice: &mut dyn FnMut(&str)|
     -> Option<(Probe, String)> {
        if p.meta.hidden_dim != hidden {
            notice(&format!("probe {from} was trained on another model (hidden size {}, this model has {hidden}); ignoring it", p.meta.hidden_dim));
            return None;
        }
        Some((p, from))
    };
    let mut candidates: Vec<PathBuf> = explicit.map(Path::to_path_buf).into_iter().collect();
    if explicit.is_none() {
        candidates.push(crate::probe::default_path(&engine.name));
    }
    for path in candidates {
        if !path.exists() && explicit.is_none() {
            continue;
        }
        match Probe::load(&path) {
            Ok(p) => {
                if let Some((p, from)) = usable(p, path.display().to_string(), notice) {
                    return (Some(p), Some(from));
                }
            }
            Err(e) => notice(&format!("{e}; not using it")),
        }
    }
    let file = engine
        .resolved
        .paths
        .first()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (gguf, bytes) in SHIPPED_PROBES {
        if *gguf == file {
            match Probe::from_bytes(bytes) {
                Ok(p) => {
                    if let Some((p, from)) = usable(p, format!("shipped probe for {gguf}"), notice)
                    {
                        return (Some(p), Some(from));
                    }
                }
                Err(e) => notice(&format!("the shipped probe for {gguf} is unreadable: {e}")),
            }
        }
    }
    (None, None)
}

/// The cap of a plain answer when a request gives none: `ttc-run`, the chat and the server all
/// use it (llama.cpp's `-n` runs on; 512 keeps one answer bounded).
pub const DEFAULT_MAX_TOKENS: usize = 512;

/// What to run: prices or a budget, or a forced configuration; and the method settings
/// (scorer, sampling, seed, cap, stops) every configuration shares.
pub struct Request {
    pub lambdas: Lambdas,
    pub target: Option<Target>,
    /// Seconds this one request may take: configurations are held to their predicted 90th
    /// percentile of latency.
    pub max_latency: Option<f64>,
    /// Run this instead of choosing (still predicted).
    pub forced: Option<Config>,
    /// Method, n, beam width and iterations are replaced by the chosen configuration's;
    /// `max_tokens` is the cap of answers to prompts with a final answer.
    pub base: MethodConfig,
    /// The cap of a plain answer to an open-ended prompt.
    pub open_max_tokens: usize,
    /// Sequences other requests are decoding now (a server's load): every prediction's decode
    /// steps run at that much more width.
    pub background_width: usize,
}

/// A prompt's ids in the two forms the allocator may run (both templated): as typed, which
/// the kind head reads and a plain answer continues, and with the answer-format instruction,
/// which the accuracy probe reads and test-time scaling answers. Both start with the same
/// tokens, so the second prefill takes the first's full blocks from the prefix cache.
#[derive(Debug, Clone)]
pub struct PromptIds {
    pub plain: Vec<u32>,
    pub instructed: Vec<u32>,
}

/// Why the allocator ran what it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Whether the prompt was taken to have a final answer to vote on (None when forced).
    pub kind: Option<KindDecision>,
    /// Every configuration considered (empty without a probe, and for open-ended prompts).
    pub menu: Vec<Prediction>,
    /// What ran, and what was predicted for it.
    pub predicted: Prediction,
    pub lambdas: Lambdas,
    /// True when no probe could predict accuracy and the fallback rule chose.
    pub fallback: bool,
    pub forced: bool,
    /// Seconds spent deciding: the kind head after the first prefill, and the predictions
    /// after the instructed prefill (not the prefill itself).
    pub decision_s: f64,
    /// Sampling at temperature 0: every sample would be the greedy answer, so only
    /// one-sequence configurations were on the menu.
    pub greedy_sampling: bool,
    /// The cap the answer ran with.
    pub max_tokens: usize,
    /// The load the predictions accounted for ([`Request::background_width`]).
    pub background_width: usize,
}

/// Answers `prompt` through the allocator: prefill it as typed, let the kind head decide
/// whether it has a final answer; if not, answer it plainly from that prefill; if so, prefill
/// the instructed form (its shared blocks come from the prefix cache), predict every
/// configuration and run the best one.
pub fn answer(
    engine: &Engine,
    alloc: &Allocator,
    prompt: &PromptIds,
    req: &Request,
) -> Result<(MethodResult, Decision)> {
    let t0 = Instant::now();
    let final_cap = req.base.max_tokens;
    let open_cap = req.open_max_tokens;
    let both = prompt.plain.len() + prompt.instructed.len();
    // Only configurations whose KV cache fits are on the menu.
    let fits = engine.max_width_for(both, final_cap);
    let width_of = |c: &Config| c.method_config(&req.base).width();
    let widest = match req.forced {
        Some(c) => width_of(&c),
        None => alloc
            .menu
            .iter()
            .map(width_of)
            .filter(|&w| w <= fits)
            .max()
            .unwrap_or(1),
    };
    let blocks = engine
        .blocks_for_plan(both, widest, final_cap)
        .max(engine.blocks_for_plan(prompt.plain.len(), 1, open_cap));
    let opts = SessionOptions {
        prefix_cache: true,
        ..req.base.session_options()
    };
    let mut session = engine.session_for_blocks(blocks, opts)?;
    let greedy_sampling = req.base.params.temperature == 0.0;
    let scorer_s_per_token = req.base.scorer.seconds_per_token();
    let plain_config = if greedy_sampling {
        Config::GREEDY
    } else {
        Config::SAMPLE
    };

    // A forced configuration: no kind decision; one sample answers the prompt as typed.
    if let Some(c) = req.forced {
        let single_plain = c.method == ttc_methods::Method::Sample;
        let ids = if single_plain {
            &prompt.plain
        } else {
            &prompt.instructed
        };
        let cap = if single_plain { open_cap } else { final_cap };
        session.set_max_tokens(cap)?;
        let root = session.prefill(ids)?;
        let t_decide = Instant::now();
        let hidden = hidden_of(&session, root)?;
        let mut p = if single_plain {
            predict_plain(alloc, ids.len(), &c, cap)
        } else {
            predict_one(alloc, hidden.as_deref(), ids.len(), &c, cap)?
        };
        under_load(alloc, &mut p, None, req.background_width);
        add_scorer_cost(&mut p, scorer_s_per_token);
        let cfg = c.method_config(&req.base).max_tokens(cap);
        let decision_s = t_decide.elapsed().as_secs_f64();
        let result = ttc_methods::run_prefilled(session, root, ids.len(), &cfg, t0)?;
        return Ok((
            result,
            Decision {
                kind: None,
                menu: Vec::new(),
                predicted: p,
                lambdas: req.lambdas,
                fallback: false,
                forced: true,
                decision_s,
                greedy_sampling,
                max_tokens: cap,
                background_width: req.background_width,
            },
        ));
    }

    let plain_root = session.prefill(&prompt.plain)?;
    let t_decide = Instant::now();
    let plain_hidden = hidden_of(&session, plain_root)?;
    let p_final = match (&plain_hidden, &alloc.probe) {
        (Some(h), Some(probe)) => probe.p_final_answer(h)?,
        _ => None,
    };
    let kind = KindDecision::from_p(p_final);
    if !kind.final_answer {
        // Open-ended (or no head to tell): the prompt as typed, answered plainly at its cap.
        session.set_max_tokens(open_cap)?;
        let mut predicted = predict_plain(alloc, prompt.plain.len(), &plain_config, open_cap);
        under_load(alloc, &mut predicted, None, req.background_width);
        let cfg = plain_config.method_config(&req.base).max_tokens(open_cap);
        let decision_s = t_decide.elapsed().as_secs_f64();
        let result = ttc_methods::run_prefilled(session, plain_root, prompt.plain.len(), &cfg, t0)?;
        return Ok((
            result,
            Decision {
                kind: Some(kind),
                menu: Vec::new(),
                predicted,
                lambdas: req.lambdas,
                fallback: false,
                forced: false,
                decision_s,
                greedy_sampling,
                max_tokens: open_cap,
                background_width: req.background_width,
            },
        ));
    }

    // A final answer: the instructed form, whose shared beginning the prefix cache holds.
    let ids = &prompt.instructed;
    session.set_max_tokens(final_cap)?;
    let kind_s = t_decide.elapsed().as_secs_f64();
    let root = session.prefill(ids)?;
    let t_menu = Instant::now();
    session.free(plain_root);
    let prefilled = session.counters().prefill_tokens;
    let hidden = hidden_of(&session, root)?;
    let mut menu = match (&hidden, &alloc.probe) {
        (Some(h), Some(_)) => alloc.predict(h, ids.len())?,
        _ => Vec::new(),
    };
    menu.retain(|p| width_of(&p.config) <= widest);
    // At temperature 0 every sample is the greedy answer: N of them cost N times as much for
    // the same text, so only configurations of one sequence stay on the menu.
    if greedy_sampling {
        menu.retain(|p| p.config.n == 1);
    }
    // What the prefills really computed (both forms, less what the prefix cache held), and
    // what a scorer model (a PRM) costs: it reads every token a scored configuration
    // generates, once, at the speed its session measured on the question.
    for p in &mut menu {
        under_load(alloc, p, Some(prefilled), req.background_width);
        add_scorer_cost(p, scorer_s_per_token);
    }
    // A bound on this request's latency: only configurations whose 90th percentile fits it
    // (if none does, the one that comes closest).
    if let Some(bound) = req.max_latency {
        if menu.iter().any(|p| p.latency_p90_s <= bound) {
            menu.retain(|p| p.latency_p90_s <= bound);
        } else if let Some(best) = menu
            .iter()
            .min_by(|a, b| a.latency_p90_s.total_cmp(&b.latency_p90_s))
            .copied()
        {
            menu = vec![best];
        }
    }
    let mut lambdas = req.lambdas;
    let (predicted, fallback) = if menu.is_empty() {
        let fallback = if greedy_sampling {
            Config::GREEDY
        } else {
            fallback_config()
        };
        let mut p = alloc.predict_without_probe(&fallback, ids.len(), final_cap);
        add_scorer_cost(&mut p, scorer_s_per_token);
        (p, true)
    } else {
        if let Some(t) = req.target {
            // A target is a mean over requests: the choice either side of it is drawn (from
            // the request's seed and prompt) so that the expected cost is the target.
            let mix = solve_mix(std::slice::from_ref(&menu), t, lambdas);
            lambdas = mix.draw(budget_draw(req.base.seed, ids));
        }
        (menu[choose(&menu, lambdas)], false)
    };
    let cfg = predicted.config.method_config(&req.base);
    // Deciding: the kind head, then the menu's predictions (the second prefill is not counted).
    let decision_s = kind_s + t_menu.elapsed().as_secs_f64();
    let result = ttc_methods::run_prefilled(session, root, ids.len(), &cfg, t0)?;
    Ok((
        result,
        Decision {
            kind: Some(kind),
            menu,
            predicted,
            lambdas,
            fallback,
            forced: false,
            decision_s,
            greedy_sampling,
            max_tokens: final_cap,
            background_width: req.background_width,
        },
    ))
}

/// A uniform draw in [0, 1) from a request's seed and prompt, apart from the draws its
/// sampler makes. The prompt is in it so that prompts sent with the same (default) seed do
/// not all fall on the same side of their budgets.
fn budget_draw(seed: u64, ids: &[u32]) -> f64 {
    use rand::{Rng, SeedableRng};
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let key = seed ^ crate::dataset::fnv1a(&bytes) ^ 0x6275_6467_6574_u64;
    rand_chacha::ChaCha8Rng::seed_from_u64(key).random::<f64>()
}

fn hidden_of(
    session: &ttc_engine::Session<'_>,
    seq: ttc_engine::SeqId,
) -> Result<Option<Vec<f32>>> {
    Ok(session
        .prompt_hidden(seq)?
        .map(|h| h.to_vec1::<f32>())
        .transpose()?)
}

/// Re-predicts `p`'s latency with the prefill that really ran (`prefilled` tokens computed)
/// and with `background_width` other sequences sharing its decode passes.
fn under_load(
    alloc: &Allocator,
    p: &mut Prediction,
    prefilled: Option<usize>,
    background_width: usize,
) {
    if prefilled.is_some() {
        p.work.prefill_tokens = prefilled;
    }
    p.work.background_width = background_width as f64;
    // The percentile keeps its ratio to the mean: both move with the same prefill and load.
    let spread = p.latency_p90_s / p.latency_s.max(1e-12);
    p.latency_s = alloc.profile.latency_s(&p.work);
    p.latency_p90_s = p.latency_s * spread;
}

/// The prediction for a plain answer (one sequence, no vote): its tokens from the lengths of
/// plain answers the kind head measured, cut at `cap` (half the cap without them).
fn predict_plain(alloc: &Allocator, prompt_len: usize, c: &Config, cap: usize) -> Prediction {
    let tokens = alloc
        .probe
        .as_ref()
        .and_then(|p| p.meta.kind.as_ref())
        .and_then(|k| k.open_tokens(cap))
        .unwrap_or(cap as f64 / 2.0);
    let work = Work {
        prompt_len,
        prefill_tokens: None,
        background_width: 0.0,
        tokens,
        steps: tokens,
        scorer_tokens: 0.0,
        kind: WorkKind::of(c.method),
    };
    let latency_s = alloc.profile.latency_s(&work);
    Prediction {
        config: *c,
        accuracy: None,
        tokens,
        latency_s,
        latency_p90_s: latency_s,
        work,
    }
}

/// The prediction for one configuration, on the menu or not.
fn predict_one(
    alloc: &Allocator,
    hidden: Option<&[f32]>,
    prompt_len: usize,
    c: &Config,
    max_tokens: usize,
) -> Result<Prediction> {
    match (hidden, &alloc.probe) {
        (Some(h), Some(probe)) => {
            let accuracy = probe.accuracy(h, prompt_len, std::slice::from_ref(c))?[0];
            let sample = probe.sample_tokens(h, prompt_len)?;
            let work = probe.meta.tokens.work_nearest(c, sample, prompt_len);
            let latency_s = alloc.profile.latency_s(&work);
            // Off the menu there is no percentile: the mean stands in.
            let latency_p90_s = probe
                .meta
                .tokens
                .work_at(c, sample, prompt_len, CostPoint::P90)
                .map_or(latency_s, |w| alloc.profile.latency_s(&w));
            Ok(Prediction {
                config: *c,
                accuracy: Some(accuracy),
                tokens: work.tokens,
                latency_s,
                latency_p90_s,
                work,
            })
        }
        _ => Ok(alloc.predict_without_probe(c, prompt_len, max_tokens)),
    }
}

/// Adds what a scorer model costs to a prediction of a configuration that scores.
fn add_scorer_cost(p: &mut Prediction, scorer_s_per_token: f64) {
    if scorer_s_per_token > 0.0 && p.config.method.uses_scores() {
        p.work.scorer_tokens = p.work.tokens;
        p.latency_s += p.work.scorer_tokens * scorer_s_per_token;
        p.latency_p90_s += p.work.scorer_tokens * scorer_s_per_token;
    }
}

/// The generation seconds of a finished run: its total less the scorer model's time, which
/// is predicted apart ([`add_scorer_cost`]) and must not leak into the device model's
/// correction factors.
pub fn generation_s(r: &MethodResult) -> f64 {
    (r.timing.total_s - r.timing.scoring_s).max(0.0)
}

/// The work a finished run really did, for refining the latency model.
pub fn observed_work(r: &MethodResult) -> Work {
    Work {
        prompt_len: r.prompt_tokens,
        prefill_tokens: Some(r.prefill_tokens),
        background_width: 0.0,
        tokens: r.generated_tokens as f64,
        steps: r.steps as f64,
        // Scoring time is taken out of what the device model is refined with.
        scorer_tokens: 0.0,
        kind: WorkKind::of(r.method),
    }
}
