//! How a question becomes prompt ids, the one way `run`, `calibrate` and `eval` all use: the
//! probe reads the hidden state at the prompt's last token, so calibration and use must build
//! exactly the same prompt.

use ttc_engine::chat_template::Message;
use ttc_engine::Engine;

/// The user message: the question, then the answer-format instruction on its own line.
pub fn user_message(question: &str, instruction: Option<&str>) -> String {
    match instruction {
        Some(i) if !i.is_empty() => format!("{question}\n{i}"),
        _ => question.to_string(),
    }
}

/// Token ids of the chat-templated question.
pub fn encode(
    engine: &Engine,
    question: &str,
    instruction: Option<&str>,
    system: Option<&str>,
) -> ttc_engine::Result<Vec<u32>> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message::new("system", system.to_string()));
    }
    messages.push(Message::new("user", user_message(question, instruction)));
    engine.encode_chat(&messages)
}
