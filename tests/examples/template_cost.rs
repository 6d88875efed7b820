//! What rendering the default model's chat template costs, now that a template from a model
//! file renders in a forked child (crates/ttc-engine/src/sandbox.rs): mean seconds per
//! `encode_chat` of a short conversation, through the sandbox and with ttc's built-in ChatML
//! (in process), in a process holding the loaded model.
//!
//! cargo run --release -p ttc-e2e --example template_cost [-- COUNT]

use std::time::Instant;

use ttc_engine::chat_template::{ChatTemplate, Message, CHATML_TEMPLATE};

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let engine = ttc_e2e::engine();
    let messages = [
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "What is 7 times 8?"),
    ];
    let t0 = Instant::now();
    for _ in 0..count {
        engine.encode_chat(&messages).expect("encode");
    }
    let sandboxed = t0.elapsed().as_secs_f64() / count as f64;
    let chatml = ChatTemplate::new(CHATML_TEMPLATE, "", "").expect("chatml");
    let t0 = Instant::now();
    for _ in 0..count {
        chatml.render(&messages, true).expect("render");
    }
    let in_process = t0.elapsed().as_secs_f64() / count as f64;
    println!(
        "encode_chat with the model's template (sandboxed): {:.3} ms; ChatML render in process: {:.3} ms ({count} each)",
        sandboxed * 1e3,
        in_process * 1e3
    );
}
