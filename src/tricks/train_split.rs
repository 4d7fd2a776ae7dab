//! `train_split`: train on one fold of the archset. `shuffle` and `val_acc` cut the archset,
//! shuffled with the split's own seed or sorted by ground truth ascending (fold 0 is the worst),
//! into `folds` consecutive chunks of `len / folds` (the reference's integer division: the last
//! `len % folds` architectures belong to no fold); `structured` puts in fold k the
//! architectures whose `key` takes its k-th choice (in sorted order, or the space's own
//! numbering: NB101's op keys by the one-hot position, as the reference's `arch[key][k]`).

use crate::config::{SplitKind, TrainSplit};
use crate::space::{GroundTruth, Space};
use anyhow::{bail, Context, Result};

/// All folds of `set`.
pub fn folds<S: Space>(
    set: &[S::Arch],
    truth: Option<&GroundTruth<S::Arch>>,
    s: &TrainSplit,
) -> Result<Vec<Vec<S::Arch>>> {
    let chunks = |order: Vec<usize>| -> Vec<Vec<S::Arch>> {
        let size = set.len() / s.folds;
        (0..s.folds)
            .map(|k| {
                order[size * k..size * (k + 1)]
                    .iter()
                    .map(|&i| set[i].clone())
                    .collect()
            })
            .collect()
    };
    match s.kind {
        SplitKind::Shuffle => {
            let mut order: Vec<usize> = (0..set.len()).collect();
            super::shuffle(
                &mut order,
                &mut crate::rng::stream(s.seed, "train-split", &[]),
            );
            Ok(chunks(order))
        }
        SplitKind::ValAcc => {
            let truth = truth.context("tricks.train_split.kind = \"val_acc\" sorts by ground truth, and this run has none")?;
            let mut scores = Vec::with_capacity(set.len());
            for a in set {
                let v = truth.scores.get(a).with_context(|| {
                    format!(
                        "tricks.train_split: {} has no ground truth in {}",
                        S::arch_string(a),
                        truth.source
                    )
                })?;
                scores.push(*v);
            }
            let mut order: Vec<usize> = (0..set.len()).collect();
            // Stable, so equal scores keep archset order.
            order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
            Ok(chunks(order))
        }
        SplitKind::Structured => {
            let choices = super::choices::<S>(set)?;
            let Some((_, values)) = choices.iter().find(|(k, _)| *k == s.key) else {
                let keys: Vec<&str> = choices.iter().map(|(k, _)| k.as_str()).collect();
                bail!(
                    "tricks.train_split.key: {:?} is not a key of space {} (keys: {})",
                    s.key,
                    S::KIND,
                    keys.join(", ")
                );
            };
            if s.folds > values.len() {
                bail!(
                    "tricks.train_split: key {:?} has {} choices, fewer than folds = {} (a structured split has one fold per choice)",
                    s.key,
                    values.len(),
                    s.folds
                );
            }
            // The space's own numbering of the choices where it has one (NB101's one-hot ops:
            // fold k = the op with index k), else sorted order.
            let mut values = values.clone();
            if values.iter().all(|v| S::choice_rank(&s.key, v).is_some()) {
                values.sort_by_key(|v| S::choice_rank(&s.key, v));
            }
            let mut out = vec![];
            for v in &values[..s.folds] {
                let mut fold = vec![];
                for a in set {
                    if super::encoded::<S>(a)?.get(&s.key) == Some(v) {
                        fold.push(a.clone());
                    }
                }
                out.push(fold);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;
    use crate::space::nb201::{self, Arch, Nb201};
    use crate::tricks::TrickSet;
    use std::collections::HashSet;

    fn split(kind: SplitKind, folds: usize, index: usize) -> TrainSplit {
        TrainSplit {
            kind,
            folds,
            index,
            key: "1_2".into(),
            seed: 0,
        }
    }

    fn truth() -> GroundTruth<Arch> {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benchmarks/nb201"));
        nb201::ground_truth(dir, "cifar10-valid").unwrap()
    }

    /// Folds are disjoint, each `len / folds` long, and cover the archset but for the
    /// `len % folds` remainder.
    fn assert_partition(folds: &[Vec<Arch>], full: &[Arch], exact: bool) {
        let mut all = HashSet::new();
        for f in folds {
            for a in f {
                assert!(all.insert(*a), "{a:?} in two folds");
            }
        }
        assert!(all.iter().all(|a| full.contains(a)));
        if exact {
            assert_eq!(all.len(), full.len());
        } else {
            assert!(folds.iter().all(|f| f.len() == full.len() / folds.len()));
            assert_eq!(all.len(), full.len() - full.len() % folds.len());
        }
    }

    #[test]
    fn folds_partition_the_archset() {
        let space = Nb201::new();
        let full = space.archset().unwrap();
        let gt = truth();
        let f = folds::<Nb201>(full, None, &split(SplitKind::Shuffle, 5, 0)).unwrap();
        assert_eq!(f.len(), 5);
        assert_partition(&f, full, false);
        assert_eq!(f[0].len(), 3056);
        let mut other = split(SplitKind::Shuffle, 5, 0);
        other.seed = 1;
        assert_ne!(
            folds::<Nb201>(full, None, &other).unwrap()[0],
            f[0],
            "the split seed matters"
        );

        let f = folds::<Nb201>(full, Some(&gt), &split(SplitKind::ValAcc, 5, 0)).unwrap();
        assert_partition(&f, full, false);
        for w in f.windows(2) {
            let hi = w[0]
                .iter()
                .map(|a| gt.scores[a])
                .fold(f64::NEG_INFINITY, f64::max);
            let lo = w[1]
                .iter()
                .map(|a| gt.scores[a])
                .fold(f64::INFINITY, f64::min);
            assert!(hi <= lo, "fold order: {hi} > {lo}");
        }

        let f = folds::<Nb201>(full, None, &split(SplitKind::Structured, 5, 0)).unwrap();
        assert_partition(&f, full, true);
        for (k, fold) in f.iter().enumerate() {
            assert!(
                fold.iter().all(|a| a.ops[3] == k as u8),
                "edge 1_2 is ops[3]"
            );
        }
        assert!(folds::<Nb201>(full, None, &split(SplitKind::Structured, 6, 0)).is_err());
        assert!(folds::<Nb201>(full, None, &split(SplitKind::ValAcc, 5, 0)).is_err());
    }

    #[test]
    fn training_and_validation_stay_in_the_fold() {
        let space = Nb201::new();
        let gt = truth();
        for kind in [SplitKind::Shuffle, SplitKind::Structured, SplitKind::ValAcc] {
            let mut cfg = defaults::nb201();
            cfg.tricks.train_split = Some(split(kind, 5, 3));
            let ts = TrickSet::new(&space, &cfg, Some(&gt), None).unwrap();
            let fold: HashSet<Arch> =
                folds::<Nb201>(space.archset().unwrap(), Some(&gt), &split(kind, 5, 3)).unwrap()[3]
                    .iter()
                    .cloned()
                    .collect();
            assert_eq!(ts.train_archset_size(), Some(fold.len()));
            let mut r = crate::rng::stream(0, "sample", &[]);
            for _ in 0..1000 {
                assert!(fold.contains(&ts.sample(&space, &mut r)), "{kind:?}");
            }
            assert!(ts.eval_archs(&space, 100).iter().all(|a| fold.contains(a)));
        }
    }
}
