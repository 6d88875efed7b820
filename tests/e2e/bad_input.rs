//! Every bad input the engine can be given fails with its own clear error, never a panic.

use std::io::Write;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use ttc_e2e::{default_model_path, engine, scratch_dir};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, EngineError, GenerateRequest, LoadOptions};

fn load_path(path: &std::path::Path) -> Result<Engine, EngineError> {
    Engine::load(path.to_str().unwrap(), &LoadOptions::default())
}

#[test]
fn missing_file() {
    let err = load_path(std::path::Path::new("/nonexistent/dir/model.gguf"))
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::ModelNotFound(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/dir/model.gguf"));
}

#[test]
fn file_that_is_not_gguf() {
    let dir = scratch_dir("notgguf");
    let path = dir.join("model.gguf");
    std::fs::write(&path, b"<html>not a model</html>").unwrap();
    let err = load_path(&path).err().unwrap();
    assert!(matches!(err, EngineError::NotGguf { .. }), "{err}");
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        load_path(&empty).err().unwrap(),
        EngineError::NotGguf { .. }
    ));
}

#[test]
fn truncated_gguf_header_and_tensor_data() {
    let real = std::fs::read(default_model_path()).unwrap();
    let dir = scratch_dir("truncated");
    for (name, len) in [
        ("header.gguf", 200usize),
        ("data.gguf", real.len() / 2),
        ("last_byte.gguf", real.len() - 1),
    ] {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&real[..len])
            .unwrap();
        let err = load_path(&path).err().unwrap();
        assert!(
            matches!(err, EngineError::CorruptGguf { .. }),
            "{name}: {err}"
        );
        assert!(!err.to_string().contains("backtrace"), "{err}");
    }
}

#[test]
fn unsupported_architecture() {
    let dir = scratch_dir("arch");
    let path = dir.join("gpt2.gguf");
    let t = Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let arch = Value::String("gpt2".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &q)],
    )
    .unwrap();
    drop(f);
    let err = load_path(&path).err().unwrap();
    assert!(
        matches!(err, EngineError::UnsupportedArchitecture(ref a) if a == "gpt2"),
        "{err}"
    );
}

#[test]
fn unknown_alias() {
    let err = Engine::load("no-such-model", &LoadOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, EngineError::UnknownAlias { .. }), "{err}");
}

#[test]
fn prompt_longer_than_the_context() {
    let e = engine();
    let req = GenerateRequest::greedy(4);
    let ctx = e.context_limit();
    let prompt = vec![42u32; ctx + 10];
    let err = e.generate(&prompt, &req, |_| {}).err().unwrap();
    assert!(
        matches!(err, EngineError::PromptTooLong { prompt_tokens, context } if prompt_tokens == ctx + 10 && context == ctx),
        "{err}"
    );
}

#[test]
fn bad_sampling_parameters() {
    let e = engine();
    let params = SamplingParams {
        temperature: -1.0,
        ..SamplingParams::default()
    };
    let req = GenerateRequest {
        params,
        ..GenerateRequest::greedy(4)
    };
    let err = e.generate(&[1, 2, 3], &req, |_| {}).err().unwrap();
    assert!(matches!(err, EngineError::InvalidArgument(_)), "{err}");
}

/// The real model's metadata with one value replaced, and no tensors: the model's shape is
/// checked before anything is sized from it, so each of these is one clear error.
#[test]
fn crafted_shape_metadata_is_refused_before_anything_is_sized() {
    let mut f = std::fs::File::open(default_model_path()).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let dir = scratch_dir("crafted-shape");
    let cases: [(&str, Value, &str); 8] = [
        ("llama.attention.head_count", Value::U32(0), "head_count"),
        (
            "llama.attention.head_count_kv",
            Value::U32(0),
            "head_count_kv",
        ),
        (
            "llama.block_count",
            Value::U32(1_000_000_000),
            "block_count",
        ),
        ("llama.block_count", Value::I32(-1), "block_count"),
        ("llama.attention.key_length", Value::U32(0), "key_length"),
        (
            "llama.rope.dimension_count",
            Value::U32(128),
            "rotary dimension",
        ),
        (
            "llama.context_length",
            Value::U32(1 << 24),
            "context_length",
        ),
        (
            "llama.embedding_length",
            Value::U64(u64::MAX),
            "embedding_length",
        ),
    ];
    for (i, (key, value, says)) in cases.into_iter().enumerate() {
        let mut md = content.metadata.clone();
        md.insert(key.to_string(), value);
        let refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let path = dir.join(format!("case{i}.gguf"));
        let mut out = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut out, &refs, &[]).unwrap();
        drop(out);
        let err = load_path(&path).err().unwrap();
        assert!(
            matches!(err, EngineError::CorruptGguf { .. }),
            "{key}: {err}"
        );
        assert!(err.to_string().contains(says), "{key}: {err}");
    }
}
