//! ttc-methods: test-time scaling written against the engine's sequence API only (prefill, fork,
//! step, free): greedy, best-of-N, majority vote, weighted majority, beam search and DVTS (Huang et
//! al., arXiv 2509.09864; beam search with search-and-learn's semantics). Every result says exactly
//! what it spent: tokens (pruned beams included), sequential decode steps and wall-clock time.

pub mod answer;
pub mod scorer;
pub mod vote;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, EngineError, SeqId, Session, SessionOptions, StopReason};

pub use scorer::{Scorer, ScorerSource, ScorerSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Greedy,
    /// One answer sampled at the request's temperature: what `--method plain` streams, and
    /// what the allocator runs for a prompt without a final answer to vote on.
    Sample,
    BestOfN,
    Majority,
    /// Majority vote that stops once it is decided ([`vote::majority_decided`]): the samples
    /// still running are cancelled and their blocks freed. Its answer is majority's.
    MajorityAdaptive,
    Weighted,
    Beam,
    Dvts,
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "greedy" => Ok(Self::Greedy),
            "sample" => Ok(Self::Sample),
            "best-of-n" | "bon" => Ok(Self::BestOfN),
            "majority" | "self-consistency" => Ok(Self::Majority),
            "majority-adaptive" => Ok(Self::MajorityAdaptive),
            "weighted" => Ok(Self::Weighted),
            "beam" => Ok(Self::Beam),
            "dvts" => Ok(Self::Dvts),
            other => Err(format!(
                "unknown method '{other}' (greedy, sample, best-of-n, majority, majority-adaptive, weighted, beam, dvts)"
            )),
        }
    }
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Self::Greedy => "greedy",
            Self::Sample => "sample",
            Self::BestOfN => "best-of-n",
            Self::Majority => "majority",
            Self::MajorityAdaptive => "majority-adaptive",
            Self::Weighted => "weighted",
            Self::Beam => "beam",
            Self::Dvts => "dvts",
        }
    }

    /// Greedy and one sample run one sequence, whose text can stream as it is made.
    pub fn is_single(self) -> bool {
        matches!(self, Self::Greedy | Self::Sample)
    }

    /// Beam search and DVTS generate step by step.
    pub fn is_search(self) -> bool {
        matches!(self, Self::Beam | Self::Dvts)
    }

    /// Whether candidates are scored (a scorer model then reads every generated token).
    pub fn uses_scores(self) -> bool {
        matches!(
            self,
            Self::BestOfN | Self::Weighted | Self::Beam | Self::Dvts
        )
    }
}

/// Beam steps end at a blank line (search-and-learn).
pub const STEP_STOP: &str = "\n\n";

/// Beam iterations when nothing else is said (the CLI's `--max-iters` default).
pub const DEFAULT_MAX_ITERS: usize = 40;

/// A method to run and everything it needs. Build one with [`MethodConfig::new`] and the
/// chainable setters, which leave every other field at its default:
///
/// ```
/// # use ttc_methods::{Method, MethodConfig};
/// let cfg = MethodConfig::new(Method::Beam, 256).n(8).beam_width(2).seed(7);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct MethodConfig {
    pub method: Method,
    /// Samples (parallel methods) or beams (search).
    pub n: usize,
    /// Branching factor m of beam search / DVTS.
    pub beam_width: usize,
    /// Beam iterations; the last one runs to the end.
    pub max_iters: usize,
    pub scorer: Scorer,
    /// Sampling of every method but greedy.
    pub params: SamplingParams,
    pub seed: u64,
    /// Generated tokens per sequence at most.
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// Set from another thread (Ctrl-C) to stop between two decode steps.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Told the text as it is made (one-sequence methods) or the progress after each step.
    pub observer: Option<Observer>,
}

/// What a running method reports as it goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress<'a> {
    /// New text of the one sequence of a one-sequence method (greedy, sample): final text,
    /// whole characters, never part of a stop string.
    Text(&'a str),
    /// After each decode step of a method that runs several sequences.
    Step {
        /// Sequences still generating in this phase, and how many it started with.
        live: usize,
        sequences: usize,
        /// Tokens generated so far, every sequence together.
        tokens: usize,
        elapsed_s: f64,
    },
}

/// A callback for [`Progress`], shared with the thread that shows it.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(Progress<'_>) + Send + Sync>);

impl Observer {
    pub fn new(f: impl Fn(Progress<'_>) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl MethodConfig {
    /// `method` with at most `max_tokens` generated tokens per sequence: one sample (or beam),
    /// no branching, [`DEFAULT_MAX_ITERS`] beam iterations, mean log-probability scores, the
    /// default sampling, seed 0, no stop strings and no cancel flag.
    pub fn new(method: Method, max_tokens: usize) -> Self {
        Self {
            method,
            n: 1,
            beam_width: 1,
            max_iters: DEFAULT_MAX_ITERS,
            scorer: Scorer::Logprob,
            params: SamplingParams::default(),
            seed: 0,
            max_tokens,
            stop: Vec::new(),
            cancel: None,
            observer: None,
        }
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn n(mut self, n: usize) -> Self {
        self.n = n;
        self
    }

    pub fn beam_width(mut self, beam_width: usize) -> Self {
        self.beam_width = beam_width;
        self
    }

    pub fn max_iters(mut self, max_iters: usize) -> Self {
        self.max_iters = max_iters;
        self
    }

    pub fn scorer(mut self, scorer: Scorer) -> Self {
        self.scorer = scorer;
        self
    }

    pub fn params(mut self, params: SamplingParams) -> Self {
        self.params = params;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    pub fn stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// Takes a flag or an `Option` of one (`None` clears it).
    pub fn cancel(mut self, cancel: impl Into<Option<Arc<AtomicBool>>>) -> Self {
        self.cancel = cancel.into();
        self
    }

    pub fn observer(mut self, observer: impl Into<Option<Observer>>) -> Self {
        self.observer = observer.into();
        self
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.n == 0 || self.max_tokens == 0 {
            return Err("--n and --max-tokens must be at least 1".into());
        }
        if self.method.is_search() {
            if self.beam_width == 0 || !self.n.is_multiple_of(self.beam_width) {
                return Err(format!(
                    "--n ({}) must be a multiple of --beam-width ({})",
                    self.n, self.beam_width
                ));
            }
            if self.max_iters == 0 {
                return Err("--max-iters must be at least 1".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub text: String,
    pub answer: Option<String>,
    pub score: f32,
    /// Tokens of this candidate's text.
    pub tokens: usize,
    /// Those tokens, as the engine generated them (so that a caller can check what a search
    /// shared and what it pruned).
    #[serde(skip)]
    pub token_ids: Vec<u32>,
    /// log p of each of those tokens under the model (temperature 1).
    #[serde(skip)]
    pub logprobs: Vec<f32>,
    pub finish: StopReason,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub prefill_s: f64,
    pub decode_s: f64,
    pub scoring_s: f64,
    pub total_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MethodResult {
    pub method: Method,
    pub n: usize,
    pub beam_width: usize,
    pub scorer: &'static str,
    /// The chosen candidate's text and answer.
    pub text: String,
    pub answer: Option<String>,
    pub chosen: usize,
    pub candidates: Vec<Candidate>,
    /// Samples cancelled before they finished, once the vote was decided (majority-adaptive);
    /// they are not among the candidates, and their tokens are in `generated_tokens`.
    pub cancelled: usize,
    pub prompt_tokens: usize,
    /// Prompt tokens run through the model: the prompt once, whatever n is.
    pub prefill_tokens: usize,
    /// Every token generated, pruned beams included.
    pub generated_tokens: usize,
    /// Tokens a scorer model read (0 for the generator's own scores).
    pub scorer_tokens: usize,
    /// Sequential decode steps (batched forward passes after the prefill).
    pub steps: usize,
    pub forward_passes: usize,
    pub timing: Timing,
    /// The model's final hidden state at the prompt's last token (the allocator's feature).
    #[serde(skip)]
    pub prompt_hidden: Option<Vec<f32>>,
}

/// Runs `cfg` on `prompt` (token ids, template applied).
pub fn run(
    engine: &Engine,
    prompt: &[u32],
    cfg: &MethodConfig,
) -> ttc_engine::Result<MethodResult> {
    cfg.validate().map_err(EngineError::InvalidArgument)?;
    let t0 = Instant::now();
    let mut session = engine.session(prompt.len(), cfg.width(), cfg.session_options())?;
    let root = session.prefill(prompt)?;
    run_prefilled(session, root, prompt.len(), cfg, t0)
}

impl MethodConfig {
    /// Sequences alive at once: beams and their expansions for search, samples otherwise.
    pub fn width(&self) -> usize {
        match self.method {
            Method::Greedy | Method::Sample => 1,
            m if m.is_search() => self.n + self.n / self.beam_width.max(1),
            _ => self.n,
        }
    }

    /// The sampling this method uses: greedy for greedy, `params` otherwise.
    pub fn sampling(&self) -> SamplingParams {
        if self.method == Method::Greedy {
            SamplingParams::greedy()
        } else {
            self.params.clone()
        }
    }

    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            params: self.sampling(),
            seed: self.seed,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            ignore_eos: false,
            prefix_cache: false,
        }
    }
}

/// Runs `cfg` from `root`, a prompt already prefilled in `session` (which must have room for
/// `cfg.width()` sequences): how the allocator decides after the prefill without redoing it.
/// `t0` is when the request started; the total time is measured from it.
pub fn run_prefilled(
    mut session: Session<'_>,
    root: SeqId,
    prompt_len: usize,
    cfg: &MethodConfig,
    t0: Instant,
) -> ttc_engine::Result<MethodResult> {
    cfg.validate().map_err(EngineError::InvalidArgument)?;
    session.set_sampling(cfg.sampling())?;
    let prompt_hidden = session
        .prompt_hidden(root)?
        .map(|h| h.to_vec1::<f32>())
        .transpose()?;
    let mut run = Run {
        session,
        scorer: cfg.scorer.clone(),
        steps: 0,
        scoring_s: 0.0,
        scorer_tokens: 0,
        cancel: cfg.cancel.clone(),
        observer: cfg.observer.clone(),
        single: cfg.method.is_single(),
        t0,
    };
    let mut cancelled = 0;
    let (candidates, chosen) = match cfg.method {
        Method::Greedy | Method::Sample => {
            run.until_done(&[root])?;
            (vec![run.candidate(root)?], 0)
        }
        Method::BestOfN | Method::Majority | Method::MajorityAdaptive | Method::Weighted => {
            let samples = run.session.fork(root, cfg.n)?;
            run.session.free(root);
            // An adaptive vote cancels the samples still running once it is decided.
            let finished = if cfg.method == Method::MajorityAdaptive {
                run.until_decided(&samples)?
            } else {
                run.until_done(&samples)?;
                samples
            };
            cancelled = cfg.n - finished.len();
            let cands = finished
                .iter()
                .map(|&s| run.candidate(s))
                .collect::<ttc_engine::Result<Vec<_>>>()?;
            let ballots: Vec<vote::Ballot> = cands
                .iter()
                .map(|c| vote::Ballot {
                    answer: c.answer.as_deref(),
                    score: c.score,
                })
                .collect();
            let chosen = match cfg.method {
                Method::BestOfN => vote::best_of_n(&ballots),
                Method::Weighted => vote::weighted(&ballots),
                _ => vote::majority(&ballots),
            };
            (cands, chosen.unwrap_or(0))
        }
        Method::Beam | Method::Dvts => run.search(root, cfg)?,
    };
    let c = run.session.counters().clone();
    let chosen_c = candidates
        .get(chosen)
        .cloned()
        .ok_or_else(|| EngineError::InvalidArgument("no candidate was generated".into()))?;
    Ok(MethodResult {
        method: cfg.method,
        n: if cfg.method.is_single() { 1 } else { cfg.n },
        beam_width: if cfg.method.is_search() {
            cfg.beam_width
        } else {
            1
        },
        scorer: cfg.scorer.name(),
        text: chosen_c.text,
        answer: chosen_c.answer,
        chosen,
        candidates,
        cancelled,
        prompt_tokens: prompt_len,
        prefill_tokens: c.prefill_tokens,
        generated_tokens: c.decode_tokens,
        scorer_tokens: run.scorer_tokens,
        steps: run.steps,
        forward_passes: c.forward_passes,
        timing: Timing {
            prefill_s: c.prefill_s,
            decode_s: c.decode_s,
            scoring_s: run.scoring_s,
            total_s: t0.elapsed().as_secs_f64(),
        },
        prompt_hidden,
    })
}

/// A method's state while it runs.
struct Run<'e> {
    session: Session<'e>,
    scorer: Scorer,
    steps: usize,
    scoring_s: f64,
    scorer_tokens: usize,
    cancel: Option<Arc<AtomicBool>>,
    observer: Option<Observer>,
    /// One sequence: its text is what the observer is told.
    single: bool,
    t0: Instant,
}

impl Run<'_> {
    /// Steps `seqs` (one batched pass each time) until every one has finished or ended a step.
    fn until_done(&mut self, seqs: &[SeqId]) -> ttc_engine::Result<()> {
        loop {
            let live = self.session.live(seqs);
            if live.is_empty() {
                return Ok(());
            }
            self.step_once(seqs, &live)?;
        }
    }

    /// Steps `seqs` like [`Run::until_done`] until the majority vote over the finished ones is
    /// decided ([`vote::majority_decided`]); frees the ones still running then. Returns the
    /// finished ones, in the order of `seqs`.
    fn until_decided(&mut self, seqs: &[SeqId]) -> ttc_engine::Result<Vec<SeqId>> {
        loop {
            let live = self.session.live(seqs);
            let finished: Vec<SeqId> = seqs.iter().copied().filter(|s| !live.contains(s)).collect();
            let answers: Vec<Option<String>> = finished
                .iter()
                .map(|&s| self.session.text(s).map(answer::extract))
                .collect::<ttc_engine::Result<_>>()?;
            let votes: Vec<Option<&str>> = answers.iter().map(Option::as_deref).collect();
            if vote::majority_decided(&votes, live.len()) {
                for s in live {
                    self.session.free(s);
                }
                return Ok(finished);
            }
            self.step_once(seqs, &live)?;
        }
    }

    /// One batched step of `live` (of `seqs`), with the cancel check and the observer.
    fn step_once(&mut self, seqs: &[SeqId], live: &[SeqId]) -> ttc_engine::Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(EngineError::Cancelled);
        }
        let events = self.session.step(live)?;
        self.steps += 1;
        if let Some(Observer(tell)) = &self.observer {
            if self.single {
                for e in events.iter().filter(|e| !e.piece.is_empty()) {
                    tell(Progress::Text(&e.piece));
                }
            } else {
                tell(Progress::Step {
                    live: self.session.live(seqs).len(),
                    sequences: seqs.len(),
                    tokens: self.session.counters().decode_tokens,
                    elapsed_s: self.t0.elapsed().as_secs_f64(),
                });
            }
        }
        Ok(())
    }

    fn score(&mut self, seq: SeqId) -> ttc_engine::Result<f32> {
        let t = Instant::now();
        let (score, tokens) = self.scorer.score(&self.session, seq)?;
        self.scoring_s += t.elapsed().as_secs_f64();
        self.scorer_tokens += tokens;
        Ok(score)
    }

    fn candidate(&mut self, seq: SeqId) -> ttc_engine::Result<Candidate> {
        let score = self.score(seq)?;
        let text = self.session.text(seq)?.to_string();
        let token_ids = self.session.generated(seq)?.to_vec();
        let logprobs = self.session.logprobs(seq)?.to_vec();
        Ok(Candidate {
            logprobs,
            answer: answer::extract(&text),
            text,
            score,
            tokens: token_ids.len(),
            token_ids,
            finish: self
                .session
                .finish_reason(seq)
                .unwrap_or(StopReason::MaxTokens),
        })
    }

    /// Beam search (global top n/m kept each iteration) and DVTS (n/m independent subtrees,
    /// the best of each subtree's m children kept), expanding by steps that end at "\n\n".
    fn search(
        &mut self,
        root: SeqId,
        cfg: &MethodConfig,
    ) -> ttc_engine::Result<(Vec<Candidate>, usize)> {
        let m = cfg.beam_width;
        let keep = cfg.n / m;
        // (sequence, subtree): DVTS keeps one beam per subtree; beam search ignores subtrees.
        let mut active: Vec<(SeqId, usize)> = self
            .session
            .fork(root, cfg.n)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i / m))
            .collect();
        self.session.free(root);
        let mut completed: Vec<Candidate> = Vec::new();
        for iter in 0..cfg.max_iters {
            let last = iter + 1 == cfg.max_iters;
            for &(s, _) in &active {
                self.session.resume(s)?;
                self.session
                    .set_step_stop(s, (!last).then(|| STEP_STOP.to_string()))?;
            }
            let seqs: Vec<SeqId> = active.iter().map(|a| a.0).collect();
            self.until_done(&seqs)?;
            // Finished beams are kept as candidates; those that ended a step go on.
            let mut going: Vec<(SeqId, usize, f32)> = Vec::new();
            for &(s, tree) in &active {
                if self.session.finish_reason(s) == Some(StopReason::StepEnd) {
                    let dup = going
                        .iter()
                        .any(|g| self.session.text(g.0).ok() == self.session.text(s).ok());
                    if dup {
                        self.session.free(s);
                    } else {
                        let score = self.score(s)?;
                        going.push((s, tree, score));
                    }
                } else {
                    completed.push(self.candidate(s)?);
                    self.session.free(s);
                }
            }
            if going.is_empty() {
                break;
            }
            // Selection: the best `keep` overall (beam) or the best of each subtree (DVTS);
            // ties go to the earlier sequence.
            let mut order: Vec<usize> = (0..going.len()).collect();
            order.sort_by(|&a, &b| {
                going[b]
                    .2
                    .total_cmp(&going[a].2)
                    .then(going[a].0.cmp(&going[b].0))
            });
            let mut selected: Vec<usize> = Vec::new();
            for &i in &order {
                let take = match cfg.method {
                    Method::Dvts => !selected.iter().any(|&j| going[j].1 == going[i].1),
                    _ => selected.len() < keep,
                };
                if take {
                    selected.push(i);
                }
            }
            selected.sort_unstable();
            let mut next = Vec::with_capacity(cfg.n);
            for (i, &(s, tree, _)) in going.iter().enumerate() {
                if selected.contains(&i) {
                    next.extend(self.session.fork(s, m)?.into_iter().map(|c| (c, tree)));
                }
                self.session.free(s);
            }
            active = next;
        }
        if completed.is_empty() {
            return Err(EngineError::InvalidArgument(
                "beam search produced no finished beam".into(),
            ));
        }
        let ballots: Vec<vote::Ballot> = completed
            .iter()
            .map(|c| vote::Ballot {
                answer: c.answer.as_deref(),
                score: c.score,
            })
            .collect();
        let chosen = vote::best_of_n(&ballots).unwrap_or(0);
        Ok((completed, chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_config_is_valid_for_every_method_and_setters_change_one_field() {
        for method in [
            Method::Greedy,
            Method::BestOfN,
            Method::Majority,
            Method::MajorityAdaptive,
            Method::Weighted,
            Method::Beam,
            Method::Dvts,
        ] {
            assert_eq!(
                MethodConfig::new(method, 16).validate(),
                Ok(()),
                "{method:?}"
            );
        }
        let flag = Arc::new(AtomicBool::new(false));
        let c = MethodConfig::new(Method::Greedy, 16)
            .method(Method::Dvts)
            .n(8)
            .beam_width(4)
            .max_iters(3)
            .scorer(Scorer::SelfCertainty)
            .params(SamplingParams::greedy())
            .seed(9)
            .max_tokens(32)
            .stop(vec!["END".into()])
            .cancel(flag.clone());
        assert_eq!(
            (
                c.method,
                c.n,
                c.beam_width,
                c.max_iters,
                c.seed,
                c.max_tokens
            ),
            (Method::Dvts, 8, 4, 3, 9, 32)
        );
        assert_eq!(c.scorer.name(), "self-certainty");
        assert_eq!(c.params.temperature, 0.0);
        assert_eq!(c.stop, ["END"]);
        assert!(c.cancel.as_ref().is_some_and(|f| Arc::ptr_eq(f, &flag)));
        assert!(c.cancel(None).cancel.is_none());
        assert!(MethodConfig::new(Method::Beam, 16)
            .n(3)
            .beam_width(2)
            .validate()
            .is_err());
    }
}
