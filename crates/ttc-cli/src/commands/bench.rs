//! `ttc-run bench`: prefill and decode throughput of one sequence on this machine, measured the
//! way `llama-bench -p P -n G` measures them (random prompt ids, fixed generation length), so
//! the two can be run side by side (benches/bench-vs-llama-cpp.sh).

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::GenerateRequest;

use crate::args::BenchArgs;

#[derive(Serialize)]
struct BenchRow {
    model: String,
    threads: usize,
    prompt_len: usize,
    gen_len: usize,
    reps: usize,
    prefill_tok_s: f64,
    prefill_tok_s_std: f64,
    decode_tok_s: f64,
    decode_tok_s_std: f64,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n.max(1.0);
    (mean, var.sqrt())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(args.prompt_len > 0 && args.gen_len > 0 && args.reps > 0, "--prompt-len, --gen-len and --reps must be positive");
    let engine = super::load_engine(&args.model)?;
    let vocab = engine.tokenizer.vocab_size() as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let req = GenerateRequest {
        params: SamplingParams { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0 },
        seed: 1,
        max_tokens: args.gen_len,
        stop: Vec::new(),
        ignore_eos: true,
    };
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    // One untimed warm-up run pages the weights in.
    for rep in 0..=args.reps {
        let prompt: Vec<u32> = std::iter::repeat_with(|| rng.random_range(0..vocab))
            .filter(|&t| !engine.tokenizer.is_special(t))
            .take(args.prompt_len)
            .collect();
        let g = engine.generate(&prompt, &req, |_| {})?;
        if rep > 0 {
            pp.push(prompt.len() as f64 / g.prefill_s);
            tg.push(g.tokens.len() as f64 / g.decode_s);
        }
    }
    let (pp_mean, pp_std) = mean_std(&pp);
    let (tg_mean, tg_std) = mean_std(&tg);
    let threads = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    });
    let row = BenchRow {
        model: engine.name.clone(),
        threads,
        prompt_len: args.prompt_len,
        gen_len: args.gen_len,
        reps: args.reps,
        prefill_tok_s: pp_mean,
        prefill_tok_s_std: pp_std,
        decode_tok_s: tg_mean,
        decode_tok_s_std: tg_std,
    };
    if args.json {
        println!("{}", serde_json::to_string(&row)?);
    } else {
        println!("| model | threads | test | t/s |");
        println!("| --- | ---: | ---: | ---: |");
        println!("| {} | {} | pp{} | {:.2} ± {:.2} |", row.model, threads, args.prompt_len, pp_mean, pp_std);
        println!("| {} | {} | tg{} | {:.2} ± {:.2} |", row.model, threads, args.gen_len, tg_mean, tg_std);
    }
    Ok(())
}
