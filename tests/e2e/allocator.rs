//! The allocator on the real model: a latency profile measured on this machine predicts runs
//! at widths it did not measure; labels made by repeated sampling train a probe that beats a
//! constant on held-out questions; labelling resumes instead of redoing work.

use std::sync::Mutex;

use ttc_allocator::calibrate::{label_dataset, read_labels, LabelHeader};
use ttc_allocator::corrections;
use ttc_allocator::dataset::{self, Split};
use ttc_allocator::latency::{Grid, LatencyProfile, ProfileKey, WorkKind};
use ttc_allocator::menu::{default_menu, Config};
use ttc_allocator::probe::{Probe, ProbeMetaBase, TrainOptions};
use ttc_allocator::route::observed_work;
use ttc_e2e::{engine, scratch_dir};
use ttc_methods::{Method, MethodConfig};

/// Timings are only meaningful when the tests of this file do not run at once.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn method(c: Config, max_tokens: usize) -> MethodConfig {
    c.method_config(&MethodConfig::new(Method::Greedy, max_tokens).seed(3))
}

#[test]
fn a_measured_profile_predicts_runs_at_widths_it_did_not_measure() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let engine = engine();
    let grid = Grid {
        contexts: vec![32, 160],
        widths: vec![1, 4, 16],
        steps: 6,
    };
    let mut calls = 0;
    let profile = LatencyProfile::measure(
        engine,
        ProfileKey::for_engine(engine, 2),
        &grid,
        |done, total, _| {
            calls += 1;
            assert!(done <= total);
        },
    )
    .unwrap();
    assert_eq!(calls, grid.measurements());
    assert!(profile.prefill_s(160) > profile.prefill_s(32));
    for c in [32.0, 160.0] {
        // A 16-wide step does far more work than a single one.
        assert!(
            profile.step_s(16.0, c) > 2.0 * profile.step_s(1.0, c),
            "context {c}"
        );
    }
    // Width 8 and beam search's sequential steps were never measured: the model predicts
    // them from what the run really did (its tokens and steps).
    let ids = engine
        .encode_chat(&[ttc_engine::chat_template::Message::new(
            "user",
            "What is 4 + 5? End with \"The answer is N.\"",
        )])
        .unwrap();
    for c in [
        Config::parallel(Method::Majority, 8),
        Config::search(Method::Beam, 4, 2, 3),
    ] {
        // This machine is noisy: one slow or fast moment moves a sub-second run by half, so
        // the better of three runs is held to the bound (a wrong model misses it on all).
        let errors: Vec<(f64, f64, f64)> = (0..3)
            .map(|_| {
                let r = ttc_methods::run(engine, &ids, &method(c, 24)).unwrap();
                let predicted = profile.latency_s(&observed_work(&r));
                let error = (predicted - r.timing.total_s).abs() / r.timing.total_s;
                (error, predicted, r.timing.total_s)
            })
            .collect();
        let best =
            errors.iter().copied().fold(
                (f64::INFINITY, 0.0, 0.0),
                |a, e| if e.0 < a.0 { e } else { a },
            );
        assert!(
            best.0 < 0.5,
            "{c}: predicted against measured, three runs: {errors:?}"
        );
    }
}

#[test]
fn a_new_profile_takes_each_kinds_correction_from_real_runs() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let engine = engine();
    let mut profile = LatencyProfile::measure(
        engine,
        ProfileKey::for_engine(engine, 2),
        &Grid::brief(),
        |_, _, _| {},
    )
    .unwrap();
    let kinds: Vec<WorkKind> = corrections::configs()
        .iter()
        .map(|c| WorkKind::of(c.method))
        .collect();
    assert!(kinds.iter().all(|&k| profile.correction(k) == 1.0));
    let mut labels = Vec::new();
    let ratios = corrections::measure(engine, &mut profile, |done, total, label| {
        assert!(done <= total);
        labels.push(label.to_string());
    })
    .unwrap();
    assert_eq!(labels.len(), kinds.len());
    assert!(kinds.contains(&WorkKind::Search) && kinds.len() > 3);
    // Each kind's factor is the mean of its runs' ratios, each bounded to [0.25, 4].
    for kind in [WorkKind::Greedy, WorkKind::Parallel, WorkKind::Search] {
        let mine: Vec<f64> = ratios
            .iter()
            .zip(&kinds)
            .filter(|(_, k)| **k == kind)
            .map(|((_, r), _)| r.clamp(0.25, 4.0))
            .collect();
        assert!(mine.iter().all(|r| r.is_finite() && *r > 0.0), "{ratios:?}");
        let mean = mine.iter().sum::<f64>() / mine.len() as f64;
        let factor = profile.correction(kind);
        assert!(
            (factor - mean).abs() < 1e-9,
            "{kind:?}: factor {factor}, ratios {ratios:?}"
        );
        eprintln!("{kind:?}: factor {factor:.3} from {mine:?}");
    }
}

#[test]
fn labels_resume_and_a_probe_trained_on_them_beats_a_constant() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let engine = engine();
    // The easiest and a hard suite: whether the model is right is visible in its hidden state.
    let lookup = dataset::load("builtin:lookup", Split::Train).unwrap();
    let hard = dataset::load("builtin:multidigit", Split::Train).unwrap();
    let problems: Vec<_> = lookup
        .into_iter()
        .take(12)
        .zip(hard.into_iter().take(12))
        .flat_map(|(a, b)| [a, b])
        .collect();
    let header = LabelHeader {
        ttc_labels: 1,
        model: engine.name.clone(),
        samples: 4,
        max_tokens: 16,
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        instruction: ttc_methods::answer::DEFAULT_INSTRUCTION.into(),
        search: vec![Config::search(Method::Beam, 4, 2, 2)],
        seed: 1,
    };
    let dir = scratch_dir("allocator-labels");
    let path = dir.join("labels.jsonl");
    std::fs::remove_file(&path).ok();
    // Half now, then all: the first half is not labelled again.
    label_dataset(engine, &problems[..12], &header, &path, None, |_, _| {}).unwrap();
    let first = std::fs::read_to_string(&path).unwrap();
    let mut progress = Vec::new();
    label_dataset(engine, &problems, &header, &path, None, |done, total| {
        progress.push((done, total))
    })
    .unwrap();
    assert_eq!(
        progress.first(),
        Some(&(12, 24)),
        "resumed after the 12 done"
    );
    assert!(std::fs::read_to_string(&path).unwrap().starts_with(&first));
    let labels = read_labels(&path).unwrap();
    assert_eq!(labels.questions.len(), 24);
    let other = LabelHeader {
        samples: 8,
        ..header.clone()
    };
    assert!(
        label_dataset(engine, &problems, &other, &path, None, |_, _| {})
            .unwrap_err()
            .to_string()
            .contains("other settings")
    );

    let menu: Vec<Config> = default_menu()
        .into_iter()
        .filter(|c| labels.questions[0].outcome(c).is_some())
        .collect();
    assert!(menu.len() >= 4, "{menu:?}");
    let base = ProbeMetaBase {
        model: engine.name.clone(),
        instruction: header.instruction.clone(),
        samples: 4,
        max_tokens: 16,
        datasets: vec![],
    };
    let probe = Probe::train(
        &labels.questions,
        &menu,
        base,
        &TrainOptions {
            // One setting: the hyperparameter search has its own unit test.
            search: None,
            ..TrainOptions::default()
        },
        |_, _, _| {},
    )
    .unwrap();
    let r = &probe.meta.report;
    assert!(r.heldout_questions >= 2, "{r:?}");
    assert!(r.heldout_log_loss < r.constant_log_loss, "{r:?}");

    // Saved and loaded, it predicts the same.
    let file = dir.join("probe.safetensors");
    probe.save(&file).unwrap();
    let loaded = Probe::load(&file).unwrap();
    let q = &labels.questions[0];
    let a = probe.accuracy(&q.hidden, q.prompt_tokens, &menu).unwrap();
    let b = loaded.accuracy(&q.hidden, q.prompt_tokens, &menu).unwrap();
    assert!(
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9),
        "{a:?} vs {b:?}"
    );
    assert!(a.iter().all(|p| (0.0..=1.0).contains(p)));
    let len = loaded.sample_tokens(&q.hidden, q.prompt_tokens).unwrap();
    assert!((1.0..=16.0).contains(&len), "{len}");
    // A probe of another model is refused with a clear error.
    assert!(loaded
        .accuracy(&[0.0; 7], 10, &menu)
        .unwrap_err()
        .to_string()
        .contains("hidden state"));
}

/// The load-aware allocator: with other sequences decoding in the same passes, every
/// configuration's predicted latency grows by its steps at the busier width, so at the same
/// prices a busy server never chooses a configuration of more sequential steps than an idle
/// one would.
#[test]
fn a_busy_server_prices_steps_higher_and_never_chooses_a_longer_run() {
    // Its runs would share decode passes with the profile test's measurements.
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use ttc_allocator::policy::{Allocator, Lambdas};
    use ttc_allocator::route::{self, PromptIds, Request};
    use ttc_engine::chat_template::Message;
    let e = engine();
    let (mut alloc, _) = Allocator::for_engine(e, 2, None, |_| {}, |_, _, _| {}).unwrap();
    // What is checked is the load's price alone: with one correction factor for every kind,
    // extra width adds the same seconds per step to every configuration, so a busy choice
    // never has more steps. The kinds' own factors (which `ttc-run profile` measures and
    // every finished `ttc-run` refines; CI's runs left parallel at 1.35 and search at 1.0)
    // scale that price per kind and would mix a second effect into the test.
    alloc.profile.corrections.clear();
    let q = "What is 6 + 7?";
    let ids = PromptIds {
        plain: e.encode_chat(&[Message::new("user", q)]).unwrap(),
        instructed: e
            .encode_chat(&[Message::new(
                "user",
                ttc_allocator::prompt::user_message(
                    q,
                    Some(ttc_methods::answer::DEFAULT_INSTRUCTION),
                ),
            )])
            .unwrap(),
    };
    for latency in [0.001, 0.01, 0.05] {
        let decide = |background_width: usize| {
            e.clear_prefix_cache();
            let req = Request {
                lambdas: Lambdas {
                    latency,
                    tokens: 0.0,
                },
                target: None,
                max_latency: None,
                forced: None,
                base: MethodConfig::new(Method::Greedy, 8).seed(3),
                open_max_tokens: 8,
                background_width,
            };
            route::answer(e, &alloc, &ids, &req).unwrap().1
        };
        let (idle, busy) = (decide(0), decide(48));
        assert_eq!(busy.background_width, 48);
        assert!(!idle.menu.is_empty());
        for (a, b) in idle.menu.iter().zip(&busy.menu) {
            assert_eq!(a.config, b.config);
            assert!(
                b.latency_s > a.latency_s,
                "{}: {} !> {}",
                a.config,
                b.latency_s,
                a.latency_s
            );
        }
        assert!(
            busy.predicted.work.steps <= idle.predicted.work.steps + 1e-9,
            "lambda_L={latency}: busy chose {} ({} steps), idle {} ({} steps)",
            busy.predicted.config,
            busy.predicted.work.steps,
            idle.predicted.config,
            idle.predicted.work.steps
        );
    }
}
