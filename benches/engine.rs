//! `cargo bench -p ttc-benches`: the measurements of `ttc-run bench`, with criterion's
//! statistics, on the default model (SmolLM2-135M Q4_1, fetched like the tests fetch it):
//! prefill of 128 tokens, and one batched decode step at widths 1, 4 and 16 after a shared
//! 128-token prompt.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, SeqId, Session, SessionOptions};

const PROMPT_LEN: usize = 128;

fn prompt(engine: &Engine) -> Vec<u32> {
    (0..PROMPT_LEN as u32)
        .map(|i| 1000 + (i * 37) % 20_000)
        .filter(|&t| !engine.tokenizer.is_special(t))
        .collect()
}

fn session(engine: &Engine, width: usize, max_tokens: usize) -> Session<'_> {
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
    };
    let opts = SessionOptions {
        params,
        seed: 1,
        max_tokens,
        stop: vec![],
        ignore_eos: true,
        prefix_cache: false,
    };
    engine.session(PROMPT_LEN, width, opts).expect("session")
}

fn prefill(c: &mut Criterion) {
    let engine = ttc_e2e::engine();
    let p = prompt(engine);
    let mut g = c.benchmark_group("prefill");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(p.len() as u64));
    g.bench_function("prompt_128", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut s = session(engine, 1, 1);
                let t = Instant::now();
                s.prefill(&p).expect("prefill");
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn decode_step(c: &mut Criterion) {
    let engine = ttc_e2e::engine();
    let p = prompt(engine);
    let mut g = c.benchmark_group("decode_step");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for width in [1usize, 4, 16] {
        g.throughput(Throughput::Elements(width as u64));
        g.bench_with_input(BenchmarkId::from_parameter(width), &width, |b, &width| {
            b.iter_custom(|iters| {
                // A fresh shared prompt per batch, so the context stays near 128 tokens.
                let mut s = session(engine, width, iters as usize + 1);
                let root = s.prefill(&p).expect("prefill");
                let seqs: Vec<SeqId> = if width == 1 {
                    vec![root]
                } else {
                    s.fork(root, width).expect("fork")
                };
                let t = Instant::now();
                for _ in 0..iters {
                    s.step(&seqs).expect("step");
                }
                t.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, prefill, decode_step);
criterion_main!(benches);
