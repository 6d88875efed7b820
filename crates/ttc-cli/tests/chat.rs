//! The chat REPL driven as a person drives it: in a pseudo-terminal, typing, reading the
//! streamed answer and the status line, switching methods, Ctrl-C during an answer, leaving.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use expectrl::{ControlCode, Expect, Regex, Session};
use ttc_e2e::{default_model_path, scratch_dir};

fn chat(extra: &[&str]) -> expectrl::session::OsSession {
    let model = default_model_path();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttc-run"));
    cmd.args([
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--temperature",
        "0",
    ])
    .args(extra);
    // The history file goes to the cache dir: keep it out of the user's.
    cmd.env("TTC_CACHE_DIR", scratch_dir("chat-cache"));
    let mut p = Session::spawn(cmd).expect("spawn ttc-run chat in a pty");
    p.set_expect_timeout(Some(Duration::from_secs(120)));
    p
}

fn exit_code(p: &expectrl::session::OsSession) -> i32 {
    match p.get_process().wait().expect("wait") {
        expectrl::process::unix::WaitStatus::Exited(_, code) => code,
        other => panic!("ttc-run chat did not exit normally: {other:?}"),
    }
}

#[test]
fn a_conversation_with_method_switching_ctrl_c_and_quit() {
    let mut p = chat(&["--max-tokens", "300"]);
    p.expect(">>> ").unwrap();
    // The chat starts in auto: an open-ended prompt is answered plainly (greedy at
    // temperature 0), and the status line says what was chosen and what it cost.
    p.send_line("Name three colors of the rainbow.").unwrap();
    p.expect(Regex(
        r"\[auto: open-ended -> greedy \| \d+ tokens \| [0-9.]+ s \| [0-9.]+ tok/s \| prefill \d+ of \d+\]",
    ))
    .unwrap();
    p.send_line("/method plain").unwrap();
    p.expect("method: plain").unwrap();
    p.send_line("/reset").unwrap();
    p.expect("conversation cleared").unwrap();
    p.send_line("What is 12 + 35? Answer with just the number.")
        .unwrap();
    p.expect("12 + 35 = 50").unwrap();
    p.expect(Regex(
        r"\[plain \| \d+ tokens \| [0-9.]+ s \| [0-9.]+ tok/s \| prefill \d+ of \d+\]",
    ))
    .unwrap();

    p.send_line("/method majority").unwrap();
    p.expect("method: majority n=4").unwrap();
    p.send_line("/n 3").unwrap();
    p.expect("n = 3").unwrap();
    p.send_line("What is 2 + 3?").unwrap();
    p.expect(Regex(r"\[majority n=3 \| \d+ tokens \| [0-9.]+ s"))
        .unwrap();

    // A long answer, stopped by Ctrl-C: back at the prompt, the session goes on.
    p.send_line("/method plain").unwrap();
    p.expect("method: plain").unwrap();
    p.send_line("Write a very long story about a dragon who learns to cook.")
        .unwrap();
    // Ctrl-C as soon as the answer streams: on a fast CPU all 300 tokens take about a second,
    // so waiting a fixed time could find the answer already over.
    p.expect("cook.").unwrap();
    p.expect(Regex(r"\w{3,}")).unwrap();
    p.send(ControlCode::EndOfText).unwrap();
    p.expect("stopped]").unwrap();
    p.send_line("/stats").unwrap();
    p.expect(Regex(r"4 answers, \d+ tokens generated")).unwrap();

    p.send_line("/quit").unwrap();
    assert_eq!(exit_code(&p), 0);
}

#[test]
fn ctrl_d_leaves_with_status_zero() {
    let mut p = chat(&[]);
    p.expect(">>> ").unwrap();
    p.send_line("/help").unwrap();
    p.expect("/method NAME").unwrap();
    p.send(ControlCode::EndOfTransmission).unwrap();
    assert_eq!(exit_code(&p), 0);
}

/// `ttc-run` on the default model at temperature 0 and 24 tokens, `input` piped on stdin.
fn piped(extra: &[&str], input: &str) -> std::process::Output {
    let model = default_model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--method",
            "plain",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn piped_stdin_answers_one_line_per_prompt() {
    let out = piped(
        &[],
        "What is 12 + 35? Answer with just the number.\n\nList three primary colors.\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    assert_eq!(lines[0], "12 + 35 = 50");
    assert!(
        lines[1].starts_with("The primary colors are:"),
        "{:?}",
        lines[1]
    );
}

/// `ttc-run` without a prompt becomes a chat: the options of a one-prompt run still apply
/// (they were dropped once). `--json` prints one object per line, `--stop` ends the answer,
/// `--context` refuses a prompt it cannot hold.
#[test]
fn piped_stdin_keeps_the_run_options() {
    let out = piped(
        &["--json", "--stop", "35"],
        "What is 12 + 35? Answer with just the number.\nList three primary colors.\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2, "{text}");
    // Greedy says "12 + 35 = 50"; the stop string cuts it before "35".
    assert_eq!(objects[0]["text"], "12 + ", "{text}");
    assert_eq!(objects[0]["stop_reason"], "stop_string");
    assert_eq!(objects[0]["method"], "plain");
    assert!(objects[1]["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(objects[1]["tokens_generated"].as_u64().unwrap() > 0);

    let out = piped(
        &["--context", "8"],
        "What is 12 + 35? Answer with just the number.\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("context"),
        "{err}"
    );
}
