//! The NAS-Bench-101 space-3 supernet path against a PyTorch twin of the study's model
//! (fixture: tests/fixtures/gen_nb101_cell.py): stem + 2 stacks of 1 cell (the second cell
//! doubles the channels after a max-pool) + head, two architectures from the same weights.
//! Train-mode logits and loss, every parameter gradient (and which parameters get none: the
//! unchosen ops and unchosen input projections), the BN running statistics after the train
//! forward (unchosen projections included: they run), and eval-mode logits.

use candle_core::{Device, Tensor};
use runner::config::Nb101Space;
use runner::nn::{self, Mode, Store};
use runner::space::{nb101, Ctx, Space, Supernet};
use std::collections::{BTreeMap, HashMap};

/// Max absolute difference relative to the reference's largest magnitude (floored at 1e-3).
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

fn arch(tag: &str) -> nb101::Arch {
    let j = match tag {
        "a" => serde_json::json!({"op1": [1, 0, 0], "op2": [0, 0, 1], "op3": [0, 1, 0],
            "op4": [1, 0, 0], "op5": [0, 1, 0], "input1": [1], "input2": [0, 1],
            "input3": [1, 0, 0], "input4": [0, 1, 0, 1], "input5": [1, 0, 1, 0, 0],
            "input6": [0, 0, 0, 0, 1, 1]}),
        _ => serde_json::json!({"op1": [0, 0, 1], "op2": [0, 1, 0], "op3": [1, 0, 0],
            "op4": [0, 0, 1], "op5": [1, 0, 0], "input1": [1], "input2": [1, 0],
            "input3": [0, 0, 1], "input4": [1, 1, 0, 0], "input5": [0, 0, 0, 1, 1],
            "input6": [0, 0, 1, 0, 0, 1]}),
    };
    nb101::Nb101::decode(&j).unwrap()
}

#[test]
fn nb101_path_matches_pytorch() {
    nb101_path_matches_pytorch_body();
}

fn nb101_path_matches_pytorch_body() {
    let dev = Device::Cpu;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nb101_cell.npz");
    let fx: HashMap<String, Tensor> = Tensor::read_npz(path).unwrap().into_iter().collect();
    let init: BTreeMap<String, Tensor> = fx
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("init.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let cfg = Nb101Space {
        channels: 4,
        stacks: 2,
        cells_per_stack: 1,
        bn_momentum: 0.3,
        bn_eps: 1e-5,
    };
    let store = Store::new(&dev);
    let mut r = runner::rng::stream(0, "init", &[]);
    let net = nb101::Nb101Net::new(&store.root(), &cfg, 10, &mut r).unwrap();
    // The fixture names every tensor runner has, and nothing else.
    let ours: Vec<String> = store.tensors().into_keys().collect();
    let theirs: Vec<String> = init.keys().cloned().collect();
    assert_eq!(ours, theirs);
    let x = &fx["x"];
    let y = &fx["y"];
    let mut worst = 0f32;
    for tag in ["a", "b"] {
        store.load(&init).unwrap();
        let arch = arch(tag);
        let logits = net
            .forward(x, &arch, &mut Ctx::new(Mode::Train, &mut r))
            .unwrap()
            .logits;
        let e = rel_err(&logits, &fx[&format!("{tag}.train_logits")]);
        assert!(e < 1e-4, "{tag}: train logits rel err {e}");
        worst = worst.max(e);
        let loss = nn::loss::cross_entropy(&logits, y, 0.0).unwrap();
        let e = rel_err(&loss.reshape(1).unwrap(), &fx[&format!("{tag}.loss")]);
        assert!(e < 1e-5, "{tag}: loss rel err {e}");
        let grads = loss.backward().unwrap();
        let (mut with_grad, mut without) = (0, 0);
        for (name, var) in store.params() {
            match (
                fx.get(&format!("{tag}.grad.{name}")),
                grads.get(var.as_tensor()),
            ) {
                (Some(want), Some(got)) => {
                    let e = rel_err(got, want);
                    assert!(e < 1e-4, "{tag}: {name}: gradient rel err {e}");
                    worst = worst.max(e);
                    with_grad += 1;
                }
                (None, None) => without += 1,
                (Some(_), None) => panic!("{tag}: {name}: PyTorch has a gradient, runner none"),
                (None, Some(_)) => {
                    panic!("{tag}: {name}: runner has a gradient, PyTorch none (an op off the path ran)")
                }
            }
        }
        // Arch a: 47 parameters on the path (stem 3, per cell 5 vertices' ops and the three
        // chosen projections, classifier 2); the unchosen ops and projections get none.
        assert!(
            with_grad >= 40 && without >= 40,
            "{tag}: {with_grad} / {without}"
        );
        // Vertex 2 of arch a does not choose the cell input, yet its projection ran in the
        // reference: its BN statistics moved while its weights got no gradient.
        if tag == "a" {
            let k = "cells.0.vertex2.input.bn.running_mean";
            assert!(rel_err(&fx[&format!("a.train_buffers.{k}")], &init[k]) > 1e-2);
            assert!(!fx.contains_key("a.grad.cells.0.vertex2.input.conv.weight"));
        }
        for (name, var) in store.buffers() {
            let want = &fx[&format!("{tag}.train_buffers.{name}")];
            let e = rel_err(var.as_tensor(), want);
            assert!(
                e < 1e-4,
                "{tag}: {name}: running stat after a train step, rel err {e}"
            );
            worst = worst.max(e);
        }
        let eval = net
            .forward(x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
            .unwrap()
            .logits;
        let e = rel_err(&eval, &fx[&format!("{tag}.eval_logits")]);
        assert!(e < 1e-4, "{tag}: eval logits rel err {e}");
        worst = worst.max(e);
    }
    println!("worst relative error: {worst:e}");
}

// The same fixtures through the portable ops (candle's own ops: the path CUDA devices run),
// checked here on the CPU because no GPU is available to CI.

#[test]
fn portable_nb101_path_matches_pytorch() {
    runner::nn::with_portable_ops(nb101_path_matches_pytorch_body);
}
