//! The engine's one KV pool on the real model, shared by concurrent sessions: a chat turn
//! computes only what is new and its logits are a full prefill's; evicted blocks return the
//! pool to its baseline; sessions decoding at the same time share forward passes and compute
//! what each would alone.

use ttc_e2e::load_default_engine;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, GenerateRequest, SessionOptions};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap()
}

fn options(prefix_cache: bool) -> SessionOptions {
    SessionOptions {
        params: SamplingParams::greedy(),
        max_tokens: 24,
        prefix_cache,
        ..SessionOptions::default()
    }
}

/// The next-token logits after `prompt`, and the prompt tokens the prefill computed.
fn prefill_logits(e: &Engine, prompt: &[u32], prefix_cache: bool) -> (Vec<f32>, usize) {
    let mut s = e.session(prompt.len(), 1, options(prefix_cache)).unwrap();
    let seq = s.prefill(prompt).unwrap();
    let logits = s.logits(seq).unwrap().unwrap().to_vec();
    (logits, s.counters().prefill_tokens)
}

#[test]
fn a_third_chat_turn_computes_only_what_is_new_and_what_a_full_prefill_computes() {
    let e = load_default_engine();
    let users = [
        "Give me a name for a black cat.",
        "Why that name?",
        "Now one for a white cat.",
    ];
    let mut messages = Vec::new();
    let mut computed = Vec::new();
    for (turn, user) in users.iter().enumerate() {
        messages.push(Message::new("user", user.to_string()));
        let ids = e.encode_chat(&messages).unwrap();
        if turn == 2 {
            let (cached, computed_now) = prefill_logits(&e, &ids, true);
            let (full, all) = prefill_logits(&e, &ids, false);
            assert_eq!(all, ids.len());
            assert!(
                computed_now * 2 < ids.len(),
                "turn 3 computed {computed_now} of {} prompt tokens",
                ids.len()
            );
            let diff = max_diff(&cached, &full);
            assert!(diff < 1e-3, "cached and full prefill differ by {diff}");
            assert_eq!(argmax(&cached), argmax(&full));
            computed.push(computed_now);
            break;
        }
        let req = GenerateRequest {
            prefix_cache: true,
            ..GenerateRequest::greedy(24)
        };
        let g = e.generate(&ids, &req, |_| {}).unwrap();
        computed.push(g.prefill_tokens);
        messages.push(Message::new("assistant", g.text));
    }
    assert!(computed[1] < computed[0] + 24, "{computed:?}");
}

#[test]
fn without_the_prefix_cache_nothing_is_kept() {
    let e = load_default_engine();
    let ids = e
        .encode_chat(&[Message::new("user", "Say hello.".to_string())])
        .unwrap();
    let (_, computed) = prefill_logits(&e, &ids, false);
    assert_eq!(computed, ids.len());
    let st = e.kv_stats();
    assert_eq!((st.cached_blocks, st.in_use_blocks), (0, 0), "{st:?}");
    let (_, again) = prefill_logits(&e, &ids, false);
    assert_eq!(again, ids.len(), "no cache, no hit");
}

#[test]
fn the_prefix_cache_evicts_unused_blocks_and_returns_the_pool_to_its_baseline() {
    let mut e = load_default_engine();
    // Room for 40 blocks of 16 tokens: a few prompts' worth, so later ones evict earlier ones.
    let block_bytes = 16 * e.config().kv_bytes_per_token();
    e.set_kv_budget(40 * block_bytes).unwrap();
    let baseline = e.kv_stats();
    assert_eq!((baseline.in_use_blocks, baseline.capacity_blocks), (0, 0));
    let topics = [
        "rivers",
        "mountains",
        "deserts",
        "forests",
        "oceans",
        "cities",
    ];
    let mut kept = 0;
    for topic in topics {
        let ids = e
            .encode_chat(&[Message::new(
                "user",
                format!("Write a long and careful paragraph about {topic}, with three examples."),
            )])
            .unwrap();
        let req = GenerateRequest {
            prefix_cache: true,
            ..GenerateRequest::greedy(100)
        };
        e.generate(&ids, &req, |_| {}).unwrap();
        kept += (ids.len() + 100) / 16;
        let st = e.kv_stats();
        assert_eq!(
            st.live_blocks(),
            0,
            "{topic}: nothing live between requests"
        );
        assert!(st.capacity_blocks <= 40, "{st:?}");
    }
    let st = e.kv_stats();
    assert!(
        st.cached_blocks < kept,
        "blocks were evicted: {} cached of {kept} made",
        st.cached_blocks
    );
    // The first prompt's system-prompt blocks were evicted or kept, but never corrupted:
    // a prompt that hits the cache computes what a full prefill does.
    let ids = e
        .encode_chat(&[Message::new(
            "user",
            "Write a long and careful paragraph about cities, with three examples.".to_string(),
        )])
        .unwrap();
    let (cached, computed) = prefill_logits(&e, &ids, true);
    assert!(computed < ids.len(), "the last prompt is still cached");
    let (full, _) = prefill_logits(&e, &ids, false);
    assert!(max_diff(&cached, &full) < 1e-3);
    let cached_now = e.kv_stats().cached_blocks;
    assert!(cached_now > 0);
    assert_eq!(e.clear_prefix_cache(), cached_now);
    let after = e.kv_stats();
    assert_eq!(after.in_use_blocks, 0, "{after:?}");
    assert_eq!(after.free_blocks, after.capacity_blocks);
    assert_eq!(after.cached_blocks, 0);
}

#[test]
fn concurrent_sessions_decode_in_shared_passes_and_get_what_they_would_alone() {
    let e = load_default_engine();
    let prompts: Vec<Vec<u32>> = ["Describe a river.", "Describe a mountain.", "Count to ten."]
        .iter()
        .map(|q| {
            e.encode_chat(&[Message::new("user", q.to_string())])
                .unwrap()
        })
        .collect();
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let req = GenerateRequest {
                ignore_eos: true,
                ..GenerateRequest::greedy(32)
            };
            e.generate(p, &req, |_| {}).unwrap().tokens
        })
        .collect();
    assert_eq!(e.batch_stats().widest, 1, "one session alone decodes alone");
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                s.spawn(|| {
                    let req = GenerateRequest {
                        ignore_eos: true,
                        ..GenerateRequest::greedy(32)
                    };
                    e.generate(p, &req, |_| {}).unwrap().tokens
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
    let stats = e.batch_stats();
    assert!(stats.widest >= 2, "no pass was shared: {stats:?}");
    assert_eq!(stats.decoding_sessions, 0, "every session left");
    assert_eq!(e.kv_stats().in_use_blocks, 0);
}
