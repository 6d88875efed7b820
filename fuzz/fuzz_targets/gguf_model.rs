//! The GGUF reader, the model configuration and the tokenizer built from a file's metadata: any
//! bytes give a clear error or a model config and tokenizer that encode and decode, never a
//! panic, a hang or an unbounded allocation.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use ttc_engine::gguf::GgufModel;
use ttc_engine::models::ModelConfig;
use ttc_engine::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    // GgufModel reads files: one per process, rewritten for each input (tmpfs when there).
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("ttc-fuzz-{}.gguf", std::process::id()));
    {
        let mut f = std::fs::File::create(&path).expect("a scratch file");
        f.write_all(data).expect("write the input");
    }
    let Ok(gguf) = GgufModel::open(&[path.clone()]) else {
        return;
    };
    let _ = ModelConfig::from_gguf(&gguf);
    if let Ok(tok) = Tokenizer::from_gguf(&gguf) {
        if let Ok(ids) = tok.encode("Hello, world! 12 + 35 = 47.", true) {
            let _ = tok.decode(&ids, false);
        }
    }
});
