//! `ttc-run train-kind`: fits the prompt-kind head (does a prompt have a short final answer to
//! vote on, or is it open-ended?) on the hidden states of prompts of both kinds, measures the
//! length of plain answers to open-ended prompts, and writes the probe with the head.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ttc_allocator::probe::kind::{self, KindExample};
use ttc_allocator::probe::Probe;
use ttc_allocator::prompt_kind::{self, PromptRow};

use crate::args::TrainKindArgs;

pub fn run(args: &TrainKindArgs) -> Result<()> {
    let engine = super::load_engine(&args.model)?;
    let (alloc, sources) = super::load_allocator(&engine, args.probe.as_deref())?;
    let probe = alloc.probe.ok_or_else(|| {
        anyhow::anyhow!(
            "no probe for {} to add the head to (`ttc-run calibrate` builds one, --probe names one)",
            engine.name
        )
    })?;
    let mut rows: Vec<(PromptRow, bool)> = Vec::new();
    let mut source_notes = Vec::new();
    for (specs, final_answer) in [(&args.final_answer, true), (&args.open_ended, false)] {
        for spec in specs {
            let mut prompts = prompt_kind::read_prompts(spec)?;
            if let Some(limit) = args.limit {
                prompts.truncate(limit);
            }
            let kind = if final_answer {
                "final-answer"
            } else {
                "open-ended"
            };
            source_notes.push(format!("{spec}: {} {kind} prompts", prompts.len()));
            rows.extend(prompts.into_iter().map(|p| (p, final_answer)));
        }
    }
    let bar = progress(rows.len(), "hidden states");
    let prompts: Vec<PromptRow> = rows.iter().map(|(p, _)| p.clone()).collect();
    let hidden =
        prompt_kind::hidden_states(&engine, &prompts, |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let examples: Vec<KindExample> = rows
        .iter()
        .zip(hidden)
        .map(|((p, final_answer), hidden)| KindExample {
            id: p.id.clone(),
            hidden,
            final_answer: *final_answer,
        })
        .collect();
    eprintln!(
        "fitting the kind head on {} prompts ({} cross-validation folds x {} penalties)",
        examples.len(),
        ttc_allocator::probe::FOLDS,
        kind::L2_GRID.len()
    );
    let (head, mut meta) = kind::train(&examples)?;
    meta.sources = source_notes;
    // Plain answers to open-ended training prompts, spread over the files: their lengths.
    let open: Vec<PromptRow> = rows
        .iter()
        .filter(|(p, final_answer)| {
            !final_answer
                && ttc_allocator::probe::part_of(&p.id) == ttc_allocator::probe::Part::Train
        })
        .map(|(p, _)| p.clone())
        .collect();
    let stride = (open.len() / args.length_prompts.max(1)).max(1);
    let chosen: Vec<PromptRow> = open
        .into_iter()
        .step_by(stride)
        .take(args.length_prompts)
        .collect();
    let bar = progress(chosen.len(), "plain answers");
    let mut lengths = prompt_kind::plain_answer_lengths(
        &engine,
        &chosen,
        &args.sampling.params(),
        args.length_cap,
        16,
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    lengths.sort_unstable();
    meta.open_lengths = lengths;
    meta.length_cap = args.length_cap;
    println!(
        "kind head: penalty {} chosen by cross-validation (accuracy {:.3} out of fold on {} training prompts); held-out accuracy {:.3} on {} prompts",
        meta.l2,
        meta.cv_accuracy,
        meta.final_answer_prompts + meta.open_ended_prompts,
        meta.heldout_accuracy,
        meta.heldout_prompts
    );
    if let Some(mean) = meta.open_tokens(args.length_cap) {
        println!(
            "plain answers to {} open-ended prompts: {mean:.0} tokens on average at a cap of {}",
            meta.open_lengths.len(),
            args.length_cap
        );
    }
    let probe: Probe = probe.with_kind_head(head, meta)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ttc_allocator::probe::default_path(&engine.name));
    probe
        .save(&out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} (the head added to {})",
        out.display(),
        sources.probe.as_deref().unwrap_or("the probe")
    );
    Ok(())
}

fn progress(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} [{{bar:30}}] {{pos}}/{{len}} {{eta}}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
