//! `ttc-run [run] "PROMPT"`: answer one prompt, streaming, or as one JSON object; with
//! `--method`, through a test-time scaling method.

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, GenerateRequest, StopReason};
use ttc_engine::reward_model::RewardModel;
use ttc_methods::{Method, MethodConfig, MethodResult, Scorer, ScorerSpec, Timing};

use crate::args::RunArgs;

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
    model: &'a str,
    prompt_tokens: usize,
    tokens_generated: usize,
    latency_s: f64,
    method: Method,
    n: usize,
    beam_width: usize,
    scorer: &'static str,
    answer: Option<&'a str>,
    candidates: Vec<CandidateOutput<'a>>,
    steps: usize,
    scorer_tokens: usize,
    timing: &'a Timing,
    seed: u64,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let Some(prompt) = args.prompt.as_deref() else {
        // No prompt: a chat on a terminal, one answer per line for piped input.
        return super::chat::run(&crate::args::ChatArgs { gen: args.gen.clone() });
    };
    let mut engine = super::load_engine(&args.gen.model)?;
    if let Some(ctx) = args.context {
        engine.set_context_limit(ctx)?;
    }
    let user = match (&args.gen.method.method, args.no_instruction) {
        (Some(_), false) => format!("{prompt}\n{}", args.instruction),
        _ => prompt.to_string(),
    };
    let ids = if args.raw {
        engine.tokenizer.encode_prompt(&user)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.gen.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", user));
        engine.encode_chat(&messages)?
    };
    let s = &args.gen.sampling;
    let params = SamplingParams { temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, min_p: s.min_p };
    match args.gen.method.method {
        Some(method) => run_method(args, &engine, &ids, method, params, prompt),
        None => run_plain(args, &engine, &ids, params),
    }
}

fn run_plain(args: &RunArgs, engine: &Engine, ids: &[u32], params: SamplingParams) -> Result<()> {
    let req = GenerateRequest {
        params,
        seed: args.gen.sampling.seed,
        max_tokens: args.gen.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        cancel: None,
    };
    let t0 = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let generation = engine.generate(ids, &req, |piece| {
        if !args.json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    let latency_s = t0.elapsed().as_secs_f64();
    if args.json {
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

/// The scorer `spec` names; a reward model is loaded on the generator's device.
pub fn scorer(spec: &ScorerSpec, engine: &Engine, question: &str) -> Result<Scorer> {
    Ok(match spec {
        ScorerSpec::Logprob => Scorer::Logprob,
        ScorerSpec::SelfCertainty => Scorer::SelfCertainty,
        ScorerSpec::Prm(dir) => Scorer::Prm {
            model: std::sync::Arc::new(RewardModel::load(dir, engine.model.device())?),
            question: question.into(),
        },
    })
}

fn run_method(args: &RunArgs, engine: &Engine, ids: &[u32], method: Method, params: SamplingParams, question: &str) -> Result<()> {
    let m = &args.gen.method;
    let cfg = MethodConfig {
        method,
        n: m.n,
        beam_width: m.beam_width,
        max_iters: m.max_iters,
        scorer: scorer(&m.scorer, engine, question)?,
        params,
        seed: args.gen.sampling.seed,
        max_tokens: args.gen.max_tokens,
        stop: args.stop.clone(),
        cancel: None,
    };
    let r: MethodResult = ttc_methods::run(engine, ids, &cfg)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let out = MethodOutput {
            text: &r.text,
            model: &engine.name,
            prompt_tokens: r.prompt_tokens,
            tokens_generated: r.generated_tokens,
            latency_s: r.timing.total_s,
            method: r.method,
            n: r.n,
            beam_width: r.beam_width,
            scorer: r.scorer,
            answer: r.answer.as_deref(),
            candidates: r
                .candidates
                .iter()
                .map(|c| CandidateOutput { text: &c.text, answer: c.answer.as_deref(), score: c.score, tokens: c.tokens })
                .collect(),
            steps: r.steps,
            scorer_tokens: r.scorer_tokens,
            timing: &r.timing,
            seed: args.gen.sampling.seed,
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout, "{}", r.text)?;
        eprintln!(
            "ttc: {} n={} answer={} tokens={} steps={} {:.2}s",
            r.method.name(),
            r.n,
            r.answer.as_deref().unwrap_or("-"),
            r.generated_tokens,
            r.steps,
            r.timing.total_s
        );
    }
    Ok(())
}
