//! The allocator's targets (issue "The allocator"), measured on this machine with the default
//! model, its shipped (or cached) probe and this machine's latency profile:
//! - latency and token prediction: for COUNT held-out prompts x 8 configurations, each run for
//!   real, the mean predicted against the mean measured per configuration, the share within the
//!   predicted p90, and |predicted - measured| / measured, where the prediction is what the
//!   allocator knew before the run (predicted tokens and steps), as `ttc-run` does it: starting
//!   from the profile as `ttc-run profile` leaves it (the step grid and the correction factors
//!   of one run per kind), each finished run refining its kind's factor; also without that
//!   refinement, and the device model alone (given the run's real tokens and steps);
//! - decision overhead: seconds from the end of the prefill to the start of the chosen run;
//! - monotonicity: on every prompt, raising lambda_L never raises the chosen configuration's
//!   predicted latency, and raising lambda_T never raises its predicted tokens.
//!
//! cargo run --release -p ttc-e2e --example allocator_report [-- COUNT]

use ttc_allocator::dataset::{self, Split};
use ttc_allocator::policy::{choose, Allocator, Lambdas};
use ttc_allocator::route::{self, Request};
use ttc_allocator::{prompt, Config};
use ttc_methods::{answer, Method, MethodConfig};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// One configuration's runs: predicted and measured latency and tokens.
struct Row {
    config: Config,
    errors: Vec<f64>,
    predicted_s: Vec<f64>,
    measured_s: Vec<f64>,
    predicted_tokens: Vec<f64>,
    measured_tokens: Vec<f64>,
    within_p90: usize,
}

impl Row {
    fn new(config: Config) -> Self {
        Self {
            config,
            errors: Vec::new(),
            predicted_s: Vec::new(),
            measured_s: Vec::new(),
            predicted_tokens: Vec::new(),
            measured_tokens: Vec::new(),
            within_p90: 0,
        }
    }
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let engine = ttc_e2e::engine();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (mut alloc, sources) = Allocator::for_engine(
        engine,
        threads,
        None,
        |m| eprintln!("note: {m}"),
        |_, _, _| {},
    )
    .expect("allocator");
    // Start from the profile as `ttc-run profile` leaves it (the step grid, and one real run
    // of each kind for the correction factors), whatever earlier runs refined.
    alloc.profile.corrections.clear();
    ttc_allocator::corrections::measure(engine, &mut alloc.profile, |_, _, _| {})
        .expect("correction runs");
    let fixed = alloc.profile.clone();
    eprintln!("profile {}, probe {:?}", sources.profile, sources.probe);
    let max_tokens = alloc.max_tokens().unwrap_or(96);
    let problems: Vec<_> = dataset::load("builtin:mixed", Split::Test)
        .expect("suite")
        .into_iter()
        .take(count)
        .collect();
    let configs: Vec<Config> = [
        "greedy",
        "majority@4",
        "majority@8",
        "majority-adaptive@8",
        "best-of-n@8",
        "weighted@16",
        "beam(4,2,10)",
        "dvts(8,2,10)",
    ]
    .iter()
    .map(|s| s.parse().expect("config"))
    .collect();
    let base = MethodConfig::new(Method::Greedy, max_tokens)
        .max_iters(10)
        .seed(11);
    let (mut full_err, mut fixed_err, mut device_err, mut decision_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut rows: Vec<Row> = configs.iter().map(|c| Row::new(*c)).collect();
    let mut monotone_violations = 0;
    for (i, p) in problems.iter().enumerate() {
        let ids = route::PromptIds {
            plain: prompt::encode(engine, &p.question, None, None).expect("prompt"),
            instructed: prompt::encode(
                engine,
                &p.question,
                Some(answer::DEFAULT_INSTRUCTION),
                None,
            )
            .expect("prompt"),
        };
        for (j, c) in configs.iter().enumerate() {
            let req = Request {
                lambdas: Lambdas::DEFAULT,
                target: None,
                max_latency: None,
                forced: Some(*c),
                base: base.clone(),
                open_max_tokens: base.max_tokens,
                background_width: 0,
            };
            let (r, d) = route::answer(engine, &alloc, &ids, &req).expect("run");
            let measured = r.timing.total_s;
            let e = (d.predicted.latency_s - measured).abs() / measured;
            let e_fixed = (fixed.latency_s(&d.predicted.work) - measured).abs() / measured;
            let e_dev = (fixed.latency_s(&route::observed_work(&r)) - measured).abs() / measured;
            alloc.profile.observe(&route::observed_work(&r), measured);
            full_err.push(e);
            fixed_err.push(e_fixed);
            device_err.push(e_dev);
            let row = &mut rows[j];
            row.errors.push(e);
            row.measured_s.push(measured);
            row.predicted_s.push(d.predicted.latency_s);
            row.within_p90 += usize::from(measured <= d.predicted.latency_p90_s);
            row.measured_tokens.push(r.generated_tokens as f64);
            row.predicted_tokens.push(d.predicted.tokens);
        }
        // Auto on the same prompt: the decision's cost, and monotonicity of its predictions.
        let req = Request {
            lambdas: Lambdas::DEFAULT,
            target: None,
            max_latency: None,
            forced: None,
            base: base.clone().max_tokens(1),
            open_max_tokens: 1,
            background_width: 0,
        };
        let (_, d) = route::answer(engine, &alloc, &ids, &req).expect("auto");
        decision_ms.push(d.decision_s * 1e3);
        let (mut last_l, mut last_t) = (f64::INFINITY, f64::INFINITY);
        for k in 0..400 {
            let l = d.menu[choose(
                &d.menu,
                Lambdas {
                    tokens: 0.0,
                    latency: k as f64 * 0.001,
                },
            )]
            .latency_s;
            let t = d.menu[choose(
                &d.menu,
                Lambdas {
                    tokens: k as f64 * 1e-5,
                    latency: 0.01,
                },
            )]
            .tokens;
            monotone_violations += usize::from(l > last_l) + usize::from(t > last_t);
            (last_l, last_t) = (l, t);
        }
        eprintln!("{}/{} done", i + 1, problems.len());
    }
    println!("| configuration | predicted mean latency | measured | ratio | predicted mean tokens | measured | ratio | within p90 | median error |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        let (pl, ml) = (mean(&r.predicted_s), mean(&r.measured_s));
        let (pt, mt) = (mean(&r.predicted_tokens), mean(&r.measured_tokens));
        println!(
            "| {} | {pl:.3} s | {ml:.3} s | {:.2} | {pt:.1} | {mt:.1} | {:.2} | {:.0}% | {:.1}% |",
            r.config,
            pl / ml,
            pt / mt,
            100.0 * r.within_p90 as f64 / r.measured_s.len() as f64,
            100.0 * median(r.errors.clone()),
        );
    }
    println!();
    println!(
        "latency prediction over {} runs ({} prompts x {} configurations):",
        full_err.len(),
        problems.len(),
        configs.len()
    );
    println!("  median |predicted - measured| / measured: {:.1}% (before the run: predicted tokens and steps; corrections refined by the runs before)", 100.0 * median(full_err.clone()));
    println!(
        "  the same without refinement (the measured profile alone): {:.1}%",
        100.0 * median(fixed_err)
    );
    println!(
        "  the device model alone, unrefined, given the run's real tokens and steps: {:.1}%",
        100.0 * median(device_err)
    );
    for (kind, c) in &alloc.profile.corrections {
        println!(
            "  learned correction for {kind:?} runs: {:.3} ({} runs)",
            c.factor, c.observations
        );
    }
    println!(
        "  share of runs within 15%: {:.0}%",
        100.0 * full_err.iter().filter(|&&e| e <= 0.15).count() as f64 / full_err.len() as f64
    );
    println!(
        "decision overhead after the prefill: median {:.3} ms, max {:.3} ms",
        median(decision_ms.clone()),
        decision_ms.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "monotonicity violations over 400-step lambda sweeps on {} prompts: {monotone_violations}",
        problems.len()
    );
}
