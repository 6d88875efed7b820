//! `ttc-run fetch --model M`: put a model in the cache ahead of time and print where it is.

use anyhow::Result;

use crate::args::FetchArgs;

pub fn run(args: &FetchArgs) -> Result<()> {
    let resolved = ttc_engine::download::resolve(&args.model.model, true)?;
    for p in &resolved.paths {
        println!("{}", p.display());
    }
    eprintln!("ttc: {} ready (from {})", args.model.model, resolved.source);
    Ok(())
}
