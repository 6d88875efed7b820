//! Which questions each step of training a probe may look at, so that no figure is measured
//! on the questions it was tuned on:
//!
//! - [`Part::Test`] (about 1 in 5, by a hash of the id): nothing but the training report's
//!   held-out figures;
//! - [`Part::Train`] (the rest): the final standardization, principal components, network
//!   weights, token model and baselines are fitted on all of it; before that, the epoch to
//!   stop at and the Platt scaling are chosen by cross-validation on it: [`FOLDS`] disjoint
//!   folds, each predicted by a network fitted on the other folds only.
//!
//! Cross-validation rather than one more fixed part because the label sets are small (tens of
//! questions): a calibration part of a few questions let its Platt scaling swing wildly,
//! while every training question predicted out of fold gives the epoch and the scaling many.
//! A question's part follows from a hash of its id, so it stays the same as labels grow.

use crate::dataset::fnv1a;

/// Folds of the cross-validation on the training part.
pub const FOLDS: usize = 4;

/// The training part, or the test part held out of every step but the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Train,
    Test,
}

/// The part the question `id` is in.
pub fn part_of(id: &str) -> Part {
    if fnv1a(id.as_bytes()) % 5 == 4 {
        Part::Test
    } else {
        Part::Train
    }
}

/// `items` sorted into the training part and the test part by their ids.
pub(crate) fn split<T>(items: &[T], id: impl Fn(&T) -> &str) -> (Vec<&T>, Vec<&T>) {
    items
        .iter()
        .partition(|item| part_of(id(item)) == Part::Train)
}

/// The cross-validation fold of each of `train`: in the order of a hash of the id, dealt out
/// in turn, so folds differ in size by one at most however few the questions.
pub(crate) fn folds<T>(train: &[&T], id: impl Fn(&T) -> &str) -> Vec<usize> {
    let mut order: Vec<usize> = (0..train.len()).collect();
    // The hash's high bits: `part_of` used its residue mod 5, which is the same for all.
    order.sort_by_key(|&i| (fnv1a(id(train[i]).as_bytes()) / 5, i));
    let mut fold = vec![0; train.len()];
    for (rank, &i) in order.iter().enumerate() {
        fold[i] = rank % FOLDS;
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_parts_and_the_folds_are_disjoint_and_cover_every_question() {
        for count in [7, 24, 2000] {
            let ids: Vec<String> = (0..count / 2)
                .map(|i| format!("suite-{i}"))
                .chain((0..count - count / 2).map(|i| format!("train.jsonl:{i}")))
                .collect();
            let (train, test) = split(&ids, |s| s.as_str());
            // Disjoint, and together every question once.
            let mut seen: HashSet<&str> = HashSet::new();
            for id in train.iter().chain(&test) {
                assert!(seen.insert(id.as_str()), "{id} is in both parts");
            }
            assert_eq!(seen.len(), ids.len());
            assert!(test.iter().all(|id| part_of(id) == Part::Test));
            // Each training question in one fold; each fold's held-out questions and the
            // questions its network is fitted on are disjoint, and never a test question.
            let fold = folds(&train, |s| s.as_str());
            assert_eq!(fold.len(), train.len());
            let sizes: Vec<usize> = (0..FOLDS)
                .map(|f| fold.iter().filter(|&&x| x == f).count())
                .collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
            for f in 0..FOLDS {
                let held: HashSet<&str> = (0..train.len())
                    .filter(|&i| fold[i] == f)
                    .map(|i| train[i].as_str())
                    .collect();
                let fitted: HashSet<&str> = (0..train.len())
                    .filter(|&i| fold[i] != f)
                    .map(|i| train[i].as_str())
                    .collect();
                assert!(held.is_disjoint(&fitted));
                assert_eq!(held.len() + fitted.len(), train.len());
                assert!(test
                    .iter()
                    .all(|id| !held.contains(id.as_str()) && !fitted.contains(id.as_str())));
            }
            if count == 2000 {
                let share = test.len() as f64 / ids.len() as f64;
                assert!((share - 0.2).abs() < 0.05, "{share}");
            }
        }
    }
}
