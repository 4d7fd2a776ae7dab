//! The ProxylessNAS supernet against a float64 PyTorch twin of the study's model code
//! (fixture: tests/fixtures/gen_proxyless_net.py): every MBConv class (kernel 3/5/7, expansion
//! 1/3/6, stride 1/2) forward, input and parameter gradients, BN statistics and eval output;
//! one whole supernet path with Zero cells and shortcuts: logits, the study's label-smoothed
//! loss, every gradient (and which parameters get none), BN statistics, eval logits.

use candle_core::{Tensor, Var};
use runner::config::ProxylessSpace;
use runner::nn::{self, Mode, Store};
use runner::space::proxyless::{Arch, Bn, MbConv, Proxyless, ProxylessNet, NUM_CELLS};
use runner::space::{Ctx, Space, Supernet};
use std::collections::HashMap;

/// Relative error bound of the brief: max |a - b| / max |b| (floored at 1e-3, so that
/// analytically tiny gradients compare at the f32 rounding level of their sums).
const TOL: f32 = 1e-4;

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

fn fixture() -> HashMap<String, Tensor> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/proxyless_net.npz"
    );
    Tensor::read_npz(p).unwrap().into_iter().collect()
}

/// Sets every store tensor named in the fixture under `prefix`; returns how many were set.
fn load(store: &Store, fx: &HashMap<String, Tensor>, prefix: &str) -> usize {
    let mut n = 0;
    for (name, var) in store.params().into_iter().chain(store.buffers()) {
        if let Some(t) = fx.get(&format!("{prefix}{name}")) {
            assert_eq!(t.dims(), var.dims(), "{name}");
            var.set(t).unwrap();
            n += 1;
        }
    }
    n
}

const BN: Bn = Bn {
    momentum: 0.1,
    eps: 1e-3,
};

#[test]
fn every_mbconv_class_matches_pytorch() {
    every_mbconv_class_matches_pytorch_body();
}

fn every_mbconv_class_matches_pytorch_body() {
    let fx = fixture();
    let mut cases: Vec<String> = fx
        .keys()
        .filter_map(|k| k.strip_suffix(".meta").map(str::to_string))
        .collect();
    cases.sort();
    assert_eq!(
        cases.len(),
        18,
        "kernel 3/5/7 x expansion 1/3/6 x stride 1/2"
    );
    let mut worst = 0f32;
    for case in &cases {
        let m: Vec<i64> = fx[&format!("{case}.meta")].to_vec1().unwrap();
        let [cin, cout, k, e, s] = [m[0], m[1], m[2], m[3], m[4]].map(|v| v as usize);
        let store = Store::new(&candle_core::Device::Cpu);
        let mut r = runner::rng::stream(0, "init", &[]);
        let op = MbConv::new(&store.root(), &mut r, cin, cout, k, e, s, BN).unwrap();
        // Every tensor of the op comes from the fixture, and nothing else is there.
        let n = load(&store, &fx, &format!("{case}.init."));
        let expected = store.params().len() + store.buffers().len();
        assert_eq!(n, expected, "{case}: tensors loaded");
        let in_fixture = fx
            .keys()
            .filter(|k| k.starts_with(&format!("{case}.init.")))
            .count();
        assert_eq!(in_fixture, expected, "{case}: fixture tensors");

        let x = Var::from_tensor(&fx[&format!("{case}.x")]).unwrap();
        let y = op.forward(x.as_tensor(), Mode::Train).unwrap();
        let mut errs = vec![("y", rel_err(&y, &fx[&format!("{case}.y")]))];
        let grads = (&y * &fx[&format!("{case}.g")])
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        errs.push((
            "dx",
            rel_err(
                grads.get(x.as_tensor()).unwrap(),
                &fx[&format!("{case}.dx")],
            ),
        ));
        for (name, var) in store.params() {
            let got = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
            let e = rel_err(got, &fx[&format!("{case}.grad.{name}")]);
            assert!(e <= TOL, "{case}: {name} gradient rel err {e}");
            worst = worst.max(e);
        }
        for (name, var) in store.buffers() {
            let e = rel_err(var.as_tensor(), &fx[&format!("{case}.buffers.{name}")]);
            assert!(e <= TOL, "{case}: {name} after the step, rel err {e}");
        }
        let y_eval = op.forward(x.as_tensor(), Mode::Eval).unwrap();
        errs.push(("eval_y", rel_err(&y_eval, &fx[&format!("{case}.eval_y")])));
        for (what, e) in errs {
            assert!(e <= TOL, "{case}: {what} rel err {e}");
            worst = worst.max(e);
        }
    }
    eprintln!("MBConv classes: worst relative error {worst:.2e}");
}

#[test]
fn supernet_path_with_zero_cells_matches_pytorch() {
    supernet_path_with_zero_cells_matches_pytorch_body();
}

fn supernet_path_with_zero_cells_matches_pytorch_body() {
    let fx = fixture();
    let store = Store::new(&candle_core::Device::Cpu);
    let mut r = runner::rng::stream(0, "init", &[]);
    let cfg = ProxylessSpace {
        width_mult: 0.25,
        bn_momentum: 0.1,
        bn_eps: 1e-3,
    };
    let net = ProxylessNet::new(&store.root(), &cfg, 10, &mut r).unwrap();
    let n = load(&store, &fx, "net.init.");
    let in_fixture = fx.keys().filter(|k| k.starts_with("net.init.")).count();
    assert_eq!(
        n, in_fixture,
        "every path tensor of the fixture exists in runner"
    );
    let ops: Vec<i64> = fx["net.arch"].to_vec1().unwrap();
    let mut arr = [0u8; NUM_CELLS];
    for (a, o) in arr.iter_mut().zip(&ops) {
        *a = *o as u8;
    }
    let arch = Arch::new(arr).unwrap();
    // The encoding round-trips and the Zero cells are where the fixture put them.
    assert_eq!(Proxyless::decode(&Proxyless::encode(&arch)).unwrap(), arch);
    assert!(
        net.has_shortcut(12),
        "stage3_cell0 keeps its shape at width 0.25"
    );

    let x = &fx["net.x"];
    let y = fx["net.y"].to_dtype(candle_core::DType::U32).unwrap();
    let logits = net
        .forward(x, &arch, &mut Ctx::new(Mode::Train, &mut r))
        .unwrap()
        .logits;
    let mut worst = rel_err(&logits, &fx["net.train_logits"]);
    assert!(worst <= TOL, "train logits rel err {worst}");
    let loss = nn::loss::cross_entropy(&logits, &y, 0.1).unwrap();
    let got = loss.to_scalar::<f32>().unwrap();
    let want = fx["net.loss"].to_vec1::<f32>().unwrap()[0];
    let torch_own = fx["net.loss_torch_eps_over_k"].to_vec1::<f32>().unwrap()[0];
    assert!((got - want).abs() <= TOL * want, "loss {got} vs {want}");
    // PyTorch's own smoothing (eps / K) gives another value (7e-4 relative here, near-uniform
    // logits), well outside the tolerance, so this test would catch the wrong formulation.
    assert!(
        (got - torch_own).abs() > 5.0 * TOL * want,
        "{got} vs eps/K {torch_own}"
    );
    let grads = loss.backward().unwrap();
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    // The largest gradient anywhere sets the scale of the analytically-zero ones: the bias of
    // every MBConv's last BN only shifts channels that a later train-mode BN removes again, so
    // its exact gradient is 0 (1e-14 in the float64 reference) and float32 leaves cancellation
    // noise of a few 1e-6; those are checked against the global scale instead of their own.
    let global = fx
        .iter()
        .filter(|(k, _)| k.starts_with("net.grad."))
        .map(|(_, t)| max_abs(t))
        .fold(0f32, f32::max);
    let (mut with_grad, mut zero) = (0, 0);
    let mut worst_zero = 0f32;
    for (name, var) in store.params() {
        match (
            fx.get(&format!("net.grad.{name}")),
            grads.get(var.as_tensor()),
        ) {
            (Some(want), Some(got)) if max_abs(want) < 1e-10 * global => {
                let e = max_abs(got) / global;
                assert!(
                    e <= 1e-6,
                    "{name}: analytically zero gradient, runner's is {e} of the largest"
                );
                worst_zero = worst_zero.max(e);
                zero += 1;
                with_grad += 1;
            }
            (Some(want), Some(got)) => {
                let e = rel_err(got, want);
                assert!(e <= TOL, "{name}: gradient rel err {e}");
                worst = worst.max(e);
                with_grad += 1;
            }
            (None, None) => {}
            (Some(_), None) => panic!("{name}: PyTorch has a gradient, runner none"),
            (None, Some(_)) => {
                panic!("{name}: runner has a gradient, PyTorch none (an op off the path ran)")
            }
        }
    }
    assert_eq!(
        with_grad,
        fx.keys().filter(|k| k.starts_with("net.grad.")).count()
    );
    for (name, var) in store.buffers() {
        if let Some(want) = fx.get(&format!("net.train_buffers.{name}")) {
            let e = rel_err(var.as_tensor(), want);
            assert!(
                e <= TOL,
                "{name}: running statistic after the step, rel err {e}"
            );
            worst = worst.max(e);
        }
    }
    let eval = net
        .forward(x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
        .unwrap()
        .logits;
    let e = rel_err(&eval, &fx["net.eval_logits"]);
    assert!(e <= TOL, "eval logits rel err {e}");
    // Exactly the MBConvs' last-BN biases are analytically zero: one per block on the path
    // (the MBConv1 block and the 14 chosen MBConvs: 7 of the 21 cells are Zero).
    assert_eq!(zero, 15, "analytically-zero gradients");
    eprintln!(
        "supernet path: {with_grad} parameter gradients, worst relative error {:.2e}; {zero} analytically zero ones at most {worst_zero:.1e} of the largest gradient ({global})",
        worst.max(e)
    );
}

// The same fixtures through the portable ops (candle's own ops: the path CUDA devices run),
// checked here on the CPU because no GPU is available to CI.

#[test]
fn portable_every_mbconv_class_matches_pytorch() {
    runner::nn::with_portable_ops(every_mbconv_class_matches_pytorch_body);
}

#[test]
fn portable_supernet_path_with_zero_cells_matches_pytorch() {
    runner::nn::with_portable_ops(supernet_path_with_zero_cells_matches_pytorch_body);
}
