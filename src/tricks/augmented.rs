//! `augmented`: fix every node's op from a `setup` string and train that one architecture;
//! with `replicate`, every candidate of every edge becomes a copy of the fixed op (`copies`
//! independently initialised copies, the reference builds 5), and each forward call picks one
//! copy per cell and edge at random (training, BN recalibration and evaluation alike). The
//! supernet side is `Nb201Net::with_copies`.
//!
//! NB201 setup strings are the reference's: 6 digits, the op indices of the edges in node-major
//! order `0_1 0_2 1_2 0_3 1_3 2_3` (note: not the encoding's key order); default `444444`
//! (every edge avg_pool_3x3). NB101 setups are 5 digits, the ops of vertices 1..5 (0 conv3x3,
//! 1 conv1x1, 2 maxpool3x3; default `00000`); they fix the ops only, so training still samples
//! the 395 topologies, and `replicate` builds 3 copies by default (`Nb101Net::with_copies`).

use crate::space::Space;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// NB201's setup order: for each node i = 1..3, its inputs j < i.
pub const NB201_SETUP_KEYS: [&str; 6] = ["0_1", "0_2", "1_2", "0_3", "1_3", "2_3"];

/// The encoding (key -> value) a setup string fixes, for space `kind`.
pub fn setup_choices(kind: &str, setup: &str) -> Result<Map<String, Value>> {
    match kind {
        "nb201" => {
            let digits: Vec<u32> = setup
                .chars()
                .map(|c| c.to_digit(10).filter(|&d| d < 5))
                .collect::<Option<_>>()
                .with_context(|| {
                    format!("tricks.augmented.setup {setup:?}: NB201 setups are op indices 0..4")
                })?;
            if digits.len() != NB201_SETUP_KEYS.len() {
                bail!("tricks.augmented.setup {setup:?}: NB201 setups have 6 digits (edges 0_1 0_2 1_2 0_3 1_3 2_3), got {}", digits.len());
            }
            Ok(NB201_SETUP_KEYS
                .iter()
                .zip(digits)
                .map(|(k, d)| (k.to_string(), Value::from(d)))
                .collect())
        }
        "nb101" => {
            // tricks/nb101/augmented_space.py: 5 digits, the op (0 conv3x3, 1 conv1x1,
            // 2 maxpool3x3) of vertices 1..5, applied as `pruned` on the op keys: the
            // topology is still sampled.
            let digits: Vec<usize> = setup
                .chars()
                .map(|c| c.to_digit(10).map(|d| d as usize).filter(|&d| d < 3))
                .collect::<Option<_>>()
                .with_context(|| {
                    format!("tricks.augmented.setup {setup:?}: NB101 setups are op indices 0..2 (conv3x3, conv1x1, maxpool3x3)")
                })?;
            if digits.len() != 5 {
                bail!("tricks.augmented.setup {setup:?}: NB101 setups have 5 digits (the ops of vertices 1..5), got {}", digits.len());
            }
            Ok(digits
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    let onehot: Vec<Value> =
                        (0..3).map(|k| Value::from(u8::from(k == d))).collect();
                    (format!("op{}", i + 1), Value::Array(onehot))
                })
                .collect())
        }
        other => bail!("tricks.augmented: no setup format for space {other}"),
    }
}

/// The architectures of `set` that a setup string keeps: those taking every choice it fixes
/// (NB201: one architecture; NB101: the 395 topologies with the fixed ops).
pub fn setup_filter<S: Space>(set: &[S::Arch], setup: &str) -> Result<Vec<S::Arch>> {
    let fixed = setup_choices(S::KIND, setup)?;
    let mut out = vec![];
    for a in set {
        let enc = super::encoded::<S>(a)?;
        if fixed.iter().all(|(k, v)| enc.get(k) == Some(v)) {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// The architecture a setup string fixes.
pub fn setup_arch<S: Space>(setup: &str) -> Result<S::Arch> {
    let obj = setup_choices(S::KIND, setup)?;
    S::decode(&Value::Object(obj)).with_context(|| format!("tricks.augmented.setup {setup:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{defaults, Augmented, Nb201Space};
    use crate::nn::{Mode, Store};
    use crate::space::nb201::{copy_draw, Arch, Nb201, Nb201Net, EDGES};
    use crate::space::{Ctx, Supernet};
    use crate::tricks::TrickSet;
    use candle_core::{Device, Tensor};
    use std::collections::BTreeMap;

    #[test]
    fn setup_order_is_node_major() {
        // 0_1=0, 0_2=1, 1_2=2, 0_3=3, 1_3=4, 2_3=1 -> ops in key order 0_1 0_2 0_3 1_2 1_3 2_3.
        let a = setup_arch::<Nb201>("012341").unwrap();
        assert_eq!(a.ops, [0, 1, 3, 2, 4, 1]);
        assert_eq!(setup_arch::<Nb201>("444444").unwrap(), Arch { ops: [4; 6] });
        assert!(setup_arch::<Nb201>("44444").is_err());
        assert!(setup_arch::<Nb201>("444445").is_err());
        // A setup whose output node is unreachable is refused when the trick is built.
        let mut cfg = defaults::nb201();
        cfg.tricks.augmented = Some(Augmented {
            setup: "000000".into(),
            ..Augmented::default()
        });
        let e = TrickSet::new(&Nb201::new(), &cfg, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not in the archset"), "{e}");
        cfg.tricks.augmented = Some(Augmented::default());
        let ts = TrickSet::new(&Nb201::new(), &cfg, None, None).unwrap();
        assert_eq!(ts.archset(&Nb201::new()).unwrap(), &[Arch { ops: [4; 6] }]);
    }

    fn input(dev: &Device) -> Tensor {
        let mut r = crate::rng::stream(9, "data", &[]);
        let v: Vec<f32> = (0..4 * 3 * 8 * 8)
            .map(|_| rand::Rng::random::<f32>(&mut r) - 0.5)
            .collect();
        Tensor::from_vec(v, (4, 3, 8, 8), dev).unwrap()
    }

    /// Replicate draws one copy per cell and edge per forward call among copies of the same op
    /// with independent weights: the replicated net's output equals that of a single-copy net
    /// loaded with the drawn copies, and the draws are exactly 6 per cell from the context RNG.
    #[test]
    fn replicate_draws_among_identical_copies() {
        let dev = Device::Cpu;
        let sc = Nb201Space {
            channels: 2,
            cells_per_stage: 1,
            bn_momentum: 0.1,
        };
        let copies = 3;
        let store = Store::new(&dev);
        let net = Nb201Net::with_copies(
            &store.root(),
            &sc,
            10,
            copies,
            &mut crate::rng::stream(0, "init", &[]),
        )
        .unwrap();
        let tensors = store.tensors();
        let cells: Vec<String> = {
            let mut c: Vec<String> = tensors
                .keys()
                .filter(|k| k.contains(".edge_0_1.nor_conv_3x3."))
                .map(|k| k.split(".edge_").next().unwrap().to_string())
                .collect();
            c.dedup();
            c
        };
        assert_eq!(cells.len(), 3, "{cells:?}");
        // Independent weights: the copies of an op differ.
        for cell in &cells {
            let w = |c: &str| {
                tensors[&format!("{cell}.edge_1_2.{c}.conv.weight")]
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            assert_ne!(w("nor_conv_3x3"), w("nor_conv_3x3_copy1"));
            assert_ne!(w("nor_conv_3x3_copy1"), w("nor_conv_3x3_copy2"));
            assert_eq!(w("nor_conv_1x1_copy2").len(), w("nor_conv_1x1").len());
        }
        let single_store = Store::new(&dev);
        let single = Nb201Net::new(
            &single_store.root(),
            &sc,
            10,
            &mut crate::rng::stream(1, "init", &[]),
        )
        .unwrap();
        let x = input(&dev);
        let arch = setup_arch::<Nb201>("323132").unwrap();
        let mut outputs = vec![];
        for seed in 0..6u64 {
            let mut r = crate::rng::stream(seed, "copies", &[]);
            let mut ctx = Ctx::new(Mode::Eval, &mut r);
            let y = net.forward(&x, &arch, &mut ctx).unwrap().logits;
            // Replay the draws: per cell, per edge in forward order.
            let mut replay = crate::rng::stream(seed, "copies", &[]);
            let mut picked: BTreeMap<String, Tensor> = BTreeMap::new();
            let forward_order = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)];
            let mut chosen = BTreeMap::new();
            for cell in &cells {
                for (from, to) in forward_order {
                    assert!(EDGES.contains(&(from, to)));
                    chosen.insert(
                        format!("{cell}.edge_{from}_{to}."),
                        copy_draw(&mut replay, copies),
                    );
                }
            }
            assert_eq!(
                crate::rng::save_state(&r),
                crate::rng::save_state(&replay),
                "6 draws per cell per call"
            );
            for name in single_store.tensors().keys() {
                let src = match chosen.iter().find(|(p, _)| name.starts_with(p.as_str())) {
                    Some((p, &c)) if c > 0 => {
                        let rest = &name[p.len()..];
                        let (op, leaf) = rest.split_once('.').unwrap();
                        format!("{p}{op}_copy{c}.{leaf}")
                    }
                    _ => name.clone(),
                };
                picked.insert(name.clone(), tensors[&src].clone());
            }
            single_store.load(&picked).unwrap();
            let mut r1 = crate::rng::stream(0, "unused", &[]);
            let want = single
                .forward(&x, &arch, &mut Ctx::new(Mode::Eval, &mut r1))
                .unwrap()
                .logits;
            let (a, b) = (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(a, b, "seed {seed}");
            outputs.push(a);
        }
        outputs.dedup();
        assert!(outputs.len() > 1, "different draws use different copies");
    }

    #[test]
    fn one_copy_is_the_plain_supernet() {
        let dev = Device::Cpu;
        let sc = Nb201Space {
            channels: 2,
            cells_per_stage: 1,
            bn_momentum: 0.1,
        };
        let (s1, s2) = (Store::new(&dev), Store::new(&dev));
        let a =
            Nb201Net::new(&s1.root(), &sc, 10, &mut crate::rng::stream(4, "init", &[])).unwrap();
        let b = Nb201Net::with_copies(
            &s2.root(),
            &sc,
            10,
            1,
            &mut crate::rng::stream(4, "init", &[]),
        )
        .unwrap();
        let (ta, tb) = (s1.tensors(), s2.tensors());
        assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
        for (k, v) in &ta {
            assert_eq!(
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                tb[k].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{k}"
            );
        }
        // No draw from the context RNG without copies.
        let x = input(&dev);
        let mut r = crate::rng::stream(0, "ctx", &[]);
        let before = crate::rng::save_state(&r);
        a.forward(&x, &Arch { ops: [3; 6] }, &mut Ctx::new(Mode::Eval, &mut r))
            .unwrap();
        assert_eq!(crate::rng::save_state(&r), before);
        let _ = b;
    }
}
