//! Prints the top next-token candidates of a chat prompt, after an optional forced prefix of
//! the answer: a tool for checking where two engines' greedy outputs diverge, and by how much.
//!
//! cargo run --release -p ttc-e2e --example top_logits -- "QUESTION" ["ANSWER PREFIX"]

use candle_core::DType;
use ttc_engine::chat_template::Message;

fn main() {
    let mut args = std::env::args().skip(1);
    let question = args
        .next()
        .expect("usage: top_logits QUESTION [ANSWER_PREFIX]");
    let prefix = args.next().unwrap_or_default();
    let e = ttc_e2e::engine();
    let mut ids = e.encode_chat(&[Message::new("user", question)]).unwrap();
    ids.extend(e.tokenizer.encode(&prefix, false).unwrap());
    let mut cache = ttc_engine::kv_cache::KvCache::new(
        e.config(),
        ids.len().div_ceil(16),
        16,
        e.model.device(),
    )
    .unwrap();
    let seq = cache.new_sequence();
    cache.reserve(seq, ids.len()).unwrap();
    let slots = cache.slots(seq, 0..ids.len()).unwrap();
    let entry = ttc_engine::models::BatchEntry {
        tokens: &ids,
        slots: &slots,
        want_output: true,
    };
    let out = e.model.forward_batch(&[entry], &cache).unwrap();
    let logits = out
        .logits
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    for &i in order.iter().take(5) {
        println!(
            "{:>8.4}  {:>6}  {:?}",
            logits[i],
            i,
            e.tokenizer.token_text(i as u32)
        );
    }
}
