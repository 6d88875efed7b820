//! llama.cpp's own tokenizer test vectors (`models/ggml-vocab-NAME.gguf.inp/.out`, the cases
//! llama.cpp's `test-tokenizer-0` checks), run through ttc's tokenizer for every pre-tokenizer
//! ttc supports. The vocabularies come from llama.cpp's source, fetched by the test helper.

use ttc_e2e::llama_cpp_vocab_dir;
use ttc_engine::gguf::GgufModel;
use ttc_engine::tokenizer::Tokenizer;

fn check_vocab(name: &str) {
    let dir = llama_cpp_vocab_dir();
    let gguf = GgufModel::open(&[dir.join(format!("ggml-vocab-{name}.gguf"))]).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let inputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let outputs = std::fs::read_to_string(dir.join(format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let inputs = inputs
        .strip_suffix("\n__ggml_vocab_test__\n")
        .unwrap_or(&inputs);
    let cases: Vec<&str> = inputs.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<Vec<u32>> = outputs
        .lines()
        .take(cases.len())
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert!(
        cases.len() > 40 && cases.len() == expected.len(),
        "{name}: {} cases, {} outputs",
        cases.len(),
        expected.len()
    );
    let failures: Vec<String> = cases
        .iter()
        .zip(&expected)
        .filter_map(|(text, want)| {
            // test-tokenizer-0 tokenizes without BOS and without parsing special tokens.
            let got = tokenizer.encode(text, false).unwrap();
            (&got != want).then(|| format!("{text:?}: llama.cpp {want:?}, ttc {got:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{name}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `starcoder` uses the same regexes as SmolLM2's `smollm` pre-tokenizer.
#[test]
fn starcoder_smollm_regexes() {
    check_vocab("starcoder");
}

#[test]
fn qwen2() {
    check_vocab("qwen2");
}

#[test]
fn llama3_bpe() {
    check_vocab("llama-bpe");
}

#[test]
fn gpt2() {
    check_vocab("gpt-2");
}

#[test]
fn refact() {
    check_vocab("refact");
}
