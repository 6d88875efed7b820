//! What the prompt-kind head ([`crate::probe::kind`]) is trained on and decides from: prompt
//! files of either kind, the hidden state of each prompt as typed (templated, no instruction),
//! and the lengths of plain answers to open-ended prompts.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, SessionOptions};

use crate::dataset::{self, Split};
use crate::error::{AllocatorError, Result};
use crate::prompt;

/// One prompt of a prompt file.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    /// `file:line` (or the built-in suite's id): fixes the prompt's split.
    pub id: String,
    pub prompt: String,
}

#[derive(Deserialize)]
struct PromptLine {
    prompt: Option<String>,
    question: Option<String>,
}

/// Whether a prompt has a short final answer to vote on, as the head decided.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KindDecision {
    /// True: answered by test-time scaling with the answer-format instruction. False: a plain
    /// answer to the prompt as typed.
    pub final_answer: bool,
    /// The head's P(final answer); None when there is no head (then a plain answer).
    pub p_final_answer: Option<f64>,
}

impl KindDecision {
    pub fn from_p(p: Option<f64>) -> Self {
        Self {
            final_answer: p.is_some_and(|p| p > 0.5),
            p_final_answer: p,
        }
    }

    /// How sure the head is of what it decided, in [0.5, 1]; None without a head.
    pub fn confidence(&self) -> Option<f64> {
        self.p_final_answer.map(|p| p.max(1.0 - p))
    }

    pub fn label(&self) -> &'static str {
        if self.final_answer {
            "final-answer"
        } else {
            "open-ended"
        }
    }
}

/// The prompts of `spec`: `builtin:NAME` (a built-in suite's questions, all splits), or a JSONL
/// file with a `prompt` (or `question`) string on each line. Blank lines are skipped; a bad
/// line is an error naming the file and line.
pub fn read_prompts(spec: &str) -> Result<Vec<PromptRow>> {
    if spec.starts_with("builtin:") {
        return Ok(dataset::load(spec, Split::All)?
            .into_iter()
            .map(|p| PromptRow {
                id: p.id,
                prompt: p.question,
            })
            .collect());
    }
    let path = Path::new(spec);
    let (name, text) = dataset::read_named(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |why: &str| AllocatorError::Dataset(format!("{}:{}: {why}", path.display(), i + 1));
        let row: PromptLine = serde_json::from_str(line)
            .map_err(|e| bad(&format!("not a JSON object with a prompt ({e})")))?;
        let prompt = row
            .prompt
            .or(row.question)
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| bad("no prompt (or question) string"))?;
        out.push(PromptRow {
            id: format!("{name}:{}", i + 1),
            prompt,
        });
    }
    if out.is_empty() {
        return Err(AllocatorError::Dataset(format!(
            "{} has no prompts",
            path.display()
        )));
    }
    Ok(out)
}

/// Token ids of `prompt` as a person typed it: templated, with `system` (or the template's
/// default) and no answer-format instruction. What the kind head reads, and what a plain
/// answer continues.
pub fn plain_ids(engine: &Engine, prompt: &str, system: Option<&str>) -> Result<Vec<u32>> {
    Ok(prompt::encode(engine, prompt, None, system)?)
}

/// The final hidden state at the last token of each prompt as typed; `on_progress(done,
/// total)` after each.
pub fn hidden_states(
    engine: &Engine,
    prompts: &[PromptRow],
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let ids = plain_ids(engine, &p.prompt, None)?;
        let opts = SessionOptions {
            max_tokens: 1,
            ..SessionOptions::default()
        };
        let mut session = engine.session(ids.len(), 1, opts)?;
        let seq = session.prefill(&ids)?;
        let hidden = session
            .prompt_hidden(seq)?
            .ok_or_else(|| AllocatorError::Invalid("the model gave no hidden state".into()))?
            .to_vec1::<f32>()?;
        out.push(hidden);
        on_progress(i + 1, prompts.len());
    }
    Ok(out)
}

/// Tokens of one plain answer (sampled with `params`, at most `cap`) to each of `prompts`,
/// `width` prompts decoded together in one batch; `on_progress(done, total)` as answers end.
pub fn plain_answer_lengths(
    engine: &Engine,
    prompts: &[PromptRow],
    params: &SamplingParams,
    cap: usize,
    width: usize,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<Vec<u32>> {
    let mut lengths = Vec::with_capacity(prompts.len());
    for group in prompts.chunks(width.max(1)) {
        let ids = group
            .iter()
            .map(|p| plain_ids(engine, &p.prompt, None))
            .collect::<Result<Vec<_>>>()?;
        let total: usize = ids.iter().map(Vec::len).sum();
        let opts = SessionOptions {
            params: params.clone(),
            seed: lengths.len() as u64,
            max_tokens: cap,
            ..SessionOptions::default()
        };
        let mut session = engine.session(total, group.len(), opts)?;
        let seqs = ids
            .iter()
            .map(|p| session.prefill(p))
            .collect::<ttc_engine::Result<Vec<_>>>()?;
        loop {
            let live = session.live(&seqs);
            if live.is_empty() {
                break;
            }
            session.step(&live)?;
        }
        for &s in &seqs {
            lengths.push(session.generated(s)?.len() as u32);
        }
        on_progress(lengths.len(), prompts.len());
    }
    Ok(lengths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_files_take_prompt_or_question_and_name_a_bad_line() {
        let dir = std::env::temp_dir().join(format!("ttc-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(
            &good,
            "{\"prompt\": \"Write a haiku.\"}\n\n{\"question\": \"What is 2+2?\", \"answer\": \"4\"}\n",
        )
        .unwrap();
        let rows = read_prompts(good.to_str().unwrap()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].prompt, "What is 2+2?");
        assert_eq!(rows[1].id, "good.jsonl:3");
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"prompt\": \"ok\"}\n{\"text\": \"no prompt\"}\n").unwrap();
        let e = read_prompts(bad.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("bad.jsonl:2"), "{e}");
        assert!(read_prompts("builtin:digits").unwrap().len() > 10);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_decision_is_final_answer_above_one_half_and_plain_without_a_head() {
        assert!(KindDecision::from_p(Some(0.8)).final_answer);
        assert!(!KindDecision::from_p(Some(0.3)).final_answer);
        assert_eq!(KindDecision::from_p(Some(0.3)).confidence(), Some(0.7));
        let none = KindDecision::from_p(None);
        assert!(!none.final_answer && none.confidence().is_none());
    }
}
