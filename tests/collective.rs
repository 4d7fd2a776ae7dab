//! Data-parallel semantics on the in-process CPU collective: two ranks as threads, each with
//! its own copy of a tiny NB201 supernet, parallel sampling, gradients averaged by all-reduce,
//! clip and SGD on every rank. The per-rank architectures, the averaged gradients and the final
//! weights must equal a single-process reference that computes both ranks' gradients in turn
//! on one model and averages them (bit for bit: the collective adds in rank order).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use runner::collective::{self, local, Collective};
use runner::config::{Nb201Space, Unsampled};
use runner::nn::Store;
use runner::rng;
use runner::space::nb201::{Arch, Nb201, Nb201Net};
use runner::space::Space;
use runner::train::{clip, sgd};
use runner::tricks::multipath;
use std::collections::BTreeMap;
use std::time::Duration;

const WORLD: usize = 2;
const STEPS: u64 = 3;
const PER_RANK: usize = 4;

struct Replica {
    store: Store,
    net: Nb201Net,
    vars: Vec<Var>,
    opt: sgd::Sgd,
}

fn replica() -> Replica {
    let dev = Device::Cpu;
    let store = Store::new(&dev);
    let sc = Nb201Space {
        channels: 4,
        cells_per_stage: 1,
        bn_momentum: 0.1,
    };
    let net = Nb201Net::new(&store.root(), &sc, 10, &mut rng::stream(0, "init", &[])).unwrap();
    let vars = store.params().into_iter().map(|(_, v)| v).collect();
    let mut opt = sgd::Sgd::new(
        store.params(),
        sgd::SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            unsampled: Unsampled::Pytorch1,
        },
    );
    // Under parallel sampling every gradient exists from the first step (the study pre-fills
    // them with zeros), so every parameter is updated from step 1.
    opt.mark_all_touched();
    Replica {
        store,
        net,
        vars,
        opt,
    }
}

/// The global batch of a step: `WORLD * PER_RANK` images; rank r takes rows r*PER_RANK...
fn batch(step: u64) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let mut r = rng::stream(9, "data", &[step]);
    let n = WORLD * PER_RANK;
    let px: Vec<f32> = (0..n * 3 * 8 * 8)
        .map(|_| rand::Rng::random::<f32>(&mut r) - 0.5)
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + step as u32) % 10).collect();
    (
        Tensor::from_vec(px, (n, 3, 8, 8), &dev).unwrap(),
        Tensor::new(labels.as_slice(), &dev).unwrap(),
    )
}

fn shard(x: &Tensor, y: &Tensor, rank: usize) -> (Tensor, Tensor) {
    (
        x.narrow(0, rank * PER_RANK, PER_RANK).unwrap(),
        y.narrow(0, rank * PER_RANK, PER_RANK).unwrap(),
    )
}

fn grads_of(
    rep: &Replica,
    x: &Tensor,
    y: &Tensor,
    arch: &Arch,
    step: u64,
    rank: usize,
) -> GradStore {
    let (g, _) = multipath::accumulate(
        &rep.net,
        x,
        y,
        std::slice::from_ref(arch),
        0.0,
        &rep.vars,
        |_| rng::stream(0, "train-dropout", &[step, rank as u64]),
    )
    .unwrap();
    g
}

fn weights(store: &Store) -> BTreeMap<String, Vec<f32>> {
    store
        .params()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn flat(g: &GradStore, vars: &[Var]) -> Vec<f32> {
    let mut out = vec![];
    for v in vars {
        match g.get(v.as_tensor()) {
            Some(t) => out.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
            None => out.extend(std::iter::repeat_n(0f32, v.elem_count())),
        }
    }
    out
}

struct RankLog {
    archs: Vec<Arch>,
    first_step_grads: Vec<f32>,
    weights: BTreeMap<String, Vec<f32>>,
}

fn run_rank(c: &local::LocalRank) -> RankLog {
    let mut rep = replica();
    let space = Nb201::new();
    let mut sample = rng::stream(0, "sample", &[]);
    let mut log = RankLog {
        archs: vec![],
        first_step_grads: vec![],
        weights: BTreeMap::new(),
    };
    for step in 0..STEPS {
        let arch =
            collective::parallel_sample(c.rank(), c.world_size(), || space.sample(&mut sample));
        let (x, y) = batch(step);
        let (xs, ys) = shard(&x, &y, c.rank());
        let mut g = grads_of(&rep, &xs, &ys, &arch, step, c.rank());
        collective::all_reduce_mean(c, &mut g, &rep.vars).unwrap();
        if step == 0 {
            log.first_step_grads = flat(&g, &rep.vars);
        }
        clip::clip_grad_norm(&mut g, &rep.vars, 5.0).unwrap();
        rep.opt.step(&g).unwrap();
        log.archs.push(arch);
    }
    log.weights = weights(&rep.store);
    log
}

#[test]
fn two_cpu_ranks_match_a_single_process_reference() {
    let ranks = local::group(WORLD, Duration::from_secs(120));
    let logs: Vec<RankLog> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks.iter().map(|c| s.spawn(move || run_rank(c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });

    // The reference: one model; per step, both ranks' architectures drawn from one stream
    // (rank r uses draw r of each group of WORLD draws), their gradients computed in turn and
    // averaged.
    let mut rep = replica();
    let space = Nb201::new();
    let mut sample = rng::stream(0, "sample", &[]);
    let mut ref_archs: Vec<Vec<Arch>> = vec![vec![]; WORLD];
    let mut ref_first = vec![];
    for step in 0..STEPS {
        let (x, y) = batch(step);
        let archs: Vec<Arch> = (0..WORLD).map(|_| space.sample(&mut sample)).collect();
        let mut sum: Option<Vec<f32>> = None;
        for (r, arch) in archs.iter().enumerate() {
            let (xs, ys) = shard(&x, &y, r);
            let g = flat(&grads_of(&rep, &xs, &ys, arch, step, r), &rep.vars);
            sum = Some(match sum {
                None => g,
                Some(mut s) => {
                    s.iter_mut().zip(&g).for_each(|(a, b)| *a += *b);
                    s
                }
            });
            ref_archs[r].push(*arch);
        }
        let mean: Vec<f32> = sum.unwrap().into_iter().map(|v| v / WORLD as f32).collect();
        if step == 0 {
            ref_first = mean.clone();
        }
        let mut g = GradStore::default();
        let mut at = 0;
        for v in &rep.vars {
            let n = v.elem_count();
            g.insert(
                v.as_tensor(),
                Tensor::from_slice(&mean[at..at + n], v.shape(), v.device()).unwrap(),
            );
            at += n;
        }
        clip::clip_grad_norm(&mut g, &rep.vars, 5.0).unwrap();
        rep.opt.step(&g).unwrap();
    }
    let ref_weights = weights(&rep.store);

    for (r, log) in logs.iter().enumerate() {
        assert_eq!(
            log.archs, ref_archs[r],
            "rank {r} trained the reference's draws"
        );
        assert_eq!(
            log.first_step_grads, ref_first,
            "rank {r}: averaged gradients"
        );
        assert_eq!(log.weights, ref_weights, "rank {r}: final weights");
    }
    assert_ne!(
        logs[0].archs, logs[1].archs,
        "parallel sampling: ranks train different archs"
    );
    // The averaged gradient really mixes both ranks: it is not either rank's own.
    let (x, y) = batch(0);
    let fresh = replica();
    let (x0, y0) = shard(&x, &y, 0);
    let own = flat(
        &grads_of(&fresh, &x0, &y0, &ref_archs[0][0], 0, 0),
        &fresh.vars,
    );
    assert_ne!(own, ref_first);
}
