//! Scoring (partial) solutions, higher is better: from the generator's own distributions (no
//! second model), or with a process reward model loaded beside it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ttc_engine::reward_model::{PrmSession, RewardModel};
use ttc_engine::{Engine, SeqId, Session};

/// A scorer as the user names it: `logprob`, `self-certainty` or `prm:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScorerSpec {
    Logprob,
    SelfCertainty,
    Prm(PathBuf),
}

impl std::str::FromStr for ScorerSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "logprob" | "mean-logprob" => Ok(Self::Logprob),
            "self-certainty" => Ok(Self::SelfCertainty),
            other => match other.strip_prefix("prm:") {
                Some(dir) if !dir.is_empty() => Ok(Self::Prm(PathBuf::from(dir))),
                _ => Err(format!(
                    "unknown scorer '{other}' (logprob, self-certainty, prm:DIR)"
                )),
            },
        }
    }
}

#[derive(Clone)]
pub enum Scorer {
    /// Mean log-probability of the generated tokens.
    Logprob,
    /// Mean self-certainty: KL(uniform || next-token distribution), averaged over the
    /// generated tokens (Kang et al. 2025).
    SelfCertainty,
    /// A process reward model's reward for the last step (steps end at blank lines), scored
    /// incrementally over the question's own PRM session (its prefix computed once, a
    /// candidate's already scored steps never again).
    Prm(Arc<Mutex<PrmSession>>),
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a scorer needs before it meets a question: the reward model loaded once (a chat
/// scores many questions with it).
pub struct ScorerSource {
    spec: ScorerSpec,
    prm: Option<Arc<RewardModel>>,
}

impl ScorerSource {
    /// Loads what `spec` names (a reward model goes on `engine`'s device).
    pub fn load(spec: &ScorerSpec, engine: &Engine) -> ttc_engine::Result<Self> {
        let prm = match spec {
            ScorerSpec::Prm(dir) => Some(Arc::new(RewardModel::load(dir, engine.model.device())?)),
            _ => None,
        };
        Ok(Self {
            spec: spec.clone(),
            prm,
        })
    }

    /// The scorer for `question`; a reward model's session gets a quarter of `engine`'s KV
    /// budget for the candidates' step prefixes.
    pub fn for_question(&self, engine: &Engine, question: &str) -> ttc_engine::Result<Scorer> {
        Ok(match (&self.spec, &self.prm) {
            (ScorerSpec::Logprob, _) => Scorer::Logprob,
            (ScorerSpec::SelfCertainty, _) => Scorer::SelfCertainty,
            (ScorerSpec::Prm(_), Some(model)) => {
                Scorer::prm(model, question, engine.kv_budget() / 4)?
            }
            (ScorerSpec::Prm(dir), None) => {
                return Err(ttc_engine::EngineError::ModelNotFound(dir.clone()));
            }
        })
    }
}

impl Scorer {
    /// The scorer `spec` names for `question` (a reward model is loaded for it).
    pub fn from_spec(
        spec: &ScorerSpec,
        engine: &Engine,
        question: &str,
    ) -> ttc_engine::Result<Self> {
        ScorerSource::load(spec, engine)?.for_question(engine, question)
    }

    /// A reward-model scorer for `question`, with `kv_bytes` of cache for its candidates.
    pub fn prm(
        model: &Arc<RewardModel>,
        question: &str,
        kv_bytes: usize,
    ) -> ttc_engine::Result<Self> {
        Ok(Self::Prm(Arc::new(Mutex::new(
            model.session(question, kv_bytes)?,
        ))))
    }

    /// Seconds per token a scorer model reads, measured on this device (0 for the
    /// generator's own scores, which come free with generation).
    pub fn seconds_per_token(&self) -> f64 {
        match self {
            Self::Prm(prm) => prm
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .seconds_per_token(),
            _ => 0.0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Logprob => "logprob",
            Self::SelfCertainty => "self-certainty",
            Self::Prm(_) => "prm",
        }
    }

    /// The score of everything `seq` has generated (-inf for nothing), and the tokens a reward
    /// model computed to give it (only the steps it had not scored before).
    pub fn score(&self, session: &Session, seq: SeqId) -> ttc_engine::Result<(f32, usize)> {
        let mean = |v: &[f32]| {
            if v.is_empty() {
                f32::NEG_INFINITY
            } else {
                v.iter().sum::<f32>() / v.len() as f32
            }
        };
        match self {
            Self::Logprob => Ok((mean(session.logprobs(seq)?), 0)),
            Self::SelfCertainty => Ok((mean(session.self_certainties(seq)?), 0)),
            Self::Prm(prm) => {
                let text = session.text(seq)?;
                let steps = split_steps(text);
                // A poisoned lock means another scoring call panicked; its cache is still
                // consistent (every step commits before it is recorded).
                let mut prm = prm.lock().unwrap_or_else(|e| e.into_inner());
                let r = prm.score(&steps)?;
                Ok((
                    r.rewards.last().copied().unwrap_or(f32::NEG_INFINITY),
                    r.tokens,
                ))
            }
        }
    }
}

/// A solution's steps: its paragraphs (the beam-search step boundary), trimmed.
pub fn split_steps(text: &str) -> Vec<&str> {
    text.split(crate::STEP_STOP)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("logprob".parse::<ScorerSpec>(), Ok(ScorerSpec::Logprob));
        assert_eq!(
            "self-certainty".parse::<ScorerSpec>(),
            Ok(ScorerSpec::SelfCertainty)
        );
        assert_eq!(
            "prm:/models/prm".parse::<ScorerSpec>(),
            Ok(ScorerSpec::Prm("/models/prm".into()))
        );
        assert!("prm:".parse::<ScorerSpec>().is_err());
        assert!("vibes".parse::<ScorerSpec>().is_err());
    }

    #[test]
    fn steps_are_paragraphs() {
        assert_eq!(split_steps("a\n\n b \n\n\n\nc\n"), ["a", "b", "c"]);
        assert!(split_steps("  ").is_empty());
    }
}
