//! The study's own NB101 ground truth, `data/nb101/nb1shot1c.pkl`, read with runner's safe
//! pickle reader (nothing in the file is executed).
//!
//! The file (tools/generate_nb101_splits.py of the study) is a list, in archset order, of one
//! dict per space-3 architecture: `arch` (`op1..op5` one-hot numpy bool arrays of length 3,
//! `input1..input6` numpy bool masks of length t), `hash` (its NAS-Bench-101 hash),
//! `num_vertices`, `parameters` (trainable parameters in millions), `val_acc` and `test_acc`
//! (numpy arrays of the three 108-epoch runs). The score is the mean of `val_acc`, as the
//! study's mutator computes it.

use crate::data::pickle::{self, Value as Pkl};
use crate::space::nb101::{Arch, Nb101};
use crate::space::Space;
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::path::Path;

/// The rows of a `nb1shot1c.pkl`.
#[derive(Debug, Default)]
pub struct PickleTruth {
    /// Architectures in file order.
    pub order: Vec<Arch>,
    /// Mean `val_acc` (fraction) per architecture.
    pub scores: HashMap<Arch, f64>,
    /// `parameters` (millions) per architecture.
    pub params: HashMap<Arch, f64>,
}

/// A numpy array or list of bools / 0-1 ints as a JSON list of booleans.
fn mask_json(v: &Pkl) -> Result<Json> {
    let ints: Vec<i64> = match v {
        Pkl::Array(a) => a.to_i64_vec().with_context(|| {
            format!("a numpy array of dtype {} (expected bool)", a.dtype.code())
        })?,
        Pkl::List(_) | Pkl::Tuple(_) => v
            .to_i64_vec()
            .context("a list that is not all booleans or integers")?,
        other => bail!("a {} (expected a numpy bool array)", other.kind()),
    };
    Ok(Json::Array(
        ints.into_iter()
            .map(|i| match i {
                0 => Json::Bool(false),
                1 => Json::Bool(true),
                other => Json::from(other),
            })
            .collect(),
    ))
}

/// The three runs of `val_acc` (an array, a list, or a single number).
fn accuracies(v: &Pkl) -> Result<Vec<f64>> {
    let vals = match v {
        Pkl::Array(a) => {
            let vals = a.to_f64_vec();
            if vals.len() != a.numel() {
                bail!(
                    "a numpy array of dtype {} (expected floats)",
                    a.dtype.code()
                );
            }
            vals
        }
        Pkl::List(items) | Pkl::Tuple(items) => items
            .iter()
            .map(Pkl::as_f64)
            .collect::<Option<Vec<_>>>()
            .context("a list that is not all numbers")?,
        other => vec![other
            .as_f64()
            .with_context(|| format!("a {} (expected numbers)", other.kind()))?],
    };
    if vals.is_empty() || vals.iter().any(|v| !v.is_finite()) {
        bail!("{vals:?} (expected finite accuracies)");
    }
    Ok(vals)
}

/// One entry of the list.
fn entry(e: &Pkl) -> Result<(Arch, f64, f64)> {
    if e.as_dict().is_none() {
        bail!(
            "is a {}, expected a dict with arch, val_acc, parameters",
            e.kind()
        );
    }
    let arch = e
        .get("arch")
        .with_context(|| format!("has no `arch` (keys: {})", e.keys().join(", ")))?;
    let items = arch
        .as_dict()
        .with_context(|| format!("`arch` is a {}, expected a dict", arch.kind()))?;
    let mut obj = serde_json::Map::new();
    for (k, v) in items {
        let k = k
            .key_text()
            .with_context(|| format!("`arch` has a {} key", k.kind()))?
            .into_owned();
        let j = mask_json(v).with_context(|| format!("arch[{k:?}] is {}", "not a mask"))?;
        obj.insert(k, j);
    }
    let arch = Nb101::decode(&Json::Object(obj)).context("`arch` does not decode")?;
    let val = e
        .get("val_acc")
        .with_context(|| format!("has no `val_acc` (keys: {})", e.keys().join(", ")))?;
    let accs = accuracies(val).context("`val_acc` is")?;
    let score = accs.iter().sum::<f64>() / accs.len() as f64;
    let params = e
        .get("parameters")
        .and_then(Pkl::as_f64)
        .filter(|p| p.is_finite() && *p > 0.0)
        .with_context(|| "`parameters` is missing or not a positive number".to_string())?;
    Ok((arch, score, params))
}

/// Reads a `nb1shot1c.pkl`. A file that is not a list of such dicts, or any entry that does
/// not decode, fails with the file and the entry's index (0-based, as in Python).
pub fn read(path: &Path) -> Result<PickleTruth> {
    let root = pickle::load(path)?;
    let Some(list) = root.as_seq() else {
        bail!(
            "{}: not the study's nb1shot1c.pkl: the top level is a {}, expected a list of dicts (arch, val_acc, parameters, ...)",
            path.display(),
            root.kind()
        );
    };
    if list.is_empty() {
        bail!("{}: the list of architectures is empty", path.display());
    }
    let mut out = PickleTruth::default();
    let mut first: HashMap<Arch, usize> = HashMap::new();
    for (i, e) in list.iter().enumerate() {
        let (arch, score, params) =
            entry(e).with_context(|| format!("{}: entry {i}", path.display()))?;
        if let Some(j) = first.insert(arch, i) {
            bail!(
                "{}: entry {i} repeats the architecture of entry {j} ({})",
                path.display(),
                arch.to_arch_string()
            );
        }
        out.order.push(arch);
        out.scores.insert(arch, score);
        out.params.insert(arch, params);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    /// tests/fixtures/gen_nb101_pickle.py writes entries 0, 1, 500 and 95,984 of the archset in
    /// the study's structure and protocol, with known accuracies and parameters.
    #[test]
    fn reads_the_studys_structure() {
        let space = Nb101::new();
        let set = space.archset().unwrap();
        for name in ["nb101_p3.pkl", "nb101_p4.pkl"] {
            let t = read(&fixture(name)).unwrap();
            assert_eq!(
                t.order,
                vec![set[0], set[1], set[500], set[95_984]],
                "{name}"
            );
            let want = (0.9 + 0.91 + 0.92) / 3.0;
            let got = t.scores[&set[500]];
            // float32 storage, as in NAS-Bench-101's tables.
            assert!((got - want).abs() < 1e-6, "{got}");
            assert_eq!(t.params[&set[95_984]], 1.234567);
        }
    }

    #[test]
    fn malformed_pickles_name_the_entry() {
        let cases = [
            ("nb101_bad_root.pkl", "the top level is a dict"),
            (
                "nb101_bad_arch.pkl",
                "entry 1: `arch` does not decode: input4: vertex 4 has 1 parents",
            ),
            (
                "nb101_bad_key.pkl",
                "entry 0: `arch` does not decode: unknown key \"op6\"",
            ),
            ("nb101_bad_acc.pkl", "entry 2: `val_acc` is"),
            ("nb101_bad_entry.pkl", "entry 1: is a list"),
        ];
        for (name, msg) in cases {
            let e = format!("{:#}", read(&fixture(name)).unwrap_err());
            assert!(e.contains(name) && e.contains(msg), "{name}: {e}");
        }
    }
}
