//! What `ttc-run "PROMPT"` does for any prompt (issue "Adaptive compute for every prompt"),
//! measured on this machine with the default model and its shipped probe:
//! - on the 40 held-out prompts of `tests/data/prompt_kinds_heldout.jsonl` (20 open-ended, 20
//!   with a final answer, none trained on): how often each kind is classified right, what auto
//!   chose, its mean latency against a plain answer (`--method plain`), and on the questions
//!   the accuracy of auto against greedy and majority@16;
//! - a three-turn chat through the allocator: prompt and prefill tokens per turn, and the
//!   third turn's latency with the prefix cache and without it.
//!
//! Every run starts from an empty prefix cache unless it is the chat's. Sampling is the CLI's
//! default (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05), seed 42.
//!
//! cargo run --release -p ttc-e2e --example every_prompt_report

use std::collections::BTreeMap;
use std::time::Instant;

use ttc_allocator::policy::{Allocator, Lambdas};
use ttc_allocator::route::{self, PromptIds, Request};
use ttc_allocator::{prompt, Config};
use ttc_engine::chat_template::Message;
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, GenerateRequest};
use ttc_methods::{answer, Method, MethodConfig};

const OPEN_CAP: usize = 512;

fn params() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
    }
}

fn request(alloc: &Allocator, forced: Option<Config>) -> Request {
    Request {
        lambdas: Lambdas::DEFAULT,
        target: None,
        max_latency: None,
        forced,
        base: MethodConfig::new(Method::Greedy, alloc.max_tokens().unwrap_or(96))
            .params(params())
            .seed(42),
        open_max_tokens: OPEN_CAP,
        background_width: 0,
    }
}

fn ids_of(e: &Engine, messages: &[Message], user: &str) -> PromptIds {
    let with = |content: String| {
        let mut m = messages.to_vec();
        m.push(Message::new("user", content));
        e.encode_chat(&m).expect("prompt")
    };
    PromptIds {
        plain: with(user.to_string()),
        instructed: with(prompt::user_message(
            user,
            Some(answer::DEFAULT_INSTRUCTION),
        )),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() {
    let e = ttc_e2e::engine();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (alloc, sources) =
        Allocator::for_engine(e, threads, None, |m| eprintln!("note: {m}"), |_, _, _| {})
            .expect("allocator");
    eprintln!("profile {}, probe {:?}", sources.profile, sources.probe);
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/prompt_kinds_heldout.jsonl"
    ))
    .expect("held-out prompts");
    println!("| kind | P(final) | auto chose | auto s | plain s | auto | greedy | majority@16 | prompt |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut right: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut chosen: BTreeMap<String, usize> = BTreeMap::new();
    let mut lat: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut acc = [0usize; 3];
    let mut questions = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let user = v["prompt"].as_str().expect("prompt");
        let kind = if v["kind"] == "final-answer" {
            "final-answer"
        } else {
            "open-ended"
        };
        let ids = ids_of(e, &[], user);
        e.clear_prefix_cache();
        let (r, d) = route::answer(e, &alloc, &ids, &request(&alloc, None)).expect("auto");
        let k = d.kind.expect("auto decides the kind");
        let entry = right.entry(kind).or_default();
        entry.1 += 1;
        entry.0 += usize::from(k.label() == kind);
        *chosen
            .entry(format!("{kind} -> {}", d.predicted.config))
            .or_default() += 1;
        e.clear_prefix_cache();
        let t = Instant::now();
        let req = GenerateRequest {
            params: params(),
            seed: 42,
            ..GenerateRequest::greedy(OPEN_CAP)
        };
        e.generate(&ids.plain, &req, |_| {}).expect("plain");
        let plain_s = t.elapsed().as_secs_f64();
        let l = lat.entry(kind).or_default();
        l.0.push(r.timing.total_s);
        l.1.push(plain_s);
        let mut marks = ["", "", ""].map(String::from);
        if kind == "final-answer" {
            questions += 1;
            let gold = answer::normalize(v["answer"].as_str().expect("answer"));
            let correct = |a: &Option<String>| a.as_deref() == Some(gold.as_str());
            let mut runs = vec![correct(&r.answer)];
            for c in [Config::GREEDY, Config::parallel(Method::Majority, 16)] {
                e.clear_prefix_cache();
                let (r, _) =
                    route::answer(e, &alloc, &ids, &request(&alloc, Some(c))).expect("forced");
                runs.push(correct(&r.answer));
            }
            for (i, ok) in runs.iter().enumerate() {
                acc[i] += usize::from(*ok);
                marks[i] = if *ok { "right" } else { "wrong" }.into();
            }
        }
        println!(
            "| {kind} | {:.3} | {} | {:.2} | {plain_s:.2} | {} | {} | {} | {} |",
            k.p_final_answer.unwrap_or(f64::NAN),
            d.predicted.config,
            r.timing.total_s,
            marks[0],
            marks[1],
            marks[2],
            user.replace('|', "/")
        );
    }
    println!();
    for (kind, (ok, n)) in &right {
        println!("classified right, {kind}: {ok}/{n}");
    }
    for (what, n) in &chosen {
        println!("auto chose {what}: {n}");
    }
    for (kind, (auto, plain)) in &lat {
        println!(
            "mean latency, {kind}: auto {:.2} s, plain {:.2} s (ratio {:.2})",
            mean(auto),
            mean(plain),
            mean(auto) / mean(plain)
        );
    }
    println!(
        "accuracy on the {questions} questions: auto {}/{questions}, greedy {}/{questions}, majority@16 {}/{questions}",
        acc[0], acc[1], acc[2]
    );

    // A three-turn chat through the allocator, the conversation kept in the prefix cache.
    println!();
    println!("| turn | prompt_tokens | prefill_tokens | chose | latency s |");
    println!("|---|---|---|---|---|");
    e.clear_prefix_cache();
    let turns = [
        "I am planning a small garden behind my house, about four by six meters, with some shade in the afternoon and clay soil. I would like vegetables and a few flowers. Suggest a simple plan for the first season.",
        "Which of those vegetables grows fastest?",
        "Thanks. Now sum up our conversation in one sentence.",
    ];
    let mut messages = Vec::new();
    for (i, user) in turns.iter().enumerate() {
        let ids = ids_of(e, &messages, user);
        let (r, d) = route::answer(e, &alloc, &ids, &request(&alloc, None)).expect("turn");
        println!(
            "| {} | {} | {} | {} | {:.2} |",
            i + 1,
            r.prompt_tokens,
            r.prefill_tokens,
            d.predicted.config,
            r.timing.total_s
        );
        if i == 2 {
            e.clear_prefix_cache();
            let (cold, _) =
                route::answer(e, &alloc, &ids, &request(&alloc, None)).expect("cold turn");
            println!(
                "turn 3 without the prefix cache: {} of {} prompt tokens computed, {:.2} s (with it: {:.2} s; prefill {:.3} s against {:.3} s)",
                cold.prefill_tokens,
                cold.prompt_tokens,
                cold.timing.total_s,
                r.timing.total_s,
                r.timing.prefill_s,
                cold.timing.prefill_s
            );
        }
        messages.push(Message::new("user", user.to_string()));
        messages.push(Message::new("assistant", r.text));
    }
}
