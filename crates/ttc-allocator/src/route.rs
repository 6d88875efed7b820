//! One request through the allocator: prefill the prompt once, read its hidden state, predict
//! every configuration's accuracy, tokens and latency, choose, and run the choice from the same
//! prefill (so deciding costs only the probe and the predictions, not a second prefill). A
//! forced method runs the same way and carries its own prediction.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use ttc_engine::Engine;
use ttc_methods::{MethodConfig, MethodResult};

use crate::latency::{Grid, LatencyProfile, ProfileKey, Work, WorkKind};
use crate::menu::Config;
use crate::policy::{choose, fallback_config, solve, Allocator, Lambdas, Prediction, Target};
use crate::probe::Probe;
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

/// What to run: prices or a budget, or a forced configuration; and the method settings
/// (scorer, sampling, seed, cap, stops) every configuration shares.
pub struct Request {
    pub lambdas: Lambdas,
    pub target: Option<Target>,
    /// Run this instead of choosing (still predicted).
    pub forced: Option<Config>,
    /// Method, n, beam width and iterations are replaced by the chosen configuration's.
    pub base: MethodConfig,
}

/// Why the allocator ran what it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Every configuration considered (empty without a probe).
    pub menu: Vec<Prediction>,
    /// What ran, and what was predicted for it.
    pub predicted: Prediction,
    pub lambdas: Lambdas,
    /// True when no probe could predict accuracy and the fallback rule chose.
    pub fallback: bool,
    pub forced: bool,
    /// Seconds from the end of the prefill to the start of the chosen run.
    pub decision_s: f64,
    /// Sampling at temperature 0: every sample would be the greedy answer, so only
    /// one-sequence configurations were on the menu.
    pub greedy_sampling: bool,
}

/// Answers the prompt `ids` (template applied) through the allocator.
pub fn answer(
    engine: &Engine,
    alloc: &Allocator,
    ids: &[u32],
    req: &Request,
) -> Result<(MethodResult, Decision)> {
    let t0 = Instant::now();
    let max_tokens = req.base.max_tokens;
    // Only configurations whose KV cache fits are on the menu.
    let fits = engine.max_width_for(ids.len(), max_tokens);
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
    let mut session = engine.session(ids.len(), widest, req.base.session_options())?;
    let root = session.prefill(ids)?;
    let t_decide = Instant::now();
    let hidden = session
        .prompt_hidden(root)?
        .map(|h| h.to_vec1::<f32>())
        .transpose()?;
    let mut menu = match (&hidden, &alloc.probe) {
        (Some(h), Some(_)) => alloc.predict(h, ids.len())?,
        _ => Vec::new(),
    };
    menu.retain(|p| width_of(&p.config) <= widest);
    // At temperature 0 every sample is the greedy answer: N of them cost N times as much for
    // the same text, so only configurations of one sequence stay on the menu.
    let greedy_sampling = req.base.params.temperature == 0.0;
    if greedy_sampling {
        menu.retain(|p| p.config.n == 1);
    }
    // A scorer model (a PRM) reads every token a scored configuration generates, once (its
    // session keeps what it scored): priced at the speed its session measured on the question.
    let scorer_s_per_token = req.base.scorer.seconds_per_token();
    for p in &mut menu {
        add_scorer_cost(p, scorer_s_per_token);
    }
    let mut lambdas = req.lambdas;
    let (predicted, fallback) = match req.forced {
        Some(c) => {
            let mut p = predict_one(alloc, hidden.as_deref(), ids.len(), &c, max_tokens)?;
            add_scorer_cost(&mut p, scorer_s_per_token);
            (p, false)
        }
        None if menu.is_empty() => {
            let fallback = if greedy_sampling {
                Config::GREEDY
            } else {
                fallback_config()
            };
            let mut p = alloc.predict_without_probe(&fallback, ids.len(), max_tokens);
            add_scorer_cost(&mut p, scorer_s_per_token);
            (p, true)
        }
        None => {
            if let Some(t) = req.target {
                lambdas = solve(std::slice::from_ref(&menu), t, lambdas);
            }
            (menu[choose(&menu, lambdas)], false)
        }
    };
    let cfg = predicted.config.method_config(&req.base);
    let decision_s = t_decide.elapsed().as_secs_f64();
    let result = ttc_methods::run_prefilled(session, root, ids.len(), &cfg, t0)?;
    Ok((
        result,
        Decision {
            menu,
            predicted,
            lambdas,
            fallback,
            forced: req.forced.is_some(),
            decision_s,
            greedy_sampling,
        },
    ))
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
            Ok(Prediction {
                config: *c,
                accuracy: Some(accuracy),
                tokens: work.tokens,
                latency_s: alloc.profile.latency_s(&work),
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
        tokens: r.generated_tokens as f64,
        steps: r.steps as f64,
        // Scoring time is taken out of what the device model is refined with.
        scorer_tokens: 0.0,
        kind: WorkKind::of(r.method),
    }
}
