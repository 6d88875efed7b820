//! Token ids equal llama.cpp's for the same GGUF.
//!
//! Expected ids come from llama.cpp's own tokenizer (`llama-tokenize -m SmolLM2-135M-Instruct.
//! Q4_1.gguf --ids --no-bos -p TEXT`, llama.cpp as vendored by llama-cpp-python 0.3.36), not
//! from this code.

use ttc_e2e::engine;

fn ids(text: &str) -> Vec<u32> {
    engine().tokenizer.encode(text, true).unwrap()
}

#[test]
fn repeated_spaces_and_newlines() {
    assert_eq!(ids("Hello  world!\n\nNew paragraph"), [19556, 216, 905, 17, 198, 198, 5529, 8510]);
}

#[test]
fn decode_round_trips() {
    let tk = &engine().tokenizer;
    for text in ["Hello  world!\n\nNew paragraph", "naïve café 東京 🙂", "  leading spaces\ttab", "x = 12345.678"] {
        assert_eq!(tk.decode(&ids(text), false), text);
    }
}

#[test]
fn streaming_decode_never_splits_a_character() {
    let tk = &engine().tokenizer;
    let text = "日本語のテキスト 🙂🙂 emoji";
    let mut dec = ttc_engine::tokenizer::StreamDecoder::default();
    let mut out = String::new();
    for id in ids(text) {
        let piece = dec.push(tk, id);
        assert!(!piece.contains('\u{FFFD}'), "replacement character in {piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
}

#[test]
fn control_tokens_are_parsed_only_when_asked() {
    let tk = &engine().tokenizer;
    assert_eq!(tk.encode("<|im_start|>user", true).unwrap(), [1, 4093]);
    let plain = tk.encode("<|im_start|>user", false).unwrap();
    assert!(!plain.contains(&1) && plain.len() > 2, "{plain:?}");
}
