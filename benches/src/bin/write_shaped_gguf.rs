//! Writes a GGUF with the exact tensor shapes, types and metadata of a model the mission names,
//! from random weights with a fixed seed, so that speed at that size can be measured here
//! without downloading the model (the hub is not reachable from this project's machines).
//!
//! Shapes: Qwen2.5-1.5B-Instruct and Llama-3.2-1B-Instruct, as their official Q4_K_M files lay
//! them out: Q4_K matrices, with Q6_K for `attn_v` and `ffn_down` in the layers llama.cpp's
//! `use_more_bits` picks and for the (tied) embeddings, f32 norms and biases. The vocabulary
//! has the real size; its tokens are a synthetic byte-level BPE set (256 byte tokens, then
//! letter runs built by merges), which both ttc and llama.cpp load.
//!
//! Reference: llama.cpp `src/llama-quant.cpp` (`llama_tensor_get_type`, `use_more_bits`) for
//! which tensors get which type in Q4_K_M; read, not copied.
//!
//! cargo run --release -p ttc-benches --bin write-shaped-gguf -- qwen2.5-1.5b OUT.gguf

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

struct Shape {
    arch: &'static str,
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    context: u32,
    rope_theta: f32,
    qkv_bias: bool,
    /// Half-width of the uniform weights.
    spread: f32,
}

const SHAPES: &[(&str, Shape)] = &[
    (
        "qwen2.5-1.5b",
        Shape {
            arch: "qwen2",
            layers: 28,
            hidden: 1536,
            ffn: 8960,
            heads: 12,
            kv_heads: 2,
            vocab: 151_936,
            context: 32_768,
            rope_theta: 1_000_000.0,
            qkv_bias: true,
            spread: 0.05,
        },
    ),
    (
        "llama-3.2-1b",
        Shape {
            arch: "llama",
            layers: 16,
            hidden: 2048,
            ffn: 8192,
            heads: 32,
            kv_heads: 8,
            vocab: 128_256,
            context: 131_072,
            rope_theta: 500_000.0,
            qkv_bias: false,
            spread: 0.05,
        },
    ),
    // Not a released model: Qwen2's layout (biases, halves rope) at a size where one forward
    // pass costs nothing, with the same Q4_K/Q6_K mix, for checking one device's logits
    // against another's (benches/gpu/run.sh).
    (
        "tiny-qwen2",
        Shape {
            arch: "qwen2",
            layers: 4,
            hidden: 256,
            ffn: 768,
            heads: 4,
            kv_heads: 2,
            vocab: 4_096,
            context: 4_096,
            rope_theta: 1_000_000.0,
            qkv_bias: true,
            // Wide enough that the next-token distribution is peaked: a comparison of two
            // devices' distributions then sees a wrong rope or mask.
            spread: 0.4,
        },
    ),
];

/// llama.cpp's choice of layers that get more bits in Q4_K_M.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// `(rows, cols)` of uniform random values of the given spread, quantized to `dtype`.
fn random(
    rng: &mut rand_chacha::ChaCha8Rng,
    rows: usize,
    cols: usize,
    spread: f32,
    dtype: GgmlDType,
) -> QTensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| rng.random_range(-spread..spread))
        .collect();
    let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("shape");
    QTensor::quantize(&t, dtype).expect("quantizable shape")
}

fn ones(n: usize) -> QTensor {
    let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("shape");
    QTensor::quantize(&t, GgmlDType::F32).expect("f32")
}

fn zeros(n: usize) -> QTensor {
    let t = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).expect("shape");
    QTensor::quantize(&t, GgmlDType::F32).expect("f32")
}

/// GPT-2's byte-to-character map, so that byte-level BPE tokens are printable strings.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<(u32, u32)> = printable.iter().map(|&b| (b, b)).collect();
    let mut next = 256;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            chars.push((b, next));
            next += 1;
        }
    }
    printable.clear();
    chars.sort();
    chars
        .into_iter()
        .map(|(_, c)| char::from_u32(c).expect("valid"))
        .collect()
}

/// `n` tokens: the 256 bytes, then runs of lowercase letters, each made by a merge of a
/// shorter run and one letter; and the merges that build them.
fn vocabulary(n: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut merges = Vec::new();
    let mut frontier: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
    'grow: while tokens.len() < n {
        let mut next = Vec::new();
        for base in &frontier {
            for c in b'a'..=b'z' {
                if tokens.len() >= n {
                    break 'grow;
                }
                let t = format!("{base}{}", c as char);
                merges.push(format!("{base} {}", c as char));
                tokens.push(t.clone());
                next.push(t);
            }
        }
        frontier = next;
    }
    (tokens, merges)
}

fn names() -> String {
    SHAPES
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (name, out) = match (args.next(), args.next()) {
        (Some(n), Some(o)) => (n, o),
        _ => {
            eprintln!(
                "usage: write-shaped-gguf MODEL OUT.gguf   (MODEL: {})",
                names()
            );
            std::process::exit(2);
        }
    };
    let Some((_, s)) = SHAPES.iter().find(|(n, _)| *n == name) else {
        eprintln!("error: unknown shape '{name}' ({})", names());
        std::process::exit(2);
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1234);
    let head_dim = s.hidden / s.heads;
    let kv = s.kv_heads * head_dim;
    let spread = s.spread;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    eprintln!("{name}: quantizing {} layers...", s.layers);
    tensors.push((
        "token_embd.weight".into(),
        random(&mut rng, s.vocab, s.hidden, spread, GgmlDType::Q6K),
    ));
    tensors.push(("output_norm.weight".into(), ones(s.hidden)));
    for l in 0..s.layers {
        let p = format!("blk.{l}");
        let more = if use_more_bits(l, s.layers) {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        };
        let q4k = GgmlDType::Q4K;
        tensors.push((format!("{p}.attn_norm.weight"), ones(s.hidden)));
        tensors.push((format!("{p}.ffn_norm.weight"), ones(s.hidden)));
        tensors.push((
            format!("{p}.attn_q.weight"),
            random(&mut rng, s.hidden, s.hidden, spread, q4k),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            random(&mut rng, kv, s.hidden, spread, q4k),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            random(&mut rng, kv, s.hidden, spread, more),
        ));
        tensors.push((
            format!("{p}.attn_output.weight"),
            random(&mut rng, s.hidden, s.hidden, spread, q4k),
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            random(&mut rng, s.ffn, s.hidden, spread, q4k),
        ));
        tensors.push((
            format!("{p}.ffn_up.weight"),
            random(&mut rng, s.ffn, s.hidden, spread, q4k),
        ));
        tensors.push((
            format!("{p}.ffn_down.weight"),
            random(&mut rng, s.hidden, s.ffn, spread, more),
        ));
        if s.qkv_bias {
            tensors.push((format!("{p}.attn_q.bias"), zeros(s.hidden)));
            tensors.push((format!("{p}.attn_k.bias"), zeros(kv)));
            tensors.push((format!("{p}.attn_v.bias"), zeros(kv)));
        }
        eprint!("\r  layer {}/{}", l + 1, s.layers);
    }
    eprintln!();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let (mut tokens, merges) = vocabulary(s.vocab - specials.len());
    let first_special = tokens.len() as u32;
    tokens.extend(specials.iter().map(|t| t.to_string()));
    let mut types = vec![1i32; first_special as usize];
    types.extend([3, 3, 3]);
    let a = s.arch;
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("{name} shapes, random weights")),
        ),
        ("general.file_type".into(), Value::U32(15)), // LLAMA_FTYPE_MOSTLY_Q4_K_M
        (format!("{a}.embedding_length"), Value::U32(s.hidden as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(s.ffn as u32)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(s.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(s.kv_heads as u32),
        ),
        (format!("{a}.block_count"), Value::U32(s.layers as u32)),
        (format!("{a}.context_length"), Value::U32(s.context)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(s.rope_theta)),
        (format!("{a}.vocab_size"), Value::U32(s.vocab as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
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
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(first_special + 2),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(first_special),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&out).unwrap_or_else(|e| {
        eprintln!("error: cannot create {out}: {e}");
        std::process::exit(1)
    }));
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap_or_else(|e| {
        eprintln!("error: writing {out}: {e}");
        std::process::exit(1)
    });
    eprintln!("wrote {out}");
}
