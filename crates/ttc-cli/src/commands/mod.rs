//! One module per `ttc-run` subcommand.

pub mod bench;
pub mod calibrate;
pub mod chat;
pub mod eval;
pub mod fetch;
pub mod models;
pub mod profile;
pub mod run;
pub mod tokenize;
pub mod train;

use anyhow::Result;
use ttc_engine::{Engine, LoadOptions};

use crate::args::ModelArgs;

/// Sets the CPU thread count for candle (it sizes its work by RAYON_NUM_THREADS) and loads
/// the model, with download progress on stderr.
pub fn load_engine(args: &ModelArgs) -> Result<Engine> {
    if let Some(k) = args.threads {
        anyhow::ensure!(k > 0, "--threads must be at least 1");
        // Single-threaded here: nothing else reads the environment yet.
        std::env::set_var("RAYON_NUM_THREADS", k.to_string());
    }
    let opts = LoadOptions { device: args.device, show_progress: true };
    let mut engine = Engine::load(&args.model, &opts)?;
    if let Some(bytes) = args.kv_memory {
        engine.set_kv_budget(bytes);
    }
    Ok(engine)
}

/// The CPU threads candle uses (it reads RAYON_NUM_THREADS, else all cores).
pub fn threads_in_use() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
