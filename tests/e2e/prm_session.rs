//! Incremental reward-model scoring ([`PrmSession`]) against scoring from scratch, on a tiny
//! random Qwen2 PRM the tests write: the same rewards, and only new steps computed.

use std::sync::Arc;

use candle_core::Device;
use ttc_e2e::write_tiny_prm;
use ttc_engine::reward_model::RewardModel;

fn prm() -> Arc<RewardModel> {
    static PRM: std::sync::OnceLock<Arc<RewardModel>> = std::sync::OnceLock::new();
    PRM.get_or_init(|| {
        let dir = write_tiny_prm("prm-session", true);
        Arc::new(RewardModel::load(&dir, &Device::Cpu).unwrap())
    })
    .clone()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-4, "{a:?} vs {b:?}");
    }
}

/// Beam-like use: candidates that extend scored ones by a step, siblings, and a candidate
/// that shares nothing past the question.
#[test]
fn incremental_scores_equal_scores_from_scratch_and_compute_only_new_steps() {
    let m = prm();
    let q = "What is 7 + 4?";
    let mut s = m.session(q, 1 << 20).unwrap();
    let plan: [&[&str]; 5] = [
        &["First, add 7 and 4."],
        &["First, add 7 and 4.", "7 + 4 = 11."],
        &["First, add 7 and 4.", "7 + 4 = 12."],
        &["First, add 7 and 4.", "7 + 4 = 11.", "The answer is 11."],
        &["Count up from 7.", "8, 9, 10, 11."],
    ];
    for steps in plan {
        let scratch = m.score_steps(q, steps).unwrap();
        let before = s.blocks_in_use();
        let got = s.score(steps).unwrap();
        assert_close(&got.rewards, &scratch.rewards);
        // A session never recomputes the question, nor a step prefix it has scored.
        assert!(
            got.tokens < scratch.tokens - s.prefix_tokens() + 1,
            "{} of {}",
            got.tokens,
            scratch.tokens
        );
        assert!(s.blocks_in_use() >= before);
    }
    // Scoring a candidate again costs nothing.
    let again = s.score(plan[3]).unwrap();
    assert_eq!(again.tokens, 0);
    assert_close(&again.rewards, &m.score_steps(q, plan[3]).unwrap().rewards);
}

/// With room for little more than the question, old prefixes are evicted to make room, the
/// rewards are still those computed from scratch, and what cannot fit at all is an error.
#[test]
fn a_full_session_cache_evicts_old_prefixes_and_stays_right() {
    let m = prm();
    let q = "What is 2 + 2?";
    // The question's blocks and two more.
    let mut s = m.session(q, 1).unwrap();
    let blocks = s.blocks_in_use() + 2;
    for i in 0..8 {
        let step = format!("Try {i}.");
        let got = s.score(&[step.as_str()]).unwrap();
        assert_close(
            &got.rewards,
            &m.score_steps(q, &[step.as_str()]).unwrap().rewards,
        );
        assert!(
            s.blocks_in_use() <= blocks,
            "{} of {blocks} blocks",
            s.blocks_in_use()
        );
    }
    assert!(
        s.cached_prefixes() < 8,
        "eight siblings cannot all stay cached"
    );
    let long: Vec<String> = (0..12)
        .map(|i| format!("Step {i}: add two and two, then check it."))
        .collect();
    let steps: Vec<&str> = long.iter().map(String::as_str).collect();
    let err = s
        .score(&steps)
        .err()
        .expect("too long for the session's cache");
    assert!(err.to_string().contains("KV"), "{err}");
}

/// Beam search on the real generator, scored by the PRM through its session: each final
/// candidate's score is the reward its steps get from scratch.
#[test]
fn beam_search_scores_incrementally_what_scoring_from_scratch_gives() {
    use ttc_engine::chat_template::Message;
    use ttc_engine::sampler::SamplingParams;
    use ttc_methods::{scorer::split_steps, Method, MethodConfig, Scorer};
    let m = prm();
    let e = ttc_e2e::engine();
    let question = "Write two short paragraphs about the sea.";
    let prompt = e.encode_chat(&[Message::new("user", question)]).unwrap();
    let cfg = MethodConfig::new(Method::Beam, 60)
        .n(4)
        .beam_width(2)
        .max_iters(3)
        .scorer(Scorer::prm(&m, question, 1 << 24).unwrap())
        .params(SamplingParams {
            temperature: 0.9,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        })
        .seed(5);
    let r = ttc_methods::run(e, &prompt, &cfg).unwrap();
    for c in &r.candidates {
        let steps = split_steps(&c.text);
        let full = m.score_steps(question, &steps).unwrap();
        let want = full.rewards.last().copied().unwrap_or(f32::NEG_INFINITY);
        assert!(
            (c.score - want).abs() < 1e-4 || (c.score == want),
            "{} vs {want}",
            c.score
        );
    }
    assert!(r.scorer_tokens > 0);
}

/// With a reward model as the scorer, the allocator prices what the model will read: every
/// configuration that scores its candidates costs more than with the generator's own scores,
/// by its tokens at the speed the session measured; majority and greedy cost the same.
#[test]
fn the_allocator_prices_a_reward_models_tokens() {
    use ttc_allocator::policy::{Allocator, Lambdas};
    use ttc_allocator::route::{self, Request};
    use ttc_engine::chat_template::Message;
    use ttc_methods::{Method, MethodConfig, Scorer};
    let e = ttc_e2e::engine();
    let question = "What is 3 + 4?";
    let plain = e.encode_chat(&[Message::new("user", question)]).unwrap();
    let ids = route::PromptIds {
        instructed: plain.clone(),
        plain,
    };
    let (alloc, _) = Allocator::for_engine(e, 2, None, |_| {}, |_, _, _| {}).unwrap();
    let decide = |scorer: Scorer| {
        // Each decision computes its prompt afresh: the prefix cache would make the second
        // one's prefill cheaper, and so every prediction's latency.
        e.clear_prefix_cache();
        let req = Request {
            lambdas: Lambdas::DEFAULT,
            target: None,
            max_latency: None,
            forced: None,
            base: MethodConfig::new(Method::Greedy, 8).scorer(scorer).seed(1),
            open_max_tokens: 8,
            background_width: 0,
        };
        route::answer(e, &alloc, &ids, &req).unwrap().1
    };
    let own = decide(Scorer::Logprob);
    let prm = Scorer::prm(&prm(), question, 1 << 24).unwrap();
    let s_per_token = prm.seconds_per_token();
    assert!(s_per_token > 0.0);
    let with_prm = decide(prm);
    assert!(!own.menu.is_empty(), "the shipped probe predicts a menu");
    for (a, b) in own.menu.iter().zip(&with_prm.menu) {
        assert_eq!(a.config, b.config);
        if a.config.method.uses_scores() {
            assert!(
                b.work.scorer_tokens > 0.0 && b.latency_s > a.latency_s,
                "{}",
                a.config
            );
        } else {
            assert_eq!(
                (b.work.scorer_tokens, b.latency_s),
                (0.0, a.latency_s),
                "{}",
                a.config
            );
        }
    }
}
