//! Every test-time scaling method on the real default model, through the sequence API, with
//! its accounting checked against the engine's counters.

use std::collections::{HashMap, HashSet};

use ttc_e2e::engine;
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::GenerateRequest;
use ttc_methods::{answer, Method, MethodConfig, Scorer, STEP_STOP};

fn prompt(q: &str) -> Vec<u32> {
    engine()
        .encode_chat(&[Message::new(
            "user",
            format!("{q}\n{}", answer::DEFAULT_INSTRUCTION),
        )])
        .unwrap()
}

fn config(method: Method, n: usize, max_tokens: usize) -> MethodConfig {
    MethodConfig::new(method, max_tokens)
        .n(n)
        .beam_width(2)
        .max_iters(8)
        .seed(11)
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
fn an_adaptive_vote_answers_as_majority_and_stops_once_decided() {
    let mut stopped_early = 0;
    for q in [
        "Repeat this number: 41",
        "What is 2 + 2?",
        "What is 3 times 3?",
    ] {
        let p = prompt(q);
        let maj = ttc_methods::run(engine(), &p, &config(Method::Majority, 8, 64)).unwrap();
        let ada = ttc_methods::run(engine(), &p, &config(Method::MajorityAdaptive, 8, 64)).unwrap();
        assert_eq!(
            ada.answer, maj.answer,
            "{q}: a decided vote elects majority's answer"
        );
        assert_eq!(ada.candidates.len() + ada.cancelled, 8, "{q}");
        // The same seed draws the same samples: what finished is among majority's samples.
        for c in &ada.candidates {
            assert!(
                maj.candidates.iter().any(|m| m.token_ids == c.token_ids),
                "{q}: an adaptive sample majority did not draw: {:?}",
                c.text
            );
        }
        assert!(ada.generated_tokens <= maj.generated_tokens, "{q}");
        assert!(ada.steps <= maj.steps, "{q}");
        if ada.cancelled > 0 {
            stopped_early += 1;
            assert!(
                ada.steps < maj.steps && ada.generated_tokens < maj.generated_tokens,
                "{q}: cancelled samples must save steps and tokens ({} vs {} steps)",
                ada.steps,
                maj.steps
            );
        }
    }
    assert!(
        stopped_early > 0,
        "no vote was decided before its last sample ended"
    );
}

#[test]
fn the_vote_picks_what_the_voting_rule_says() {
    let p = prompt("What is 9 + 4?");
    let maj = ttc_methods::run(engine(), &p, &config(Method::Majority, 8, 40)).unwrap();
    // The count, written out here: votes per answer, and where each answer first appeared.
    let mut votes: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, c) in maj.candidates.iter().enumerate() {
        if let Some(a) = c.answer.as_deref() {
            votes.entry(a).or_insert((0, i)).0 += 1;
        }
    }
    assert!(
        votes.values().map(|v| v.0).sum::<usize>() >= 2,
        "a vote needs voters: {:?}",
        maj.candidates
    );
    let most = votes.values().map(|v| v.0).max().unwrap();
    // Ties go to the answer that appeared first; its first candidate is the one chosen.
    let first_of_most = votes
        .values()
        .filter(|v| v.0 == most)
        .map(|v| v.1)
        .min()
        .unwrap();
    assert_eq!(maj.chosen, first_of_most, "{votes:?}");
    assert_eq!(
        maj.answer.as_deref(),
        maj.candidates[first_of_most].answer.as_deref()
    );
    let bon = ttc_methods::run(engine(), &p, &config(Method::BestOfN, 8, 40)).unwrap();
    let best = bon
        .candidates
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    let first_best = bon.candidates.iter().position(|c| c.score == best);
    assert_eq!(Some(bon.chosen), first_best);
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

/// Tokens the surviving candidates of a search account for, each once per lineage. A search
/// forks beams only where a step ended (a blank line), and of beams with equal texts at a step
/// end it keeps one, so candidates whose tokens agree up to the end of a step share that much
/// of their history: it is counted once. The last iteration has no step ends, and everything
/// after a candidate's last step end is its own. Computed from the tokens alone, not from the
/// method's accounting.
fn lineage_tokens(cands: &[ttc_methods::Candidate], max_iters: usize) -> usize {
    let tok = &engine().tokenizer;
    let mut shared: HashSet<&[u32]> = HashSet::new();
    let mut total = 0;
    for c in cands {
        let ids = &c.token_ids;
        assert_eq!(ids.len(), c.tokens);
        // A step ends at the token after which the step's bytes contain a blank line.
        let mut ends = Vec::new();
        let mut step: Vec<u8> = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            if ends.len() + 1 >= max_iters {
                break;
            }
            step.extend_from_slice(tok.token_bytes(id));
            if step.windows(2).any(|w| w == STEP_STOP.as_bytes()) {
                ends.push(k + 1);
                step.clear();
            }
        }
        let mut start = 0;
        for &end in &ends {
            if shared.insert(&ids[..end]) {
                total += end - start;
            }
            start = end;
        }
        total += ids.len() - start;
    }
    total
}

#[test]
fn beam_search_and_dvts_prune_and_account_for_pruned_beams() {
    // No answer instruction: replies of several paragraphs, so that more beams end a step
    // than are kept (with the instruction most beams answer within their first step).
    let p = engine()
        .encode_chat(&[Message::new(
            "user",
            "Explain step by step: what is 12 + 7?",
        )])
        .unwrap();
    for method in [Method::Beam, Method::Dvts] {
        let cfg = config(method, 4, 64).max_iters(3);
        let r = ttc_methods::run(engine(), &p, &cfg).unwrap();
        assert_eq!(r.prefill_tokens, p.len());
        assert!(!r.candidates.is_empty());
        assert!(r.candidates.iter().all(|c| c.tokens <= 64), "{method:?}");
        assert_eq!(r.text, r.candidates[r.chosen].text);
        // Pruned beams leave no candidate: the tokens they generated lie outside every
        // survivor's lineage. More tokens generated than the survivors account for shows
        // both that beams were pruned and that their tokens were counted.
        let survivors = lineage_tokens(&r.candidates, cfg.max_iters);
        assert!(
            r.generated_tokens > survivors,
            "{method:?}: {} tokens generated, {survivors} in the survivors' lineages: nothing \
             was pruned, or the pruned beams' tokens were not counted",
            r.generated_tokens
        );
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
