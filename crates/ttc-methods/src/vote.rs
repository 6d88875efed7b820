//! Choosing one answer from candidates: best-of-N (highest score), majority vote
//! (self-consistency) and weighted majority (largest summed score).
//!
//! Ties are broken by the earliest candidate: among tied answers, the one whose first
//! candidate comes first wins (candidates are in generation order, so this is reproducible).
//! Candidates without an extracted answer do not vote; if none has one, the first candidate
//! (best-of-N: the highest-scored) is chosen.
//!
//! Weighted majority needs every vote to weigh a positive amount, or more votes could lower an
//! answer's total: log-probability scores are negative, so scores are shifted by one amount
//! that makes the lowest one positive. Only finite scores of candidates that vote set that
//! shift (a candidate without an answer must not change how the others weigh). A candidate
//! with nothing generated (its first token was EOS) scores -inf (the mean over no tokens), and
//! a reward model could give NaN; were such a score part of the shift, the shift would be lost
//! and negative sums would let the answer with fewer votes win, and were it summed, one ballot
//! would decide (or cancel) its answer's total. So a non-finite score is weighed as the lowest
//! finite one: its vote counts, its score says nothing. The scorer keeps -inf for an empty
//! candidate, which best-of-N ranks last, as it should.

use std::collections::HashMap;

/// What voting sees of a candidate.
pub struct Ballot<'a> {
    pub answer: Option<&'a str>,
    pub score: f32,
}

/// Index of the highest-scored candidate (ties: the earliest; NaN ranks last).
pub fn best_of_n(ballots: &[Ballot]) -> Option<usize> {
    // NaN compares false with everything: a NaN first candidate would never be displaced.
    let rank = |b: &Ballot| {
        if b.score.is_nan() {
            f32::NEG_INFINITY
        } else {
            b.score
        }
    };
    let mut best: Option<usize> = None;
    for (i, b) in ballots.iter().enumerate() {
        if best.is_none_or(|j| rank(b) > rank(&ballots[j])) {
            best = Some(i);
        }
    }
    best
}

/// Index of a candidate carrying the most frequent answer.
pub fn majority(ballots: &[Ballot]) -> Option<usize> {
    tally(ballots, |_| 1.0)
}

/// Index of a candidate carrying the answer with the largest summed weight. A weight is the
/// score shifted by one shift for all (so that the lowest finite score among the voters weighs
/// 1, or is kept as it is when every score is positive); a non-finite score weighs as much as
/// the lowest finite one (see the module header).
pub fn weighted(ballots: &[Ballot]) -> Option<usize> {
    let lowest = ballots
        .iter()
        .filter(|b| b.answer.is_some() && b.score.is_finite())
        .map(|b| b.score)
        .reduce(f32::min);
    let shift = match lowest {
        Some(min) if min <= 0.0 => 1.0 - min,
        _ => 0.0,
    };
    // Nothing finite to compare with: every voter weighs the same, a majority vote.
    let floor = lowest.map_or(1.0, |min| min + shift);
    tally(ballots, |b| {
        if b.score.is_finite() {
            b.score + shift
        } else {
            floor
        }
    })
}

/// Whether a majority vote is already decided: the leading answer among the `finished`
/// candidates' answers holds more votes than the runner-up could reach were every one of the
/// `running` candidates to vote for it. Then every completion of the vote elects the same
/// answer, outright (no tie for the earliest-candidate rule to break), so the running
/// candidates can be cancelled without changing the result (`majority-adaptive`). With nothing
/// running the vote is decided, whatever it holds.
pub fn majority_decided(finished: &[Option<&str>], running: usize) -> bool {
    if running == 0 {
        return true;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for a in finished.iter().flatten() {
        *counts.entry(a).or_default() += 1;
    }
    let (mut first, mut second) = (0, 0);
    for &c in counts.values() {
        if c > first {
            (first, second) = (c, first);
        } else if c > second {
            second = c;
        }
    }
    first > second + running
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
    fn a_vote_is_decided_only_when_the_runners_cannot_change_it() {
        let (a, b) = (Some("4"), Some("5"));
        // 3 votes to 1 with 1 running: 1 + 1 < 3, decided.
        assert!(majority_decided(&[a, a, b, a], 1));
        // 3 to 1 with 2 running: they could tie it, not decided.
        assert!(!majority_decided(&[a, a, b, a], 2));
        // Candidates without an answer do not vote, and nothing finished decides nothing.
        assert!(!majority_decided(&[None, None, a], 1));
        assert!(majority_decided(&[None, a, a], 1));
        assert!(!majority_decided(&[], 1));
        assert!(majority_decided(&[], 0));
        // Whatever the running candidates say, the full vote elects the leader.
        let finished = [a, b, a, a, a, None];
        for tail in [[a, a], [b, b], [None, b], [Some("6"), b]] {
            assert!(majority_decided(&finished, tail.len()));
            let all: Vec<Ballot> = finished
                .iter()
                .chain(&tail)
                .map(|&answer| Ballot { answer, score: 0.0 })
                .collect();
            assert_eq!(all[majority(&all).unwrap()].answer, a);
        }
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
    fn a_non_finite_score_cannot_make_fewer_votes_win() {
        // A sample whose first token is EOS has no text (so no answer) and a score of -inf:
        // it must not make the answer with one vote beat the answer with two.
        let b = ballots(&[
            (None, f32::NEG_INFINITY),
            (Some("5"), -1.0),
            (Some("5"), -1.0),
            (Some("3"), -0.5),
        ]);
        assert_eq!(weighted(&b), Some(1));
        // A non-finite score among the voters weighs as little as the lowest finite one: it
        // still adds a vote, and cannot outweigh or cancel the others.
        for bad in [f32::NEG_INFINITY, f32::INFINITY, f32::NAN] {
            let b = ballots(&[(Some("3"), -1.0), (Some("5"), bad), (Some("5"), -1.0)]);
            assert_eq!(weighted(&b), Some(1), "{bad}");
            let b = ballots(&[(Some("3"), bad), (Some("5"), -1.0), (Some("5"), -1.0)]);
            assert_eq!(weighted(&b), Some(1), "{bad}");
        }
        // Nothing finite at all: a majority vote.
        let b = ballots(&[
            (Some("3"), f32::NAN),
            (Some("5"), f32::NEG_INFINITY),
            (Some("5"), f32::NAN),
        ]);
        assert_eq!(weighted(&b), Some(1));
    }

    #[test]
    fn more_votes_never_hurt() {
        // Another ballot for the winner keeps it the winner, whatever its score, as long as
        // it does not lower the minimum (which would re-weigh every ballot).
        let base = [(Some("5"), -3.0), (Some("3"), -0.1), (Some("5"), -2.9)];
        assert_eq!(weighted(&ballots(&base)), Some(1));
        for extra in [
            -3.0,
            -1.0,
            0.0,
            2.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
        ] {
            let mut v = base.to_vec();
            v.push((Some("3"), extra));
            assert_eq!(weighted(&ballots(&v)), Some(1), "{extra}");
        }
    }

    #[test]
    fn best_of_n_takes_the_highest_score_earliest_on_ties() {
        let b = ballots(&[(Some("1"), -2.0), (Some("2"), -0.5), (Some("3"), -0.5)]);
        assert_eq!(best_of_n(&b), Some(1));
        let b = ballots(&[
            (Some("1"), f32::NAN),
            (Some("2"), f32::NEG_INFINITY),
            (None, -9.0),
        ]);
        assert_eq!(
            best_of_n(&b),
            Some(2),
            "NaN and -inf rank below any finite score"
        );
    }
}
