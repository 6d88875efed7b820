//! `ttc-run chat`: a multi-turn chat in the terminal, like `ollama run` or `llama-cli`, that
//! shows what each answer cost. With stdin not a terminal, one prompt per line in and one
//! answer per line out.
//!
//! It starts in `auto`: each turn the allocator decides whether the prompt has a final answer
//! to vote on or is answered plainly, and the status line names what it chose and what that
//! cost. Each turn renders the whole conversation through the model's template, and the
//! engine's prefix cache holds the K/V of every full block of earlier turns, so only what is
//! new is computed. Ctrl-C while an answer is generated stops it and returns to the prompt;
//! Ctrl-D or /quit leaves with status 0.
//!
//! Piped, `ttc-run chat` reads one turn of one conversation per line; `ttc-run` with no
//! prompt reads one independent prompt per line.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use rustyline::error::ReadlineError;
use ttc_allocator::policy::{Allocator, Lambdas};
use ttc_allocator::route::{self, PromptIds, Request, DEFAULT_MAX_TOKENS};
use ttc_allocator::{AllocatorError, Config};
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, EngineError, GenerateRequest, Generation, StopReason};
use ttc_methods::{Method, MethodConfig};

use crate::args::{ChatArgs, MethodChoice};

const HELP: &str = "\
/method NAME      auto (the allocator chooses), greedy, best-of-n, majority, weighted, beam,
                  dvts, or plain (sampled, streamed)
/n N              samples or beams for the method
/lambda latency|tokens X   the allocator's prices (per second, per token)
/system TEXT      set the system prompt (and reset the conversation)
/reset            forget the conversation
/stats            what this session has spent
/help             this text
/quit             leave (or Ctrl-D); Ctrl-C stops an answer";

/// What one answer cost.
struct Turn {
    label: String,
    /// Under auto: what the allocator chose, and whether it took the prompt to have a final
    /// answer.
    chosen: Option<ChosenOutput>,
    /// The prompt as the model saw it (the templated conversation so far).
    prompt_tokens: usize,
    /// Prompt tokens computed this turn (the rest came from the prefix cache).
    prefill_tokens: usize,
    tokens: usize,
    seconds: f64,
    stopped: bool,
    /// Why a plain answer ended (methods end each candidate on its own).
    stop_reason: Option<StopReason>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct ChosenOutput {
    config: Config,
    kind: &'static str,
    p_final_answer: Option<f64>,
}

/// One piped turn with `--json`.
#[derive(serde::Serialize)]
struct TurnOutput<'a> {
    text: &'a str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen: Option<&'a ChosenOutput>,
    prompt_tokens: usize,
    prefill_tokens: usize,
    tokens_generated: usize,
    latency_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_reason: Option<StopReason>,
}

struct Chat<'e> {
    engine: &'e Engine,
    args: &'e ChatArgs,
    system: Option<String>,
    messages: Vec<Message>,
    method: MethodChoice,
    n: usize,
    /// Loaded when `auto` first answers (it may measure a latency profile).
    allocator: Option<Allocator>,
    /// The scorer's model, loaded once for the whole conversation.
    scorers: ttc_methods::ScorerSource,
    lambdas: Lambdas,
    cancel: Arc<AtomicBool>,
    totals: (usize, usize, f64), // turns, tokens, seconds
}

pub fn run(args: &ChatArgs) -> Result<()> {
    let mut engine = super::load_engine(&args.gen.model)?;
    if let Some(ctx) = args.prompt_opts.context {
        engine.set_context_limit(ctx)?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        // Outside line editing, Ctrl-C only asks the current answer to stop.
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))?;
    }
    let mut chat = Chat {
        engine: &engine,
        args,
        system: args.gen.system.clone(),
        messages: Vec::new(),
        method: args.gen.method.method.unwrap_or(MethodChoice::Auto),
        n: args.gen.method.samples,
        allocator: None,
        scorers: ttc_methods::ScorerSource::load(&args.gen.method.scorer, &engine)?,
        lambdas: Lambdas {
            tokens: args.gen.method.allocator.lambda_tokens,
            latency: args.gen.method.allocator.lambda_latency,
        },
        cancel,
        totals: (0, 0, 0.0),
    };
    if std::io::stdin().is_terminal() {
        chat.interactive()
    } else {
        chat.piped()
    }
}

impl Chat<'_> {
    fn interactive(&mut self) -> Result<()> {
        let mut editor = rustyline::DefaultEditor::new()?;
        let history = ttc_engine::download::cache_dir().join("chat_history.txt");
        let _ = std::fs::create_dir_all(history.parent().expect("cache dir"));
        let _ = editor.load_history(&history);
        println!(
            "ttc chat with {} ({}). /help for commands, Ctrl-D to leave.",
            self.engine.name,
            self.method_label()
        );
        loop {
            match editor.readline(">>> ") {
                Ok(line) => {
                    let line = line.trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    let _ = editor.add_history_entry(line.as_str());
                    if let Some(cmd) = line.strip_prefix('/') {
                        if !self.command(cmd) {
                            break;
                        }
                        continue;
                    }
                    match self.answer(&line, true) {
                        Ok(turn) => {
                            let rate = turn.tokens as f64 / turn.seconds.max(1e-9);
                            let stopped = if turn.stopped { " | stopped" } else { "" };
                            println!(
                                "\x1b[2m[{} | {} tokens | {:.2} s | {:.1} tok/s | prefill {} of {}{}]\x1b[0m",
                                turn.label,
                                turn.tokens,
                                turn.seconds,
                                rate,
                                turn.prefill_tokens,
                                turn.prompt_tokens,
                                stopped
                            );
                        }
                        Err(e) => println!("error: {e}"),
                    }
                }
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = editor.save_history(&history);
        Ok(())
    }

    /// One prompt per input line, one answer per output line (newlines inside become spaces).
    fn piped(&mut self) -> Result<()> {
        let stdin = std::io::stdin();
        let mut any = false;
        for line in stdin.lock().lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            any = true;
            if self.args.independent_lines {
                self.messages.clear();
            }
            let turn = self.answer(line.trim(), false)?;
            let text = self
                .messages
                .last()
                .map(|m| m.content.as_str())
                .unwrap_or_default();
            if self.args.prompt_opts.json {
                let out = TurnOutput {
                    text,
                    method: &turn.label,
                    chosen: turn.chosen.as_ref(),
                    prompt_tokens: turn.prompt_tokens,
                    prefill_tokens: turn.prefill_tokens,
                    tokens_generated: turn.tokens,
                    latency_s: turn.seconds,
                    stop_reason: turn.stop_reason,
                };
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!("{}", text.replace(['\n', '\r'], " ").trim());
            }
            std::io::stdout().flush()?;
        }
        anyhow::ensure!(
            any,
            "no prompt given: pass PROMPT, pipe prompts on stdin, or run in a terminal to chat"
        );
        Ok(())
    }

    fn method_label(&self) -> String {
        match self.method {
            MethodChoice::Fixed(m) if m != Method::Greedy => format!("{} n={}", m.name(), self.n),
            MethodChoice::Fixed(m) => m.name().to_string(),
            MethodChoice::Plain => "plain".to_string(),
            MethodChoice::Auto => format!(
                "auto, lambda_latency={} lambda_tokens={}",
                self.lambdas.latency, self.lambdas.tokens
            ),
        }
    }

    /// The conversation with `user` as its next turn, with `instruction` appended to it (the
    /// text kept in the history has none). With `--raw`, the prompt alone, untemplated.
    fn prompt_ids(&self, user: &str, instruction: Option<&str>) -> Result<Vec<u32>> {
        let content = ttc_allocator::prompt::user_message(user, instruction);
        if self.args.prompt_opts.raw {
            return Ok(self.engine.tokenizer.encode_prompt(&content)?);
        }
        let mut messages = Vec::new();
        if let Some(s) = &self.system {
            messages.push(Message::new("system", s.clone()));
        }
        messages.extend(self.messages.iter().cloned());
        messages.push(Message::new("user", content));
        Ok(self.engine.encode_chat(&messages)?)
    }

    fn params(&self) -> SamplingParams {
        self.args.gen.sampling.params()
    }

    /// Answers `user` in the conversation; streams (or shows progress) when `show`.
    fn answer(&mut self, user: &str, show: bool) -> Result<Turn> {
        self.cancel.store(false, Ordering::Relaxed);
        let plain = self.prompt_ids(user, None)?;
        let t0 = Instant::now();
        let mut label = self.method_label();
        let mut stop_reason = None;
        let mut chosen = None;
        let (prompt_tokens, prefill_tokens, text, tokens, stopped) = match self.method {
            MethodChoice::Plain => {
                let (g, reason) = self.stream(&plain, show)?;
                stop_reason = Some(reason);
                (
                    plain.len(),
                    g.prefill_tokens,
                    g.text,
                    g.tokens.len(),
                    reason == StopReason::Cancelled,
                )
            }
            choice => {
                if self.allocator.is_none() {
                    self.allocator = Some(
                        super::load_allocator(
                            self.engine,
                            self.args.gen.method.allocator.probe.as_deref(),
                        )?
                        .0,
                    );
                }
                let alloc = self.allocator.as_ref().expect("loaded above");
                let ids = PromptIds {
                    instructed: self.prompt_ids(user, self.args.prompt_opts.instruction())?,
                    plain,
                };
                let forced = match choice {
                    MethodChoice::Fixed(m) => Some(Config::for_method(
                        m,
                        self.n,
                        self.args.gen.method.beam_width,
                        self.args.gen.method.max_iters,
                    )),
                    _ => None,
                };
                let scorer = self.scorers.for_question(self.engine, user)?;
                let streamed = Arc::new(AtomicBool::new(false));
                let base = MethodConfig::new(
                    Method::Greedy,
                    self.args
                        .gen
                        .max_tokens
                        .or(alloc.max_tokens())
                        .unwrap_or(DEFAULT_MAX_TOKENS),
                )
                .beam_width(self.args.gen.method.beam_width)
                .max_iters(self.args.gen.method.max_iters)
                .scorer(scorer)
                .params(self.params())
                .seed(self.args.gen.sampling.seed + self.totals.0 as u64)
                .stop(self.args.prompt_opts.stop.clone())
                .cancel(self.cancel.clone())
                .observer(show.then(|| super::progress::observer(true, streamed.clone())));
                let req = Request {
                    lambdas: self.lambdas,
                    target: None,
                    max_latency: None,
                    forced,
                    base,
                    open_max_tokens: self.args.gen.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                    background_width: 0,
                };
                let result = route::answer(self.engine, alloc, &ids, &req);
                super::progress::clear();
                match result {
                    Ok((r, d)) => {
                        if let Some(k) = d.kind {
                            label = format!("auto: {} -> {}", k.label(), d.predicted.config);
                            chosen = Some(ChosenOutput {
                                config: d.predicted.config,
                                kind: k.label(),
                                p_final_answer: k.p_final_answer,
                            });
                        }
                        if show {
                            if streamed.load(Ordering::Relaxed) {
                                println!();
                            } else {
                                println!("{}", r.text);
                            }
                        }
                        stop_reason = r.candidates.get(r.chosen).map(|c| c.finish);
                        (
                            r.prompt_tokens,
                            r.prefill_tokens,
                            r.text,
                            r.generated_tokens,
                            false,
                        )
                    }
                    Err(AllocatorError::Engine(EngineError::Cancelled)) => {
                        if show && streamed.load(Ordering::Relaxed) {
                            println!();
                        }
                        (ids.instructed.len(), 0, String::new(), 0, true)
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        if !stopped {
            self.messages.push(Message::new("user", user));
            self.messages.push(Message::new("assistant", text));
        }
        self.totals = (
            self.totals.0 + 1,
            self.totals.1 + tokens,
            self.totals.2 + seconds,
        );
        Ok(Turn {
            label,
            chosen,
            prompt_tokens,
            prefill_tokens,
            tokens,
            seconds,
            stopped,
            stop_reason,
        })
    }

    /// Plain sampling, streamed token by token; Ctrl-C stops it.
    fn stream(&self, ids: &[u32], show: bool) -> Result<(Generation, StopReason)> {
        let req = GenerateRequest {
            params: self.params(),
            seed: self.args.gen.sampling.seed + self.totals.0 as u64,
            max_tokens: self.args.gen.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            stop: self.args.prompt_opts.stop.clone(),
            ignore_eos: self.args.prompt_opts.ignore_eos,
            cancel: Some(self.cancel.clone()),
            prefix_cache: true,
        };
        let mut out = std::io::stdout();
        let g = self.engine.generate(ids, &req, |piece| {
            if show {
                let _ = out.write_all(piece.as_bytes());
                let _ = out.flush();
            }
        })?;
        if show {
            println!();
        }
        let reason = g.stop_reason;
        Ok((g, reason))
    }

    /// Runs a slash command; false to quit.
    fn command(&mut self, cmd: &str) -> bool {
        let (name, arg) = cmd
            .split_once(' ')
            .map(|(a, b)| (a, b.trim()))
            .unwrap_or((cmd, ""));
        match name {
            "quit" | "exit" | "bye" => return false,
            "help" => println!("{HELP}"),
            "reset" => {
                self.messages.clear();
                println!("conversation cleared");
            }
            "system" => {
                self.system = (!arg.is_empty()).then(|| arg.to_string());
                self.messages.clear();
                println!("system prompt set; conversation cleared");
            }
            "method" => {
                match (if arg.is_empty() { "plain" } else { arg }).parse::<MethodChoice>() {
                    Ok(m) => {
                        self.method = m;
                        println!("method: {}", self.method_label());
                    }
                    Err(e) => println!("error: {e}"),
                }
            }
            "n" => match arg.parse::<usize>() {
                Ok(n) if n > 0 => {
                    self.n = n;
                    println!("n = {n}");
                }
                _ => println!("error: /n takes a positive number"),
            },
            "lambda" => {
                let parsed = arg.split_once(' ').and_then(|(k, v)| {
                    Some((
                        k,
                        v.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|x| x.is_finite() && *x >= 0.0)?,
                    ))
                });
                match parsed {
                    Some(("latency", x)) => self.lambdas.latency = x,
                    Some(("tokens", x)) => self.lambdas.tokens = x,
                    _ => {
                        println!("error: /lambda latency X or /lambda tokens X, with X >= 0");
                        return true;
                    }
                }
                println!(
                    "lambda_latency = {}, lambda_tokens = {} (used by /method auto)",
                    self.lambdas.latency, self.lambdas.tokens
                );
            }
            "stats" => {
                let (turns, tokens, secs) = self.totals;
                println!(
                    "{turns} answers, {tokens} tokens generated, {secs:.2} s, {:.1} tok/s; {} messages in the conversation",
                    tokens as f64 / secs.max(1e-9),
                    self.messages.len()
                );
            }
            other => println!("error: unknown command /{other} (/help lists them)"),
        }
        true
    }
}
