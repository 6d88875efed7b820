//! The GGUF reader, the model configuration and the tokenizer built from a file's metadata: any
//! bytes give a clear error or a model config and tokenizer that encode and decode, never a
//! panic, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttc_engine::gguf::GgufModel;
use ttc_engine::models::ModelConfig;
use ttc_engine::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let path = ttc_fuzz::scratch_file("gguf", data);
    let Ok(gguf) = GgufModel::open(&[path]) else {
        return;
    };
    let _ = ModelConfig::from_gguf(&gguf);
    if let Ok(tok) = Tokenizer::from_gguf(&gguf) {
        if let Ok(ids) = tok.encode("Hello, world! 12 + 35 = 47.", true) {
            let _ = tok.decode(&ids, false);
        }
    }
});
