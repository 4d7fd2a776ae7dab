//! `pruned`: restrict arch keys to allowed values. For a space with an enumerated archset the
//! archset is filtered (the reference's `prune_archset`), which keeps sampling uniform over
//! the remaining architectures.

use super::encoded;
use crate::space::Space;
use anyhow::{bail, Result};
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
