//! One module per `ttc-run` subcommand.

pub mod bench;
pub mod calibrate;
pub mod chat;
pub mod eval;
pub mod fetch;
pub mod models;
pub mod perplexity;
pub mod profile;
pub mod progress;
pub mod run;
pub mod serve;
pub mod tokenize;
pub mod train;
pub mod train_kind;

use anyhow::{Context, Result};
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
    if let Some(path) = &args.chat_template_file {
        // A real template is a few kilobytes; a bigger file is refused before it is read.
        const MAX_TEMPLATE_BYTES: u64 = 1 << 20;
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_TEMPLATE_BYTES,
            "{} is {size} bytes; a chat template may have {MAX_TEMPLATE_BYTES} at most",
            path.display()
        );
        let source =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        engine
            .set_chat_template(&source)
            .with_context(|| format!("the chat template in {}", path.display()))?;
    }
    if let Some(bytes) = args.kv_memory {
        engine.set_kv_budget(bytes)?;
    }
    Ok(engine)
}

/// The CPU threads in the pool that ttc's kernels and candle share.
pub fn threads_in_use() -> usize {
    ttc_engine::kernels::threads::current()
}

/// Loads the allocator for `engine`, with notices and a progress bar for a first profile.
pub fn load_allocator(
    engine: &Engine,
    probe: Option<&std::path::Path>,
) -> Result<(
    ttc_allocator::policy::Allocator,
    ttc_allocator::route::Sources,
)> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("profile [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let out = ttc_allocator::policy::Allocator::for_engine(
        engine,
        threads_in_use(),
        probe,
        |msg| bar.suspend(|| eprintln!("ttc: {msg}")),
        |done, total, what| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(what.to_string());
        },
    )?;
    bar.finish_and_clear();
    Ok(out)
}
