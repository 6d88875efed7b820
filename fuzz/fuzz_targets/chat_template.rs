//! The chat template renderer: any template source (and message text) renders or fails with a
//! clear error, within bounded work and output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttc_engine::chat_template::{ChatTemplate, Message};
use ttc_engine::EngineError;

fuzz_target!(|data: &[u8]| {
    // The template, then after the first NUL the user's message.
    let (src, msg) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"hi"[..]),
    };
    let Ok(src) = std::str::from_utf8(src) else {
        return;
    };
    let msg = String::from_utf8_lossy(msg).into_owned();
    if let Ok(t) = ChatTemplate::new(src, "<s>", "</s>") {
        let messages = [
            Message::new("system", "You are helpful."),
            Message::new("user", msg.clone()),
            Message::new("assistant", "ok"),
            Message::new("user", msg),
        ];
        // The sandboxed render bounds it; a result or a template error (not a limit) means
        // the same render is safe in process, where the fuzzer sees its coverage.
        match t.render(&messages, true) {
            Err(EngineError::TemplateRefused(_)) => {}
            sandboxed => {
                let here = t.render_in_process(&messages, true);
                assert_eq!(
                    sandboxed.map_err(|e| e.to_string()),
                    here.map_err(|e| e.to_string()),
                    "the sandboxed render and the render in process differ"
                );
            }
        }
    }
});
