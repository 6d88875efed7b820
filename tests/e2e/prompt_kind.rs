//! The shipped probe's prompt-kind head on prompts it was not trained on
//! (`tests/data/prompt_kinds_heldout.jsonl`, written apart from `data/prompts/`).

use ttc_allocator::prompt_kind::{self, PromptRow};
use ttc_e2e::engine;

struct Heldout {
    prompt: String,
    kind: String,
}

#[test]
fn the_kind_head_classifies_prompts_it_was_not_trained_on() {
    let e = engine();
    let (alloc, _) =
        ttc_allocator::policy::Allocator::for_engine(e, 1, None, |_| {}, |_, _, _| {}).unwrap();
    let probe = alloc
        .probe
        .expect("a probe is shipped for the default model");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/prompt_kinds_heldout.jsonl"
    ))
    .unwrap();
    let rows: Vec<Heldout> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Heldout {
                prompt: v["prompt"].as_str().unwrap().to_string(),
                kind: v["kind"].as_str().unwrap().to_string(),
            }
        })
        .collect();
    let prompts: Vec<PromptRow> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| PromptRow {
            id: format!("heldout:{i}"),
            prompt: r.prompt.clone(),
        })
        .collect();
    let hidden = prompt_kind::hidden_states(e, &prompts, |_, _| {}).unwrap();
    let mut right = [0usize; 2];
    let mut total = [0usize; 2];
    let mut wrong = Vec::new();
    for (r, h) in rows.iter().zip(&hidden) {
        let p = probe
            .p_final_answer(h)
            .unwrap()
            .expect("the shipped probe has a kind head");
        let is_final = r.kind == "final-answer";
        let k = usize::from(is_final);
        total[k] += 1;
        if (p > 0.5) == is_final {
            right[k] += 1;
        } else {
            wrong.push(format!("{:?} ({}, p={p:.2})", r.prompt, r.kind));
        }
    }
    assert_eq!(total, [20, 20]);
    // At least 18 of 20 of each kind: the head must not call every prompt one kind.
    assert!(
        right[0] >= 18 && right[1] >= 18,
        "open-ended {}/20, final-answer {}/20 right; wrong: {wrong:?}",
        right[0],
        right[1]
    );
}
