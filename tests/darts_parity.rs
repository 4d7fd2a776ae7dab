//! DARTS-CIFAR10 ops, cells and a whole tiny supernet path against PyTorch in float64
//! (fixtures: tests/fixtures/gen_darts_ops.py -> darts_ops.npz, gen_darts_net.py ->
//! darts_net.npz, both built on the PyTorch twin tests/fixtures/darts_torch.py). Every
//! comparison is a relative error <= 1e-4.

use candle_core::{Device, Tensor, Var};
use runner::config::{DartsSpace, FinalPool};
use runner::nn::{self, ConvParams, FactorizedReduce, Mode, Store};
use runner::space::darts::{Cell, DartsCell, DartsNet, Op, Slot};
use runner::space::{Ctx, Supernet};
use std::collections::{BTreeSet, HashMap};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Tensor::read_npz(path).unwrap().into_iter().collect()
}

/// Max absolute difference relative to the reference's largest magnitude, floored at 1e-3 so
/// that analytically-zero gradients (a BN bias feeding another BN) compare at 1e-7 absolute.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    let e = rel_err(got, want);
    assert!(e <= TOL, "{what}: relative error {e}");
}

/// Sets every store tensor that the fixture holds as `<case>.init.<name>` (or `init.<name>`
/// when `case` is empty); every fixture entry must name a store tensor. Returns the names set.
fn load_init(store: &Store, fx: &HashMap<String, Tensor>, case: &str) -> BTreeSet<String> {
    let prefix = if case.is_empty() {
        "init.".to_string()
    } else {
        format!("{case}.init.")
    };
    let mut all: HashMap<String, Var> = store.params().into_iter().collect();
    all.extend(store.buffers());
    let mut set = BTreeSet::new();
    for (k, t) in fx {
        if let Some(name) = k.strip_prefix(&prefix) {
            let v = all
                .get(name)
                .unwrap_or_else(|| panic!("fixture tensor {name} has no runner twin"));
            assert_eq!(v.dims(), t.dims(), "{name}");
            v.set(t).unwrap();
            set.insert(name.to_string());
        }
    }
    assert!(!set.is_empty(), "no {prefix}* tensors in the fixture");
    set
}

/// Gradients of every parameter against `<prefix>grad.<name>`: present in both or in neither.
/// Returns how many were compared.
fn check_grads(
    store: &Store,
    grads: &candle_core::backprop::GradStore,
    fx: &HashMap<String, Tensor>,
    prefix: &str,
    skip: &[&str],
) -> usize {
    let mut n = 0;
    for (name, var) in store.params() {
        if skip.contains(&name.as_str()) {
            continue;
        }
        match (
            fx.get(&format!("{prefix}grad.{name}")),
            grads.get(var.as_tensor()),
        ) {
            (Some(want), Some(got)) => {
                check(&format!("gradient of {name}"), got, want);
                n += 1;
            }
            (None, None) => {}
            (Some(_), None) => panic!("{name}: PyTorch has a gradient, runner none"),
            (None, Some(_)) => {
                panic!("{name}: runner has a gradient, PyTorch none (an op off the path ran)")
            }
        }
    }
    n
}

/// Running statistics after the train pass, for every BN the fixture lists.
fn check_buffers(store: &Store, fx: &HashMap<String, Tensor>, prefix: &str) -> usize {
    let mut n = 0;
    for (name, var) in store.buffers() {
        if let Some(want) = fx.get(&format!("{prefix}train_buffers.{name}")) {
            check(
                &format!("buffer {name} after the train pass"),
                var.as_tensor(),
                want,
            );
            n += 1;
        }
    }
    n
}

#[test]
fn depthwise_convs_match_pytorch() {
    depthwise_convs_match_pytorch_body();
}

fn depthwise_convs_match_pytorch_body() {
    let fx = fixture("darts_ops.npz");
    let mut cases = 0;
    for k in [3, 5] {
        for s in [1, 2] {
            for d in [1, 2] {
                let case = format!("dw_k{k}_s{s}_d{d}");
                let get = |n: &str| fx[&format!("{case}.{n}")].clone();
                let x = Var::from_tensor(&get("x")).unwrap();
                let w = Var::from_tensor(&get("w")).unwrap();
                let p = ConvParams {
                    stride: s,
                    padding: d * (k - 1) / 2,
                    dilation: d,
                    groups: 3,
                };
                let y = nn::conv2d(x.as_tensor(), w.as_tensor(), p).unwrap();
                check(&format!("{case} y"), &y, &get("y"));
                let grads = (&y * get("g"))
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                check(
                    &format!("{case} dx"),
                    grads.get(x.as_tensor()).unwrap(),
                    &get("dx"),
                );
                check(
                    &format!("{case} dw"),
                    grads.get(w.as_tensor()).unwrap(),
                    &get("dw"),
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 8);
}

#[test]
fn factorized_reduce_matches_pytorch() {
    factorized_reduce_matches_pytorch_body();
}

fn factorized_reduce_matches_pytorch_body() {
    let fx = fixture("darts_ops.npz");
    let store = Store::new(&Device::Cpu);
    let mut r = runner::rng::stream(0, "init", &[]);
    let fr = FactorizedReduce::new(&store.root(), &mut r, 6, 8, 0.1, 1e-5).unwrap();
    let set = load_init(&store, &fx, "fr");
    assert_eq!(set.len(), 6, "{set:?}");
    let x = Var::from_tensor(&fx["fr.x"]).unwrap();
    let y = fr.forward(x.as_tensor(), Mode::Train).unwrap();
    check("fr y", &y, &fx["fr.y"]);
    let grads = (&y * &fx["fr.g"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    check("fr dx", grads.get(x.as_tensor()).unwrap(), &fx["fr.dx"]);
    assert_eq!(check_grads(&store, &grads, &fx, "fr.", &[]), 4);
    assert_eq!(check_buffers(&store, &fx, "fr."), 2);
}

#[test]
fn drop_path_with_a_given_mask_matches_pytorch() {
    let fx = fixture("darts_ops.npz");
    let x = Var::from_tensor(&fx["drop.x"]).unwrap();
    let mask = fx["drop.mask"].to_vec1::<f32>().unwrap();
    let y = nn::drop_path::apply_mask(x.as_tensor(), 0.7, &mask).unwrap();
    check("drop y", &y, &fx["drop.y"]);
    let grads = (&y * &fx["drop.g"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    check("drop dx", grads.get(x.as_tensor()).unwrap(), &fx["drop.dx"]);
}

#[test]
fn final_7x7_pool_matches_pytorch() {
    final_7x7_pool_matches_pytorch_body();
}

fn final_7x7_pool_matches_pytorch_body() {
    let fx = fixture("darts_ops.npz");
    let x = Var::from_tensor(&fx["pool7.x"]).unwrap();
    let y = nn::pool::avg_pool2d(x.as_tensor(), 7, 7, 0, true).unwrap();
    check("pool7 y", &y, &fx["pool7.y"]);
    let grads = (&y * &fx["pool7.g"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx = grads.get(x.as_tensor()).unwrap();
    check("pool7 dx", dx, &fx["pool7.dx"]);
    // The quirk: the last row and column of the 8x8 map get no gradient.
    let last_row = dx
        .narrow(2, 7, 1)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(last_row.to_scalar::<f32>().unwrap(), 0.0);
}

fn slots(spec: [(Op, u8); 8]) -> [[Slot; 2]; 4] {
    let s = |i: usize| Slot {
        op: spec[i].0,
        input: spec[i].1,
    };
    [[s(0), s(1)], [s(2), s(3)], [s(4), s(5)], [s(6), s(7)]]
}

/// NORMAL and REDUCE of gen_darts_ops.py.
fn fixture_cells() -> (Cell, Cell) {
    use Op::*;
    let normal = Cell::new(
        "normal",
        slots([
            (SepConv3x3, 0),
            (MaxPool3x3, 1),
            (DilConv5x5, 2),
            (SkipConnect, 0),
            (AvgPool3x3, 1),
            (SepConv5x5, 3),
            (DilConv3x3, 4),
            (SkipConnect, 2),
        ]),
    )
    .unwrap();
    let reduce = Cell::new(
        "reduce",
        slots([
            (SkipConnect, 0),
            (SepConv5x5, 1),
            (MaxPool3x3, 1),
            (DilConv3x3, 0),
            (AvgPool3x3, 0),
            (SepConv3x3, 3),
            (DilConv5x5, 1),
            (SkipConnect, 4),
        ]),
    )
    .unwrap();
    (normal, reduce)
}

#[test]
fn cells_match_pytorch() {
    cells_match_pytorch_body();
}

fn cells_match_pytorch_body() {
    let fx = fixture("darts_ops.npz");
    let (normal, reduce) = fixture_cells();
    for case in ["cell_normal", "cell_reduce", "cell_after_reduce"] {
        let get = |n: &str| fx[&format!("{case}.{n}")].clone();
        let meta: Vec<usize> = get("meta")
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&v| v as usize)
            .collect();
        let (c_pp, c_p, c, red, red_prev) = (meta[0], meta[1], meta[2], meta[3] == 1, meta[4] == 1);
        let store = Store::new(&Device::Cpu);
        let mut r = runner::rng::stream(0, "init", &[]);
        let cell = DartsCell::new(&store.root(), &mut r, c_pp, c_p, c, red, red_prev).unwrap();
        assert_eq!(cell.reduction(), red);
        load_init(&store, &fx, case);
        let arch = if red { &reduce } else { &normal };
        let s0 = Var::from_tensor(&get("s0")).unwrap();
        let s1 = Var::from_tensor(&get("s1")).unwrap();
        let y = cell
            .forward(
                s0.as_tensor(),
                s1.as_tensor(),
                arch,
                &mut Ctx::new(Mode::Train, &mut r),
            )
            .unwrap();
        check(&format!("{case} y"), &y, &get("y"));
        let grads = (&y * get("g"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        check(
            &format!("{case} ds0"),
            grads.get(s0.as_tensor()).unwrap(),
            &get("ds0"),
        );
        check(
            &format!("{case} ds1"),
            grads.get(s1.as_tensor()).unwrap(),
            &get("ds1"),
        );
        let prefix = format!("{case}.");
        let n = check_grads(&store, &grads, &fx, &prefix, &[]);
        // Preprocessing plus the weighted ops of the arch (each with BN weight and bias).
        assert!(n >= 20, "{case}: only {n} gradients compared");
        assert!(check_buffers(&store, &fx, &prefix) >= 10);
        let y = cell
            .forward(
                s0.as_tensor(),
                s1.as_tensor(),
                arch,
                &mut Ctx::new(Mode::Eval, &mut r),
            )
            .unwrap();
        check(&format!("{case} eval y"), &y, &get("y_eval"));
    }
}

/// `darts_torch.pattern`: bound * (((i * 7919 + salt) % 2001) - 1000) / 1000 as f32.
fn pattern(dims: &[usize], bound: f64, salt: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| ((((i * 7919 + salt) % 2001) as f64 - 1000.0) / 1000.0 * bound) as f32)
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

#[test]
fn tiny_network_matches_pytorch() {
    tiny_network_matches_pytorch_body();
}

fn tiny_network_matches_pytorch_body() {
    let fx = fixture("darts_net.npz");
    let store = Store::new(&Device::Cpu);
    let mut r = runner::rng::stream(0, "init", &[]);
    let cfg = DartsSpace {
        channels: 4,
        layers: 5,
        auxiliary_weight: 0.4,
        drop_path: 0.0,
        final_pool: FinalPool::Avg7,
    };
    let net = DartsNet::new(&store.root(), &cfg, 10, &mut r).unwrap();
    load_init(&store, &fx, "");
    const BIG: &str = "aux.conv2.weight";
    let big = store
        .params()
        .into_iter()
        .find(|(n, _)| n == BIG)
        .map(|(_, v)| v)
        .unwrap();
    big.set(&pattern(big.dims(), 1.0 / 512f64.sqrt(), 17))
        .unwrap();

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benchmarks/darts-cifar10.csv"
    ))
    .unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let first = rdr.records().next().unwrap().unwrap();
    let arch = <runner::space::darts::Darts as runner::space::Space>::decode(
        &serde_json::from_str(&first[0]).unwrap(),
    )
    .unwrap();

    let x = &fx["x"];
    let y = &fx["y"];
    let out = net
        .forward(x, &arch, &mut Ctx::new(Mode::Train, &mut r))
        .unwrap();
    check("train logits", &out.logits, &fx["train_logits"]);
    let aux = out.aux_logits.expect("the auxiliary head runs in training");
    check("aux logits", &aux, &fx["aux_logits"]);
    assert_eq!(net.aux_weight(), 0.4);
    let loss = (nn::loss::cross_entropy(&out.logits, y, 0.0).unwrap()
        + (nn::loss::cross_entropy(&aux, y, 0.0).unwrap() * net.aux_weight()).unwrap())
    .unwrap();
    check("loss", &loss.reshape(1).unwrap(), &fx["loss"]);
    let grads = loss.backward().unwrap();
    let n = check_grads(&store, &grads, &fx, "", &[BIG]);
    assert!(n > 60, "only {n} gradients compared");
    // The auxiliary 768x128x2x2 conv: row sums, column sums, every 31st element.
    let g = grads.get(big.as_tensor()).unwrap();
    let g2 = g.reshape((768, 512)).unwrap();
    check(
        "aux conv2 gradient row sums",
        &g2.sum(1).unwrap(),
        &fx[&format!("grad_rows.{BIG}")],
    );
    check(
        "aux conv2 gradient column sums",
        &g2.sum(0).unwrap(),
        &fx[&format!("grad_cols.{BIG}")],
    );
    let flat = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let every: Vec<f32> = flat.iter().step_by(31).copied().collect();
    let every = Tensor::from_vec(every.clone(), every.len(), &Device::Cpu).unwrap();
    check(
        "aux conv2 gradient, every 31st element",
        &every,
        &fx[&format!("grad_every31.{BIG}")],
    );
    assert!(check_buffers(&store, &fx, "") > 40);

    let eval = net
        .forward(x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
        .unwrap();
    assert!(eval.aux_logits.is_none(), "no auxiliary head in eval mode");
    check("eval logits", &eval.logits, &fx["eval_logits"]);
}

// The same fixtures through the portable ops (candle's own ops: the path CUDA devices run),
// checked here on the CPU because no GPU is available to CI.

#[test]
fn portable_depthwise_convs_match_pytorch() {
    runner::nn::with_portable_ops(depthwise_convs_match_pytorch_body);
}

#[test]
fn portable_factorized_reduce_matches_pytorch() {
    runner::nn::with_portable_ops(factorized_reduce_matches_pytorch_body);
}

#[test]
fn portable_final_7x7_pool_matches_pytorch() {
    runner::nn::with_portable_ops(final_7x7_pool_matches_pytorch_body);
}

#[test]
fn portable_cells_match_pytorch() {
    runner::nn::with_portable_ops(cells_match_pytorch_body);
}

#[test]
fn portable_tiny_network_matches_pytorch() {
    runner::nn::with_portable_ops(tiny_network_matches_pytorch_body);
}
