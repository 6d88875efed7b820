//! `ttc-run eval`: the paper's experiment on this engine and device. Labels the dataset the way
//! calibration does (resumable: `labels.jsonl` in --out is the results cache; Ctrl-C stops and
//! keeps what is done), then reports every static configuration and the allocator at a sweep
//! of prices, writes CSV, JSON and two plots (accuracy against mean tokens and against mean
//! latency), and checks the target: the allocator's frontier at or above every static point.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use serde::Serialize;
use ttc_allocator::calibrate::{label_dataset, read_labels, LabelHeader};
use ttc_allocator::dataset;
use ttc_allocator::evaluate::{check_configs, default_sweep, evaluate, AdaptiveRow, Evaluation};
use ttc_allocator::policy::{Lambdas, Target};

use crate::args::EvalArgs;

pub fn run(args: &EvalArgs) -> Result<()> {
    let mut problems = dataset::load(&args.dataset, args.split)?;
    if let Some(k) = args.limit {
        problems.truncate(k);
    }
    anyhow::ensure!(
        !problems.is_empty(),
        "{} has no questions in that split",
        args.dataset
    );
    let engine = super::load_engine(&args.model)?;
    let (alloc, sources) = super::load_allocator(&engine, args.probe.as_deref())?;
    let probe = alloc.probe.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "eval needs an accuracy probe for {}: run `ttc-run calibrate` first",
            engine.name
        )
    })?;
    let s = &args.sampling;
    let header = LabelHeader {
        ttc_labels: 1,
        model: engine.name.clone(),
        samples: args.samples,
        max_tokens: probe.meta.tokens.max_tokens,
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        instruction: probe.meta.instruction.clone(),
        search: alloc
            .menu
            .iter()
            .filter(|c| c.method.is_search())
            .copied()
            .collect(),
        seed: s.seed,
    };
    let configs = args
        .configs
        .as_ref()
        .map(|l| l.0.clone())
        .unwrap_or_else(|| alloc.menu.clone());
    // Before labelling, which takes minutes: a configuration these labels cannot score fails now.
    check_configs(&header, &configs)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let labels_path = args.out.join("labels.jsonl");
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::Relaxed))?;
    }
    let bar = ProgressBar::new(problems.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "eval [{bar:30}] {pos}/{len} questions, {elapsed} elapsed, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let complete = label_dataset(
        &engine,
        &problems,
        &header,
        &labels_path,
        Some(&cancel),
        |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    if !complete {
        eprintln!(
            "ttc: stopped; the questions finished so far are kept in {} and reported below",
            labels_path.display()
        );
    }
    let wanted: std::collections::HashSet<&str> = problems.iter().map(|p| p.id.as_str()).collect();
    let questions: Vec<_> = read_labels(&labels_path)?
        .questions
        .into_iter()
        .filter(|q| wanted.contains(q.id.as_str()))
        .collect();
    anyhow::ensure!(!questions.is_empty(), "no question was labelled");
    let sweep: Vec<Lambdas> = if args.lambdas.is_empty() && args.token_lambdas.is_empty() {
        default_sweep()
    } else {
        let ok = |x: &f64| x.is_finite() && *x >= 0.0;
        anyhow::ensure!(
            args.lambdas.iter().all(ok) && args.token_lambdas.iter().all(ok),
            "lambdas must be finite and at least 0"
        );
        args.lambdas
            .iter()
            .map(|&l| Lambdas {
                tokens: 0.0,
                latency: l,
            })
            .chain(args.token_lambdas.iter().map(|&t| Lambdas {
                tokens: t,
                latency: 0.0,
            }))
            .collect()
    };
    let ok = |x: &f64| x.is_finite() && *x > 0.0;
    anyhow::ensure!(
        args.target_latency.iter().all(ok) && args.target_tokens.iter().all(ok),
        "--target-latency and --target-tokens must be positive"
    );
    let budgets: Vec<Target> = args
        .target_latency
        .iter()
        .map(|&s| Target::Latency(s))
        .chain(args.target_tokens.iter().map(|&t| Target::Tokens(t)))
        .collect();
    let ev = evaluate(&alloc, &questions, &configs, &sweep, &budgets)?;
    write_outputs(&args.out, &ev)?;
    if args.json {
        println!("{}", serde_json::to_string(&ev)?);
        return Ok(());
    }
    println!(
        "{} questions of {} ({:?} split); probe: {}; latency profile: {}",
        questions.len(),
        args.dataset,
        args.split,
        sources.probe.as_deref().unwrap_or("-"),
        sources.profile
    );
    print!("{}", tables(&ev));
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Markdown tables of the static and adaptive rows, and the target check.
pub fn tables(ev: &Evaluation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| configuration | accuracy | mean tokens | mean latency | p50 | p95 | latency |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in &ev.static_rows {
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {} |",
            r.config,
            r.accuracy,
            r.mean_tokens,
            r.mean_latency_s,
            r.p50_latency_s,
            r.p95_latency_s,
            r.latency_source
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| lambda_T | lambda_L | accuracy | mean tokens | mean latency | p50 | p95 | chosen |"
    );
    let _ = writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in &ev.adaptive {
        let mut chosen: Vec<(&String, &f64)> = r.chosen.iter().collect();
        chosen.sort_by(|a, b| b.1.total_cmp(a.1));
        let chosen: Vec<String> = chosen
            .iter()
            .map(|(c, f)| format!("{c} {:.0}%", **f * 100.0))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {} |",
            r.lambda_tokens,
            r.lambda_latency,
            r.accuracy,
            r.mean_tokens,
            r.mean_latency_s,
            r.p50_latency_s,
            r.p95_latency_s,
            chosen.join(", ")
        );
    }
    let o = &ev.oracle;
    let _ = writeln!(
        s,
        "\noracle (the best menu configuration per question in hindsight): accuracy {:.3}, {:.0} tokens, {:.2} s; gap from the best static point to it closed by the allocator at that point's latency: {}",
        o.accuracy,
        o.mean_tokens,
        o.mean_latency_s,
        o.gap_closed
            .map(|g| format!("{:.0}%", g * 100.0))
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        s,
        "\n| configuration | predicted tokens | measured | ratio | predicted latency | measured | ratio | within p90 | latency |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for r in &ev.predictions {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2} | {:.3} s | {:.3} s | {:.2} | {:.0}% | {} |",
            r.config,
            r.predicted_tokens,
            r.measured_tokens,
            r.predicted_tokens / r.measured_tokens,
            r.predicted_latency_s,
            r.measured_latency_s,
            r.predicted_latency_s / r.measured_latency_s,
            r.within_p90 * 100.0,
            r.latency_source
        );
    }
    if !ev.budgets.is_empty() {
        let _ = writeln!(
            s,
            "\n| budget | target | lambda | share run at the price just below | predicted mean | realized mean | realized / target | accuracy |"
        );
        let _ = writeln!(
            s,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for b in &ev.budgets {
            let _ = writeln!(
                s,
                "| {} | {} | {:.3e} | {:.0}% | {:.3} | {:.3} | {:.2} | {:.3} |",
                b.budget,
                b.target,
                b.lambda,
                b.p_over * 100.0,
                b.predicted_mean,
                b.realized_mean,
                b.realized_mean / b.target,
                b.accuracy
            );
        }
    }
    let t = &ev.target;
    let pct = |x: Option<f64>| {
        x.map(|v| format!("{:.0}%", v * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let _ = writeln!(
        s,
        "\ntarget: best static {} at {:.3}; allocator at no more latency: {}; cheapest allocator point within 2 points: {} of its latency, {} of its tokens; met: {}",
        t.best_static,
        t.best_static_accuracy,
        t.adaptive_accuracy_at_its_latency.map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into()),
        pct(t.latency_share_within_2_points),
        pct(t.token_share_within_2_points),
        t.met
    );
    s
}

/// A row of `adaptive.csv`: an [`AdaptiveRow`] with its chosen shares in one field
/// (`config=share` separated by spaces), as CSV has no nested values.
#[derive(Serialize)]
struct AdaptiveCsvRow {
    lambda_tokens: f64,
    lambda_latency: f64,
    accuracy: f64,
    mean_tokens: f64,
    mean_latency_s: f64,
    p50_latency_s: f64,
    p95_latency_s: f64,
    questions: usize,
    chosen: String,
}

impl From<&AdaptiveRow> for AdaptiveCsvRow {
    fn from(r: &AdaptiveRow) -> Self {
        let chosen: Vec<String> = r
            .chosen
            .iter()
            .map(|(c, f)| format!("{c}={f:.3}"))
            .collect();
        Self {
            lambda_tokens: r.lambda_tokens,
            lambda_latency: r.lambda_latency,
            accuracy: r.accuracy,
            mean_tokens: r.mean_tokens,
            mean_latency_s: r.mean_latency_s,
            p50_latency_s: r.p50_latency_s,
            p95_latency_s: r.p95_latency_s,
            questions: r.questions,
            chosen: chosen.join(" "),
        }
    }
}

/// Writes `rows` as CSV with a header of their field names. Through the csv crate, so a field
/// with a comma (`beam(4,2,10)`) or a quote is quoted.
fn write_csv<T: Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    let mut w =
        csv::Writer::from_path(path).with_context(|| format!("writing {}", path.display()))?;
    for r in rows {
        w.serialize(r)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_outputs(dir: &Path, ev: &Evaluation) -> Result<()> {
    write_csv(&dir.join("static.csv"), &ev.static_rows)?;
    write_csv(
        &dir.join("adaptive.csv"),
        ev.adaptive.iter().map(AdaptiveCsvRow::from),
    )?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(ev)?)?;
    plot(
        &dir.join("accuracy_vs_tokens.svg"),
        ev,
        "mean generated tokens per question",
        |r| r.0,
        |a| a.0,
    )?;
    plot(
        &dir.join("accuracy_vs_latency.svg"),
        ev,
        "mean latency per question (s)",
        |r| r.1,
        |a| a.1,
    )?;
    Ok(())
}

/// Static points (labelled), the allocator's sweep points and its frontier (the points no
/// cheaper point is as accurate as), cost on a log axis.
fn plot(
    path: &Path,
    ev: &Evaluation,
    x_label: &str,
    static_x: impl Fn((f64, f64)) -> f64,
    adaptive_x: impl Fn((f64, f64)) -> f64,
) -> Result<()> {
    let statics: Vec<(f64, f64, String)> = ev
        .static_rows
        .iter()
        .map(|r| {
            (
                static_x((r.mean_tokens, r.mean_latency_s)),
                r.accuracy,
                r.config.to_string(),
            )
        })
        .collect();
    let mut points: Vec<(f64, f64)> = ev
        .adaptive
        .iter()
        .map(|a| (adaptive_x((a.mean_tokens, a.mean_latency_s)), a.accuracy))
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    // The frontier: the sweep points no cheaper point is as accurate as.
    let mut frontier: Vec<(f64, f64)> = Vec::new();
    for &p in &points {
        if frontier.last().is_none_or(|l| p.1 > l.1) {
            frontier.push(p);
        }
    }
    let frontier_line = frontier.clone();
    let frontier = points;
    let oracle = (
        static_x((ev.oracle.mean_tokens, ev.oracle.mean_latency_s)),
        ev.oracle.accuracy,
    );
    let xs = statics
        .iter()
        .map(|p| p.0)
        .chain(frontier.iter().map(|p| p.0))
        .chain([oracle.0])
        .filter(|x| x.is_finite() && *x > 0.0);
    let (x_min, x_max) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let y_max = statics
        .iter()
        .map(|p| p.1)
        .chain(frontier.iter().map(|p| p.1))
        .chain([oracle.1])
        .fold(0.0f64, f64::max);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "accuracy against cost: static configurations and the allocator",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale(),
                0.0..(y_max * 1.15).max(0.05),
            )?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("accuracy")
            .draw()?;
        chart
            .draw_series(
                statics
                    .iter()
                    .map(|(x, y, _)| Circle::new((*x, *y), 5, BLUE.filled())),
            )?
            .label("static configuration")
            .legend(|(x, y)| Circle::new((x, y), 5, BLUE.filled()));
        chart.draw_series(statics.iter().map(|(x, y, name)| {
            Text::new(
                name.clone(),
                (*x, *y),
                ("sans-serif", 11).into_font().color(&BLACK),
            )
        }))?;
        chart
            .draw_series(LineSeries::new(
                frontier_line.iter().copied(),
                RED.stroke_width(2),
            ))?
            .label("allocator: frontier of the lambda sweep (x: each point)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart.draw_series(
            frontier
                .iter()
                .map(|&(x, y)| Cross::new((x, y), 5, RED.stroke_width(2))),
        )?;
        if oracle.0.is_finite() && oracle.0 > 0.0 {
            chart
                .draw_series([TriangleMarker::new(oracle, 7, GREEN.filled())])?
                .label("oracle: the best configuration per question, in hindsight")
                .legend(|(x, y)| TriangleMarker::new((x, y), 6, GREEN.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("plotting {}: {e}", path.display()))
}
