//! Spaces without an enumerated archset (DARTS, DARTS-PTB, ProxylessNAS) as the study's
//! mutators see them: a product of independent factors, each a list of allowed combinations of
//! some encoding keys, sampled one after the other by one uniform index into its list.
//!
//! A factor is one key (PTB, ProxylessNAS: `random_state.choice(values)` per key) or a group
//! of keys with a constraint (a DARTS node: `(op0, input0, op1, input1)` from the product of the
//! four value lists without input0 == input1, the study's `_combinations_pruned`). `pruned`
//! replaces a key's value list by the allowed values (in the order given, as the study does) and
//! the combinations are rebuilt, so sampling stays uniform per factor over what is left and the
//! size of the space is the product of the list lengths. With nothing restricted, sampling is
//! draw for draw the space's own `Space::sample` (tested per space).

use crate::rng::Rng;
use rand::Rng as _;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The integer type a space's sampler draws its indices with. rand's `usize` ranges draw 32-bit
/// words and `u64` ranges 64-bit words, so both are needed to repeat a space's draws exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Draw {
    U64,
    Usize,
}

/// One factor: some keys with their value lists, and pairs of keys that must differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Factor {
    /// Display name (a DARTS node `normal/2`, or the key itself).
    pub name: String,
    pub keys: Vec<String>,
    /// Values per key, in enumeration order.
    pub values: Vec<Vec<Value>>,
    /// Positions (into `keys`) of pairs whose values must differ.
    pub distinct: Vec<(usize, usize)>,
    /// The valid combinations in product order (the last key varies fastest), as value
    /// positions per key.
    combos: Vec<Vec<usize>>,
}

impl Factor {
    pub fn new(
        name: impl Into<String>,
        keys: Vec<String>,
        values: Vec<Vec<Value>>,
        distinct: Vec<(usize, usize)>,
    ) -> Self {
        let mut f = Factor {
            name: name.into(),
            keys,
            values,
            distinct,
            combos: vec![],
        };
        f.combos = f.enumerate();
        f
    }

    /// One key with its values.
    pub fn single(key: impl Into<String>, values: Vec<Value>) -> Self {
        let key = key.into();
        Self::new(key.clone(), vec![key], vec![values], vec![])
    }

    fn enumerate(&self) -> Vec<Vec<usize>> {
        let mut out = vec![];
        if self.values.iter().any(Vec::is_empty) {
            return out;
        }
        let mut idx = vec![0usize; self.keys.len()];
        loop {
            let ok = self
                .distinct
                .iter()
                .all(|&(a, b)| self.values[a][idx[a]] != self.values[b][idx[b]]);
            if ok {
                out.push(idx.clone());
            }
            // Odometer, last key fastest (itertools.product's order).
            let mut k = idx.len();
            loop {
                if k == 0 {
                    return out;
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < self.values[k].len() {
                    break;
                }
                idx[k] = 0;
            }
        }
    }

    /// Number of valid combinations.
    pub fn len(&self) -> usize {
        self.combos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.combos.is_empty()
    }

    fn put(&self, c: usize, obj: &mut Map<String, Value>) {
        for (k, &v) in self.combos[c].iter().enumerate() {
            obj.insert(self.keys[k].clone(), self.values[k][v].clone());
        }
    }
}

/// Why a `pruned` restriction does not apply to a space.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestrictError {
    #[error("{key:?} is not a key of this space{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("key {key:?} allows no value")]
    Empty { key: String },
    #[error("key {key:?}: {value} is not one of its choices {choices}")]
    NotAChoice {
        key: String,
        value: String,
        choices: String,
    },
    #[error("key {key:?} lists {value} twice")]
    Duplicate { key: String, value: String },
    #[error("{factor}: the allowed values leave no valid combination ({why})")]
    NoCombination { factor: String, why: String },
}

/// The size of a space: exact while it fits in 128 bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Size {
    pub exact: Option<u128>,
    pub log10: f64,
}

impl std::fmt::Display for Size {
    /// `87480 (8.75e4)`, or `~1e45.3` beyond 128 bits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.exact {
            Some(n) => write!(f, "{n} ({:.2e})", n as f64),
            None => write!(f, "about 10^{:.2}", self.log10),
        }
    }
}

/// A space as a product of factors, sampled in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub factors: Vec<Factor>,
    pub draw: Draw,
}

impl Factors {
    pub fn new(factors: Vec<Factor>, draw: Draw) -> Self {
        Self { factors, draw }
    }

    /// Every key with its allowed values, in factor order.
    pub fn keys(&self) -> Vec<(String, Vec<Value>)> {
        self.factors
            .iter()
            .flat_map(|f| f.keys.iter().cloned().zip(f.values.iter().cloned()))
            .collect()
    }

    /// The number of architectures (the product of the factors' combination counts).
    pub fn size(&self) -> Size {
        let log10 = self.factors.iter().map(|f| (f.len() as f64).log10()).sum();
        let exact = self
            .factors
            .iter()
            .try_fold(1u128, |acc, f| acc.checked_mul(f.len() as u128));
        Size { exact, log10 }
    }

    /// The space with `allowed` values per key (the study's `self.pruned[k] = v`, then the
    /// combinations rebuilt). Keys not named keep all their values.
    pub fn restrict(
        &self,
        allowed: &BTreeMap<String, Vec<Value>>,
    ) -> Result<Factors, RestrictError> {
        let all = self.keys();
        for (key, vals) in allowed {
            let Some((_, choices)) = all.iter().find(|(k, _)| k == key) else {
                let hint =
                    crate::config::suggest::hint(key, all.iter().map(|(k, _)| k.as_str()), |c| {
                        c.to_string()
                    });
                return Err(RestrictError::UnknownKey {
                    key: key.clone(),
                    hint,
                });
            };
            if vals.is_empty() {
                return Err(RestrictError::Empty { key: key.clone() });
            }
            for (i, v) in vals.iter().enumerate() {
                if !choices.contains(v) {
                    return Err(RestrictError::NotAChoice {
                        key: key.clone(),
                        value: v.to_string(),
                        choices: Value::Array(choices.clone()).to_string(),
                    });
                }
                if vals[..i].contains(v) {
                    return Err(RestrictError::Duplicate {
                        key: key.clone(),
                        value: v.to_string(),
                    });
                }
            }
        }
        let mut factors = vec![];
        for f in &self.factors {
            let values: Vec<Vec<Value>> = f
                .keys
                .iter()
                .zip(&f.values)
                .map(|(k, v)| allowed.get(k).cloned().unwrap_or_else(|| v.clone()))
                .collect();
            let g = Factor::new(f.name.clone(), f.keys.clone(), values, f.distinct.clone());
            if g.is_empty() {
                let why = g
                    .distinct
                    .iter()
                    .map(|&(a, b)| {
                        format!(
                            "{} in {} and {} in {} must differ",
                            g.keys[a],
                            Value::Array(g.values[a].clone()),
                            g.keys[b],
                            Value::Array(g.values[b].clone())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(RestrictError::NoCombination {
                    factor: g.name.clone(),
                    why,
                });
            }
            factors.push(g);
        }
        Ok(Factors {
            factors,
            draw: self.draw,
        })
    }

    /// One architecture's encoding: per factor in order, one uniform index into its
    /// combinations (drawn as the space's own sampler draws it).
    pub fn sample(&self, rng: &mut Rng) -> Map<String, Value> {
        let mut obj = Map::new();
        for f in &self.factors {
            let n = f.len();
            let c = match self.draw {
                Draw::U64 => rng.random_range(0..n as u64) as usize,
                Draw::Usize => rng.random_range(0..n),
            };
            f.put(c, &mut obj);
        }
        obj
    }

    /// The `i`-th architecture in the study's enumeration order (`itertools.product` over the
    /// factors, the last factor fastest), for `i` below the exact size.
    pub fn nth(&self, mut i: u128) -> Map<String, Value> {
        let mut picks = vec![0usize; self.factors.len()];
        for (p, f) in picks.iter_mut().zip(&self.factors).rev() {
            let n = f.len() as u128;
            *p = (i % n) as usize;
            i /= n;
        }
        let mut obj = Map::new();
        for (f, &c) in self.factors.iter().zip(&picks) {
            f.put(c, &mut obj);
        }
        obj
    }

    /// Whether an encoding takes only allowed values (keys outside the factors are ignored;
    /// within a factor, the constraint holds for any encoding of a valid architecture).
    pub fn allows(&self, obj: &Map<String, Value>) -> bool {
        self.factors.iter().all(|f| {
            f.keys
                .iter()
                .zip(&f.values)
                .all(|(k, vals)| obj.get(k).is_some_and(|v| vals.contains(v)))
        })
    }

    /// Every architecture of a factor combined with the first combination of every other
    /// factor: enough to check that every combination decodes (the factors are independent).
    pub fn probes(&self) -> impl Iterator<Item = Map<String, Value>> + '_ {
        (0..self.factors.len()).flat_map(move |fi| {
            (0..self.factors[fi].len()).map(move |c| {
                let mut obj = Map::new();
                for (fj, f) in self.factors.iter().enumerate() {
                    f.put(if fj == fi { c } else { 0 }, &mut obj);
                }
                obj
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Space as _;
    use serde_json::json;

    fn node() -> Factor {
        Factor::new(
            "n",
            vec!["a".into(), "i0".into(), "b".into(), "i1".into()],
            vec![
                vec![json!("x"), json!("y")],
                vec![json!(0), json!(1), json!(2)],
                vec![json!("x"), json!("y")],
                vec![json!(0), json!(1), json!(2)],
            ],
            vec![(1, 3)],
        )
    }

    #[test]
    fn combinations_are_the_product_without_equal_pairs() {
        let f = node();
        // 2 x 3 x 2 x 3 = 36, minus the 2 x 2 x 3 with i0 == i1.
        assert_eq!(f.len(), 24);
        assert_eq!(f.combos[0], [0, 0, 0, 1]);
        assert_eq!(f.combos[1], [0, 0, 0, 2]);
        assert_eq!(f.combos[2], [0, 0, 1, 1]);
        assert!(f.combos.iter().all(|c| c[1] != c[3]));
    }

    #[test]
    fn restrict_checks_keys_values_and_the_constraint() {
        let s = Factors::new(
            vec![node(), Factor::single("k", vec![json!(0), json!(1)])],
            Draw::U64,
        );
        assert_eq!(s.size().exact, Some(48));
        let r = |pairs: &[(&str, Value)]| {
            let m: BTreeMap<String, Vec<Value>> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_array().unwrap().clone()))
                .collect();
            s.restrict(&m)
        };
        let t = r(&[("i0", json!([2])), ("k", json!([1]))]).unwrap();
        // i0 = 2: 2 x 1 x 2 x 2 = 8 combinations, k fixed.
        assert_eq!(t.size().exact, Some(8));
        assert!(matches!(
            r(&[("i2", json!([0]))]),
            Err(RestrictError::UnknownKey { .. })
        ));
        assert!(matches!(
            r(&[("a", json!([]))]),
            Err(RestrictError::Empty { .. })
        ));
        assert!(matches!(
            r(&[("a", json!(["z"]))]),
            Err(RestrictError::NotAChoice { .. })
        ));
        assert!(matches!(
            r(&[("k", json!([1, 1]))]),
            Err(RestrictError::Duplicate { .. })
        ));
        let e = r(&[("i0", json!([1])), ("i1", json!([1]))]).unwrap_err();
        assert!(matches!(e, RestrictError::NoCombination { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("i0 in [1] and i1 in [1] must differ"),
            "{e}"
        );
        // The user's order is the enumeration order, as in the study.
        let t = r(&[("a", json!(["y", "x"]))]).unwrap();
        assert_eq!(t.nth(0)["a"], json!("y"));
    }

    #[test]
    fn nth_enumerates_the_product_in_order_and_allows_holds() {
        let s = Factors::new(
            vec![Factor::single("p", vec![json!(0), json!(1)]), node()],
            Draw::Usize,
        );
        let n = s.size().exact.unwrap();
        assert_eq!(n, 48);
        let all: Vec<_> = (0..n).map(|i| s.nth(i)).collect();
        let distinct: std::collections::HashSet<String> = all
            .iter()
            .map(|o| Value::Object(o.clone()).to_string())
            .collect();
        assert_eq!(distinct.len(), 48);
        // The last factor varies fastest.
        assert_eq!(all[0]["p"], json!(0));
        assert_eq!(all[23]["p"], json!(0));
        assert_eq!(all[24]["p"], json!(1));
        assert!(all.iter().all(|o| s.allows(o)));
        let mut bad = all[0].clone();
        bad.insert("a".into(), json!("z"));
        assert!(!s.allows(&bad));
        assert_eq!(s.probes().count(), 2 + 24);
    }

    /// Each archset-less space's factors: the keys and values `config::arch_keys` checks
    /// `pruned` against, every combination decodes, the exact size, and unrestricted sampling
    /// that is draw for draw the space's own sampler (same architectures, same stream position).
    fn space_factors_agree<S: crate::space::Space>(space: &S, size: u128) {
        let f = space.factors().unwrap();
        assert_eq!(
            Some(f.keys()),
            crate::config::arch_keys::keys(S::KIND),
            "{}",
            S::KIND
        );
        assert_eq!(f.size().exact, Some(size), "{}", S::KIND);
        for probe in f.probes() {
            S::decode(&Value::Object(probe)).unwrap();
        }
        for seed in 0..5 {
            let mut a = crate::rng::stream(seed, "sample", &[]);
            let mut b = crate::rng::stream(seed, "sample", &[]);
            for i in 0..300 {
                let want = space.sample(&mut a);
                let got = S::decode(&Value::Object(f.sample(&mut b))).unwrap();
                assert_eq!(got, want, "{} seed {seed} draw {i}", S::KIND);
            }
            assert_eq!(
                rand::Rng::random::<u64>(&mut a),
                rand::Rng::random::<u64>(&mut b)
            );
        }
        // An empty restriction is the space itself.
        assert_eq!(f.restrict(&BTreeMap::new()).unwrap(), f);
    }

    #[test]
    fn darts_factors_are_its_nodes() {
        let d = crate::space::darts::Darts::new();
        let per_cell: u128 = (2..=5u128).map(|n| 49 * n * (n - 1)).product();
        space_factors_agree(&d, per_cell * per_cell);
        // Each node factor is node_choices in order.
        let f = d.factors().unwrap();
        for (k, node) in (2..=5).enumerate() {
            let want = crate::space::darts::node_choices(node);
            assert_eq!(f.factors[k].len(), want.len());
            assert_eq!(f.factors[k].name, format!("normal/{node}"));
        }
        assert_eq!(
            f.size().to_string(),
            format!("{} (2.76e20)", per_cell * per_cell)
        );
    }

    #[test]
    fn ptb_factors_are_its_keys() {
        let total = 4u128.pow(8) * (1..=8u128).product::<u128>();
        space_factors_agree(&crate::space::ptb::Ptb, total);
    }

    #[test]
    fn proxyless_factors_are_its_cells() {
        let total = 6u128.pow(6) * 7u128.pow(15);
        space_factors_agree(&crate::space::proxyless::Proxyless, total);
    }

    #[test]
    fn size_beyond_128_bits_keeps_its_log() {
        let f = Factor::single("k", (0..1000).map(Value::from).collect());
        let s = Factors::new(vec![f; 20], Draw::U64);
        let size = s.size();
        assert_eq!(size.exact, None);
        assert!((size.log10 - 60.0).abs() < 1e-9);
        assert_eq!(size.to_string(), "about 10^60.00");
        let s = Factors::new(vec![Factor::single("k", vec![json!(0); 3])], Draw::U64);
        assert_eq!(s.size().to_string(), "3 (3.00e0)");
    }
}
