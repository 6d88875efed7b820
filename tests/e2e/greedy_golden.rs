//! Greedy generation on the real model equals llama.cpp's greedy output for the same GGUF,
//! template and prompt (prompt prefilled in one chunk, as llama.cpp does for short prompts).
//!
//! Expected texts come from llama.cpp (`llama-completion --temp 0` on the prompt that the GGUF's
//! chat template renders, llama-cpp-python 0.3.36's vendored llama.cpp), not from this code.

use ttc_e2e::engine;
use ttc_engine::chat_template::Message;
use ttc_engine::GenerateRequest;

fn greedy(user: &str, max_tokens: usize) -> String {
    let e = engine();
    let prompt = e.encode_chat(&[Message::new("user", user)]).unwrap();
    e.generate(&prompt, &GenerateRequest::greedy(max_tokens), |_| {}).unwrap().text
}

#[test]
fn the_readme_question() {
    assert_eq!(greedy("What is 12 + 35? Answer with just the number.", 32), "12 + 35 = 50");
}

#[test]
fn default_system_prompt_is_rendered() {
    let e = engine();
    let text = e.render_chat(&[Message::new("user", "Hi")]).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
