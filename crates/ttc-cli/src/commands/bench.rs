//! `ttc-run bench`: for each width, one prompt of random ids is prefilled once, forked into
//! `width` sequences, and each samples `gen_len` tokens (temperature 0.8, EOS ignored), the
//! way llama-batched-bench measures with a shared prompt (`-pps`). Two decode figures: `tg`
//! (tokens the user gets per second, sampling included) and `forward` (token rows per second
//! of the decode forward passes alone), which is what llama-bench `-n` and
//! llama-batched-bench count, so benches/bench-vs-llama-cpp.sh compares that one.
//!
//! `--suite` runs what a user wants to know about a machine: prefill speed against prompt
//! length, decode speed against width and context length, and each method's latency.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, SeqId, SessionOptions};
use ttc_methods::{Method, MethodConfig};

use crate::args::BenchArgs;

#[derive(Serialize, Clone)]
struct BenchRow {
    width: usize,
    prompt_len: usize,
    gen_len: usize,
    prefill_s: f64,
    prefill_tok_s: f64,
    decode_s: f64,
    /// Generated tokens per second, all sequences together, sampling included: what a user
    /// of `ttc-run` sees (the first token comes from the prefill's logits).
    decode_tok_s: f64,
    /// Token rows per second of the decode forward passes alone, sampling excluded: what
    /// llama-bench (`-n`) and llama-batched-bench (`speed_tg`) count.
    forward_tok_s: f64,
    /// One decode forward pass of the whole batch, sampling excluded.
    step_ms: f64,
    kv_bytes_peak: usize,
    kv_bytes_per_token: usize,
}

/// A row of the suite: one measurement of one kind.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SuiteRow {
    Prefill {
        prompt_len: usize,
        prefill_s: f64,
        prefill_tok_s: f64,
    },
    Decode {
        width: usize,
        context: usize,
        gen_len: usize,
        step_ms: f64,
        decode_tok_s: f64,
        kv_bytes_peak: usize,
    },
    Method {
        method: String,
        n: usize,
        beam_width: usize,
        latency_s: f64,
        tokens: usize,
        steps: usize,
        answer: Option<String>,
    },
}

fn random_prompt(engine: &Engine, len: usize, seed: u64) -> Result<Vec<u32>> {
    // Draw from the ordinary tokens only; a vocabulary without any is refused rather than
    // searched forever.
    let ordinary = engine.tokenizer.ordinary_ids();
    anyhow::ensure!(
        !ordinary.is_empty(),
        "the model's vocabulary has no ordinary token"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok((0..len)
        .map(|_| ordinary[rng.random_range(0..ordinary.len())])
        .collect())
}

/// Prefills `prompt` once, forks it into `width` sequences and decodes `gen_len` tokens each.
fn measure(engine: &Engine, prompt: &[u32], width: usize, gen_len: usize) -> Result<BenchRow> {
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let opts = SessionOptions {
        params,
        seed: 1,
        max_tokens: gen_len,
        stop: vec![],
        ignore_eos: true,
        prefix_cache: false,
    };
    let mut session = engine.session(prompt.len(), width, opts)?;
    let root = session.prefill(prompt)?;
    let seqs: Vec<SeqId> = if width == 1 {
        vec![root]
    } else {
        session.fork(root, width)?
    };
    if width > 1 {
        session.free(root);
    }
    loop {
        let live = session.live(&seqs);
        if live.is_empty() {
            break;
        }
        session.step(&live)?;
    }
    let c = session.counters();
    Ok(BenchRow {
        width,
        prompt_len: prompt.len(),
        gen_len,
        prefill_s: c.prefill_s,
        prefill_tok_s: c.prefill_tokens as f64 / c.prefill_s,
        decode_s: c.decode_s,
        decode_tok_s: c.decode_tokens as f64 / c.decode_s,
        forward_tok_s: c.decode_forward_tokens as f64 / c.decode_forward_s,
        step_ms: 1e3 * c.decode_forward_s / (c.decode_forward_tokens / width).max(1) as f64,
        kv_bytes_peak: session.kv_usage().peak_bytes(),
        kv_bytes_per_token: session.kv_usage().bytes_per_token,
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.prompt_len > 0 && args.gen_len > 0 && args.reps > 0,
        "--prompt-len, --gen-len and --reps must be positive"
    );
    anyhow::ensure!(
        !args.widths.is_empty() && args.widths.iter().all(|&w| w > 0),
        "--widths must be positive"
    );
    let mut engine = super::load_engine(&args.model)?;
    engine.model.set_cascade(!args.no_cascade);
    if args.suite {
        return suite(&engine, args);
    }
    let prompt = random_prompt(&engine, args.prompt_len, 0)?;
    // An untimed warm-up run pages the weights in.
    measure(&engine, &prompt, 1, 2)?;
    let mut rows = Vec::new();
    for &width in &args.widths {
        let reps: Vec<BenchRow> = (0..args.reps)
            .map(|_| measure(&engine, &prompt, width, args.gen_len))
            .collect::<Result<_>>()?;
        let mean = |f: fn(&BenchRow) -> f64| reps.iter().map(f).sum::<f64>() / reps.len() as f64;
        let row = BenchRow {
            prefill_s: mean(|r| r.prefill_s),
            prefill_tok_s: mean(|r| r.prefill_tok_s),
            decode_s: mean(|r| r.decode_s),
            decode_tok_s: mean(|r| r.decode_tok_s),
            forward_tok_s: mean(|r| r.forward_tok_s),
            step_ms: mean(|r| r.step_ms),
            ..reps[0].clone()
        };
        if !args.json {
            if rows.is_empty() {
                println!(
                    "model: {}  threads: {}",
                    engine.name,
                    super::threads_in_use()
                );
                println!("|  width |      P |      G | prefill_s |  pp t/s | decode_s |  tg t/s (all) | forward t/s | kv_bytes_peak | kv_bytes/token |");
                println!("| -----: | -----: | -----: | --------: | ------: | -------: | ------------: | ----------: | ------------: | -------------: |");
            }
            println!(
                "| {:>6} | {:>6} | {:>6} | {:>9.3} | {:>7.1} | {:>8.3} | {:>13.1} | {:>11.1} | {:>13} | {:>14} |",
                row.width, row.prompt_len, row.gen_len, row.prefill_s, row.prefill_tok_s, row.decode_s, row.decode_tok_s, row.forward_tok_s, row.kv_bytes_peak, row.kv_bytes_per_token
            );
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(())
}

fn suite(engine: &Engine, args: &BenchArgs) -> Result<()> {
    let ctx = engine.context_limit();
    let bar = indicatif::ProgressBar::new(3 + 2 * args.widths.len() as u64 + 4);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    measure(engine, &random_prompt(engine, 16, 0)?, 1, 2)?; // warm-up
    for p in [32usize, 128, 512].into_iter().filter(|&p| p < ctx) {
        bar.set_message(format!("prefill {p}"));
        let r = measure(engine, &random_prompt(engine, p, p as u64)?, 1, 1)?;
        rows.push(SuiteRow::Prefill {
            prompt_len: p,
            prefill_s: r.prefill_s,
            prefill_tok_s: r.prefill_tok_s,
        });
        bar.inc(1);
    }
    for context in [128usize, 512]
        .into_iter()
        .filter(|&c| c + args.gen_len < ctx)
    {
        let prompt = random_prompt(engine, context, context as u64)?;
        for &w in &args.widths {
            bar.set_message(format!("decode width {w} context {context}"));
            let r = measure(engine, &prompt, w, args.gen_len.min(32))?;
            rows.push(SuiteRow::Decode {
                width: w,
                context,
                gen_len: r.gen_len,
                step_ms: r.step_ms,
                decode_tok_s: r.decode_tok_s,
                kv_bytes_peak: r.kv_bytes_peak,
            });
            bar.inc(1);
        }
    }
    let question = format!(
        "What is 7 + 4?\n{}",
        ttc_methods::answer::DEFAULT_INSTRUCTION
    );
    let ids = engine.encode_chat(&[Message::new("user", question)])?;
    for (method, n, m) in [
        (Method::Greedy, 1, 1),
        (Method::Majority, 4, 1),
        (Method::Majority, 16, 1),
        (Method::Beam, 4, 2),
    ] {
        bar.set_message(format!("{} n={n}", method.name()));
        let cfg = MethodConfig::new(method, 64)
            .n(n)
            .beam_width(m)
            .max_iters(10)
            .seed(7);
        let r = ttc_methods::run(engine, &ids, &cfg)?;
        rows.push(SuiteRow::Method {
            method: method.name().into(),
            n,
            beam_width: m,
            latency_s: r.timing.total_s,
            tokens: r.generated_tokens,
            steps: r.steps,
            answer: r.answer,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "model: {}  device: {}  path: {}  threads: {}",
        engine.name,
        args.model.device.name(),
        engine.model.compute_path().describe(),
        super::threads_in_use()
    );
    println!("\nprefill\n| prompt tokens | seconds | tok/s |\n| ---: | ---: | ---: |");
    for r in &rows {
        if let SuiteRow::Prefill {
            prompt_len,
            prefill_s,
            prefill_tok_s,
        } = r
        {
            println!("| {prompt_len} | {prefill_s:.3} | {prefill_tok_s:.1} |");
        }
    }
    println!("\ndecode (one shared prompt of `context` tokens, forked)\n| width | context | ms/step | tok/s (all) | kv bytes peak |\n| ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        if let SuiteRow::Decode {
            width,
            context,
            step_ms,
            decode_tok_s,
            kv_bytes_peak,
            ..
        } = r
        {
            println!(
                "| {width} | {context} | {step_ms:.1} | {decode_tok_s:.1} | {kv_bytes_peak} |"
            );
        }
    }
    println!("\nmethods (\"What is 7 + 4?\", up to 64 tokens each)\n| method | n | m | latency s | tokens | steps | answer |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &rows {
        if let SuiteRow::Method {
            method,
            n,
            beam_width,
            latency_s,
            tokens,
            steps,
            answer,
        } = r
        {
            println!(
                "| {method} | {n} | {beam_width} | {latency_s:.2} | {tokens} | {steps} | {} |",
                answer.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}
