//! Writes a dataset's questions as JSONL (`id`, `question`, `answer`), for clients that are not
//! ttc (benches/accuracy_vs_llama_server.py asks llama-server the same held-out questions).
//!
//! cargo run --release -p ttc-e2e --example write_dataset -- builtin:mixed test [LIMIT] > q.jsonl

use ttc_allocator::dataset::{self, Split};

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "builtin:mixed".into());
    let split: Split = args
        .next()
        .unwrap_or_else(|| "test".into())
        .parse()
        .expect("split: train, test or all");
    let limit: usize = args
        .next()
        .map_or(usize::MAX, |l| l.parse().expect("LIMIT"));
    let problems = dataset::load(&spec, split).expect("dataset");
    for p in problems.iter().take(limit) {
        println!(
            "{}",
            serde_json::json!({"id": p.id, "question": p.question, "answer": p.answer})
        );
    }
}
