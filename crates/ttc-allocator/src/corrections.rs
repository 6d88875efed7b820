//! The latency model's correction factors, measured when a profile is made: real runs of each
//! kind (greedy, a parallel vote, each search configuration of the menu) on a fixed question,
//! each observed as a finished request would be ([`LatencyProfile::observe`]).
//!
//! The step grid times forward passes with sampling; what it does not see differs by kind
//! (greedy samples by argmax; wide runs reach contexts where a step costs more than the grid
//! interpolates: a search's time outside its steps was measured at a few milliseconds). On a fresh profile every factor was
//! 1 until requests of that kind had run, so the first beam searches were priced well under
//! what they took (the figures are in the README, "The allocator"). Later requests keep
//! refining the factors as before.

use ttc_engine::sampler::SamplingParams;
use ttc_engine::Engine;
use ttc_methods::answer::DEFAULT_INSTRUCTION;
use ttc_methods::{Method, MethodConfig};

use crate::latency::LatencyProfile;
use crate::menu::Config;
use crate::{prompt, route, Result};

/// The question the runs answer: a two-step word problem, as the built-in `word` suite asks.
const QUESTION: &str =
    "A baker makes 4 trays of 12 rolls each and sells 19 of them. How many rolls are left?";

/// Answers are capped here: long enough for a beam search's several steps, short enough to
/// keep the runs to a few seconds on a small model.
const MAX_TOKENS: usize = 128;

/// The configurations run: greedy, one parallel vote, and every search configuration of the
/// default menu. Searches of different shapes carry different overhead over the step grid,
/// and they share one factor, so all of them go into it.
pub fn configs() -> Vec<Config> {
    let mut v = vec![Config::GREEDY, Config::parallel(Method::Majority, 4)];
    v.extend(
        crate::menu::default_menu()
            .into_iter()
            .filter(|c| c.method.is_search()),
    );
    v
}

/// Runs each of [`configs`] once on `engine` and refines `profile`'s factors with what it
/// took; `on_progress(done, total, label)` after each. Returns (label, measured / predicted).
pub fn measure(
    engine: &Engine,
    profile: &mut LatencyProfile,
    mut on_progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<(String, f64)>> {
    let ids = prompt::encode(engine, QUESTION, Some(DEFAULT_INSTRUCTION), None)?;
    let base = MethodConfig::new(Method::Greedy, MAX_TOKENS)
        .params(SamplingParams::default())
        .seed(1);
    let configs = configs();
    let mut ratios = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        let r = ttc_methods::run(engine, &ids, &c.method_config(&base))?;
        let work = route::observed_work(&r);
        let measured = route::generation_s(&r);
        let predicted = profile.raw_latency_s(&work);
        profile.observe(&work, measured);
        ratios.push((c.label(), measured / predicted.max(1e-9)));
        on_progress(i + 1, configs.len(), &c.label());
    }
    Ok(ratios)
}
