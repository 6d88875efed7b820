//! `ttc-run calibrate`: labels questions by repeated sampling (resumable, with a progress bar),
//! then trains the accuracy probe and token model and saves them where `auto` finds them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ttc_allocator::calibrate::{label_dataset, LabelHeader};
use ttc_allocator::dataset;
use ttc_allocator::menu;

use crate::args::CalibrateArgs;

pub fn run(args: &CalibrateArgs) -> Result<()> {
    anyhow::ensure!(args.samples >= 2, "--samples must be at least 2");
    anyhow::ensure!(args.max_tokens >= 1, "--max-tokens must be at least 1");
    let mut problems = Vec::new();
    for spec in &args.dataset {
        let mut p = dataset::load(spec, args.split)?;
        if let Some(k) = args.limit {
            p.truncate(k);
        }
        problems.extend(p);
    }
    let engine = super::load_engine(&args.model)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ttc_allocator::probe::default_path(&engine.name));
    if args.train_only {
        anyhow::ensure!(!args.labels.is_empty(), "--train-only needs --labels FILE");
        return super::train::train_and_save(&engine, &args.labels, &out);
    }
    anyhow::ensure!(
        args.labels.len() <= 1,
        "give one --labels file to label into"
    );
    let labels_path = args
        .labels
        .first()
        .cloned()
        .unwrap_or_else(|| labels_path_for(&out));
    let s = &args.sampling;
    let header = LabelHeader {
        ttc_labels: 1,
        model: engine.name.clone(),
        samples: args.samples,
        max_tokens: args.max_tokens,
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        instruction: args.instruction.clone(),
        search: menu::default_menu()
            .into_iter()
            .filter(|c| c.method.is_search())
            .collect(),
        seed: s.seed,
    };
    eprintln!(
        "labelling {} questions into {} ({} samples each, and each search configuration run)",
        problems.len(),
        labels_path.display(),
        args.samples
    );
    let bar = ProgressBar::new(problems.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} questions, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix("calibrate");
    label_dataset(
        &engine,
        &problems,
        &header,
        &labels_path,
        None,
        |done, _| bar.set_position(done as u64),
    )
    .with_context(|| format!("labelling into {}", labels_path.display()))?;
    bar.finish();
    if args.label_only {
        return Ok(());
    }
    super::train::train_and_save(&engine, &[labels_path], &out)
}

/// `PATH.labels.jsonl` beside the probe.
pub fn labels_path_for(out: &std::path::Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".labels.jsonl");
    out.with_file_name(name)
}
