//! `focus_branch`: every `every` epochs, score each (key, choice) on the architectures just
//! evaluated, fix the best choice, shrink the archset to the architectures taking it, restart
//! the sampler's RNG from the same seed and draw a new validation subset (the reference builds
//! a new mutator with the same seed; model, optimizer and schedule state carry over).
//!
//! Scores (higher is better) over the evaluated architectures, with `mask` = those taking the
//! choice: `accuracy`, their mean supernet accuracy; `nondominated`, the fraction of pairs
//! (with, without) where the one with the choice has strictly fewer parameters and a strictly
//! higher accuracy; `lstsq`, the mean over them of the accuracy residual of a least-squares line
//! of accuracy on ln(params) fitted to all evaluated architectures. A choice taken by fewer
//! than `min_archs` evaluated architectures, or by all of them, is not scored. The winner is the
//! largest (score, key, choice), the reference's `sort(reverse=True)` with its tie-breaking.

use crate::config::{FocusBranch, FocusMetric};
use crate::space::Space;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;

/// One (key, choice) at a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BranchScore {
    pub key: String,
    pub choice: Value,
    /// Evaluated architectures taking the choice.
    pub count: usize,
    /// `None` when skipped.
    pub score: Option<f64>,
    /// Why it was not scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The fixed choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub key: String,
    pub choice: Value,
    pub score: f64,
}

/// One decision, as written to `focus_branch.jsonl` and kept in the checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub epoch: usize,
    pub metric: FocusMetric,
    pub num_evaluated: usize,
    /// Every (key, choice) seen among the evaluated architectures, keys and choices sorted.
    pub scores: Vec<BranchScore>,
    /// `None` when no choice qualified (nothing changes then).
    pub chosen: Option<Chosen>,
    pub archs_before: usize,
    pub archs_after: usize,
    /// `lstsq`: slope and intercept of accuracy on ln(params).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lstsq_fit: Option<(f64, f64)>,
}

pub fn accuracy_score(acc: &[f64], mask: &[bool]) -> f64 {
    let (s, n) = acc
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .fold((0.0, 0usize), |(s, n), (a, _)| (s + a, n + 1));
    s / n as f64
}

pub fn nondominated_score(params: &[f64], acc: &[f64], mask: &[bool]) -> f64 {
    let idx = |want: bool| -> Vec<usize> { (0..mask.len()).filter(|&i| mask[i] == want).collect() };
    let (pos, neg) = (idx(true), idx(false));
    let mut success = 0usize;
    for &i in &pos {
        for &j in &neg {
            if params[i] < params[j] && acc[i] > acc[j] {
                success += 1;
            }
        }
    }
    success as f64 / (pos.len() * neg.len()) as f64
}

/// Least squares `acc ~ m * ln(params) + c`; when every x is equal, the minimum-norm solution
/// numpy's `lstsq` returns for the rank-deficient system.
pub fn lstsq_fit(params: &[f64], acc: &[f64]) -> (f64, f64) {
    let n = acc.len() as f64;
    let x: Vec<f64> = params.iter().map(|p| p.ln()).collect();
    let mx = x.iter().sum::<f64>() / n;
    let my = acc.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx) * (v - mx)).sum();
    let sxy: f64 = x.iter().zip(acc).map(|(v, y)| (v - mx) * (y - my)).sum();
    if sxx <= f64::EPSILON * mx.abs().max(1.0) * n {
        let k = my / (mx * mx + 1.0);
        return (k * mx, k);
    }
    let m = sxy / sxx;
    (m, my - m * mx)
}

pub fn lstsq_score(params: &[f64], acc: &[f64], mask: &[bool], fit: (f64, f64)) -> f64 {
    let (m, c) = fit;
    let res: Vec<f64> = params
        .iter()
        .zip(acc)
        .map(|(p, y)| y - m * p.ln() - c)
        .collect();
    accuracy_score(&res, mask)
}

/// The architectures of `set` whose `key` is `choice`.
pub fn apply<S: Space>(set: &[S::Arch], key: &str, choice: &Value) -> Result<Vec<S::Arch>> {
    let mut out = vec![];
    for a in set {
        if super::encoded::<S>(a)?.get(key) == Some(choice) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Scores every (key, choice) on the first `f.num_archs` of `archs` (with their supernet
/// `accuracies`) and picks the best; `current` is the training archset it will shrink.
pub fn decide<S: Space>(
    f: &FocusBranch,
    epoch: usize,
    archs: &[S::Arch],
    accuracies: &[f64],
    params: Option<&HashMap<S::Arch, f64>>,
    current: &[S::Arch],
) -> Result<Decision> {
    if archs.len() != accuracies.len() {
        bail!(
            "focus_branch: {} architectures but {} accuracies",
            archs.len(),
            accuracies.len()
        );
    }
    let n = archs.len().min(f.num_archs);
    let (archs, acc) = (&archs[..n], &accuracies[..n]);
    let p: Vec<f64> = match (f.metric, params) {
        (FocusMetric::Accuracy, _) => vec![1.0; n],
        (_, None) => bail!("focus_branch metric {:?} needs parameter counts", f.metric),
        (_, Some(pm)) => archs
            .iter()
            .map(|a| {
                pm.get(a).copied().with_context(|| {
                    format!("focus_branch: no parameter count for {}", S::arch_string(a))
                })
            })
            .collect::<Result<_>>()?,
    };
    let fit = (f.metric == FocusMetric::Lstsq && n > 0).then(|| lstsq_fit(&p, acc));
    let encs: Vec<_> = archs
        .iter()
        .map(super::encoded::<S>)
        .collect::<Result<_>>()?;
    let mut scores = vec![];
    for (key, values) in super::choices::<S>(archs)? {
        for choice in values {
            let mask: Vec<bool> = encs.iter().map(|e| e.get(&key) == Some(&choice)).collect();
            let count = mask.iter().filter(|&&m| m).count();
            let skipped = if count < f.min_archs {
                Some(format!(
                    "taken by {count} < min_archs = {} evaluated architectures",
                    f.min_archs
                ))
            } else if count == n {
                Some("taken by every evaluated architecture".to_string())
            } else {
                None
            };
            let score = match (&skipped, f.metric) {
                (Some(_), _) => None,
                (None, FocusMetric::Accuracy) => Some(accuracy_score(acc, &mask)),
                (None, FocusMetric::Nondominated) => Some(nondominated_score(&p, acc, &mask)),
                (None, FocusMetric::Lstsq) => fit.map(|fit| lstsq_score(&p, acc, &mask, fit)),
            };
            let (score, skipped) = match score {
                Some(s) if !s.is_finite() => (None, Some(format!("score is {s}"))),
                s => (s, skipped),
            };
            scores.push(BranchScore {
                key: key.clone(),
                choice,
                count,
                score,
                skipped,
            });
        }
    }
    let best = scores
        .iter()
        .filter_map(|b| b.score.map(|s| (s, b)))
        .max_by(|(s1, b1), (s2, b2)| {
            s1.total_cmp(s2)
                .then_with(|| b1.key.cmp(&b2.key))
                .then_with(|| super::cmp_json(&b1.choice, &b2.choice))
        })
        .map(|(s, b)| Chosen {
            key: b.key.clone(),
            choice: b.choice.clone(),
            score: s,
        });
    let archs_after = match &best {
        Some(c) => apply::<S>(current, &c.key, &c.choice)?.len(),
        None => current.len(),
    };
    Ok(Decision {
        epoch,
        metric: f.metric,
        num_evaluated: n,
        scores,
        chosen: best,
        archs_before: current.len(),
        archs_after,
        lstsq_fit: fit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::defaults;
    use crate::space::nb201::{Arch, Nb201};
    use crate::tricks::TrickSet;

    #[derive(serde::Deserialize)]
    struct Case {
        params: Vec<f64>,
        acc: Vec<f64>,
        mask: Vec<bool>,
        accuracy: f64,
        nondominated: f64,
        lstsq: f64,
        fit: (f64, f64),
    }

    #[test]
    fn metrics_match_numpy() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/focus_branch.json"
        ))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = Vec::<Case>::deserialize(&v["cases"]).unwrap();
        assert!(cases.len() >= 4);
        for (i, c) in cases.iter().enumerate() {
            assert!(
                (accuracy_score(&c.acc, &c.mask) - c.accuracy).abs() < 1e-12,
                "case {i}"
            );
            assert!(
                (nondominated_score(&c.params, &c.acc, &c.mask) - c.nondominated).abs() < 1e-12,
                "case {i}"
            );
            let fit = lstsq_fit(&c.params, &c.acc);
            assert!(
                (fit.0 - c.fit.0).abs() < 1e-9 && (fit.1 - c.fit.1).abs() < 1e-9,
                "case {i}: {fit:?} vs {:?}",
                c.fit
            );
            assert!(
                (lstsq_score(&c.params, &c.acc, &c.mask, fit) - c.lstsq).abs() < 1e-9,
                "case {i}"
            );
        }
    }

    /// A parameter count that grows with the conv ops of a cell, and an accuracy that favours
    /// conv3x3 on some edges plus arch-dependent noise: enough structure for every metric to
    /// pick something.
    fn synthetic(a: &Arch) -> (f64, f64) {
        let convs: f64 = a
            .ops
            .iter()
            .map(|&o| [0.0, 0.0, 0.1, 0.9, 0.0][o as usize])
            .sum();
        let h = a
            .ops
            .iter()
            .fold(7u64, |h, &o| h.wrapping_mul(31).wrapping_add(o as u64));
        let noise = (h % 97) as f64 / 97.0;
        let acc = 0.3 + 0.05 * a.ops.iter().filter(|&&o| o == 3).count() as f64 + 0.04 * noise;
        (0.1 + convs, acc)
    }

    #[test]
    fn archset_shrinks_by_the_best_choice_each_round() {
        let space = Nb201::new();
        let params: HashMap<Arch, f64> = space
            .archset()
            .unwrap()
            .iter()
            .map(|a| (*a, synthetic(a).0))
            .collect();
        for metric in [
            FocusMetric::Accuracy,
            FocusMetric::Nondominated,
            FocusMetric::Lstsq,
        ] {
            let mut cfg = defaults::nb201();
            cfg.train.epochs = 40;
            cfg.eval.num_archs = 150;
            cfg.tricks.focus_branch = Some(FocusBranch {
                every: 10,
                metric,
                min_archs: 10,
                num_archs: 150,
            });
            let mut ts = TrickSet::new(&space, &cfg, None, Some(params.clone())).unwrap();
            let mut fixed: Vec<String> = vec![];
            for round in 1..=3 {
                let epoch = round * 10;
                assert_eq!(ts.focus_due(epoch), Some(150));
                assert_eq!(ts.focus_due(epoch - 1), None);
                let before = ts.archset(&space).unwrap().to_vec();
                let archs = ts.eval_archs(&space, 150);
                let before_set: std::collections::HashSet<_> = before.iter().collect();
                assert!(
                    archs.iter().all(|a| before_set.contains(a)),
                    "validation subset comes from the current archset"
                );
                let accs: Vec<f64> = archs.iter().map(|a| synthetic(a).1).collect();
                let d = ts.focus_decide(&space, epoch, &archs, &accs).unwrap();
                let c = d.chosen.clone().expect("a choice qualifies");
                // The chosen choice is the best recorded score.
                let best = d
                    .scores
                    .iter()
                    .filter_map(|b| b.score)
                    .fold(f64::NEG_INFINITY, f64::max);
                assert_eq!(c.score, best, "{metric:?}");
                let rec = d
                    .scores
                    .iter()
                    .find(|b| b.key == c.key && b.choice == c.choice)
                    .unwrap();
                assert_eq!(rec.score, Some(c.score));
                assert!(rec.count >= 10 && rec.count < d.num_evaluated);
                // Skips follow the rules.
                for b in &d.scores {
                    assert_eq!(
                        b.score.is_none(),
                        b.count < 10 || b.count == d.num_evaluated,
                        "{b:?}"
                    );
                }
                // The archset shrinks to exactly the architectures taking the choice.
                let e = ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"]
                    .iter()
                    .position(|k| *k == c.key)
                    .unwrap();
                let want: Vec<Arch> = before
                    .iter()
                    .filter(|a| c.choice == a.ops[e])
                    .cloned()
                    .collect();
                assert_eq!(ts.archset(&space).unwrap(), want.as_slice());
                assert_eq!((d.archs_before, d.archs_after), (before.len(), want.len()));
                assert!(want.len() < before.len());
                assert!(
                    !fixed.contains(&c.key),
                    "a fixed key is taken by every architecture and never rescored"
                );
                fixed.push(c.key.clone());
            }
            // Resume: replaying the decisions rebuilds the same archset and validation subset.
            let p = ts.progress();
            let mut again = TrickSet::new(&space, &cfg, None, Some(params.clone())).unwrap();
            again.restore(&space, &p).unwrap();
            assert_eq!(again.archset(&space), ts.archset(&space));
            assert_eq!(again.eval_archs(&space, 150), ts.eval_archs(&space, 150));
            assert_eq!(again.decisions(), ts.decisions());
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(
                serde_json::from_str::<crate::tricks::TrickProgress>(&json).unwrap(),
                p
            );
        }
    }

    #[test]
    fn rare_and_universal_choices_are_skipped() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.tricks.focus_branch = Some(FocusBranch {
            every: 1,
            metric: FocusMetric::Accuracy,
            min_archs: 3,
            num_archs: 100,
        });
        let f = cfg.tricks.focus_branch.clone().unwrap();
        // 4 archs with 0_1 = 3 (the best accuracy, but too few), 6 with 0_1 = 1; every arch
        // has 2_3 = 2 (universal), so the only eligible choice is 0_1 = 1.
        let mut archs = vec![];
        let mut accs = vec![];
        for i in 0..10u8 {
            let first = if i < 4 { 3 } else { 1 };
            archs.push(Arch {
                ops: [first, (i % 5), 1, 1, 1, 2],
            });
            accs.push(if i < 4 { 0.9 } else { 0.5 });
        }
        let d = decide::<Nb201>(
            &FocusBranch {
                min_archs: 5,
                ..f.clone()
            },
            1,
            &archs,
            &accs,
            None,
            space.archset().unwrap(),
        )
        .unwrap();
        let c = d.chosen.unwrap();
        assert_eq!((c.key.as_str(), &c.choice), ("0_1", &Value::from(1)));
        assert!(d
            .scores
            .iter()
            .any(|b| b.key == "0_1" && b.choice == 3 && b.score.is_none()));
        assert!(d.scores.iter().any(|b| b.key == "2_3"
            && b.skipped.as_deref() == Some("taken by every evaluated architecture")));
        // Nothing qualifies: no decision, the archset is unchanged.
        let d = decide::<Nb201>(
            &FocusBranch { min_archs: 50, ..f },
            1,
            &archs,
            &accs,
            None,
            space.archset().unwrap(),
        )
        .unwrap();
        assert!(d.chosen.is_none());
        assert_eq!(d.archs_after, d.archs_before);
    }
}
