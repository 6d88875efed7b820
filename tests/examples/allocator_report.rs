//! The allocator's targets (issue "The allocator"), measured on this machine with the default
//! model, its shipped (or cached) probe and this machine's latency profile:
//! - latency prediction: for COUNT held-out prompts x 6 configurations, |predicted - measured| /
//!   measured, where the prediction is what the allocator knew before the run (predicted tokens
//!   and steps), as `ttc-run` does it: starting from the measured profile with no corrections,
//!   each finished run refining its kind's correction; also without any refinement, and the
//!   device model alone (given the run's real tokens and steps);
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
    // Start from the measurements alone, whatever earlier runs refined.
    alloc.profile.corrections.clear();
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
    let mut rows: Vec<(Config, Vec<f64>, Vec<f64>)> = configs
        .iter()
        .map(|c| (*c, Vec::new(), Vec::new()))
        .collect();
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
            rows[j].1.push(e);
            rows[j].2.push(measured);
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
    println!("| configuration | median error | mean measured latency |");
    println!("| --- | ---: | ---: |");
    for (c, e, m) in &rows {
        println!(
            "| {c} | {:.1}% | {:.2} s |",
            100.0 * median(e.clone()),
            m.iter().sum::<f64>() / m.len() as f64
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
