//! `ttc-run bench`: for each width, one prompt of random ids is prefilled once, forked into
//! `width` sequences, and each samples `gen_len` tokens (temperature 0.8, EOS ignored), the
//! way llama-batched-bench measures with a shared prompt (`-pps`). Width 1 is llama-bench's
//! `-p P -n G` measurement, so benches/bench-vs-llama-cpp.sh can run both side by side.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{SeqId, SessionOptions};

use crate::args::BenchArgs;

#[derive(Serialize, Clone)]
struct BenchRow {
    width: usize,
    prompt_len: usize,
    gen_len: usize,
    prefill_s: f64,
    prefill_tok_s: f64,
    decode_s: f64,
    /// Generated tokens per second, all sequences together.
    decode_tok_s: f64,
    kv_bytes_peak: usize,
    kv_bytes_per_token: usize,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    anyhow::ensure!(args.prompt_len > 0 && args.gen_len > 0 && args.reps > 0, "--prompt-len, --gen-len and --reps must be positive");
    anyhow::ensure!(!args.widths.is_empty() && args.widths.iter().all(|&w| w > 0), "--widths must be positive");
    let mut engine = super::load_engine(&args.model)?;
    engine.model.set_cascade(!args.no_cascade);
    let vocab = engine.tokenizer.vocab_size() as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = std::iter::repeat_with(|| rng.random_range(0..vocab))
        .filter(|&t| !engine.tokenizer.is_special(t))
        .take(args.prompt_len)
        .collect();
    let params = SamplingParams { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0 };
    let mut rows = Vec::new();
    // An untimed warm-up run pages the weights in.
    for (i, &width) in std::iter::once(&1).chain(&args.widths).enumerate() {
        let mut sum: Option<BenchRow> = None;
        let reps = if i == 0 { 1 } else { args.reps };
        for _ in 0..reps {
            let opts = SessionOptions { params: params.clone(), seed: 1, max_tokens: args.gen_len, stop: vec![], ignore_eos: true, kv_blocks: 0 };
            let mut session = engine.session(prompt.len(), width, opts)?;
            let root = session.prefill(&prompt)?;
            let seqs: Vec<SeqId> = if width == 1 { vec![root] } else { session.fork(root, width)? };
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
            let row = BenchRow {
                width,
                prompt_len: prompt.len(),
                gen_len: args.gen_len,
                prefill_s: c.prefill_s,
                prefill_tok_s: c.prefill_tokens as f64 / c.prefill_s,
                decode_s: c.decode_s,
                decode_tok_s: c.decode_tokens as f64 / c.decode_s,
                kv_bytes_peak: session.kv_cache().bytes_peak(),
                kv_bytes_per_token: session.kv_cache().bytes_per_token(),
            };
            sum = Some(match sum {
                None => row,
                Some(s) => BenchRow {
                    prefill_s: s.prefill_s + row.prefill_s,
                    prefill_tok_s: s.prefill_tok_s + row.prefill_tok_s,
                    decode_s: s.decode_s + row.decode_s,
                    decode_tok_s: s.decode_tok_s + row.decode_tok_s,
                    ..s
                },
            });
        }
        if i == 0 {
            continue;
        }
        let s = sum.expect("reps > 0");
        let r = reps as f64;
        let row = BenchRow { prefill_s: s.prefill_s / r, prefill_tok_s: s.prefill_tok_s / r, decode_s: s.decode_s / r, decode_tok_s: s.decode_tok_s / r, ..s };
        if !args.json {
            if rows.is_empty() {
                println!("model: {}  threads: {}", engine.name, super::threads_in_use());
                println!("|  width |      P |      G | prefill_s |  pp t/s | decode_s |  tg t/s (all) | kv_bytes_peak | kv_bytes/token |");
                println!("| -----: | -----: | -----: | --------: | ------: | -------: | ------------: | ------------: | -------------: |");
            }
            println!(
                "| {:>6} | {:>6} | {:>6} | {:>9.3} | {:>7.1} | {:>8.3} | {:>13.1} | {:>13} | {:>14} |",
                row.width, row.prompt_len, row.gen_len, row.prefill_s, row.prefill_tok_s, row.decode_s, row.decode_tok_s, row.kv_bytes_peak, row.kv_bytes_per_token
            );
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
    }
    Ok(())
}
