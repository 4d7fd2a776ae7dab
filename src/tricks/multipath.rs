//! `multipath`: k paths per step on the same batch, one backward each, their gradients summed
//! (not averaged, as PyTorch accumulates them), then one clip and one optimizer step.
//! FairNAS builds the k paths from one random permutation of the choices per key, so each
//! choice of each key is trained exactly once per step (the paths may fall outside the
//! archset, as in the reference).

use crate::nn::{self, Mode};
use crate::rng::Rng;
use crate::space::{Ctx, Space, Supernet};
use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde_json::{Map, Value};

/// FairNAS paths: per key (in `choices` order) a permutation of its choices; path p takes the
/// p-th element of every permutation. Every key must have exactly `k` choices.
pub fn fair_paths<S: Space>(
    choices: &[(String, Vec<Value>)],
    k: usize,
    rng: &mut Rng,
) -> Result<Vec<S::Arch>> {
    let perms = permute(choices, rng);
    (0..k)
        .map(|p| fair_path::<S>(choices, &perms, p, k, Map::new()))
        .collect()
}

/// FairNAS over some keys only (`Space::fair_keys`; NB101: the ops): the permutations are
/// drawn first, then each path samples an architecture with `base` and takes the p-th element
/// of every permutation for the permuted keys (the reference's NB101 multipath: `reset()`,
/// then the ops overwritten from per-op permutations).
pub fn fair_paths_on<S: Space>(
    choices: &[(String, Vec<Value>)],
    k: usize,
    rng: &mut Rng,
    mut base: impl FnMut(&mut Rng) -> S::Arch,
) -> Result<Vec<S::Arch>> {
    let perms = permute(choices, rng);
    (0..k)
        .map(|p| {
            let start = super::encoded::<S>(&base(rng))?;
            fair_path::<S>(choices, &perms, p, k, start)
        })
        .collect()
}

fn permute(choices: &[(String, Vec<Value>)], rng: &mut Rng) -> Vec<Vec<Value>> {
    choices
        .iter()
        .map(|(_, v)| {
            let mut p = v.clone();
            super::shuffle(&mut p, rng);
            p
        })
        .collect()
}

fn fair_path<S: Space>(
    choices: &[(String, Vec<Value>)],
    perms: &[Vec<Value>],
    p: usize,
    k: usize,
    mut obj: Map<String, Value>,
) -> Result<S::Arch> {
    for ((key, _), perm) in choices.iter().zip(perms) {
        let v = perm.get(p).with_context(|| {
            format!(
                "FairNAS: key {key:?} has {} choices, fewer than the {k} paths",
                perm.len()
            )
        })?;
        obj.insert(key.clone(), v.clone());
    }
    S::decode(&Value::Object(obj)).with_context(|| format!("FairNAS path {p}"))
}

/// Loss and top-1 hits of one path of a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PathOutcome {
    pub loss: f64,
    pub correct: usize,
}

/// Runs every path on `images` in training mode, one forward and one backward each (the loss:
/// cross-entropy plus the weighted auxiliary loss), and returns the gradients of `vars` summed
/// over the paths, with each path's loss and hits. Summing per-path gradients in path order is
/// what PyTorch's repeated `backward()` before one `step()` does; one path's graph is alive at
/// a time. A variable no path reached has no entry (it stays "untouched"). `rng_for(p)` gives
/// path p's forward RNG (dropout, drop-path, replicate copies).
pub fn accumulate<N: Supernet>(
    net: &N,
    images: &Tensor,
    labels: &Tensor,
    paths: &[N::Arch],
    drop_path: f64,
    vars: &[Var],
    rng_for: impl FnMut(usize) -> Rng,
) -> Result<(GradStore, Vec<PathOutcome>)> {
    accumulate_smoothed(net, images, labels, paths, drop_path, vars, rng_for, 0.0)
}

/// [`accumulate`] with label smoothing `smoothing` in the cross-entropy of every path (the
/// auxiliary loss included): `smoothing / (K - 1)` on each wrong class, as the study's
/// ProxylessNAS criterion.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_smoothed<N: Supernet>(
    net: &N,
    images: &Tensor,
    labels: &Tensor,
    paths: &[N::Arch],
    drop_path: f64,
    vars: &[Var],
    mut rng_for: impl FnMut(usize) -> Rng,
    smoothing: f64,
) -> Result<(GradStore, Vec<PathOutcome>)> {
    if paths.is_empty() {
        anyhow::bail!("a training step needs at least one path");
    }
    let mut acc = GradStore::default();
    let mut outcomes = Vec::with_capacity(paths.len());
    for (p, arch) in paths.iter().enumerate() {
        let mut r = rng_for(p);
        let mut ctx = Ctx {
            mode: Mode::Train,
            drop_path,
            rng: &mut r,
        };
        let out = net.forward(images, arch, &mut ctx)?;
        let mut loss = nn::loss::cross_entropy(&out.logits, labels, smoothing)?;
        if let Some(aux) = &out.aux_logits {
            loss = (loss + (nn::loss::cross_entropy(aux, labels, smoothing)? * net.aux_weight())?)?;
        }
        let (correct, _) = nn::loss::correct_topk(&out.logits.detach(), labels, 1)?;
        outcomes.push(PathOutcome {
            loss: loss.to_scalar::<f32>()? as f64,
            correct,
        });
        let mut grads = loss.backward()?;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                let sum = match acc.remove(v.as_tensor()) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                acc.insert(v.as_tensor(), sum);
            }
        }
    }
    Ok((acc, outcomes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{defaults, Multipath, Nb201Space};
    use crate::nn::Store;
    use crate::space::nb201::{Nb201, Nb201Net};
    use crate::tricks::TrickSet;
    use candle_core::{DType, Device};

    #[test]
    fn fairnas_uses_each_op_exactly_once_per_key_per_step() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.tricks.multipath = Some(Multipath {
            paths: 5,
            fairnas: true,
        });
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let mut r = crate::rng::stream(1, "sample", &[]);
        let mut outside = 0;
        let mut first_paths = std::collections::HashSet::new();
        for _ in 0..200 {
            let paths = ts.paths(&space, &mut r).unwrap();
            assert_eq!(paths.len(), 5);
            for e in 0..6 {
                let mut ops: Vec<u8> = paths.iter().map(|a| a.ops[e]).collect();
                ops.sort_unstable();
                assert_eq!(ops, [0, 1, 2, 3, 4], "edge {e}: {paths:?}");
            }
            outside += paths.iter().filter(|a| !a.output_reachable()).count();
            first_paths.insert(paths[0]);
        }
        // The permutations are random (not one fixed pattern), and some paths leave the
        // archset, as the study notes.
        assert!(first_paths.len() > 150, "{}", first_paths.len());
        assert!(outside > 0);
    }

    /// DARTS FairNAS: each of the 7 ops of each of the 16 (cell, node, slot)s exactly once per
    /// step; the inputs come from each path's own sample (valid, and varying).
    #[test]
    fn darts_fairnas_uses_each_op_exactly_once_per_slot_per_step() {
        use crate::space::darts::{Darts, Op};
        let space = Darts::new();
        let mut cfg = defaults::darts();
        cfg.tricks.multipath = Some(Multipath {
            paths: 7,
            fairnas: true,
        });
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let mut r = crate::rng::stream(5, "sample", &[]);
        let mut inputs = std::collections::HashSet::new();
        let mut first_ops = std::collections::HashSet::new();
        for _ in 0..100 {
            let paths = ts.paths(&space, &mut r).unwrap();
            assert_eq!(paths.len(), 7);
            for cell in 0..2 {
                for node in 2..=5 {
                    for slot in 0..2 {
                        let mut ops: Vec<Op> = paths
                            .iter()
                            .map(|a| a.cell(cell).node(node)[slot].op)
                            .collect();
                        ops.sort();
                        assert_eq!(ops, Op::ALL, "cell {cell} node {node} slot {slot}");
                    }
                }
            }
            inputs.insert(paths[0].reduce.node(5).map(|s| s.input));
            first_ops.insert(paths[0].normal.node(2)[0].op);
        }
        assert!(inputs.len() > 10, "inputs are sampled per path: {inputs:?}");
        assert_eq!(first_ops.len(), 7, "the permutations vary");
        // Not 7 paths: refused when the trick set is built (the config check says it first).
        cfg.tricks.multipath = Some(Multipath {
            paths: 5,
            fairnas: true,
        });
        let e = TrickSet::new(&space, &cfg, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("has 7 choices, but paths = 5"), "{e}");
        // ProxylessNAS: 6 choices in a stage's first cell, 7 in the others.
        let mut cfg = defaults::proxyless();
        cfg.tricks.multipath = Some(Multipath {
            paths: 7,
            fairnas: true,
        });
        let e = TrickSet::new(&crate::space::proxyless::Proxyless, &cfg, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"stage0_cell0\" has 6 choices, but paths = 7"),
            "{e}"
        );
    }

    /// Plain multipath on a pruned DARTS space: k paths, each from the restricted sampler.
    #[test]
    fn darts_multipath_paths_respect_pruned() {
        use crate::space::darts::{Darts, Op};
        let space = Darts::new();
        let mut cfg = defaults::darts();
        cfg.tricks.multipath = Some(Multipath {
            paths: 3,
            fairnas: false,
        });
        let m = [(
            "normal/4/1/op".to_string(),
            vec![serde_json::json!("avg_pool_3x3")],
        )];
        cfg.tricks.pruned = Some(crate::config::Pruned::Map(m.into_iter().collect()));
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let mut r = crate::rng::stream(0, "sample", &[]);
        for _ in 0..50 {
            let paths = ts.paths(&space, &mut r).unwrap();
            assert_eq!(paths.len(), 3);
            assert!(paths
                .iter()
                .all(|a| a.normal.node(4)[1].op == Op::AvgPool3x3));
        }
    }

    #[test]
    fn fairnas_needs_paths_equal_to_choices() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.tricks.multipath = Some(Multipath {
            paths: 4,
            fairnas: true,
        });
        let e = TrickSet::new(&space, &cfg, None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("has 5 choices, but paths = 4"), "{e}");
    }

    #[test]
    fn plain_multipath_draws_k_uniform_paths() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.tricks.multipath = Some(Multipath {
            paths: 3,
            fairnas: false,
        });
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let mut a = crate::rng::stream(2, "sample", &[]);
        let mut b = crate::rng::stream(2, "sample", &[]);
        let paths = ts.paths(&space, &mut a).unwrap();
        // Exactly the next three draws of the single-path sampler.
        let want: Vec<_> = (0..3).map(|_| space.sample(&mut b)).collect();
        assert_eq!(paths, want);
    }

    /// The accumulated gradients are the per-path gradients summed in path order (bit for bit),
    /// agree with one backward of the summed loss, and exist exactly for the variables some
    /// path reached.
    #[test]
    fn accumulate_sums_per_path_gradients() {
        let dev = Device::Cpu;
        let store = Store::new(&dev);
        let sc = Nb201Space {
            channels: 4,
            cells_per_stage: 1,
            bn_momentum: 0.1,
        };
        let mut r = crate::rng::stream(0, "init", &[]);
        let net = Nb201Net::new(&store.root(), &sc, 10, &mut r).unwrap();
        let mut dr = crate::rng::stream(0, "data", &[]);
        let px: Vec<f32> = (0..6 * 3 * 8 * 8)
            .map(|_| rand::Rng::random::<f32>(&mut dr) - 0.5)
            .collect();
        let x = Tensor::from_vec(px, (6, 3, 8, 8), &dev).unwrap();
        let y = Tensor::new(&[0u32, 1, 2, 3, 4, 5], &dev).unwrap();
        let space = Nb201::new();
        let mut sr = crate::rng::stream(3, "sample", &[]);
        let paths: Vec<_> = (0..3).map(|_| space.sample(&mut sr)).collect();
        let vars: Vec<Var> = store.params().into_iter().map(|(_, v)| v).collect();
        let rng_for = |p: usize| crate::rng::stream(0, "t", &[p as u64]);
        let (acc, outs) = accumulate(&net, &x, &y, &paths, 0.0, &vars, rng_for).unwrap();
        assert_eq!(outs.len(), 3);
        let mut per_path = vec![];
        let mut summed: Option<Tensor> = None;
        for (p, arch) in paths.iter().enumerate() {
            let (g, o) = accumulate(&net, &x, &y, std::slice::from_ref(arch), 0.0, &vars, |_| {
                rng_for(p)
            })
            .unwrap();
            assert_eq!(o[0], outs[p], "path {p}: same loss and hits alone");
            per_path.push(g);
            let mut rr = rng_for(p);
            let out = net
                .forward(
                    &x,
                    arch,
                    &mut Ctx {
                        mode: Mode::Train,
                        drop_path: 0.0,
                        rng: &mut rr,
                    },
                )
                .unwrap();
            let l = nn::loss::cross_entropy(&out.logits, &y, 0.0).unwrap();
            summed = Some(match summed {
                None => l,
                Some(s) => (s + l).unwrap(),
            });
        }
        let g_sum = summed.unwrap().backward().unwrap();
        let mut checked = 0;
        for v in &vars {
            let parts: Vec<&Tensor> = per_path
                .iter()
                .filter_map(|g| g.get(v.as_tensor()))
                .collect();
            let got = acc.get(v.as_tensor());
            assert_eq!(
                got.is_some(),
                !parts.is_empty(),
                "touched by the sum iff by some path"
            );
            let Some(got) = got else { continue };
            let mut want = parts[0].clone();
            for p in &parts[1..] {
                want = (want + *p).unwrap();
            }
            let flat = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            assert_eq!(
                flat(got),
                flat(&want),
                "bit-identical to summing per-path gradients in order"
            );
            let one = flat(g_sum.get(v.as_tensor()).unwrap());
            let scale = one.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
            assert!(
                flat(got)
                    .iter()
                    .zip(&one)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * scale),
                "one backward of the summed loss"
            );
            checked += 1;
        }
        assert!(checked > 10);
    }
}
