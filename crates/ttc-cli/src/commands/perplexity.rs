//! `ttc-run perplexity FILE`: the perplexity of a text as `llama-perplexity -f FILE -c N`
//! computes it (`ttc_engine::perplexity`), with a progress bar; `--save-logprobs` keeps every
//! scored row's log-probabilities and `--compare` measures another run against them (KL
//! divergence and top-token agreement, as `llama-perplexity --kl-divergence` does): how the
//! GPU's logits are checked against the CPU's, and one kernel set against another.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use ttc_engine::perplexity::{self, PerplexityOptions};

use crate::args::PerplexityArgs;

/// A text file larger than this is refused before it is read.
const MAX_TEXT_BYTES: u64 = 64 << 20;

#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    ppl: perplexity::Perplexity,
    compute_path: String,
    compared: Option<perplexity::DivergenceSummary>,
}

pub fn run(args: &PerplexityArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_TEXT_BYTES,
        "{} is {} bytes; at most {MAX_TEXT_BYTES} are read",
        args.file.display(),
        meta.len()
    );
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {} as UTF-8 text", args.file.display()))?;
    let engine = super::load_engine(&args.model)?;
    let vocab = engine.model.config().vocab_size;
    let tokens = perplexity::text_tokens(&engine, &text)?;

    let base = match &args.compare {
        Some(path) => Some(
            perplexity::load_logprobs(path, vocab)
                .with_context(|| format!("saved log-probabilities {}", path.display()))?,
        ),
        None => None,
    };
    let opts = PerplexityOptions {
        context: args.context,
        batch: args.batch,
        max_windows: args.chunks,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("perplexity {bar:30} {pos}/{len} windows  {msg}")
            .expect("a valid template"),
    );
    let mut saved: Vec<f32> = Vec::new();
    let mut targets: Vec<u32> = Vec::new();
    let mut divergence = perplexity::Divergence::default();
    let mut row_error: Option<anyhow::Error> = None;
    let mut on_row = |lp: &[f32], target: u32| {
        if args.save_logprobs.is_some() {
            saved.extend_from_slice(lp);
            targets.push(target);
        }
        if let Some((base_lp, base_targets)) = &base {
            let i = divergence.rows();
            if i >= base_targets.len() || base_targets[i] != target {
                row_error.get_or_insert_with(|| {
                    anyhow::anyhow!(
                        "the saved log-probabilities are of another text, model or context: \
                         row {i} differs"
                    )
                });
                return;
            }
            divergence.add(&base_lp[i * vocab..(i + 1) * vocab], lp, target);
        }
    };
    let wants_rows = args.save_logprobs.is_some() || base.is_some();
    let result = perplexity::perplexity(
        &engine,
        &tokens,
        &opts,
        |done, of, ppl| {
            bar.set_length(of as u64);
            bar.set_position(done as u64);
            bar.set_message(format!("ppl {ppl:.4}"));
        },
        if wants_rows { Some(&mut on_row) } else { None },
    );
    bar.finish_and_clear();
    let ppl = result?;
    if let Some(e) = row_error {
        return Err(e);
    }
    if let Some(path) = &args.save_logprobs {
        perplexity::save_logprobs(path, saved, targets, vocab)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let compared = match &base {
        Some((_, base_targets)) => {
            anyhow::ensure!(
                divergence.rows() == base_targets.len(),
                "the saved run scored {} rows, this one {}: another text, model or context",
                base_targets.len(),
                divergence.rows()
            );
            divergence.summary(ppl.ppl)
        }
        None => None,
    };
    let report = Report {
        ppl,
        compute_path: engine.model.compute_path().describe(),
        compared,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let p = &report.ppl;
    println!(
        "{}: {} tokens, {} windows of {}, {} scored ({})",
        engine.name, p.text_tokens, p.windows, p.context, p.scored_tokens, report.compute_path
    );
    println!("Final estimate: PPL = {:.4} +/- {:.5}", p.ppl, p.ppl_err);
    if let Some(c) = &report.compared {
        println!(
            "against the saved run (PPL {:.4}): ratio {:.6}, mean KLD {:.6}, 99% KLD {:.6}, \
             max KLD {:.6}, same top token {:.2}% of {} rows",
            c.base_ppl,
            c.ppl_ratio,
            c.mean_kld,
            c.p99_kld,
            c.max_kld,
            100.0 * c.same_top,
            c.rows
        );
    }
    Ok(())
}
