//! Tokenizer: byte-level BPE built from the GGUF vocabulary, with llama.cpp's pre-tokenizers.
//!
//! candle's `TokenizerFromGguf` adds a prefix space and picks the wrong unknown token for
//! SmolLM2. This builds a `tokenizers` BPE from `tokenizer.ggml.tokens` / `merges` and the
//! pre-tokenizer that `tokenizer.ggml.pre` names, with the regexes of llama.cpp's
//! `src/llama-vocab.cpp` (`llm_tokenizer_bpe`), so that ids equal llama.cpp's. Control and
//! user-defined tokens are added tokens; control tokens are matched in text only when the caller
//! asks for special parsing (llama.cpp's `parse_special`).

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// GPT-2's split: contractions, letters, numbers, other symbols, whitespace.
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's split (case-insensitive contractions, numbers in groups of up to three).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's, but every digit on its own.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes applied in turn for a `tokenizer.ggml.pre` name, and whether whole words that
/// are in the vocabulary skip the merges (llama.cpp's `ignore_merges`).
fn pre_tokenizer_spec(pre: &str) -> Result<(Vec<&'static str>, bool)> {
    Ok(match pre {
        "smollm" | "starcoder" | "refact" | "codeshell" => (vec![r"\p{N}", GPT2_REGEX], false),
        "gpt-2" | "gpt2" | "default" | "olmo" | "mpt" => (vec![GPT2_REGEX], false),
        "llama-bpe" | "llama3" | "falcon3" | "pixtral" => (vec![LLAMA3_REGEX], true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => (vec![QWEN2_REGEX], false),
        other => {
            return Err(EngineError::Tokenizer(format!(
                "unsupported pre-tokenizer '{other}' (supported: smollm, gpt2, llama-bpe, qwen2)"
            )))
        }
    })
}

/// GPT-2's reversible map from bytes to printable characters, inverted: char -> byte.
fn byte_level_decode_map() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        map.insert(char::from_u32(c).expect("valid char"), b as u8);
    }
    map
}

pub struct Tokenizer {
    /// Parses control tokens written in the text (for rendered chat templates).
    with_special: tokenizers::Tokenizer,
    /// Treats control tokens in the text as plain text (for user input).
    plain: tokenizers::Tokenizer,
    /// The raw bytes each id stands for (control tokens: their literal text).
    token_bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
    pub add_bos: bool,
}

impl Tokenizer {
    pub fn from_gguf(gguf: &GgufModel) -> Result<Self> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer model '{model}' is not supported: ttc reads byte-level BPE vocabularies \
                 ('gpt2': Llama 3, Qwen2, SmolLM2), not SentencePiece ('llama': Llama 2, TinyLlama)"
            )));
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
        let types = gguf
            .get_i32_array("tokenizer.ggml.token_type")
            .unwrap_or_default();
        if tokens.is_empty() || tokens.len() > crate::models::limits::MAX_VOCAB {
            return Err(EngineError::Tokenizer(format!(
                "a vocabulary of {} tokens (1..={} expected)",
                tokens.len(),
                crate::models::limits::MAX_VOCAB
            )));
        }
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(EngineError::Tokenizer(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let pre = gguf
            .get_opt_str("tokenizer.ggml.pre")
            .unwrap_or_else(|| "default".into());
        let (regexes, ignore_merges) = pre_tokenizer_spec(&pre)?;

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EngineError::Tokenizer(format!("malformed merge '{m}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut pre_tokenizers: Vec<PreTokenizerWrapper> = regexes
            .iter()
            .map(|r| {
                Split::new(
                    SplitPattern::Regex((*r).to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map(PreTokenizerWrapper::Split)
                .map_err(|e| EngineError::Tokenizer(format!("pre-tokenizer regex: {e}")))
            })
            .collect::<Result<_>>()?;
        pre_tokenizers.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, false, false,
        )));
        let mut tk = tokenizers::Tokenizer::new(bpe);
        tk.with_pre_tokenizer(Some(Sequence::new(pre_tokenizers)));
        tk.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));

        let mut special = vec![false; tokens.len()];
        let added: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
            .map(|(i, t)| {
                let is_control = *t == TOKEN_TYPE_CONTROL;
                special[i] = is_control;
                AddedToken::from(tokens[i].clone(), is_control).normalized(false)
            })
            .collect();
        tk.add_special_tokens(&added);

        let decode_map = byte_level_decode_map();
        let token_bytes = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if special[i] {
                    return t.as_bytes().to_vec();
                }
                t.chars()
                    .map(|c| decode_map.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| t.as_bytes().to_vec())
            })
            .collect();

        let bos_id = gguf
            .get_opt_usize("tokenizer.ggml.bos_token_id")
            .map(|x| x as u32);
        let mut eos_ids: Vec<u32> = gguf
            .get_opt_usize("tokenizer.ggml.eos_token_id")
            .map(|x| x as u32)
            .into_iter()
            .collect();
        if let Some(eot) = gguf.get_opt_usize("tokenizer.ggml.eot_token_id") {
            eos_ids.push(eot as u32);
        }
        let add_bos = gguf
            .get_opt_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false);
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            with_special: tk,
            plain,
            token_bytes,
            special,
            bos_id,
            eos_ids,
            add_bos,
        })
    }

    /// Reads a `tokenizer.json` instead (a model whose GGUF lacks a usable vocabulary).
    pub fn from_json(path: &Path, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Result<Self> {
        let tk = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let decode_map = byte_level_decode_map();
        let vocab_size = tk.get_vocab_size(true);
        let added = tk.get_added_tokens_decoder();
        let mut special = vec![false; vocab_size];
        let mut token_bytes = Vec::with_capacity(vocab_size);
        for id in 0..vocab_size as u32 {
            let text = tk.id_to_token(id).unwrap_or_default();
            match added.get(&id) {
                Some(a) => {
                    special[id as usize] = a.special;
                    token_bytes.push(text.into_bytes());
                }
                None => token_bytes.push(
                    text.chars()
                        .map(|c| decode_map.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .unwrap_or_else(|| text.into_bytes()),
                ),
            }
        }
        let mut plain = tk.clone();
        plain.set_encode_special_tokens(true);
        Ok(Self {
            with_special: tk,
            plain,
            token_bytes,
            special,
            bos_id,
            eos_ids,
            add_bos: false,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Adds `text` as a control token (or returns its id if it is one already): a reward
    /// model's step separator, say.
    pub fn add_special_token(&mut self, text: &str) -> Result<u32> {
        if let [id] = self.encode(text, true)?[..] {
            if self.token_text(id) == text {
                return Ok(id);
            }
        }
        let token = AddedToken::from(text.to_string(), true).normalized(false);
        self.with_special
            .add_special_tokens(std::slice::from_ref(&token));
        self.plain.add_special_tokens(&[token]);
        let id = self.token_bytes.len() as u32;
        self.token_bytes.push(text.as_bytes().to_vec());
        self.special.push(true);
        Ok(id)
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        self.with_special
            .save(path, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    /// Token ids of `text`, without BOS. With `parse_special`, control tokens written in the
    /// text (`<|im_start|>`) become their ids; otherwise they are tokenized as text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let tk = if parse_special {
            &self.with_special
        } else {
            &self.plain
        };
        let enc = tk
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a rendered prompt as llama.cpp does for generation: control tokens parsed, BOS
    /// added when the model asks for it and the text does not already start with it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text, true)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// Every id that is not a special token: what random prompts (benchmarks, latency
    /// profiles) are drawn from. Empty for a vocabulary of special tokens only.
    pub fn ordinary_ids(&self) -> Vec<u32> {
        (0..self.vocab_size() as u32)
            .filter(|&t| !self.is_special(t))
            .collect()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The raw bytes of one token (may be part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }

    /// Text of `ids`; control tokens are left out when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if !(skip_special && self.is_special(id)) {
                bytes.extend_from_slice(self.token_bytes(id));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Turns a stream of token ids into text pieces that are always whole UTF-8 characters: a
/// character split across tokens is held back until its last byte arrives.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tokenizer.token_bytes(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits; a byte sequence that can never be valid
            // is flushed (lossily) so that the stream does not stall.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let out: Vec<u8> = self.pending.drain(..valid).collect();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
