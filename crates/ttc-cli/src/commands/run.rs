//! `ttc-run [run] "PROMPT"`: answer one prompt, streaming, or as one JSON object.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use serde::Serialize;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{GenerateRequest, StopReason};

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

pub fn run(args: &RunArgs) -> Result<()> {
    let Some(prompt) = args.prompt.as_deref() else {
        bail!("no prompt given: ttc-run \"PROMPT\" (see ttc-run --help)");
    };
    let started = Instant::now();
    let mut engine = super::load_engine(&args.model)?;
    if let Some(ctx) = args.context {
        engine.set_context_limit(ctx)?;
    }
    let ids = if args.raw {
        engine.tokenizer.encode_prompt(prompt)?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", prompt));
        engine.encode_chat(&messages)?
    };
    let s = &args.sampling;
    let req = GenerateRequest {
        params: SamplingParams { temperature: s.temperature, top_k: s.top_k, top_p: s.top_p, min_p: s.min_p },
        seed: s.seed,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    let t0 = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let generation = engine.generate(&ids, &req, |piece| {
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
            seed: s.seed,
        };
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else {
        writeln!(stdout)?;
    }
    tracing::debug!(load_and_run_s = started.elapsed().as_secs_f64());
    Ok(())
}
