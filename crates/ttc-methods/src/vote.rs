//! Choosing one answer from candidates: best-of-N (highest score), majority vote
//! (self-consistency) and weighted majority (largest summed score).
//!
//! Ties are broken by the earliest candidate: among tied answers, the one whose first
//! candidate comes first wins (candidates are in generation order, so this is reproducible).
//! Candidates without an extracted answer do not vote; if none has one, the first candidate
//! (best-of-N: the highest-scored) is chosen.

use std::collections::HashMap;

/// What voting sees of a candidate.
pub struct Ballot<'a> {
    pub answer: Option<&'a str>,
    pub score: f32,
}

/// Index of the highest-scored candidate (ties: the earliest).
pub fn best_of_n(ballots: &[Ballot]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, b) in ballots.iter().enumerate() {
        if best.is_none_or(|j| b.score > ballots[j].score) {
            best = Some(i);
        }
    }
    best
}

/// Index of a candidate carrying the most frequent answer.
pub fn majority(ballots: &[Ballot]) -> Option<usize> {
    tally(ballots, |_| 1.0)
}

/// Index of a candidate carrying the answer with the largest summed score. Scores are shifted
/// to be positive first (log-probability scores are negative), so that more votes never hurt.
pub fn weighted(ballots: &[Ballot]) -> Option<usize> {
    let min = ballots
        .iter()
        .map(|b| b.score)
        .fold(f32::INFINITY, f32::min);
    let shift = if min.is_finite() && min <= 0.0 {
        1.0 - min
    } else {
        0.0
    };
    tally(ballots, |b| b.score + shift)
}

/// Sums `weight` per answer; returns the first candidate of the winning answer.
fn tally(ballots: &[Ballot], weight: impl Fn(&Ballot) -> f32) -> Option<usize> {
    if ballots.is_empty() {
        return None;
    }
    let mut totals: HashMap<&str, (f32, usize)> = HashMap::new();
    for (i, b) in ballots.iter().enumerate() {
        if let Some(a) = b.answer {
            let e = totals.entry(a).or_insert((0.0, i));
            e.0 += weight(b);
        }
    }
    let winner = totals
        .values()
        .max_by(|x, y| x.0.total_cmp(&y.0).then(y.1.cmp(&x.1)));
    Some(winner.map(|w| w.1).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballots(v: &[(Option<&'static str>, f32)]) -> Vec<Ballot<'static>> {
        v.iter()
            .map(|&(answer, score)| Ballot { answer, score })
            .collect()
    }

    #[test]
    fn majority_counts_answers_and_breaks_ties_by_first_appearance() {
        let b = ballots(&[
            (Some("3"), 0.0),
            (Some("5"), 0.0),
            (Some("5"), 0.0),
            (Some("3"), 0.0),
            (Some("7"), 0.0),
        ]);
        assert_eq!(
            majority(&b),
            Some(0),
            "3 and 5 tie at two votes; 3 appeared first"
        );
        let b = ballots(&[(Some("3"), 0.0), (Some("5"), 0.0), (Some("5"), 0.0)]);
        assert_eq!(majority(&b), Some(1));
        let b = ballots(&[(None, 0.0), (None, 0.0), (Some("4"), 0.0)]);
        assert_eq!(
            majority(&b),
            Some(2),
            "candidates without answers do not vote"
        );
        let b = ballots(&[(None, 0.0), (None, 0.0)]);
        assert_eq!(
            majority(&b),
            Some(0),
            "no answers at all: the first candidate"
        );
        assert_eq!(majority(&[]), None);
    }

    #[test]
    fn weighted_sums_scores_per_answer() {
        // Two weak votes for 5 lose to one strong vote for 3 once scores are shifted positive.
        let b = ballots(&[(Some("5"), -3.0), (Some("3"), -0.1), (Some("5"), -2.9)]);
        assert_eq!(weighted(&b), Some(1));
        // With equal scores it is a majority vote.
        let b = ballots(&[(Some("5"), -1.0), (Some("3"), -1.0), (Some("5"), -1.0)]);
        assert_eq!(weighted(&b), Some(0));
    }

    #[test]
    fn best_of_n_takes_the_highest_score_earliest_on_ties() {
        let b = ballots(&[(Some("1"), -2.0), (Some("2"), -0.5), (Some("3"), -0.5)]);
        assert_eq!(best_of_n(&b), Some(1));
    }
}
