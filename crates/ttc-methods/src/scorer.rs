//! Scoring (partial) solutions, higher is better: from the generator's own distributions (no
//! second model), or with a process reward model loaded beside it.

use std::path::PathBuf;
use std::sync::Arc;

use ttc_engine::reward_model::RewardModel;
use ttc_engine::{SeqId, Session};

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
    /// A process reward model's reward for the last step (steps end at blank lines).
    Prm {
        model: Arc<RewardModel>,
        question: Arc<str>,
    },
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Scorer {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Logprob => "logprob",
            Self::SelfCertainty => "self-certainty",
            Self::Prm { .. } => "prm",
        }
    }

    /// The score of everything `seq` has generated (-inf for nothing), and the tokens a reward
    /// model read to give it.
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
            Self::Prm { model, question } => {
                let text = session.text(seq)?;
                let steps = split_steps(text);
                let r = model.score_steps(question, &steps)?;
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
