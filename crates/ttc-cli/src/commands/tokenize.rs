//! `ttc-run tokenize "TEXT"`: the ids, as llama.cpp's `llama-tokenize --ids` prints them.

use anyhow::Result;
use ttc_engine::gguf::GgufModel;
use ttc_engine::tokenizer::Tokenizer;

use crate::args::TokenizeArgs;

pub fn run(args: &TokenizeArgs) -> Result<()> {
    // Only the vocabulary is needed: no weights are read.
    let resolved = ttc_engine::download::resolve(&args.model.model, true)?;
    let gguf = GgufModel::open(&resolved.paths)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let ids = tokenizer.encode(&args.text, !args.no_parse_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
