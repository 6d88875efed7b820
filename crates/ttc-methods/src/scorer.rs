//! Scorers that rate a (partial) solution from the generator's own distributions, needing no
//! second model: higher is better for both.

use ttc_engine::{SeqId, Session};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scorer {
    /// Mean log-probability of the generated tokens.
    Logprob,
    /// Mean self-certainty: KL(uniform || next-token distribution), averaged over the
    /// generated tokens (Kang et al. 2025).
    SelfCertainty,
}

impl std::str::FromStr for Scorer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "logprob" | "mean-logprob" => Ok(Self::Logprob),
            "self-certainty" => Ok(Self::SelfCertainty),
            other if other.starts_with("prm:") => {
                Err("process reward models (prm:PATH) are not supported yet; use logprob or self-certainty".into())
            }
            other => Err(format!("unknown scorer '{other}' (logprob, self-certainty)")),
        }
    }
}

impl Scorer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Logprob => "logprob",
            Self::SelfCertainty => "self-certainty",
        }
    }

    /// The score of everything `seq` has generated; -inf for nothing generated.
    pub fn score(self, session: &Session, seq: SeqId) -> ttc_engine::Result<f32> {
        let values = match self {
            Self::Logprob => session.logprobs(seq)?,
            Self::SelfCertainty => session.self_certainties(seq)?,
        };
        Ok(if values.is_empty() { f32::NEG_INFINITY } else { values.iter().sum::<f32>() / values.len() as f32 })
    }
}
