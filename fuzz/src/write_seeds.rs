//! Writes the fuzz targets' seed corpora (nothing copied from a model file): tiny GGUFs of the
//! llama and qwen2 architectures with a byte-level BPE vocabulary (and a few broken variants),
//! chat templates (ChatML, SmolLM2's and Llama 3's shapes), dataset and prompt lines.
//!
//!     cargo run --release --bin write_seeds -- corpus      (fuzz/make-seeds.sh runs it)

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

const HIDDEN: usize = 32;
const FFN: usize = 64;
const LAYERS: usize = 1;

fn tensor(shape: &[usize], dtype: GgmlDType) -> QTensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let t = Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor");
    QTensor::quantize(&t, dtype).expect("quantize")
}

fn byte_tokens() -> Vec<String> {
    // GPT-2's byte-to-character map: printable bytes stand for themselves, the rest from 256 up.
    let printable: Vec<u32> = (33..=126).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut next = 256;
    (0..256u32)
        .map(|b| {
            let c = if printable.contains(&b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(c).expect("valid").to_string()
        })
        .collect()
}

fn gguf(arch: &str, extra: &[(&str, Value)], drop: &[&str]) -> Vec<u8> {
    let mut tokens = byte_tokens();
    let merges = vec!["h e".to_string(), "l l".to_string(), "he ll".to_string()];
    tokens.extend(["he", "ll", "hell", "<|im_start|>", "<|im_end|>"].map(String::from));
    let vocab = tokens.len();
    let mut types = vec![1i32; vocab];
    types[vocab - 2] = 3;
    types[vocab - 1] = 3;
    let q = GgmlDType::Q8_0;
    let mut t: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), tensor(&[vocab, HIDDEN], q)),
        (
            "output_norm.weight".into(),
            tensor(&[HIDDEN], GgmlDType::F32),
        ),
    ];
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        for (name, shape) in [
            ("attn_norm.weight", vec![HIDDEN]),
            ("ffn_norm.weight", vec![HIDDEN]),
        ] {
            t.push((format!("{p}.{name}"), tensor(&shape, GgmlDType::F32)));
        }
        for (name, shape) in [
            ("attn_q.weight", [HIDDEN, HIDDEN]),
            ("attn_k.weight", [HIDDEN / 2, HIDDEN]),
            ("attn_v.weight", [HIDDEN / 2, HIDDEN]),
            ("attn_output.weight", [HIDDEN, HIDDEN]),
            ("ffn_gate.weight", [FFN, HIDDEN]),
            ("ffn_up.weight", [FFN, HIDDEN]),
            ("ffn_down.weight", [HIDDEN, FFN]),
        ] {
            t.push((format!("{p}.{name}"), tensor(&shape, q)));
        }
    }
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.embedding_length"),
            Value::U32(HIDDEN as u32),
        ),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(FFN as u32),
        ),
        (format!("{arch}.attention.head_count"), Value::U32(4)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
        (format!("{arch}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{arch}.context_length"), Value::U32(256)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(vocab as u32 - 2),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(vocab as u32 - 1),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML.into()),
        ),
    ];
    md.retain(|(k, _)| !drop.iter().any(|d| k.ends_with(d)));
    for (k, v) in extra {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v.clone()));
    }
    let mut out = Vec::new();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::io::Cursor::new(&mut out), &md_refs, &t_refs).expect("write gguf");
    out
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const SMOLLM: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let root = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "corpus".into()));
    let g = root.join("gguf_model");
    write(&g, "llama", &gguf("llama", &[], &[]));
    write(&g, "qwen2", &gguf("qwen2", &[], &[]));
    write(
        &g,
        "alignment-64",
        &gguf("llama", &[("general.alignment", Value::U32(64))], &[]),
    );
    write(
        &g,
        "no-merges",
        &gguf("llama", &[], &["tokenizer.ggml.merges"]),
    );
    write(
        &g,
        "no-head-count",
        &gguf("llama", &[], &["attention.head_count"]),
    );
    let full = gguf("llama", &[], &[]);
    write(&g, "truncated", &full[..full.len() / 3]);
    let c = root.join("chat_template");
    for (name, src) in [("chatml", CHATML), ("smollm", SMOLLM), ("llama3", LLAMA3)] {
        let mut b = src.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(b"What is 2 + 3?");
        write(&c, name, &b);
    }
    let d = root.join("dataset_line");
    write(
        &d,
        "gsm8k",
        b"{\"question\": \"Tom has 3 apples and buys 2. How many?\", \"answer\": \"3 + 2 = 5\\n#### 5\"}\n",
    );
    write(
        &d,
        "prompt",
        b"{\"prompt\": \"Write a haiku.\"}\n{\"prompt\": \"What is 7 + 5?\", \"answer\": \"12\"}\n",
    );
    write(&d, "number", b"{\"question\": \"2+2?\", \"answer\": 4}\n\n");
    println!("seeds written under {}", root.display());
}
