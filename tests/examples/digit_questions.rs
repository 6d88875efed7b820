//! The methods on 50 single-digit sum and product questions ("What is 7 + 4?"), the report of
//! the test-time scaling issue: accuracy and mean latency of greedy, one sample, majority@4 and
//! majority@16 on the default model.
//!
//! cargo run --release -p ttc-e2e --example digit_questions [-- COUNT]

use ttc_engine::chat_template::Message;
use ttc_methods::{answer, Method, MethodConfig};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let e = ttc_e2e::engine();
    // Questions from a fixed LCG, so every run asks the same ones.
    let mut state = 12345u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let questions: Vec<(String, i64)> = (0..count)
        .map(|_| {
            let (a, b) = (next(9) as i64 + 1, next(9) as i64 + 1);
            if next(2) == 0 {
                (format!("What is {a} + {b}?"), a + b)
            } else {
                (format!("What is {a} * {b}?"), a * b)
            }
        })
        .collect();
    let configs: [(&str, Method, usize); 4] = [
        ("greedy", Method::Greedy, 1),
        ("one sample", Method::Majority, 1),
        ("majority@4", Method::Majority, 4),
        ("majority@16", Method::Majority, 16),
    ];
    println!("| method | accuracy | mean latency s | mean tokens |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, method, n) in configs {
        let (mut right, mut latency, mut tokens) = (0usize, 0f64, 0usize);
        for (i, (q, truth)) in questions.iter().enumerate() {
            let p = e
                .encode_chat(&[Message::new(
                    "user",
                    format!("{q}\n{}", answer::DEFAULT_INSTRUCTION),
                )])
                .unwrap();
            let cfg = MethodConfig::new(method, 48).n(n).seed(1000 + i as u64);
            let r = ttc_methods::run(e, &p, &cfg).unwrap();
            right += usize::from(r.answer.as_deref() == Some(truth.to_string().as_str()));
            latency += r.timing.total_s;
            tokens += r.generated_tokens;
        }
        let k = questions.len() as f64;
        println!(
            "| {name} | {:.2} ({right}/{}) | {:.2} | {:.1} |",
            right as f64 / k,
            questions.len(),
            latency / k,
            tokens as f64 / k
        );
    }
}
