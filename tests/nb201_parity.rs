//! The whole NAS-Bench-201 supernet path against PyTorch (fixture: tests/fixtures/gen_nb201_net.py):
//! train-mode logits, loss, every parameter gradient (and which parameters get none), the
//! updated BN running statistics, and eval-mode logits.

use candle_core::{Device, Tensor};
use runner::config::Nb201Space;
use runner::nn::{self, Mode, Store};
use runner::space::{nb201, Ctx, Space, Supernet};
use std::collections::{BTreeMap, HashMap};

/// Max absolute difference relative to the reference's largest magnitude, floored at 1e-3 so
/// that analytically-zero gradients (a BN bias feeding another BN) compare at 1e-7 absolute,
/// the f32 rounding level of the sums involved.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn nb201_path_matches_pytorch() {
    nb201_path_matches_pytorch_body();
}

fn nb201_path_matches_pytorch_body() {
    let dev = Device::Cpu;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nb201_net.npz");
    let fx: HashMap<String, Tensor> = Tensor::read_npz(path).unwrap().into_iter().collect();
    let store = Store::new(&dev);
    let mut r = runner::rng::stream(0, "init", &[]);
    let cfg = Nb201Space {
        channels: 4,
        cells_per_stage: 1,
        bn_momentum: 0.1,
    };
    let net = nb201::Nb201Net::new(&store.root(), &cfg, 10, &mut r).unwrap();
    let init: BTreeMap<String, Tensor> = fx
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("init.").map(|n| (n.to_string(), v.clone())))
        .collect();
    store.load(&init).unwrap();
    let arch = nb201::Nb201::decode(
        &serde_json::json!({"0_1": 3, "0_2": 0, "0_3": 2, "1_2": 4, "1_3": 3, "2_3": 1}),
    )
    .unwrap();
    let x = &fx["x"];
    let y = &fx["y"];

    let logits = net
        .forward(x, &arch, &mut Ctx::new(Mode::Train, &mut r))
        .unwrap()
        .logits;
    assert!(rel_err(&logits, &fx["train_logits"]) < 1e-4);
    let loss = nn::loss::cross_entropy(&logits, y, 0.0).unwrap();
    assert!(rel_err(&loss.reshape(1).unwrap(), &fx["loss"]) < 1e-5);
    let grads = loss.backward().unwrap();
    let mut with_grad = 0;
    for (name, var) in store.params() {
        match (fx.get(&format!("grad.{name}")), grads.get(var.as_tensor())) {
            (Some(want), Some(got)) => {
                let e = rel_err(got, want);
                assert!(
                    e < 1e-4,
                    "{name}: gradient rel err {e}: got {:?} want {:?}",
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
                with_grad += 1;
            }
            (None, None) => {}
            (Some(_), None) => panic!("{name}: PyTorch has a gradient, runner none"),
            (None, Some(_)) => {
                panic!("{name}: runner has a gradient, PyTorch none (an op off the path ran)")
            }
        }
    }
    assert!(with_grad > 10);
    for (name, var) in store.buffers() {
        let want = &fx[&format!("train_buffers.{name}")];
        assert!(
            rel_err(var.as_tensor(), want) < 1e-4,
            "{name}: running stat after a train step"
        );
    }
    let eval = net
        .forward(x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
        .unwrap()
        .logits;
    assert!(rel_err(&eval, &fx["eval_logits"]) < 1e-4);
}

// The same fixtures through the portable ops (candle's own ops: the path CUDA devices run),
// checked here on the CPU because no GPU is available to CI.

#[test]
fn portable_nb201_path_matches_pytorch() {
    runner::nn::with_portable_ops(nb201_path_matches_pytorch_body);
}
