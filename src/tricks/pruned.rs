//! `pruned`: restrict arch keys to allowed values. For a space with an enumerated archset the
//! archset is filtered (the reference's `prune_archset`), which keeps sampling uniform over
//! the remaining architectures. For the others (DARTS, PTB, ProxylessNAS) the sampler is
//! restricted: each factor of the space (`Space::factors`: a key, or a DARTS node) draws
//! uniformly among the combinations the allowed values leave, as the study's mutators do.

use super::encoded;
use crate::space::factors::Factors;
use crate::space::Space;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// Whether every restricted key of `arch` takes one of its allowed values.
pub fn allows<S: Space>(arch: &S::Arch, allowed: &BTreeMap<String, Vec<Value>>) -> Result<bool> {
    let enc = encoded::<S>(arch)?;
    Ok(allowed
        .iter()
        .all(|(k, vals)| enc.get(k).is_some_and(|v| vals.contains(v))))
}

/// The architectures of `set` that `allowed` permits, in their order. A key the space does not
/// have, or a value no architecture of `set` takes, is an error (a typo would otherwise
/// silently empty or not restrict the archset).
pub fn filter<S: Space>(
    set: &[S::Arch],
    allowed: &BTreeMap<String, Vec<Value>>,
) -> Result<Vec<S::Arch>> {
    let choices = super::choices::<S>(set)?;
    for (k, vals) in allowed {
        let Some((_, have)) = choices.iter().find(|(c, _)| c == k) else {
            let keys: Vec<&str> = choices.iter().map(|(c, _)| c.as_str()).collect();
            bail!(
                "tricks.pruned: {k:?} is not a key of space {} (keys: {})",
                S::KIND,
                keys.join(", ")
            );
        };
        if let Some(v) = vals.iter().find(|v| !have.contains(v)) {
            let list: Vec<String> = have.iter().map(Value::to_string).collect();
            bail!(
                "tricks.pruned: key {k:?}: {v} is not one of its values ({})",
                list.join(", ")
            );
        }
    }
    let mut out = vec![];
    for a in set {
        if allows::<S>(a, allowed)? {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// The factors of an archset-less space restricted to `allowed`, checked to decode: every
/// combination of every factor is decoded once (the factors are independent, so every
/// architecture of the restricted space then decodes and sampling cannot fail).
pub fn restrict<S: Space>(space: &S, allowed: &BTreeMap<String, Vec<Value>>) -> Result<Factors> {
    let full = space
        .factors()
        .with_context(|| format!("space {} has neither an archset nor factors", S::KIND))?;
    let restricted = full
        .restrict(allowed)
        .map_err(|e| anyhow::anyhow!("tricks.pruned: {e}"))?;
    for probe in restricted.probes() {
        S::decode(&Value::Object(probe)).context("tricks.pruned: a restricted architecture")?;
    }
    Ok(restricted)
}

/// Decodes a sample of factors that [`restrict`] checked.
pub(crate) fn decode_checked<S: Space>(obj: serde_json::Map<String, Value>) -> S::Arch {
    S::decode(&Value::Object(obj))
        .unwrap_or_else(|e| unreachable!("checked by pruned::restrict: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{defaults, Pruned};
    use crate::space::nb201::{Arch, Nb201};
    use crate::tricks::TrickSet;

    fn allowed(pairs: &[(&str, &[u64])]) -> BTreeMap<String, Vec<Value>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|&x| Value::from(x)).collect()))
            .collect()
    }

    #[test]
    fn filter_keeps_exactly_the_allowed_archs() {
        let space = Nb201::new();
        let full = space.archset().unwrap();
        let a = allowed(&[("0_1", &[1, 3]), ("2_3", &[2])]);
        let kept = filter::<Nb201>(full, &a).unwrap();
        // Brute force over the archset (edge 0_1 is ops[0], 2_3 is ops[5]).
        let want: Vec<Arch> = full
            .iter()
            .filter(|x| [1, 3].contains(&x.ops[0]) && x.ops[5] == 2)
            .cloned()
            .collect();
        assert_eq!(kept, want);
        assert!(!kept.is_empty() && kept.len() < full.len());
        assert!(filter::<Nb201>(full, &allowed(&[("0_9", &[1])]))
            .unwrap_err()
            .to_string()
            .contains("not a key"));
        assert!(filter::<Nb201>(full, &allowed(&[("0_1", &[7])]))
            .unwrap_err()
            .to_string()
            .contains("7 is not one of"));
    }

    #[test]
    fn pruned_restricts_sampling() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.tricks.pruned = Some(Pruned::Map(allowed(&[("0_1", &[1, 3]), ("1_3", &[0, 4])])));
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let n = ts.train_archset_size().unwrap();
        let mut r = crate::rng::stream(5, "sample", &[]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let a = ts.sample(&space, &mut r);
            assert!(
                [1, 3].contains(&a.ops[0]) && [0, 4].contains(&a.ops[4]),
                "{a:?}"
            );
            seen.insert(a);
        }
        // Uniform over the pruned set: 20,000 draws over ~2,400 archs miss each with
        // probability ~exp(-8), so nearly all are reached.
        assert!(
            n < 3000 && seen.len() as f64 > 0.99 * n as f64,
            "{} of {n}",
            seen.len()
        );
        let ev = ts.eval_archs(&space, 40);
        assert_eq!(ev.len(), 40);
        assert!(ev
            .iter()
            .all(|a| [1, 3].contains(&a.ops[0]) && [0, 4].contains(&a.ops[4])));
    }
}

/// `pruned` on the spaces without archset (DARTS, PTB, ProxylessNAS): a restricted sampler.
#[cfg(test)]
mod sampler_tests {
    use crate::config::{defaults, Config, Pruned};
    use crate::space::darts::Darts;
    use crate::space::proxyless::Proxyless;
    use crate::space::ptb::Ptb;
    use crate::space::Space;
    use crate::tricks::TrickSet;
    use serde_json::{json, Map, Value};
    use std::collections::{BTreeMap, HashMap};

    fn with_pruned(mut cfg: Config, pairs: Value) -> Config {
        let m: BTreeMap<String, Vec<Value>> = pairs
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_array().unwrap().clone()))
            .collect();
        cfg.tricks.pruned = Some(Pruned::Map(m));
        cfg
    }

    fn enc<S: Space>(a: &S::Arch) -> Map<String, Value> {
        S::encode(a).as_object().unwrap().clone()
    }

    /// Pearson's chi-square statistic of `counts` against equal expected counts.
    fn chi_square(counts: &[usize]) -> f64 {
        let n: usize = counts.iter().sum();
        let e = n as f64 / counts.len() as f64;
        counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
    }

    /// Draws `n` architectures and checks: every restricted key only takes allowed values, each
    /// allowed value of each restricted key appears, and (for keys with more than one allowed
    /// value) their frequencies pass a chi-square sanity bound (mean dof, sd sqrt(2 dof):
    /// below dof + 6 sd; the seeded stream makes this deterministic). Returns the encodings.
    fn check_sampling<S: Space>(
        space: &S,
        cfg: &Config,
        allowed: &Value,
        n: usize,
    ) -> Vec<Map<String, Value>> {
        let ts = TrickSet::new(space, cfg, None, None).unwrap();
        let mut r = crate::rng::stream(7, "sample", &[]);
        let draws: Vec<Map<String, Value>> = (0..n)
            .map(|_| enc::<S>(&ts.sample(space, &mut r)))
            .collect();
        for (key, vals) in allowed.as_object().unwrap() {
            let vals = vals.as_array().unwrap();
            let mut counts: HashMap<String, usize> = HashMap::new();
            for d in &draws {
                let v = &d[key];
                assert!(vals.contains(v), "{} {key} = {v} not in {vals:?}", S::KIND);
                *counts.entry(v.to_string()).or_default() += 1;
            }
            assert_eq!(
                counts.len(),
                vals.len(),
                "{} {key}: every allowed value appears",
                S::KIND
            );
            if vals.len() > 1 {
                let c: Vec<usize> = counts.values().copied().collect();
                let dof = (c.len() - 1) as f64;
                let x2 = chi_square(&c);
                assert!(
                    x2 < dof + 6.0 * (2.0 * dof).sqrt(),
                    "{} {key}: chi2 {x2} {c:?}",
                    S::KIND
                );
            }
        }
        draws
    }

    #[test]
    fn darts_pruned_sampling_stays_in_the_allowed_values_uniformly() {
        let allowed = json!({
            "normal/2/0/op": ["sep_conv_3x3", "skip_connect"],
            "normal/3/0/input": [2],
            "normal/3/1/input": [0, 1],
            "reduce/4/1/op": ["dil_conv_5x5"],
            "reduce/5/0/input": [4, 1, 0],
        });
        let cfg = with_pruned(defaults::darts(), allowed.clone());
        let draws = check_sampling(&Darts::new(), &cfg, &allowed, 20_000);
        // A node is uniform over its remaining combinations: normal/3 has 7 x 1 x 7 x 2 = 98,
        // every one drawn, with plausible frequencies.
        let mut node: HashMap<String, usize> = HashMap::new();
        for d in &draws {
            let k = [
                "normal/3/0/op",
                "normal/3/0/input",
                "normal/3/1/op",
                "normal/3/1/input",
            ]
            .map(|k| d[k].to_string())
            .join(" ");
            *node.entry(k).or_default() += 1;
        }
        assert_eq!(node.len(), 98);
        let c: Vec<usize> = node.values().copied().collect();
        assert!(
            chi_square(&c) < 97.0 + 6.0 * 194f64.sqrt(),
            "{}",
            chi_square(&c)
        );
        // The unrestricted keys still take every value (skip_connect, say, on another slot).
        assert!(draws.iter().any(|d| d["normal/2/1/op"] == "max_pool_3x3"));
        let ts = TrickSet::new(&Darts::new(), &cfg, None, None).unwrap();
        // normal/2: 2 x 7 ops x 2 input pairs; normal/3: 7 x 7 ops x inputs (2, 0|1); nodes 4, 5
        // free (588, 980). reduce/4: 7 x 1 ops x 12 pairs; reduce/5: 49 ops x (3 x 5 - 3) pairs.
        let normal: u128 = 28 * 98 * 588 * 980;
        let reduce: u128 = 98 * 294 * 84 * 588;
        assert_eq!(ts.space_size().unwrap().exact, Some(normal * reduce));
        assert!(
            ts.report()
                .iter()
                .any(|l| l.contains("sampling restricted from")),
            "{:?}",
            ts.report()
        );
    }

    #[test]
    fn ptb_and_proxyless_pruned_sampling_stays_in_the_allowed_values_uniformly() {
        let allowed =
            json!({"act/0": [3], "act/5": [0, 2], "switch/3": [1, 2], "switch/7": [7, 0, 4]});
        let cfg = with_pruned(defaults::ptb(), allowed.clone());
        check_sampling(&Ptb, &cfg, &allowed, 20_000);
        let ts = TrickSet::new(&Ptb, &cfg, None, None).unwrap();
        // act: 4^6 x 1 x 2; switch/i has i + 1 values, switch/3 keeps 2 of 4, switch/7 3 of 8.
        let size = 4u128.pow(6) * 2 * [1u128, 2, 3, 2, 5, 6, 7, 3].iter().product::<u128>();
        assert_eq!(ts.space_size().unwrap().exact, Some(size));

        let allowed =
            json!({"stage0_cell0": [5], "stage2_cell3": [6, 0], "stage5_cell0": [1, 2, 3]});
        let cfg = with_pruned(defaults::proxyless(), allowed.clone());
        check_sampling(&Proxyless, &cfg, &allowed, 20_000);
        let ts = TrickSet::new(&Proxyless, &cfg, None, None).unwrap();
        assert_eq!(
            ts.space_size().unwrap().exact,
            Some(6u128.pow(4) * 3 * 7u128.pow(14) * 2)
        );
    }

    /// A `pruned` that allows every value goes through the factor sampler and is still draw
    /// for draw the space's own sampler (and so are the validation draws).
    #[test]
    fn pruned_allowing_everything_samples_like_the_space() {
        fn same<S: Space>(space: &S, cfg: Config) {
            let ts = TrickSet::new(space, &cfg, None, None).unwrap();
            let plain =
                TrickSet::new(space, &defaults::for_kind(S::KIND).unwrap(), None, None).unwrap();
            let (mut a, mut b) = (
                crate::rng::stream(3, "sample", &[]),
                crate::rng::stream(3, "sample", &[]),
            );
            assert_eq!(
                ts.draw_eval_archs(space, 50, &mut a),
                plain.draw_eval_archs(space, 50, &mut b)
            );
            for _ in 0..500 {
                assert_eq!(ts.sample(space, &mut a), space.sample(&mut b));
            }
        }
        same(
            &Darts::new(),
            with_pruned(
                defaults::darts(),
                json!({"reduce/5/1/input": [0, 1, 2, 3, 4]}),
            ),
        );
        same(
            &Ptb,
            with_pruned(defaults::ptb(), json!({"act/7": [0, 1, 2, 3]})),
        );
        same(
            &Proxyless,
            with_pruned(
                defaults::proxyless(),
                json!({"stage1_cell2": [0, 1, 2, 3, 4, 5, 6]}),
            ),
        );
    }

    /// When the pruned space holds at most 10 x eval.num_archs architectures, the validation
    /// architectures are the study's `RandomState(seed).permutation(size)[:k]` of its
    /// enumeration (distinct), and the sampler's stream is left alone.
    #[test]
    fn small_pruned_space_takes_the_studys_permutation() {
        // Everything fixed but the inputs of normal/5: 5 x 4 ordered pairs of distinct states.
        let mut m = serde_json::Map::new();
        for key in crate::space::darts::keys() {
            let v = if key.ends_with("/op") {
                json!(["sep_conv_3x3"])
            } else if key.ends_with("/0/input") {
                json!([0])
            } else {
                json!([1])
            };
            m.insert(key, v);
        }
        m.remove("normal/5/0/input");
        m.remove("normal/5/1/input");
        let mut cfg = with_pruned(defaults::darts(), Value::Object(m));
        cfg.experiment.seed = 42;
        let space = Darts::new();
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        assert_eq!(ts.space_size().unwrap().exact, Some(20));
        // The study's enumeration: itertools.product order, input0 then input1.
        let pairs: Vec<(u8, u8)> = (0..5u8)
            .flat_map(|a| (0..5u8).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect();
        let perm = crate::rng::mt19937::RandomState::new(42).permutation(20);
        let mut r = crate::rng::stream(42, "sample", &[]);
        let before = crate::rng::save_state(&r);
        let got = ts.draw_eval_archs(&space, 4, &mut r);
        assert_eq!(
            crate::rng::save_state(&r),
            before,
            "the sampler's stream is untouched"
        );
        let got_pairs: Vec<(u8, u8)> = got
            .iter()
            .map(|a| {
                let [x, y] = a.normal.node(5);
                (x.input, y.input)
            })
            .collect();
        let want: Vec<(u8, u8)> = perm[..4].iter().map(|&i| pairs[i]).collect();
        assert_eq!(got_pairs, want);
        assert_eq!(ts.eval_archs(&space, 4), got);
        // k = 2: 20 is not above 10 x 2, still the permutation; k = 1: 20 > 10, so the
        // validation architectures are draws (with replacement) from the sampler's stream.
        assert_eq!(ts.draw_eval_archs(&space, 2, &mut r), got[..2]);
        assert_eq!(crate::rng::save_state(&r), before);
        let drawn = ts.draw_eval_archs(&space, 1, &mut r);
        assert_ne!(crate::rng::save_state(&r), before);
        assert_eq!(drawn.len(), 1);
        // Asking for more than there are gives all of them, each once.
        let all = ts.eval_archs(&space, 30);
        assert_eq!(all.len(), 20);
        assert_eq!(
            all.iter().collect::<std::collections::HashSet<_>>().len(),
            20
        );
    }
}
