//! This machine's memory bandwidth, STREAM-style: the bound on single-stream decode, which
//! reads every weight once per token. Two kernels over buffers far larger than any cache,
//! split over `THREADS` threads like a decode step:
//! - `read`: a sum over the buffer (what a matmul at batch size 1 does with its weights);
//! - `copy`: STREAM's copy, counted as STREAM counts it (bytes read plus bytes written).
//!
//! Each figure is the best of 5 passes. With a GGUF's size it prints the decode rate that
//! bandwidth allows: a model of S bytes of weights decodes at most `read / S` tokens/s.
//! Reference: McCalpin's STREAM (`stream.c`), read, not copied.
//!
//! cargo run --release -p ttc-benches --bin memory-bandwidth -- [THREADS] [MODEL.gguf]

use std::time::Instant;

/// Per buffer: well above the last-level cache of the machines this runs on.
const BYTES: usize = 1 << 30;
const PASSES: usize = 5;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = match args.next().map(|a| a.parse()) {
        None => 2,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("memory-bandwidth: THREADS must be a positive integer");
            std::process::exit(2);
        }
    };
    let model = args.next();
    let words = BYTES / 8;
    // Filled, so that every page is backed before the passes are timed.
    let src: Vec<u64> = (0..words as u64).collect();
    let mut dst = vec![0u64; words];
    let per = words.div_ceil(threads);

    let mut read_best = 0f64;
    let mut checksum = 0u64;
    for _ in 0..PASSES {
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let parts: Vec<_> = src
                .chunks(per)
                .map(|c| s.spawn(move || sum_words(c)))
                .collect();
            parts
                .into_iter()
                .map(|p| p.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        read_best = read_best.max(BYTES as f64 / t.elapsed().as_secs_f64());
        checksum = checksum.wrapping_add(sum);
    }
    let mut copy_best = 0f64;
    for _ in 0..PASSES {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(per).zip(src.chunks(per)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        copy_best = copy_best.max(2.0 * BYTES as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box((checksum, &dst));
    println!(
        "threads: {threads}  buffer: {} MiB  best of {PASSES}",
        BYTES >> 20
    );
    println!("read: {:.1} GB/s", read_best / 1e9);
    println!("copy: {:.1} GB/s (read + write)", copy_best / 1e9);
    if let Some(path) = model {
        match std::fs::metadata(&path) {
            Ok(m) => println!(
                "{path}: {:.0} MB; reading it once per token allows at most {:.1} tokens/s",
                m.len() as f64 / 1e6,
                read_best / m.len() as f64
            ),
            Err(e) => {
                eprintln!("memory-bandwidth: cannot read {path}: {e}");
                std::process::exit(2);
            }
        }
    }
}

/// Eight independent lanes, so that the loop is bound by loads, not by one add chain.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for c in &mut chunks {
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(w);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(0u64, |a, &w| a.wrapping_add(w));
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}
