//! Bad flag values are refused as the command line is read, before any model loads: the
//! model named here does not exist, so an error about it would mean the check came too late.

use std::process::Command;

#[test]
fn bad_values_are_refused_at_parse_time_with_one_line() {
    let cases: [&[&str]; 10] = [
        &["--samples", "0"],
        &["--n", "9223372036854775807", "--method", "beam"],
        &["--max-iters", "0", "--method", "beam"],
        &["--beam-width", "0"],
        &["--temperature", "nan"],
        &["--temperature=-1"],
        &["--top-p", "1.5"],
        &["--min-p=-0.1"],
        &["-n", "0"],
        &["--context", "0"],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
            .args(["--model", "/no/such/model.gguf"])
            .args(args)
            .arg("What is 2 + 2?")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: invalid value"), "{args:?}: {err}");
    }
}

/// `-n` is the token limit (llama.cpp's `n_predict`), `--samples` the width.
#[test]
fn dash_n_is_max_tokens_and_samples_has_its_own_name() {
    let help = Command::new(env!("CARGO_BIN_EXE_ttc-run"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("-n, --max-tokens"), "{help}");
    assert!(help.contains("--samples <SAMPLES>"), "{help}");
}
