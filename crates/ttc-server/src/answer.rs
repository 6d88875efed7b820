//! One request, run on a blocking thread with a session of its own on the shared engine (its
//! decode steps join every other request's in the same forward passes): through the allocator
//! as `ttc-run` does (auto or a forced configuration), or as `n` plain samples of one prefill
//! (OpenAI's `n`). Streamed pieces go to the request's sink as they are made; a sink that
//! reports its client gone cancels the run within one decode step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::json;
use ttc_allocator::policy::{Lambdas, Target};
use ttc_allocator::route::{self, PromptIds, Request, DEFAULT_MAX_TOKENS};
use ttc_allocator::Config;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{SessionOptions, StopReason};
use ttc_methods::{Candidate, Method, MethodConfig, Observer, Progress};

use crate::api_error::ApiError;
use crate::wire::{Logprobs, TokenLogprob, Usage};
use crate::App;

/// What to run.
#[derive(Debug, Clone)]
pub enum Plan {
    /// The allocator chooses (with the prompt-kind decision), at these prices or this budget.
    Auto {
        lambdas: Lambdas,
        target: Option<Target>,
        max_latency: Option<f64>,
    },
    /// This configuration, still predicted.
    Forced(Config),
    /// `n` plain samples from one prefill: OpenAI's `n`.
    Samples(usize),
}

/// Where streamed text goes: `(choice index, piece)`; false once the client is gone.
pub type Sink = Arc<dyn Fn(usize, &str) -> bool + Send + Sync>;

pub struct Job {
    pub ids: PromptIds,
    pub params: SamplingParams,
    pub seed: u64,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub plan: Plan,
    pub beam_width: usize,
    pub max_iters: usize,
    pub want_logprobs: bool,
    pub cancel: Arc<AtomicBool>,
    pub sink: Option<Sink>,
    pub arrived: Instant,
}

pub struct Choice {
    pub index: usize,
    pub text: String,
    pub finish_reason: &'static str,
    pub logprobs: Option<Logprobs>,
    /// Whether its text already went to the sink piece by piece.
    pub streamed: bool,
}

pub struct Outcome {
    pub choices: Vec<Choice>,
    pub usage: Usage,
    /// The configuration that ran (for metrics).
    pub config: String,
}

fn finish_reason(r: StopReason) -> &'static str {
    match r {
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

/// Runs `job` to its end (or its cancellation).
pub fn run(app: &App, job: Job) -> Result<Outcome, ApiError> {
    let engine = &app.engine;
    let alloc = app.allocator.read().unwrap_or_else(|p| p.into_inner());
    let open_cap = job.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let final_cap = job
        .max_tokens
        .or(alloc.max_tokens())
        .unwrap_or(DEFAULT_MAX_TOKENS);
    // The load this request will decode beside: the rows of the last shared pass, if any
    // request is decoding.
    let batch = engine.batch_stats();
    let background = if batch.decoding_sessions > 0 {
        batch.last_width
    } else {
        0
    };
    let streamed = Arc::new(AtomicBool::new(false));
    let observer = {
        let sink = job.sink.clone();
        let cancel = job.cancel.clone();
        let streamed = streamed.clone();
        let metrics = app.metrics.clone();
        let arrived = job.arrived;
        let last = Mutex::new(None::<Instant>);
        Observer::new(move |p| {
            let Some(sink) = &sink else { return };
            let alive = match p {
                Progress::Text(piece) => {
                    let now = Instant::now();
                    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                    match *last {
                        None => metrics.time_to_first_token((now - arrived).as_secs_f64()),
                        Some(t) => metrics.inter_token((now - t).as_secs_f64()),
                    }
                    *last = Some(now);
                    streamed.store(true, Ordering::Relaxed);
                    sink(0, piece)
                }
                // Nothing to send between steps of N > 1: an empty piece asks whether the
                // client is still there.
                Progress::Step { .. } => sink(usize::MAX, ""),
            };
            if !alive {
                cancel.store(true, Ordering::Relaxed);
            }
        })
    };
    let base = MethodConfig::new(Method::Greedy, final_cap)
        .beam_width(job.beam_width)
        .max_iters(job.max_iters)
        .params(job.params.clone())
        .seed(job.seed)
        .stop(job.stop.clone())
        .cancel(job.cancel.clone())
        .observer(observer);
    let t0 = Instant::now();
    match &job.plan {
        Plan::Samples(n) => {
            let cfg = base.method(Method::BestOfN).n(*n).max_tokens(open_cap);
            cfg.validate()
                .map_err(|m| ApiError::bad_request("invalid_value", m))?;
            let opts = SessionOptions {
                prefix_cache: true,
                ..cfg.session_options()
            };
            let mut session = engine.session(job.ids.plain.len(), *n, opts)?;
            let root = session.prefill(&job.ids.plain)?;
            let r = ttc_methods::run_prefilled(session, root, job.ids.plain.len(), &cfg, t0)?;
            if job.sink.is_none() || !streamed.load(Ordering::Relaxed) {
                app.metrics
                    .time_to_first_token(job.arrived.elapsed().as_secs_f64());
            }
            let choices = r
                .candidates
                .iter()
                .enumerate()
                .map(|(i, c)| choice(app, i, c, job.want_logprobs, false))
                .collect();
            Ok(Outcome {
                choices,
                usage: Usage {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.generated_tokens,
                    total_tokens: r.prompt_tokens + r.generated_tokens,
                    ttc: Some(json!({
                        "chosen": format!("sample@{n}"),
                        "prefill_tokens": r.prefill_tokens,
                        "latency_s": r.timing.total_s,
                        "tokens_generated": r.generated_tokens,
                        "load": {"background_width": background},
                    })),
                },
                config: format!("sample@{n}"),
            })
        }
        plan => {
            let (lambdas, target, max_latency, forced) = match plan {
                Plan::Auto {
                    lambdas,
                    target,
                    max_latency,
                } => (*lambdas, *target, *max_latency, None),
                Plan::Forced(c) => (Lambdas::DEFAULT, None, None, Some(*c)),
                Plan::Samples(_) => unreachable!("handled above"),
            };
            if let Some(c) = forced {
                c.method_config(&base)
                    .validate()
                    .map_err(|m| ApiError::bad_request("invalid_value", m))?;
            }
            let req = Request {
                lambdas,
                target,
                max_latency,
                forced,
                base,
                open_max_tokens: open_cap,
                background_width: background,
            };
            let (r, d) = route::answer(engine, &alloc, &job.ids, &req)?;
            if !streamed.load(Ordering::Relaxed) {
                app.metrics
                    .time_to_first_token(job.arrived.elapsed().as_secs_f64());
            }
            let chosen = r
                .candidates
                .get(r.chosen)
                .ok_or_else(|| ApiError::internal("the method returned no candidate"))?;
            let config = d.predicted.config.to_string();
            let p = &d.predicted;
            let ttc = json!({
                "chosen": config,
                "kind": d.kind.map(|k| json!({
                    "kind": k.label(),
                    "p_final_answer": k.p_final_answer,
                })),
                "answer": r.answer,
                "predicted": {
                    "accuracy": p.accuracy,
                    "tokens": p.tokens,
                    "latency_s": p.latency_s,
                },
                "latency_s": r.timing.total_s,
                "tokens_generated": r.generated_tokens,
                "prefill_tokens": r.prefill_tokens,
                "max_tokens": d.max_tokens,
                "candidates": r.candidates.iter().map(|c| json!({
                    "text": c.text,
                    "answer": c.answer,
                    "score": c.score,
                    "tokens": c.tokens,
                })).collect::<Vec<_>>(),
                "load": {"background_width": d.background_width},
            });
            let streamed_now = streamed.load(Ordering::Relaxed);
            Ok(Outcome {
                choices: vec![choice(app, 0, chosen, job.want_logprobs, streamed_now)],
                usage: Usage {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.generated_tokens,
                    total_tokens: r.prompt_tokens + r.generated_tokens,
                    ttc: Some(ttc),
                },
                config,
            })
        }
    }
}

fn choice(app: &App, index: usize, c: &Candidate, want_logprobs: bool, streamed: bool) -> Choice {
    let logprobs = want_logprobs.then(|| Logprobs {
        content: c
            .token_ids
            .iter()
            .zip(&c.logprobs)
            .map(|(&id, &logprob)| {
                let token = app.engine.tokenizer.decode(&[id], false);
                TokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                    top_logprobs: Vec::new(),
                }
            })
            .collect(),
    });
    Choice {
        index,
        text: c.text.clone(),
        finish_reason: finish_reason(c.finish),
        logprobs,
        streamed,
    }
}
