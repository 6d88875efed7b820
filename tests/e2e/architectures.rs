//! The qwen2 and Llama 3 code paths on tiny random GGUFs (no such model can be fetched here):
//! properties that a wrong implementation breaks, checked on both architectures.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use ttc_e2e::scratch_dir;
use ttc_engine::gguf::GgufModel;
use ttc_engine::kv_cache::{KvCache, SeqId};
use ttc_engine::models::{AttentionBackend, BatchEntry, Model, ModelConfig};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 128;
const VOCAB: usize = 96;
const LAYERS: usize = 2;

struct Spec {
    arch: &'static str,
    q_bias: f32,
    tied: bool,
    rope_freqs: Option<f32>,
}

fn random(shape: &[usize], seed: u64, scale: f32) -> QTensor {
    // A fixed pseudo-random fill, so that every spec gets the same weights.
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * scale
        })
        .collect();
    QTensor::quantize(
        &Tensor::from_vec(data, shape, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

fn constant(shape: &[usize], value: f32) -> QTensor {
    QTensor::quantize(
        &Tensor::full(value, shape, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

/// Writes a tiny model; GGUF shapes are (out, in) in candle's order.
fn write_model(spec: &Spec, name: &str) -> GgufModel {
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), random(&[VOCAB, HIDDEN], 1, 1.0)),
        ("output_norm.weight".into(), constant(&[HIDDEN], 1.0)),
    ];
    if !spec.tied {
        tensors.push(("output.weight".into(), random(&[VOCAB, HIDDEN], 2, 1.0)));
    }
    if let Some(f) = spec.rope_freqs {
        tensors.push(("rope_freqs.weight".into(), constant(&[HEAD_DIM / 2], f)));
    }
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        let s = 100 * (l as u64 + 1);
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_norm.weight"), constant(&[HIDDEN], 1.0)));
        tensors.push((format!("{p}.ffn_norm.weight"), constant(&[HIDDEN], 1.0)));
        tensors.push((
            format!("{p}.attn_q.weight"),
            random(&[HIDDEN, HIDDEN], s + 1, 0.5),
        ));
        tensors.push((
            format!("{p}.attn_k.weight"),
            random(&[kv, HIDDEN], s + 2, 0.5),
        ));
        tensors.push((
            format!("{p}.attn_v.weight"),
            random(&[kv, HIDDEN], s + 3, 0.5),
        ));
        tensors.push((
            format!("{p}.attn_output.weight"),
            random(&[HIDDEN, HIDDEN], s + 4, 0.3),
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            random(&[FFN, HIDDEN], s + 5, 0.3),
        ));
        tensors.push((
            format!("{p}.ffn_up.weight"),
            random(&[FFN, HIDDEN], s + 6, 0.3),
        ));
        tensors.push((
            format!("{p}.ffn_down.weight"),
            random(&[HIDDEN, FFN], s + 7, 0.3),
        ));
        if spec.arch == "qwen2" {
            tensors.push((format!("{p}.attn_q.bias"), constant(&[HIDDEN], spec.q_bias)));
            tensors.push((format!("{p}.attn_k.bias"), constant(&[kv], 0.0)));
            tensors.push((format!("{p}.attn_v.bias"), constant(&[kv], 0.0)));
        }
    }
    let a = spec.arch;
    let md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (format!("{a}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FFN as u32)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (format!("{a}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{a}.context_length"), Value::U32(131_072)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10_000.0)),
        (format!("{a}.vocab_size"), Value::U32(VOCAB as u32)),
    ];
    let path = scratch_dir(name).join("model.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    GgufModel::open(&[path]).unwrap()
}

fn load(spec: &Spec, name: &str) -> Model {
    let gguf = write_model(spec, name);
    Model::load(&gguf, ModelConfig::from_gguf(&gguf).unwrap(), &Device::Cpu).unwrap()
}

fn new_cache(model: &Model) -> KvCache {
    KvCache::new(model.config(), 8, 4, &Device::Cpu).unwrap()
}

/// Appends `tokens` to `seq` in one forward pass and returns the last token's logits.
fn run(model: &Model, cache: &mut KvCache, seq: SeqId, tokens: &[u32]) -> Vec<f32> {
    let start = cache.len(seq);
    cache.reserve(seq, tokens.len()).unwrap();
    let slots = cache.slots(seq, 0..start + tokens.len()).unwrap();
    let out = model
        .forward_batch(
            &[BatchEntry {
                tokens,
                slots: &slots,
                want_output: true,
            }],
            cache,
        )
        .unwrap();
    cache.commit(seq, tokens).unwrap();
    out.logits
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn last_logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut cache = new_cache(model);
    let seq = cache.new_sequence();
    run(model, &mut cache, seq, tokens)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const LLAMA: Spec = Spec {
    arch: "llama",
    q_bias: 0.0,
    tied: true,
    rope_freqs: None,
};
const QWEN2: Spec = Spec {
    arch: "qwen2",
    q_bias: 0.0,
    tied: true,
    rope_freqs: None,
};
const TOKENS: [u32; 5] = [3, 17, 42, 8, 91];

#[test]
fn incremental_decoding_equals_one_forward_over_the_sequence() {
    for spec in [LLAMA, QWEN2] {
        let model = load(&spec, &format!("incr-{}", spec.arch));
        let full = last_logits(&model, &TOKENS);
        let mut cache = new_cache(&model);
        let seq = cache.new_sequence();
        run(&model, &mut cache, seq, &TOKENS[..2]);
        run(&model, &mut cache, seq, &TOKENS[2..4]);
        let step = run(&model, &mut cache, seq, &TOKENS[4..]);
        assert_eq!(cache.len(seq), TOKENS.len());
        assert!(
            max_diff(&full, &step) < 1e-4,
            "{}: {}",
            spec.arch,
            max_diff(&full, &step)
        );
    }
}

#[test]
fn rope_layout_is_per_architecture() {
    let llama = load(&LLAMA, "layout-llama");
    let qwen = load(&QWEN2, "layout-qwen2");
    // At position 0 RoPE is the identity: with zero biases the two architectures agree...
    assert!(
        max_diff(
            &last_logits(&llama, &TOKENS[..1]),
            &last_logits(&qwen, &TOKENS[..1])
        ) < 1e-5
    );
    // ...and later positions rotate different pairs of dimensions.
    assert!(max_diff(&last_logits(&llama, &TOKENS), &last_logits(&qwen, &TOKENS)) > 1e-3);
}

#[test]
fn qwen2_projection_bias_is_applied() {
    let plain = load(&QWEN2, "bias-0");
    let biased = load(
        &Spec {
            q_bias: 0.7,
            ..QWEN2
        },
        "bias-1",
    );
    assert!(
        max_diff(
            &last_logits(&plain, &TOKENS),
            &last_logits(&biased, &TOKENS)
        ) > 1e-3
    );
}

#[test]
fn separate_output_weights_are_used_when_present() {
    let tied = load(&LLAMA, "tied");
    let untied = load(
        &Spec {
            tied: false,
            ..LLAMA
        },
        "untied",
    );
    assert!(max_diff(&last_logits(&tied, &TOKENS), &last_logits(&untied, &TOKENS)) > 1e-3);
}

#[test]
fn llama3_rope_frequency_factors() {
    let plain = last_logits(&load(&LLAMA, "freqs-none"), &TOKENS);
    let ones = last_logits(
        &load(
            &Spec {
                rope_freqs: Some(1.0),
                ..LLAMA
            },
            "freqs-1",
        ),
        &TOKENS,
    );
    let scaled = last_logits(
        &load(
            &Spec {
                rope_freqs: Some(8.0),
                ..LLAMA
            },
            "freqs-8",
        ),
        &TOKENS,
    );
    assert!(
        max_diff(&plain, &ones) < 1e-5,
        "factors of 1 change nothing"
    );
    assert!(
        max_diff(&plain, &scaled) > 1e-3,
        "factors of 8 slow the rotation"
    );
}

#[test]
fn context_length_comes_from_the_metadata_uncapped() {
    let gguf = write_model(&QWEN2, "ctx");
    let config = ModelConfig::from_gguf(&gguf).unwrap();
    assert_eq!(config.context_length, 131_072);
    assert_eq!(
        (config.n_heads, config.n_kv_heads, config.head_dim),
        (HEADS, KV_HEADS, HEAD_DIM)
    );
}

/// Logits of one batched decode step of three forks of a 42-token prompt whose suffixes
/// (1, 3 and 5 tokens) differ in length, every pass (prompt, suffixes, step) run on `model`
/// as it is set, in a fresh cache.
fn forked_step(model: &Model) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(model.config(), 32, 4, &Device::Cpu).unwrap();
    let root = cache.new_sequence();
    let prompt: Vec<u32> = (0..42).map(|i| (i * 7 % VOCAB) as u32).collect();
    run(model, &mut cache, root, &prompt);
    let kids: Vec<SeqId> = (0..3).map(|_| cache.fork(root).unwrap()).collect();
    for (i, &k) in kids.iter().enumerate() {
        let extra: Vec<u32> = (0..=2 * i as u32).map(|j| 5 + j).collect();
        run(model, &mut cache, k, &extra);
    }
    let slots: Vec<Vec<u32>> = kids
        .iter()
        .map(|&k| {
            cache.reserve(k, 1).unwrap();
            cache.slots(k, 0..cache.len(k) + 1).unwrap()
        })
        .collect();
    let toks = [[11u32], [12], [13]];
    let entries: Vec<BatchEntry> = toks
        .iter()
        .zip(&slots)
        .map(|(t, s)| BatchEntry {
            tokens: t,
            slots: s,
            want_output: true,
        })
        .collect();
    model
        .forward_batch(&entries, &cache)
        .unwrap()
        .logits
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

/// Cascade attention (a shared prefix read once per group) equals plain attention for forked
/// sequences whose suffixes differ in length. Cascade attention lives in the tensor path
/// (candle operations, KV writes through scatter: what CUDA and Metal run), which the CPU
/// runs when ttc's fused kernels are off; both are also checked against the fused kernel. On
/// this f32 model nothing rounds activations to 8 bits, so all three agree to float precision
/// (on a Q4 model, where activations are quantized per block, a 1e-7 difference can flip one
/// 8-bit step and grow through the layers).
#[test]
fn cascade_attention_equals_plain_attention() {
    for spec in [LLAMA, QWEN2] {
        let mut model = load(&spec, &format!("cascade-{}", spec.arch));
        let fused = forked_step(&model);
        model
            .set_attention_backend(AttentionBackend::Tensor)
            .unwrap();
        let cascade = forked_step(&model);
        model.set_cascade(false);
        let plain = forked_step(&model);
        for (i, ((c, p), f)) in cascade.iter().zip(&plain).zip(&fused).enumerate() {
            for (what, a, b) in [
                ("cascade and plain tensor attention", c, p),
                ("cascade and the fused kernel", c, f),
                ("plain tensor attention and the fused kernel", p, f),
            ] {
                assert!(
                    max_diff(a, b) < 1e-4,
                    "{}: member {i}: {what} differ by {}",
                    spec.arch,
                    max_diff(a, b)
                );
            }
        }
        assert!(
            max_diff(&cascade[0], &cascade[1]) > 1e-3,
            "members with different suffixes differ"
        );
    }
}
