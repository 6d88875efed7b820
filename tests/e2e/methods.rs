//! Every test-time scaling method on the real default model, through the sequence API, with
//! its accounting checked against the engine's counters.

use ttc_e2e::engine;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::GenerateRequest;
use ttc_methods::{answer, Method, MethodConfig, Scorer};

fn prompt(q: &str) -> Vec<u32> {
    engine()
        .encode_chat(&[Message::new(
            "user",
            format!("{q}\n{}", answer::DEFAULT_INSTRUCTION),
        )])
        .unwrap()
}

fn config(method: Method, n: usize, max_tokens: usize) -> MethodConfig {
    MethodConfig {
        method,
        n,
        beam_width: 2,
        max_iters: 8,
        scorer: Scorer::Logprob,
        params: SamplingParams::default(),
        seed: 11,
        max_tokens,
        stop: vec![],
        cancel: None,
    }
}

#[test]
fn greedy_method_equals_plain_greedy_generation() {
    let p = prompt("What is 6 + 3?");
    let r = ttc_methods::run(engine(), &p, &config(Method::Greedy, 1, 48)).unwrap();
    let g = engine()
        .generate(&p, &GenerateRequest::greedy(48), |_| {})
        .unwrap();
    assert_eq!(r.text, g.text);
    assert_eq!(r.generated_tokens, g.tokens.len());
    assert_eq!(r.answer, answer::extract(&g.text));
    assert_eq!(r.candidates.len(), 1);
}

#[test]
fn parallel_methods_cost_one_prefill_and_count_every_token() {
    let p = prompt("What is 8 + 5?");
    for method in [Method::BestOfN, Method::Majority, Method::Weighted] {
        let r = ttc_methods::run(engine(), &p, &config(method, 6, 40)).unwrap();
        assert_eq!(r.candidates.len(), 6, "{method:?}");
        assert_eq!(
            r.prefill_tokens,
            p.len(),
            "{method:?}: N samples, one prefill"
        );
        let sum: usize = r.candidates.iter().map(|c| c.tokens).sum();
        assert_eq!(
            r.generated_tokens, sum,
            "{method:?}: the result's tokens are its sequences' tokens"
        );
        let longest = r.candidates.iter().map(|c| c.tokens).max().unwrap();
        // One batched step per token position, plus one where the last sample drew EOS.
        assert!(
            longest <= r.steps && r.steps <= longest + 1,
            "{method:?}: {} steps, longest {longest}",
            r.steps
        );
        assert_eq!(r.text, r.candidates[r.chosen].text);
        assert!(r.timing.total_s >= r.timing.prefill_s + r.timing.decode_s);
    }
}

#[test]
fn the_vote_picks_what_the_voting_rule_says() {
    let p = prompt("What is 9 + 4?");
    let maj = ttc_methods::run(engine(), &p, &config(Method::Majority, 8, 40)).unwrap();
    let ballots: Vec<ttc_methods::vote::Ballot> = maj
        .candidates
        .iter()
        .map(|c| ttc_methods::vote::Ballot {
            answer: c.answer.as_deref(),
            score: c.score,
        })
        .collect();
    assert_eq!(Some(maj.chosen), ttc_methods::vote::majority(&ballots));
    let bon = ttc_methods::run(engine(), &p, &config(Method::BestOfN, 8, 40)).unwrap();
    let best = bon
        .candidates
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(bon.candidates[bon.chosen].score, best);
}

#[test]
fn beam_search_with_one_beam_and_no_branching_is_stepwise_greedy() {
    // No answer instruction: the greedy reply has several paragraphs (beam steps).
    let p = engine()
        .encode_chat(&[Message::new("user", "List three primary colors.")])
        .unwrap();
    let mut cfg = config(Method::Beam, 1, 80);
    cfg.beam_width = 1;
    cfg.max_iters = 50;
    cfg.params = SamplingParams::greedy();
    let beam = ttc_methods::run(engine(), &p, &cfg).unwrap();
    let g = engine()
        .generate(&p, &GenerateRequest::greedy(80), |_| {})
        .unwrap();
    assert!(
        g.text.contains("\n\n"),
        "the greedy answer must have several steps: {:?}",
        g.text
    );
    assert_eq!(beam.text, g.text);
    assert_eq!(beam.generated_tokens, g.tokens.len());
}

#[test]
fn beam_search_and_dvts_prune_and_account_for_pruned_beams() {
    let p = prompt("Explain step by step: what is 12 + 7?");
    for method in [Method::Beam, Method::Dvts] {
        let mut cfg = config(method, 4, 64);
        cfg.max_iters = 4;
        let r = ttc_methods::run(engine(), &p, &cfg).unwrap();
        assert_eq!(r.prefill_tokens, p.len());
        assert!(!r.candidates.is_empty());
        let chosen_tokens = r.candidates[r.chosen].tokens;
        assert!(r.generated_tokens >= chosen_tokens, "{method:?}");
        assert!(r.candidates.iter().all(|c| c.tokens <= 64), "{method:?}");
        assert_eq!(r.text, r.candidates[r.chosen].text);
    }
}

#[test]
fn same_seed_same_result_other_seed_other_samples() {
    let p = prompt("What is 4 + 4?");
    let run = |seed| {
        let mut cfg = config(Method::Majority, 4, 32);
        cfg.seed = seed;
        ttc_methods::run(engine(), &p, &cfg).unwrap()
    };
    let (a, b, c) = (run(3), run(3), run(4));
    let texts = |r: &ttc_methods::MethodResult| {
        r.candidates
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&a), texts(&b));
    assert_eq!(a.answer, b.answer);
    assert_ne!(texts(&a), texts(&c));
}

#[test]
fn self_certainty_scorer_ranks_candidates() {
    let p = prompt("What is 2 + 5?");
    let mut cfg = config(Method::BestOfN, 4, 32);
    cfg.scorer = Scorer::SelfCertainty;
    let r = ttc_methods::run(engine(), &p, &cfg).unwrap();
    assert!(
        r.candidates
            .iter()
            .all(|c| c.score.is_finite() && c.score > 0.0),
        "KL from uniform is positive"
    );
    let best = r
        .candidates
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(r.candidates[r.chosen].score, best);
}
