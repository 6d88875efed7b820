//! `ttc-run profile`: measures prefill seconds against prompt length and one decode step's
//! seconds against (width, context) on this device, then real runs of each kind for the
//! correction factors (`ttc_allocator::corrections`), with a progress bar, and saves the
//! profile where the allocator finds it (one per model file, device and thread count).

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use ttc_allocator::corrections;
use ttc_allocator::latency::{Grid, LatencyProfile, ProfileKey};

use crate::args::ProfileArgs;

pub fn run(args: &ProfileArgs) -> Result<()> {
    let engine = super::load_engine(&args.model)?;
    let key = ProfileKey::for_engine(&engine, super::threads_in_use());
    let grid = if args.brief {
        Grid::brief()
    } else {
        Grid::full()
    };
    let bar = ProgressBar::new(grid.measurements() as u64);
    bar.set_style(
        ProgressStyle::with_template("profile [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut profile = LatencyProfile::measure(&engine, key, &grid, |done, _, what| {
        bar.set_position(done as u64);
        bar.set_message(what.to_string());
    })?;
    let runs = corrections::configs().len();
    bar.set_length((grid.measurements() + runs) as u64);
    let ratios = corrections::measure(&engine, &mut profile, |done, _, what| {
        bar.set_position((grid.measurements() + done) as u64);
        bar.set_message(format!("one {what} run"));
    })?;
    bar.finish_and_clear();
    let path = profile.key.default_path();
    profile.save(&path)?;
    if args.json {
        println!("{}", serde_json::to_string(&profile)?);
        return Ok(());
    }
    println!("prefill (prompt tokens -> seconds, tokens/s)");
    for p in &profile.prefill {
        println!(
            "  {:>6} {:>8.3} s {:>8.1} t/s",
            p.prompt_len,
            p.seconds,
            p.prompt_len as f64 / p.seconds
        );
    }
    println!("decode step (ms) by width (columns) and context (rows)");
    print!("  {:>7}", "context");
    for w in &grid.widths {
        print!(" {:>8}", format!("w={w}"));
    }
    println!();
    for c in &grid.contexts {
        print!("  {c:>7}");
        for w in &grid.widths {
            let ms = profile
                .decode
                .iter()
                .find(|d| d.width == *w && d.context == *c)
                .map(|d| d.seconds * 1e3)
                .unwrap_or(f64::NAN);
            print!(" {ms:>8.1}");
        }
        println!();
    }
    println!(
        "real runs (measured / the grid's prediction; each kind's factor is the mean of its runs)"
    );
    for (label, ratio) in &ratios {
        println!("  {label:<14} {ratio:>6.2}");
    }
    println!("saved {}", path.display());
    Ok(())
}
