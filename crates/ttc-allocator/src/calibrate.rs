//! Labels for the accuracy probe and the token model, built by repeated sampling (arXiv 2509.09864,
//! "The accuracy probe"): per question, sample K answers once and run greedy and each search
//! configuration for real; a best-of-N / majority / weighted configuration's success is then
//! estimated by resampling N of the K answers many times (a soft label), as are its tokens and
//! sequential steps.
//!
//! Labels are appended to a JSONL file, one question per line after a header that records how
//! they were made, so an interrupted calibration resumes where it stopped.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use ttc_engine::sampler::SamplingParams;
use ttc_engine::{Engine, StopReason};
use ttc_methods::{vote, Method, MethodConfig, MethodResult, Scorer};

use crate::dataset::Problem;
use crate::error::{io_err, AllocatorError, Result};
use crate::menu::Config;
use crate::prompt;

/// How labels are made; written as the labels file's first line, and checked on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelHeader {
    pub ttc_labels: u32,
    pub model: String,
    /// Answers sampled per question (K).
    pub samples: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub instruction: String,
    /// Search configurations run for real on every question.
    pub search: Vec<Config>,
    pub seed: u64,
}

/// What one real run gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub answer: Option<String>,
    pub correct: bool,
    /// Generated tokens, pruned beams included.
    pub tokens: usize,
    /// Sequential decode steps.
    pub steps: usize,
    pub latency_s: f64,
}

/// One of the K sampled answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub answer: Option<String>,
    /// The default scorer's score (mean token log-probability); `-inf` for a sample without
    /// logprobs, written as `null` (see `unscored`).
    #[serde(with = "unscored")]
    pub score: f32,
    pub tokens: usize,
    /// Decode steps this sample took (its tokens, plus the step that sampled its end).
    pub steps: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionLabels {
    pub id: String,
    pub reference: String,
    pub prompt_tokens: usize,
    /// The model's final hidden state at the prompt's last token.
    pub hidden: Vec<f32>,
    pub greedy: RunRecord,
    pub samples: Vec<SampleRecord>,
    pub search: BTreeMap<String, RunRecord>,
}

/// A score that may be `-inf` (no logprobs to average) in JSON, which has no infinities: a
/// non-finite score is written as `null` and `null` reads back as `-inf`, the lowest score, so
/// a vote ranks it last as it did before it was written. `null` rather than a finite sentinel,
/// because labels files written before this was explicit (serde_json's default also writes
/// `null`) then read as they were meant.
mod unscored {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(score: &f32, s: S) -> Result<S::Ok, S::Error> {
        score.is_finite().then_some(*score).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NEG_INFINITY))
    }
}

/// A configuration's outcome on one question: success probability and cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub accuracy: f64,
    pub tokens: f64,
    pub steps: f64,
}

fn record(r: &MethodResult, reference: &str) -> RunRecord {
    RunRecord {
        correct: r.answer.as_deref() == Some(reference),
        answer: r.answer.clone(),
        tokens: r.generated_tokens,
        steps: r.steps,
        latency_s: r.timing.total_s,
    }
}

/// Samples, greedy and search runs for one question.
pub fn label_question(
    engine: &Engine,
    problem: &Problem,
    header: &LabelHeader,
    cancel: Option<&Arc<AtomicBool>>,
) -> Result<QuestionLabels> {
    let ids = prompt::encode(engine, &problem.question, Some(&header.instruction), None)?;
    let seed = header.seed ^ crate::dataset::fnv1a(problem.id.as_bytes());
    let params = SamplingParams {
        temperature: header.temperature,
        top_k: header.top_k,
        top_p: header.top_p,
        min_p: header.min_p,
    };
    let base = MethodConfig::new(Method::Greedy, header.max_tokens)
        .scorer(Scorer::Logprob)
        .params(params)
        .seed(seed)
        .cancel(cancel.cloned());
    let cfg = |c: Config| c.method_config(&base);
    let greedy = ttc_methods::run(engine, &ids, &cfg(Config::GREEDY))?;
    let hidden = greedy
        .prompt_hidden
        .clone()
        .ok_or_else(|| AllocatorError::Invalid("the model gave no hidden state".into()))?;
    let sampled = ttc_methods::run(
        engine,
        &ids,
        &cfg(Config::parallel(Method::Majority, header.samples)),
    )?;
    let samples = sampled
        .candidates
        .iter()
        .map(|c| SampleRecord {
            answer: c.answer.clone(),
            score: c.score,
            tokens: c.tokens,
            steps: c.tokens + usize::from(c.finish != StopReason::MaxTokens),
        })
        .collect();
    let mut search = BTreeMap::new();
    for &c in &header.search {
        search.insert(
            c.label(),
            record(&ttc_methods::run(engine, &ids, &cfg(c))?, &problem.answer),
        );
    }
    Ok(QuestionLabels {
        id: problem.id.clone(),
        reference: problem.answer.clone(),
        prompt_tokens: ids.len(),
        hidden,
        greedy: record(&greedy, &problem.answer),
        samples,
        search,
    })
}

/// Resamples drawn per parallel configuration.
pub const RESAMPLES: usize = 256;

impl QuestionLabels {
    /// The outcome of `config` on this question: measured for greedy and search, estimated by
    /// resampling for parallel methods. None when the labels cannot say (a search configuration
    /// that was not run, or N larger than the samples).
    pub fn outcome(&self, config: &Config) -> Option<Outcome> {
        match config.method {
            Method::Greedy => Some(run_outcome(&self.greedy)),
            m if m.is_search() => self.search.get(&config.label()).map(run_outcome),
            m => {
                let k = self.samples.len();
                if config.n > k || config.n == 0 {
                    return None;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(
                    crate::dataset::fnv1a(self.id.as_bytes()) ^ config.n as u64,
                );
                let draws = if config.n == k { 1 } else { RESAMPLES };
                let (mut correct, mut tokens, mut steps) = (0.0, 0.0, 0.0);
                for _ in 0..draws {
                    let picked: Vec<&SampleRecord> = sample(&mut rng, k, config.n)
                        .into_iter()
                        .map(|i| &self.samples[i])
                        .collect();
                    let ballots: Vec<vote::Ballot> = picked
                        .iter()
                        .map(|s| vote::Ballot {
                            answer: s.answer.as_deref(),
                            score: s.score,
                        })
                        .collect();
                    let chosen = match m {
                        Method::BestOfN => vote::best_of_n(&ballots),
                        Method::Weighted => vote::weighted(&ballots),
                        // Majority-adaptive stops once the vote is decided: the same answer.
                        _ => vote::majority(&ballots),
                    }
                    .unwrap_or(0);
                    if picked[chosen].answer.as_deref() == Some(self.reference.as_str()) {
                        correct += 1.0;
                    }
                    let (t, s) = if m == Method::MajorityAdaptive {
                        decided_at(&picked)
                    } else {
                        (
                            picked.iter().map(|s| s.tokens).sum(),
                            picked.iter().map(|s| s.steps).max().unwrap_or(0),
                        )
                    };
                    tokens += t as f64;
                    steps += s as f64;
                }
                let d = draws as f64;
                Some(Outcome {
                    accuracy: correct / d,
                    tokens: tokens / d,
                    steps: steps / d,
                })
            }
        }
    }

    /// Mean tokens of one sampled answer: the per-question length the token model predicts.
    pub fn mean_sample_tokens(&self) -> f64 {
        if self.samples.is_empty() {
            return self.greedy.tokens as f64;
        }
        self.samples.iter().map(|s| s.tokens as f64).sum::<f64>() / self.samples.len() as f64
    }
}

/// Tokens and steps of a majority-adaptive run over `samples`, decoding as one batch: the
/// first step after which [`vote::majority_decided`] holds, the samples finished by then with
/// their tokens, those still running with one token per step so far (as the real run spends
/// them before it cancels them).
fn decided_at(samples: &[&SampleRecord]) -> (usize, usize) {
    let mut ends: Vec<usize> = samples.iter().map(|s| s.steps).collect();
    ends.sort_unstable();
    ends.dedup();
    for &t in &ends {
        let finished: Vec<Option<&str>> = samples
            .iter()
            .filter(|s| s.steps <= t)
            .map(|s| s.answer.as_deref())
            .collect();
        let running = samples.len() - finished.len();
        if vote::majority_decided(&finished, running) {
            let tokens = samples
                .iter()
                .map(|s| if s.steps <= t { s.tokens } else { t })
                .sum();
            return (tokens, t);
        }
    }
    unreachable!("with every sample finished the vote is decided")
}

fn run_outcome(r: &RunRecord) -> Outcome {
    Outcome {
        accuracy: if r.correct { 1.0 } else { 0.0 },
        tokens: r.tokens as f64,
        steps: r.steps as f64,
    }
}

/// A labels file: its header and the questions labelled so far.
pub struct LabelsFile {
    pub header: LabelHeader,
    pub questions: Vec<QuestionLabels>,
}

/// Reads a labels file. A last line cut short by an interruption is ignored.
pub fn read_labels(path: &Path) -> Result<LabelsFile> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bad = |reason: String| AllocatorError::Labels {
        path: path.display().to_string(),
        reason,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();
    let (_, first) = lines.next().ok_or_else(|| bad("empty file".into()))?;
    let header: LabelHeader = serde_json::from_str(first)
        .map_err(|e| bad(format!("line 1 is not a labels header ({e})")))?;
    let mut questions = Vec::new();
    while let Some((i, line)) = lines.next() {
        match serde_json::from_str::<QuestionLabels>(line) {
            Ok(q) => questions.push(q),
            Err(_) if lines.peek().is_none() && !text.ends_with('\n') => break,
            Err(e) => return Err(bad(format!("line {}: {e}", i + 1))),
        }
    }
    Ok(LabelsFile { header, questions })
}

/// Labels `problems` into `path`, skipping questions already there (same header required).
/// `on_progress(done, total)` is called after each question. Setting `cancel` stops between
/// two decode steps; what was finished stays in the file, and the result is Ok(false).
pub fn label_dataset(
    engine: &Engine,
    problems: &[Problem],
    header: &LabelHeader,
    path: &Path,
    cancel: Option<&Arc<AtomicBool>>,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<bool> {
    let done: HashSet<String> = if path.exists() {
        let existing = read_labels(path)?;
        if existing.header != *header {
            return Err(AllocatorError::Labels {
                path: path.display().to_string(),
                reason: "was made with other settings (model, samples, sampling, max tokens or search menu); use another --labels file".into(),
            });
        }
        existing.questions.into_iter().map(|q| q.id).collect()
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::write(
            path,
            format!(
                "{}\n",
                serde_json::to_string(header).expect("header serializes")
            ),
        )
        .map_err(io_err(path))?;
        HashSet::new()
    };
    // Make sure a line cut short by an earlier interruption does not glue onto the next one.
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    if !text.ends_with('\n') {
        file.write_all(b"\n").map_err(io_err(path))?;
    }
    let total = problems.len();
    let mut finished = problems.iter().filter(|p| done.contains(&p.id)).count();
    on_progress(finished, total);
    for p in problems.iter().filter(|p| !done.contains(&p.id)) {
        let labels = match label_question(engine, p, header, cancel) {
            Err(AllocatorError::Engine(ttc_engine::EngineError::Cancelled)) => return Ok(false),
            other => other?,
        };
        let line = serde_json::to_string(&labels).expect("labels serialize");
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io_err(path))?;
        finished += 1;
        on_progress(finished, total);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(answers: &[(&str, f32)]) -> QuestionLabels {
        QuestionLabels {
            id: "q".into(),
            reference: "7".into(),
            prompt_tokens: 10,
            hidden: vec![0.0; 4],
            greedy: RunRecord {
                answer: Some("7".into()),
                correct: true,
                tokens: 5,
                steps: 6,
                latency_s: 0.1,
            },
            samples: answers
                .iter()
                .enumerate()
                .map(|(i, &(a, s))| SampleRecord {
                    answer: Some(a.into()),
                    score: s,
                    tokens: 10 + i,
                    steps: 11 + i,
                })
                .collect(),
            search: BTreeMap::new(),
        }
    }

    #[test]
    fn an_adaptive_vote_stops_when_decided_and_answers_as_majority() {
        // Four samples of 7 end first (steps 11..14), three of 5 run long: after the third 7
        // the four still running could overtake it (3 < 0 + 4); after the fourth they cannot
        // (4 > 0 + 3).
        let mut q = labels(&[
            ("7", -1.0),
            ("7", -1.0),
            ("7", -1.0),
            ("7", -1.0),
            ("5", -1.0),
            ("5", -1.0),
            ("5", -1.0),
        ]);
        for (i, s) in q.samples.iter_mut().enumerate() {
            (s.tokens, s.steps) = if i < 4 { (10 + i, 11 + i) } else { (90, 91) };
        }
        let (tokens, steps) = decided_at(&q.samples.iter().collect::<Vec<_>>());
        assert_eq!(steps, 14);
        assert_eq!(tokens, 10 + 11 + 12 + 13 + 3 * 14);
        let n = q.samples.len();
        let full = q.outcome(&Config::parallel(Method::Majority, n)).unwrap();
        let adaptive = q
            .outcome(&Config::parallel(Method::MajorityAdaptive, n))
            .unwrap();
        assert_eq!(adaptive.accuracy, full.accuracy);
        assert_eq!((adaptive.tokens, adaptive.steps), (tokens as f64, 14.0));
        assert!(full.steps == 91.0 && full.tokens > adaptive.tokens);
        // Resampled widths draw the same samples as majority: the same accuracy.
        for k in [4, 6] {
            let m = q.outcome(&Config::parallel(Method::Majority, k)).unwrap();
            let a = q
                .outcome(&Config::parallel(Method::MajorityAdaptive, k))
                .unwrap();
            assert_eq!(a.accuracy, m.accuracy);
            assert!(a.tokens <= m.tokens && a.steps <= m.steps);
        }
    }

    #[test]
    fn labels_with_an_unscored_sample_read_back() {
        // A sample without logprobs scores -inf; it must survive a write and a read.
        let mut q = labels(&[("7", -1.0), ("5", f32::NEG_INFINITY)]);
        q.id = "q1".into();
        let dir = std::env::temp_dir().join(format!("ttc-labels-inf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("labels.jsonl");
        let header = LabelHeader {
            ttc_labels: 1,
            model: "m".into(),
            samples: 2,
            max_tokens: 8,
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            instruction: String::new(),
            search: vec![],
            seed: 0,
        };
        let text = format!(
            "{}\n{}\n",
            serde_json::to_string(&header).unwrap(),
            serde_json::to_string(&q).unwrap()
        );
        std::fs::write(&path, text).unwrap();
        let back = read_labels(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(back.questions, vec![q]);
        assert_eq!(back.questions[0].samples[1].score, f32::NEG_INFINITY);
    }

    #[test]
    fn resampling_estimates_vote_success() {
        // 3 of 4 samples say 7: a majority of all 4 is right; one sample is right 3/4 of the time.
        let q = labels(&[("7", -1.0), ("7", -1.0), ("5", -0.1), ("7", -1.0)]);
        let all = q.outcome(&Config::parallel(Method::Majority, 4)).unwrap();
        assert_eq!(all.accuracy, 1.0);
        assert_eq!(all.tokens, (10 + 11 + 12 + 13) as f64);
        assert_eq!(all.steps, 14.0);
        // Best-of-N over all 4 picks the wrong, highest-scored one.
        assert_eq!(
            q.outcome(&Config::parallel(Method::BestOfN, 4))
                .unwrap()
                .accuracy,
            0.0
        );
        // Pairs: majority of a pair is its first answer on a tie; any pair holds a 7 but ("5", "7")
        // ties go to the earliest. The estimate lies strictly between the extremes.
        let two = q.outcome(&Config::parallel(Method::Majority, 2)).unwrap();
        assert!(two.accuracy > 0.5 && two.accuracy < 1.0, "{two:?}");
        assert!(q.outcome(&Config::parallel(Method::Majority, 8)).is_none());
        assert_eq!(q.outcome(&Config::GREEDY).unwrap().accuracy, 1.0);
        // Adaptive: samples end at steps 11..14 with 7, 7, 5, 7; after step 12 it is 2 to 0
        // with 2 running (not decided), after 13 it is 2 to 1 with 1 running (not decided),
        // so it runs to the end: the same as majority@4.
        let adaptive = q
            .outcome(&Config::parallel(Method::MajorityAdaptive, 4))
            .unwrap();
        assert_eq!(adaptive, all);
        assert!(q.outcome(&Config::search(Method::Beam, 4, 2, 10)).is_none());
    }
}
