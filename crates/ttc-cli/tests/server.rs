//! `ttc-run serve` through the real `openai` Python package (`tests/server/openai_client.py`):
//! chat, completions, n = 4, streaming, the `ttc` extension, log-probabilities, an API key and
//! errors; 8 concurrent clients x 4 requests with the KV pool back at its baseline; a streamed
//! request whose client leaves; a full queue answering 429.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ttc_e2e::{default_model_path, scratch_dir};

const KEY: &str = "test-key-123";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str, extra: &[&str]) -> Server {
    let model = default_model_path();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .args([
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--api-key",
            KEY,
        ])
        .args(extra)
        .env("TTC_CACHE_DIR", scratch_dir(name))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ttc-run serve");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the server said where it listens")
            .unwrap();
        if let Some(addr) = line.strip_prefix("ttc: listening on ") {
            break addr.trim().to_string();
        }
    };
    // Keep reading what the server says, so its pipe never fills.
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

fn python(what: &str, server: &Server) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/server/openai_client.py"
    );
    let out = Command::new("python3")
        .args([script, what, &server.base, KEY])
        .output()
        .expect("python3 (with the openai package: .ci/run installs it)");
    assert!(
        out.status.success(),
        "{what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn the_openai_client_uses_the_server_under_load_and_cancellation() {
    let server = start("server-main", &["--context", "2048"]);
    python("features", &server);
    python("load", &server);
    python("cancel", &server);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = start("server-busy", &["--max-running", "1", "--max-queued", "0"]);
    python("busy", &server);
}
