//! Trains the accuracy probe and token model from labels files (the second half of
//! `ttc-run calibrate`), prints how it does on held-out questions, and saves it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ttc_allocator::calibrate::read_labels;
use ttc_allocator::menu;
use ttc_allocator::probe::{Probe, ProbeMetaBase, TrainOptions};
use ttc_engine::Engine;

pub fn train_and_save(engine: &Engine, labels: &[PathBuf], out: &Path) -> Result<()> {
    let mut questions = Vec::new();
    let mut header = None;
    for path in labels {
        let file = read_labels(path)?;
        anyhow::ensure!(
            file.header.model == engine.name,
            "{} holds labels of model {}, not {}",
            path.display(),
            file.header.model,
            engine.name
        );
        if let Some(h) = &header {
            anyhow::ensure!(
                file.header == *h,
                "{} was labelled with other settings than {}",
                path.display(),
                labels[0].display()
            );
        }
        header = Some(file.header);
        questions.extend(file.questions);
    }
    let header = header.ok_or_else(|| anyhow::anyhow!("no labels file given"))?;
    let menu: Vec<_> = menu::default_menu()
        .into_iter()
        .filter(|c| questions.iter().any(|q| q.outcome(c).is_some()))
        .collect();
    let base = ProbeMetaBase {
        model: engine.name.clone(),
        instruction: header.instruction.clone(),
        samples: header.samples,
        max_tokens: header.max_tokens,
        datasets: sources(&questions),
    };
    let opts = TrainOptions::default();
    eprintln!(
        "training the probe on {} questions x {} configurations ({} hyperparameter settings, each cross-validated in {} folds)",
        questions.len(),
        menu.len(),
        opts.candidates().len(),
        ttc_allocator::probe::FOLDS
    );
    let mut probe = Probe::train(&questions, &menu, base, &opts, |i, of, h| {
        println!(
            "  [{i}/{of}] components {:>2}, width {:>2}, weight decay {:<4}: out-of-fold log-loss {:.4} at epoch {}",
            h.components, h.mlp_width, h.weight_decay, h.cv_log_loss, h.epochs
        );
    })?;
    // The prompt-kind head is trained apart (train-kind): a probe file being replaced keeps its.
    if let Some((head, meta)) = Probe::load(out).ok().and_then(|old| old.kind_head()) {
        probe = probe.with_kind_head(head, meta)?;
        println!("kept the prompt-kind head of {}", out.display());
    }
    let r = &probe.meta.report;
    println!(
        "chosen by cross-validation on the training part: {} components, width {}, epoch {}",
        probe.meta.components, probe.meta.mlp_width, r.epochs
    );
    // The held-out questions are the test part: neither fitted on nor used to stop or to
    // Platt-scale (ttc_allocator::probe::Part::Test).
    println!(
        "held-out log-loss: probe {:.4}, constant {:.4}, per-configuration mean {:.4} ({} held-out questions, {} trained on, epoch {} and Platt scaling chosen by {}-fold cross-validation)",
        r.heldout_log_loss, r.constant_log_loss, r.per_config_log_loss, r.heldout_questions, r.train_questions, r.epochs, r.cv_folds
    );
    println!(
        "held-out answer length: mean |log error| {:.3} (x{:.2}); the length head's ridge penalty {} (out of fold {:.3})",
        r.heldout_length_log_error,
        r.heldout_length_log_error.exp(),
        r.length_penalty,
        r.length_cv_log_error
    );
    println!(
        "platt: a={:.3} b={:.3}",
        probe.meta.platt[0], probe.meta.platt[1]
    );
    probe.save(out)?;
    println!("saved {}", out.display());
    Ok(())
}

/// "suite: N questions" per source, read off the question ids (`lookup-3`, `train.jsonl:17`).
fn sources(questions: &[ttc_allocator::calibrate::QuestionLabels]) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for q in questions {
        let source =
            q.id.rsplit_once(':')
                .map(|(f, _)| f)
                .or_else(|| q.id.rsplit_once('-').map(|(s, _)| s))
                .unwrap_or(&q.id);
        *counts.entry(source).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(s, n)| format!("{s}: {n} questions"))
        .collect()
}
