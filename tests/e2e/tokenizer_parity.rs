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
    assert_eq!(
        ids("Hello  world!\n\nNew paragraph"),
        [19556, 216, 905, 17, 198, 198, 5529, 8510]
    );
}

#[test]
fn digits_are_split_one_by_one() {
    assert_eq!(
        ids("The year 2024 had 366 days; 1,234,567.89 is big."),
        [
            504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 43, 216, 33, 28, 34, 35, 36,
            28, 37, 38, 39, 30, 40, 41, 314, 2066, 30
        ]
    );
    assert_eq!(
        ids("x=12345;y=-0.5e10"),
        [104, 45, 33, 34, 35, 36, 37, 43, 105, 15196, 32, 30, 37, 85, 33, 32]
    );
}

#[test]
fn unicode_accents_cjk_and_emoji() {
    assert_eq!(
        ids("naïve café 東京 🙂 — ok"),
        [3546, 46494, 37366, 17097, 247, 126, 16736, 122, 47526, 1841, 10907]
    );
}

#[test]
fn leading_spaces_tabs_and_contractions() {
    assert_eq!(
        ids("   three leading spaces and\ttab"),
        [256, 1296, 2899, 5600, 284, 197, 15999]
    );
    assert_eq!(
        ids("I'm sure you'll see they've DON'T"),
        [57, 5248, 2090, 346, 3060, 963, 502, 3543, 422, 2154, 23, 68]
    );
}

#[test]
fn special_tokens_in_a_rendered_template() {
    assert_eq!(
        ids("<|im_start|>user\nHi<|im_end|>"),
        [1, 4093, 198, 26843, 2]
    );
}

#[test]
fn decode_round_trips() {
    let tk = &engine().tokenizer;
    for text in [
        "Hello  world!\n\nNew paragraph",
        "naïve café 東京 🙂",
        "  leading spaces\ttab",
        "x = 12345.678",
    ] {
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
        assert!(
            !piece.contains('\u{FFFD}'),
            "replacement character in {piece:?}"
        );
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
