//! `ttc-run "PROMPT"` for any prompt a person types, through the real binary: open-ended
//! prompts get a plain answer with no answer-format instruction, at the plain cap; prompts
//! with a final answer keep test-time scaling; temperature 0 runs one sequence; the answer
//! streams as it is made; `ttc-run chat` keeps its conversation in the prefix cache.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

use ttc_e2e::{default_model_path, scratch_dir};

fn ttc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args(args)
        .env("TTC_CACHE_DIR", scratch_dir("every-prompt-cache"))
        .output()
        .expect("run ttc-run")
}

fn json_run(args: &[&str]) -> serde_json::Value {
    let model = default_model_path();
    let mut all = vec!["--model", model.to_str().unwrap(), "--json", "--explain"];
    all.extend_from_slice(args);
    let o = ttc(&all);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn an_open_ended_prompt_gets_a_plain_answer_without_the_instruction() {
    for prompt in [
        "Write a short poem about the sea.",
        "Give me two tips for sleeping better.",
    ] {
        let v = json_run(&["--max-tokens", "200", prompt]);
        assert_eq!(v["chosen"]["kind"]["kind"], "open-ended", "{v}");
        assert!(v["chosen"]["kind"]["confidence"].as_f64().unwrap() > 0.5);
        assert_eq!(v["chosen"]["config"], "sample", "{v}");
        assert_eq!(v["max_tokens"], 200);
        let text = v["text"].as_str().unwrap().to_lowercase();
        assert!(!text.contains("answer is"), "{prompt}: {text}");
        assert!(v["menu"].as_array().unwrap().is_empty());
        // The prompt is the one typed: no instruction in it.
        assert_eq!(v["prefill_tokens"], v["prompt_tokens"], "{v}");
    }
    // Without --max-tokens, the plain cap applies (not the probe's calibration cap).
    let v = json_run(&["--temperature", "0", "Describe a sunset."]);
    assert_eq!(v["max_tokens"], 512, "{v}");
    assert_eq!(
        v["chosen"]["config"], "greedy",
        "temperature 0: one greedy answer"
    );
}

#[test]
fn a_question_with_a_final_answer_keeps_test_time_scaling() {
    let v = json_run(&["--max-tokens", "48", "What is 7 + 5?"]);
    assert_eq!(v["chosen"]["kind"]["kind"], "final-answer", "{v}");
    assert!(v["menu"].as_array().unwrap().len() >= 10);
    // The instructed prompt shares the typed one's full blocks: only its tail is computed
    // twice.
    let prompt = v["prompt_tokens"].as_u64().unwrap();
    let prefilled = v["prefill_tokens"].as_u64().unwrap();
    assert!(prefilled < 2 * prompt - 16, "{prefilled} of {prompt}");
}

/// The answer reaches stdout while the process still runs (not all at once at the end), and
/// what streamed is the answer, once.
#[test]
fn the_answer_streams_under_auto_through_the_real_binary() {
    let model = default_model_path();
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "200",
        "Write a long story about a lighthouse keeper.",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args(args)
        .env("TTC_CACHE_DIR", scratch_dir("every-prompt-cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 8];
    out.read_exact(&mut first).unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first bytes came only when the process had ended"
    );
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let streamed = String::from_utf8([first.to_vec(), rest].concat()).unwrap();
    let mut json_args = args.to_vec();
    json_args.insert(0, "--json");
    let o = ttc(&json_args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(streamed.trim_end(), v["text"].as_str().unwrap().trim_end());
}

#[test]
fn a_piped_chat_keeps_its_conversation_in_the_prefix_cache() {
    let model = default_model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "32",
            "--json",
        ])
        .env("TTC_CACHE_DIR", scratch_dir("every-prompt-cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"I am planning a small garden behind my house, about four by six meters, with \
              some shade in the afternoon and clay soil. I would like vegetables and a few \
              flowers. Suggest a simple plan for the first season.\n\
              What is 2 + 2?\n\
              Thanks. Now sum up our conversation in one sentence.\n",
        )
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let turns: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 3);
    for (i, t) in turns.iter().enumerate() {
        assert!(t["chosen"]["config"].is_string(), "turn {i}: {t}");
        assert!(t["text"].is_string() && t["method"].is_string());
    }
    let prompt = |i: usize| turns[i]["prompt_tokens"].as_u64().unwrap();
    let prefill = |i: usize| turns[i]["prefill_tokens"].as_u64().unwrap();
    assert!(
        prompt(1) > prompt(0) && prompt(2) > prompt(1),
        "the conversation grows"
    );
    // Turn 2 has a final answer: its typed and instructed forms each compute their own tail.
    assert!(prefill(1) < prompt(1), "turn 2 reuses turn 1");
    assert!(
        2 * prefill(2) < prompt(2),
        "turn 3: {} of {} prompt tokens computed",
        prefill(2),
        prompt(2)
    );
}
