//! Labelled questions for calibration and evaluation: GSM8K-style JSONL files (`question`, and
//! `answer` ending in `#### N`), and built-in generated suites of graded difficulty
//! (`builtin:NAME`).
//!
//! The built-in suites are generated from fixed seeds, so every build sees the same questions.
//! Each question goes to the train or the test split by a hash of its text, so the splits are
//! disjoint by construction and stable when a suite grows.

use std::collections::HashSet;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use ttc_methods::answer;

use crate::error::{AllocatorError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable id: `suite-index` for built-in suites, `file:line` for files.
    pub id: String,
    pub question: String,
    /// The reference answer, normalized as [`answer::normalize`] does.
    pub answer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
    All,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Self::Train),
            "test" => Ok(Self::Test),
            "all" => Ok(Self::All),
            other => Err(format!("unknown split '{other}' (train, test, all)")),
        }
    }
}

/// The built-in suites, easiest first: what the default model (SmolLM2-135M) gets right
/// nearly always, about a third of the time per sample, and nearly never.
pub const BUILTIN_SUITES: [(&str, &str); 4] = [
    ("lookup", "copy a number back (near-certain)"),
    (
        "digits",
        "single-digit sums and products (about a third per sample)",
    ),
    ("multidigit", "sums of two three-digit numbers (near zero)"),
    ("word", "two-step word problems (near zero)"),
];

/// `builtin:NAME` (a suite above, or `builtin:mixed` for all of them interleaved) or a path to
/// a JSONL file. The split applies to built-in suites; a file is taken whole (GSM8K ships its
/// train and test splits as separate files).
pub fn load(spec: &str, split: Split) -> Result<Vec<Problem>> {
    if let Some(name) = spec.strip_prefix("builtin:") {
        let all = builtin(name)?;
        return Ok(all
            .into_iter()
            .filter(|p| split == Split::All || in_test_split(&p.question) == (split == Split::Test))
            .collect());
    }
    read_jsonl(Path::new(spec))
}

/// About one question in five is held out for testing.
fn in_test_split(question: &str) -> bool {
    fnv1a(question.as_bytes()).is_multiple_of(5)
}

/// FNV-1a: a stable hash (std's is randomized per process).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[derive(Deserialize)]
struct JsonlLine {
    question: String,
    answer: serde_json::Value,
}

/// A GSM8K-style JSONL file: one object per line with `question` and `answer` (the text after
/// the last `####` is the reference; a bare number is taken as is). Blank lines are skipped; a
/// malformed line is an error that names the file and the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Problem>> {
    let (name, text) = read_named(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |why: String| AllocatorError::Dataset(format!("{}:{line_no}: {why}", path.display()));
        let row: JsonlLine = serde_json::from_str(line)
            .map_err(|e| bad(format!("not a JSON object with question and answer ({e})")))?;
        let reference = match &row.answer {
            serde_json::Value::String(s) => match s.rsplit_once("####") {
                Some((_, tail)) => tail.to_string(),
                None if s.trim().parse::<f64>().is_ok() => s.clone(),
                None => return Err(bad("the answer has no '#### N' final answer".into())),
            },
            serde_json::Value::Number(n) => n.to_string(),
            _ => return Err(bad("the answer is neither a string nor a number".into())),
        };
        let reference = answer::normalize(&reference);
        if row.question.trim().is_empty() || reference.is_empty() {
            return Err(bad("empty question or answer".into()));
        }
        out.push(Problem {
            id: format!("{name}:{line_no}"),
            question: row.question,
            answer: reference,
        });
    }
    if out.is_empty() {
        return Err(AllocatorError::Dataset(format!(
            "{} has no questions",
            path.display()
        )));
    }
    Ok(out)
}

/// A dataset file's name (what line ids start with) and its text.
pub(crate) fn read_named(path: &Path) -> Result<(String, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AllocatorError::Dataset(format!("cannot read {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name, text))
}

/// Generates a built-in suite.
pub fn builtin(name: &str) -> Result<Vec<Problem>> {
    let suites: Vec<Vec<Problem>> = match name {
        "mixed" => BUILTIN_SUITES
            .iter()
            .map(|(n, _)| builtin(n))
            .collect::<Result<_>>()?,
        "lookup" => vec![lookup()],
        "digits" => vec![digits()],
        "multidigit" => vec![multidigit()],
        "word" => vec![word()],
        other => {
            let names: Vec<&str> = BUILTIN_SUITES.iter().map(|s| s.0).collect();
            return Err(AllocatorError::Dataset(format!(
                "unknown built-in suite '{other}' ({}, mixed)",
                names.join(", ")
            )));
        }
    };
    // Interleave, so that a --limit takes from every suite.
    let longest = suites.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..longest {
        out.extend(suites.iter().filter_map(|s| s.get(i).cloned()));
    }
    Ok(out)
}

/// Unique questions from `make`, in generation order.
fn generate(
    suite: &str,
    seed: u64,
    count: usize,
    mut make: impl FnMut(&mut ChaCha8Rng) -> (String, i64),
) -> Vec<Problem> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut tries = 0;
    while out.len() < count && tries < count * 50 {
        tries += 1;
        let (question, value) = make(&mut rng);
        if seen.insert(question.clone()) {
            out.push(Problem {
                id: format!("{suite}-{}", out.len()),
                question,
                answer: value.to_string(),
            });
        }
    }
    out
}

fn lookup() -> Vec<Problem> {
    generate("lookup", 1, 200, |rng| {
        let n = rng.random_range(1..1000);
        (format!("Repeat this number: {n}"), n)
    })
}

fn digits() -> Vec<Problem> {
    generate("digits", 2, 160, |rng| {
        let (a, b) = (rng.random_range(0..10i64), rng.random_range(0..10i64));
        if rng.random_bool(0.5) {
            (format!("What is {a} + {b}?"), a + b)
        } else {
            (format!("What is {a} times {b}?"), a * b)
        }
    })
}

fn multidigit() -> Vec<Problem> {
    generate("multidigit", 3, 200, |rng| {
        let (a, b) = (
            rng.random_range(100..1000i64),
            rng.random_range(100..1000i64),
        );
        (format!("What is {a} + {b}?"), a + b)
    })
}

const NAMES: [(&str, &str); 8] = [
    ("Tom", "he"),
    ("Mia", "she"),
    ("Ravi", "he"),
    ("Lena", "she"),
    ("Omar", "he"),
    ("Sofia", "she"),
    ("Ken", "he"),
    ("Ana", "she"),
];
const ITEMS: [&str; 6] = ["apple", "pencil", "marble", "sticker", "book", "cookie"];

fn word() -> Vec<Problem> {
    generate("word", 4, 200, |rng| {
        let (name, pronoun) = NAMES[rng.random_range(0..NAMES.len())];
        let item = ITEMS[rng.random_range(0..ITEMS.len())];
        match rng.random_range(0..4) {
            0 => {
                let (a, b) = (rng.random_range(5..40i64), rng.random_range(2..30i64));
                let c = rng.random_range(1..a + b);
                (format!("{name} has {a} {item}s. A friend gives {name} {b} more, and then {pronoun} gives away {c}. How many {item}s does {name} have now?"), a + b - c)
            }
            1 => {
                let (a, b, c) = (
                    rng.random_range(3..13i64),
                    rng.random_range(2..10i64),
                    rng.random_range(1..10i64),
                );
                (format!("A box holds {a} {item}s. How many {item}s are there in {b} boxes and {c} loose {item}s?"), a * b + c)
            }
            2 => {
                let (a, p) = (rng.random_range(2..9i64), rng.random_range(2..9i64));
                let bill = if a * p < 50 { 50 } else { 100 };
                (format!("{name} buys {a} {item}s at {p} dollars each and pays with a {bill} dollar bill. How many dollars of change does {pronoun} get?"), bill - a * p)
            }
            _ => {
                let (a, b) = (rng.random_range(3..12i64), rng.random_range(3..12i64));
                let c = rng.random_range(1..a * b);
                (format!("A hall has {a} rows of {b} chairs, and {c} chairs are taken. How many chairs are free?"), a * b - c)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_splits_are_disjoint_and_cover_the_suite() {
        for (name, _) in BUILTIN_SUITES {
            let all = load(&format!("builtin:{name}"), Split::All).unwrap();
            let train = load(&format!("builtin:{name}"), Split::Train).unwrap();
            let test = load(&format!("builtin:{name}"), Split::Test).unwrap();
            assert_eq!(train.len() + test.len(), all.len(), "{name}");
            assert!(
                test.len() * 10 > all.len() && test.len() * 3 < all.len(),
                "{name}: {} of {}",
                test.len(),
                all.len()
            );
            let train_q: HashSet<&str> = train.iter().map(|p| p.question.as_str()).collect();
            assert!(
                test.iter().all(|p| !train_q.contains(p.question.as_str())),
                "{name}"
            );
            // Deterministic.
            assert_eq!(all, builtin(name).unwrap());
        }
    }

    #[test]
    fn builtin_answers_are_right() {
        let digits = builtin("digits").unwrap();
        let p = digits
            .iter()
            .find(|p| p.question == "What is 7 times 8?")
            .expect("7 times 8 is generated");
        assert_eq!(p.answer, "56");
        for p in builtin("word").unwrap() {
            assert!(p.answer.parse::<i64>().unwrap() >= 0, "{p:?}");
        }
        assert!(builtin("nope").is_err());
    }

    #[test]
    fn reads_gsm8k_lines_and_names_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("ttc-dataset-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(&good, "{\"question\": \"Q1?\", \"answer\": \"so 2+2=4\\n#### 1,234\"}\n\n{\"question\": \"Q2?\", \"answer\": 7}\n").unwrap();
        let rows = read_jsonl(&good).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].answer, "1234");
        assert_eq!(rows[1].answer, "7");
        assert_eq!(rows[1].id, "good.jsonl:3");
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"question\": \"Q1?\", \"answer\": \"#### 3\"}\n{\"question\": \"Q2?\"\n",
        )
        .unwrap();
        let err = read_jsonl(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:2:"), "{err}");
        let no_final = dir.join("nofinal.jsonl");
        std::fs::write(
            &no_final,
            "{\"question\": \"Q1?\", \"answer\": \"three\"}\n",
        )
        .unwrap();
        assert!(read_jsonl(&no_final)
            .unwrap_err()
            .to_string()
            .contains("nofinal.jsonl:1:"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
