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

/// Sizes the one CPU thread pool (default: the physical cores) and loads the model, with
/// download progress on stderr.
pub fn load_engine(args: &ModelArgs) -> Result<Engine> {
    if let Some(k) = args.threads {
        anyhow::ensure!(k > 0, "--threads must be at least 1");
    }
    // Single-threaded here: nothing else has started the pool or reads the environment yet.
    ttc_engine::kernels::threads::init_threads(args.threads);
    let opts = LoadOptions {
        device: args.device,
        show_progress: true,
    };
    let mut engine = Engine::load(&args.model, &opts)?;
    if let Some(bytes) = args.kv_memory {
        engine.set_kv_budget(bytes);
    }
    Ok(engine)
}

/// The CPU threads in the pool that ttc's kernels and candle share.
pub fn threads_in_use() -> usize {
    ttc_engine::kernels::threads::current()
}
