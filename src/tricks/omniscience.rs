//! `omniscience`: train only on the best `ratio` of the archset by ground truth (the reference
//! sorts by the mean validation accuracy, descending, and keeps `int(len * ratio)`), or on a
//! seeded random `ratio` of it. The kept architectures stay in that order (best first, or
//! shuffled), as in the reference's archset; validation architectures come from them too.

use crate::config::Omniscience;
use crate::space::{GroundTruth, Space};
use anyhow::{bail, Result};

/// `int(len * ratio)`, Python's truncation.
pub fn kept_len(len: usize, ratio: f64) -> usize {
    (len as f64 * ratio) as usize
}

/// The kept architectures of `set`.
pub fn select<S: Space>(
    set: &[S::Arch],
    truth: Option<&GroundTruth<S::Arch>>,
    o: &Omniscience,
    seed: u64,
) -> Result<Vec<S::Arch>> {
    let n = kept_len(set.len(), o.ratio);
    if n == 0 {
        bail!(
            "tricks.omniscience.ratio = {} keeps no architecture of the {} in the archset",
            o.ratio,
            set.len()
        );
    }
    let order: Vec<usize> = if o.random {
        let mut idx: Vec<usize> = (0..set.len()).collect();
        super::shuffle(&mut idx, &mut crate::rng::stream(seed, "omniscience", &[]));
        idx
    } else {
        let Some(truth) = truth else {
            bail!("tricks.omniscience ranks the archset by ground truth, and this run has none (set random = true, or give eval.ground_truth)");
        };
        let scores: Vec<Option<f64>> = set.iter().map(|a| truth.scores.get(a).copied()).collect();
        let missing = scores.iter().filter(|s| s.is_none()).count();
        if missing > 0 {
            let first = set
                .iter()
                .zip(&scores)
                .find(|(_, s)| s.is_none())
                .map(|(a, _)| S::arch_string(a))
                .unwrap_or_default();
            bail!("tricks.omniscience: {missing} architectures of the archset have no ground truth in {} (first: {first})", truth.source);
        }
        let mut idx: Vec<usize> = (0..set.len()).collect();
        // Stable, so equal scores keep archset order.
        idx.sort_by(|&i, &j| {
            scores[j]
                .unwrap_or(f64::NAN)
                .total_cmp(&scores[i].unwrap_or(f64::NAN))
        });
        idx
    };
    Ok(order.into_iter().take(n).map(|i| set[i].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;
    use crate::space::nb201::{self, Arch, Nb201};
    use crate::tricks::TrickSet;
    use std::collections::HashSet;

    fn truth() -> GroundTruth<Arch> {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/benchmarks/nb201"));
        nb201::ground_truth(dir, "cifar10-valid").unwrap()
    }

    #[test]
    fn top_ratio_by_ground_truth_and_sampling_stays_inside() {
        let space = Nb201::new();
        let gt = truth();
        let mut cfg = defaults::nb201();
        cfg.tricks.omniscience = Some(Omniscience::default());
        let ts = TrickSet::new(&space, &cfg, Some(&gt), None).unwrap();
        let set = ts.archset(&space).unwrap().to_vec();
        // int(15284 * 0.33) = 5043.
        assert_eq!(set.len(), 5043);
        let inside: HashSet<Arch> = set.iter().cloned().collect();
        let worst_in = set
            .iter()
            .map(|a| gt.scores[a])
            .fold(f64::INFINITY, f64::min);
        let best_out = space
            .archset()
            .unwrap()
            .iter()
            .filter(|a| !inside.contains(a))
            .map(|a| gt.scores[a])
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(worst_in >= best_out, "{worst_in} < {best_out}");
        // Best first, as the reference's sorted archset.
        assert!(set.windows(2).all(|w| gt.scores[&w[0]] >= gt.scores[&w[1]]));
        let mut r = crate::rng::stream(0, "sample", &[]);
        for _ in 0..2000 {
            assert!(inside.contains(&ts.sample(&space, &mut r)));
        }
        let ev = ts.eval_archs(&space, 100);
        assert_eq!(ev.len(), 100);
        assert!(ev.iter().all(|a| inside.contains(a)));
    }

    #[test]
    fn random_ratio_is_seeded_and_not_the_top() {
        let space = Nb201::new();
        let full = space.archset().unwrap();
        let o = Omniscience {
            ratio: 0.33,
            random: true,
        };
        let a = select::<Nb201>(full, None, &o, 7).unwrap();
        let b = select::<Nb201>(full, None, &o, 7).unwrap();
        let c = select::<Nb201>(full, None, &o, 8).unwrap();
        assert_eq!(a.len(), 5043);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a.iter().collect::<HashSet<_>>().len(),
            a.len(),
            "no duplicates"
        );
        let gt = truth();
        let top = select::<Nb201>(
            full,
            Some(&gt),
            &Omniscience {
                ratio: 0.33,
                random: false,
            },
            7,
        )
        .unwrap();
        let top: HashSet<_> = top.into_iter().collect();
        let overlap = a.iter().filter(|x| top.contains(x)).count() as f64 / a.len() as f64;
        // A random third overlaps the top third by about a third.
        assert!((0.25..0.42).contains(&overlap), "{overlap}");
        assert!(select::<Nb201>(
            full,
            None,
            &Omniscience {
                ratio: 0.33,
                random: false
            },
            7
        )
        .is_err());
        assert!(select::<Nb201>(
            full,
            None,
            &Omniscience {
                ratio: 1e-6,
                random: true
            },
            7
        )
        .is_err());
    }
}
