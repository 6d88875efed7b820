//! `ttc-run [run] "PROMPT"`: answer one prompt. By default the allocator chooses the
//! test-time scaling configuration for it (`--method auto`); `--method plain` streams one
//! completion; a named method runs as given. Text, or one JSON object with `--json`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use ttc_allocator::policy::{Lambdas, Prediction, Target};
use ttc_allocator::prompt_kind::KindDecision;
use ttc_allocator::route::{self, PromptIds, Request, DEFAULT_MAX_TOKENS};
use ttc_allocator::{prompt, Config};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, GenerateRequest, StopReason};
use ttc_methods::{Method, MethodConfig, Scorer, Timing};

use crate::args::{MethodChoice, RunArgs};

#[derive(Serialize)]
struct RunOutput<'a> {
    text: &'a str,
    model: &'a str,
    prompt_tokens: usize,
    tokens_generated: usize,
    latency_s: f64,
    prefill_s: f64,
    decode_s: f64,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    stop_reason: StopReason,
    seed: u64,
}

#[derive(Serialize)]
struct CandidateOutput<'a> {
    text: &'a str,
    answer: Option<&'a str>,
    score: f32,
    tokens: usize,
}

#[derive(Serialize)]
struct MethodOutput<'a> {
    text: &'a str,
    /// Why the chosen candidate ended.
    stop_reason: StopReason,
    /// The cap it ran with.
    max_tokens: usize,
    model: &'a str,
    prompt_tokens: usize,
    /// Prompt tokens computed (both forms of the prompt, less what the prefix cache held).
    prefill_tokens: usize,
    tokens_generated: usize,
    latency_s: f64,
    method: Method,
    n: usize,
    beam_width: usize,
    scorer: &'static str,
    answer: Option<&'a str>,
    candidates: Vec<CandidateOutput<'a>>,
    steps: usize,
    /// Samples a decided adaptive vote cancelled (majority-adaptive).
    #[serde(skip_serializing_if = "is_zero")]
    cancelled: usize,
    scorer_tokens: usize,
    timing: &'a Timing,
    seed: u64,
    /// What the allocator predicted for the configuration that ran.
    predicted: Predicted,
    /// Auto runs: what was chosen and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen: Option<Chosen>,
    /// With --explain: every configuration considered.
    #[serde(skip_serializing_if = "Option::is_none")]
    menu: Option<Vec<MenuRow>>,
}

#[derive(Serialize)]
struct Predicted {
    accuracy: Option<f64>,
    tokens: f64,
    latency_s: f64,
}

impl From<&Prediction> for Predicted {
    fn from(p: &Prediction) -> Self {
        Self {
            accuracy: p.accuracy,
            tokens: p.tokens,
            latency_s: p.latency_s,
        }
    }
}

#[derive(Serialize)]
struct Chosen {
    /// Whether the prompt was taken to have a final answer, and how sure the head was.
    kind: Option<KindOutput>,
    config: Config,
    utility: f64,
    lambda_tokens: f64,
    lambda_latency: f64,
    /// True when no probe could predict accuracy and the fallback rule chose.
    fallback: bool,
    /// Temperature 0: only one-sequence configurations were on the menu.
    greedy_sampling: bool,
    decision_ms: f64,
    probe: Option<String>,
}

#[derive(Serialize)]
struct KindOutput {
    kind: &'static str,
    p_final_answer: Option<f64>,
    confidence: Option<f64>,
}

impl From<KindDecision> for KindOutput {
    fn from(k: KindDecision) -> Self {
        Self {
            kind: k.label(),
            p_final_answer: k.p_final_answer,
            confidence: k.confidence(),
        }
    }
}

#[derive(Serialize)]
struct MenuRow {
    config: Config,
    accuracy: Option<f64>,
    tokens: f64,
    latency_s: f64,
    latency_p90_s: f64,
    utility: f64,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let Some(prompt) = args.prompt.as_deref() else {
        anyhow::bail!("no prompt given: pass PROMPT, or run `ttc-run chat`");
    };
    args.gen
        .method
        .allocator
        .validate()
        .map_err(anyhow::Error::msg)?;
    let mut engine = super::load_engine(&args.gen.model)?;
    if let Some(ctx) = args.prompt_opts.context {
        engine.set_context_limit(ctx)?;
    }
    let s = &args.gen.sampling;
    let params = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
    };
    // Bad sampling settings are refused before anything is measured or run.
    params.validate().map_err(anyhow::Error::msg)?;
    match args.gen.method.method.unwrap_or(MethodChoice::Auto) {
        MethodChoice::Plain => {
            let ids = encode(args, &engine, prompt, None)?;
            run_plain(args, &engine, &ids, params)
        }
        choice => run_allocated(args, &engine, prompt, choice, params),
    }
}

/// The prompt's ids: through the chat template (with the system prompt) unless --raw.
fn encode(
    args: &RunArgs,
    engine: &Engine,
    prompt: &str,
    instruction: Option<&str>,
) -> Result<Vec<u32>> {
    Ok(if args.prompt_opts.raw {
        engine
            .tokenizer
            .encode_prompt(&prompt::user_message(prompt, instruction))?
    } else {
        prompt::encode(engine, prompt, instruction, args.gen.system.as_deref())?
    })
}

fn run_allocated(
    args: &RunArgs,
    engine: &Engine,
    prompt: &str,
    choice: MethodChoice,
    params: SamplingParams,
) -> Result<()> {
    let a = &args.gen.method.allocator;
    let ids = PromptIds {
        plain: encode(args, engine, prompt, None)?,
        instructed: encode(args, engine, prompt, args.prompt_opts.instruction())?,
    };
    // A prompt over the context is refused before a latency profile is measured for nothing.
    if ids.instructed.len().max(ids.plain.len()) >= engine.context_limit() {
        return Err(ttc_engine::EngineError::PromptTooLong {
            prompt_tokens: ids.instructed.len().max(ids.plain.len()),
            context: engine.context_limit(),
        }
        .into());
    }
    let m = &args.gen.method;
    let forced = match choice {
        MethodChoice::Fixed(method) => Some(Config::for_method(
            method,
            m.samples,
            m.beam_width,
            m.max_iters,
        )),
        _ => None,
    };
    let streamed = Arc::new(AtomicBool::new(false));
    let mut base = MethodConfig::new(Method::Greedy, args.gen.max_tokens.unwrap_or(1))
        .max_iters(m.max_iters)
        .scorer(Scorer::from_spec(&m.scorer, engine, prompt)?)
        .params(params)
        .seed(args.gen.sampling.seed)
        .stop(args.prompt_opts.stop.clone())
        .observer(super::progress::observer(
            !args.prompt_opts.json,
            streamed.clone(),
        ));
    if let Some(c) = forced {
        c.method_config(&base)
            .validate()
            .map_err(anyhow::Error::msg)?;
    }
    let (mut alloc, sources) = super::load_allocator(engine, a.probe.as_deref())?;
    base.max_tokens = args
        .gen
        .max_tokens
        .or(alloc.max_tokens())
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let target = a
        .target_latency
        .map(Target::Latency)
        .or(a.target_tokens.map(Target::Tokens));
    let req = Request {
        lambdas: Lambdas {
            tokens: a.lambda_tokens,
            latency: a.lambda_latency,
        },
        target,
        max_latency: a.max_latency,
        forced,
        base,
        open_max_tokens: args.gen.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        background_width: 0,
    };
    let (r, d) = route::answer(engine, &alloc, &ids, &req)?;
    super::progress::clear();
    alloc
        .profile
        .observe(&route::observed_work(&r), route::generation_s(&r));
    if let Err(e) = alloc.save_profile() {
        eprintln!("ttc: could not save the refined latency profile: {e}");
    }
    if alloc.probe.is_none() && !d.forced {
        eprintln!(
            "ttc: no probe for {}: auto answers plainly (`ttc-run calibrate` and `ttc-run train-kind` build one)",
            engine.name
        );
    } else if d.fallback {
        eprintln!(
            "ttc: no accuracy probe for {}: auto runs {} (`ttc-run calibrate` builds one)",
            engine.name, d.predicted.config
        );
    }
    let stop_reason = r
        .candidates
        .get(r.chosen)
        .map_or(StopReason::MaxTokens, |c| c.finish);
    let menu: Vec<MenuRow> = d
        .menu
        .iter()
        .map(|p| MenuRow {
            config: p.config,
            accuracy: p.accuracy,
            tokens: p.tokens,
            latency_s: p.latency_s,
            latency_p90_s: p.latency_p90_s,
            utility: p.utility(d.lambdas),
        })
        .collect();
    let mut stdout = std::io::stdout().lock();
    if args.prompt_opts.json {
        let out = MethodOutput {
            text: &r.text,
            stop_reason,
            max_tokens: d.max_tokens,
            model: &engine.name,
            prompt_tokens: r.prompt_tokens,
            prefill_tokens: r.prefill_tokens,
            tokens_generated: r.generated_tokens,
            cancelled: r.cancelled,
            latency_s: r.timing.total_s,
            method: r.method,
            n: r.n,
            beam_width: r.beam_width,
            scorer: r.scorer,
            answer: r.answer.as_deref(),
            candidates: r
                .candidates
                .iter()
                .map(|c| CandidateOutput {
                    text: &c.text,
                    answer: c.answer.as_deref(),
                    score: c.score,
                    tokens: c.tokens,
                })
                .collect(),
            steps: r.steps,
            scorer_tokens: r.scorer_tokens,
            timing: &r.timing,
            seed: args.gen.sampling.seed,
            predicted: Predicted::from(&d.predicted),
            chosen: (!d.forced).then(|| Chosen {
                kind: d.kind.map(KindOutput::from),
                config: d.predicted.config,
                utility: d.predicted.utility(d.lambdas),
                lambda_tokens: d.lambdas.tokens,
                lambda_latency: d.lambdas.latency,
                fallback: d.fallback,
                greedy_sampling: d.greedy_sampling,
                decision_ms: d.decision_s * 1e3,
                probe: sources.probe.clone(),
            }),
            menu: a.explain.then_some(menu),
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
        return Ok(());
    }
    if a.explain {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "ttc: lambda_tokens={} lambda_latency={} probe={}",
            d.lambdas.tokens,
            d.lambdas.latency,
            sources.probe.as_deref().unwrap_or("none")
        )?;
        match d.kind {
            Some(k) => writeln!(
                err,
                "  prompt kind: {} ({}), so {}",
                k.label(),
                k.p_final_answer
                    .map(|p| format!("P(final answer)={p:.3}"))
                    .unwrap_or_else(|| "no kind head in the probe".into()),
                if k.final_answer {
                    "test-time scaling with the answer-format instruction"
                } else {
                    "a plain answer to the prompt as typed, no instruction"
                }
            )?,
            None => writeln!(err, "  forced: {}", d.predicted.config)?,
        }
        if d.greedy_sampling {
            writeln!(
                err,
                "  temperature 0: every sample would be the greedy answer, so only one-sequence configurations run"
            )?;
        }
        writeln!(
            err,
            "  {:<22} {:>10} {:>7} {:>9} {:>9} {:>9}",
            "config", "P(correct)", "tokens", "latency_s", "p90_s", "utility"
        )?;
        for row in &menu {
            let mark = if row.config == d.predicted.config {
                " <- chosen"
            } else {
                ""
            };
            let acc = row
                .accuracy
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "-".into());
            writeln!(
                err,
                "  {:<22} {:>10} {:>7.0} {:>9.2} {:>9.2} {:>9.4}{mark}",
                row.config.to_string(),
                acc,
                row.tokens,
                row.latency_s,
                row.latency_p90_s,
                row.utility
            )?;
        }
        writeln!(
            err,
            "  decision took {:.3} ms after the prefill",
            d.decision_s * 1e3
        )?;
    }
    if streamed.load(Ordering::Relaxed) {
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", r.text)?;
    }
    if stop_reason == StopReason::MaxTokens {
        eprintln!(
            "ttc: the answer stopped at the {}-token cap{} (--max-tokens raises it)",
            d.max_tokens,
            if args.gen.max_tokens.is_none() && d.kind.is_some_and(|k| k.final_answer) {
                " the probe was calibrated with"
            } else {
                ""
            }
        );
    }
    let p = &d.predicted;
    // An open-ended answer has no final answer to report.
    let answer = if d.kind.is_some_and(|k| !k.final_answer) {
        String::new()
    } else {
        format!(" answer={}", r.answer.as_deref().unwrap_or("-"))
    };
    eprintln!(
        "ttc: {}{}{answer} tokens={} steps={} {:.2}s (predicted: P={} tokens={:.0} {:.2}s)",
        d.kind
            .map(|k| format!("{} -> ", k.label()))
            .unwrap_or_default(),
        p.config,
        r.generated_tokens,
        r.steps,
        r.timing.total_s,
        p.accuracy
            .map(|a| format!("{a:.2}"))
            .unwrap_or_else(|| "?".into()),
        p.tokens,
        p.latency_s
    );
    Ok(())
}

fn run_plain(args: &RunArgs, engine: &Engine, ids: &[u32], params: SamplingParams) -> Result<()> {
    let req = GenerateRequest {
        params,
        seed: args.gen.sampling.seed,
        max_tokens: args.gen.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop: args.prompt_opts.stop.clone(),
        ignore_eos: args.prompt_opts.ignore_eos,
        cancel: None,
        prefix_cache: false,
    };
    let t0 = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let generation = engine.generate(ids, &req, |piece| {
        if !args.prompt_opts.json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    let latency_s = t0.elapsed().as_secs_f64();
    if args.prompt_opts.json {
        let n = generation.tokens.len();
        let out = RunOutput {
            text: &generation.text,
            model: &engine.name,
            prompt_tokens: generation.prompt_tokens,
            tokens_generated: n,
            latency_s,
            prefill_s: generation.prefill_s,
            decode_s: generation.decode_s,
            prefill_tok_s: generation.prompt_tokens as f64 / generation.prefill_s.max(1e-9),
            decode_tok_s: n as f64 / generation.decode_s.max(1e-9),
            stop_reason: generation.stop_reason,
            seed: args.gen.sampling.seed,
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}
