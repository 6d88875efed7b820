//! The process-reward-model scorer on a tiny random Qwen2 PRM that this test writes itself
//! (config.json, model.safetensors with a reward head, tokenizer.json): no PRM weights can be
//! fetched here, so this checks the loading, the step separators, the head and the last-step
//! aggregation, and the scorer inside a method on the real generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ttc_e2e::{engine, write_tiny_prm};
use ttc_engine::chat_template::Message;
use ttc_engine::reward_model::{RewardModel, STEP_SEPARATOR};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::EngineError;
use ttc_methods::{Method, MethodConfig, Scorer};

fn prm() -> &'static (PathBuf, RewardModel) {
    static PRM: std::sync::OnceLock<(PathBuf, RewardModel)> = std::sync::OnceLock::new();
    PRM.get_or_init(|| {
        let dir = write_tiny_prm("prm", true);
        let model = RewardModel::load(&dir, &Device::Cpu).unwrap();
        (dir, model)
    })
}

#[test]
fn each_step_gets_a_reward_in_unit_interval_and_scoring_is_deterministic() {
    let (_, m) = prm();
    let steps = ["First, add 7 and 4.", "7 + 4 = 11.", "The answer is 11."];
    let a = m.score_steps("What is 7 + 4?", &steps).unwrap();
    assert_eq!(a.rewards.len(), 3);
    assert!(
        a.rewards.iter().all(|r| *r > 0.0 && *r < 1.0),
        "{:?}",
        a.rewards
    );
    assert!(a.tokens > 20);
    let b = m.score_steps("What is 7 + 4?", &steps).unwrap();
    assert_eq!(a.rewards, b.rewards);
}

#[test]
fn a_steps_reward_depends_on_what_precedes_it_only() {
    let (_, m) = prm();
    let two = m
        .score_steps("What is 2 + 2?", &["Add them.", "2 + 2 = 4."])
        .unwrap();
    let three = m
        .score_steps(
            "What is 2 + 2?",
            &["Add them.", "2 + 2 = 4.", "The answer is 4."],
        )
        .unwrap();
    for (x, y) in two.rewards.iter().zip(&three.rewards) {
        assert!(
            (x - y).abs() < 1e-4,
            "{:?} vs {:?}",
            two.rewards,
            three.rewards
        );
    }
    let other = m
        .score_steps("What is 9 * 9?", &["Add them.", "2 + 2 = 4."])
        .unwrap();
    assert_ne!(
        two.rewards, other.rewards,
        "the reward depends on the question"
    );
}

#[test]
fn a_prm_without_the_step_separator_is_refused() {
    let dir = write_tiny_prm("prm-nosep", false);
    let err = RewardModel::load(&dir, &Device::Cpu).err().unwrap();
    assert!(
        matches!(err, EngineError::Tokenizer(ref m) if m.contains(STEP_SEPARATOR)),
        "{err}"
    );
    assert!(matches!(
        RewardModel::load(Path::new("/no/such/prm"), &Device::Cpu)
            .err()
            .unwrap(),
        EngineError::ModelNotFound(_)
    ));
}

#[test]
fn best_of_n_with_the_prm_picks_the_highest_last_step_reward() {
    let (dir, _) = prm();
    let question = "What is 5 + 3?";
    let prompt = engine()
        .encode_chat(&[Message::new("user", question)])
        .unwrap();
    let model = Arc::new(RewardModel::load(dir, &Device::Cpu).unwrap());
    let cfg = MethodConfig::new(Method::BestOfN, 40)
        .n(3)
        .scorer(Scorer::prm(&model, question, 1 << 24).unwrap())
        .params(SamplingParams {
            temperature: 0.9,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
        })
        .seed(2);
    let r = ttc_methods::run(engine(), &prompt, &cfg).unwrap();
    assert_eq!(r.scorer, "prm");
    assert!(r.scorer_tokens > 0 && r.timing.scoring_s > 0.0);
    let best = r
        .candidates
        .iter()
        .map(|c| c.score)
        .fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(r.candidates[r.chosen].score, best);
    // The score is the reward model's reward of the last step of the candidate's text.
    let c = &r.candidates[r.chosen];
    let steps = ttc_methods::scorer::split_steps(&c.text);
    let direct = model.score_steps(question, &steps).unwrap();
    assert_eq!(Some(&c.score), direct.rewards.last());
}
