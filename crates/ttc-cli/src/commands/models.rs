//! `ttc-run models`: the alias registry, and whether each model is already on this machine.

use anyhow::Result;
use ttc_engine::registry;

pub fn run() -> Result<()> {
    for e in registry::entries()? {
        let default = if e.alias == registry::DEFAULT_ALIAS {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<14} {:<6} {}{}  [{}]",
            e.alias, e.architecture, e.description, default, e.repo
        );
    }
    Ok(())
}
