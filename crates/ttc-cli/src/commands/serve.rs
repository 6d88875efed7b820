//! `ttc-run serve`: the OpenAI-compatible HTTP server (`ttc-server`) over one model.

use anyhow::{Context, Result};
use ttc_server::ServerConfig;

use crate::args::ServeArgs;

pub fn run(args: &ServeArgs) -> Result<()> {
    let mut engine = super::load_engine(&args.model)?;
    if let Some(ctx) = args.context {
        engine.set_context_limit(ctx)?;
    }
    let (allocator, sources) = super::load_allocator(&engine, args.probe.as_deref())?;
    eprintln!(
        "ttc: {} with probe {}",
        engine.name,
        sources
            .probe
            .as_deref()
            .unwrap_or("none (auto answers plainly)")
    );
    let config = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        max_running: args.max_running,
        max_queued: args.max_queued,
        instruction: args.instruction.clone(),
    };
    ttc_server::serve(engine, allocator, config, |addr| {
        eprintln!("ttc: listening on http://{addr}");
    })
    .with_context(|| format!("serving on {}:{}", args.host, args.port))
}
