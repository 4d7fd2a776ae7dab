//! DARTS-PTB against PyTorch. The language model (fixture: tests/fixtures/gen_ptb_cell.py, the
//! study's Cell/RNNModel in float64 with fixed masks): training-mode logits, hidden states,
//! output dropout, cross-entropy, the loss with AR and TAR, every parameter gradient, and the
//! evaluation-mode logits. ASGD (fixture: gen_ptb_asgd.py): `torch.optim.ASGD` step for step.

use candle_core::{DType, Device, Tensor, Var};
use runner::config::{PtbSpace, Unsampled};
use runner::nn::Store;
use runner::space::ptb::Arch;
use runner::space::ptb_model::{self, Masks, PtbNet};
use runner::train::asgd::{Asgd, AsgdConfig};
use std::collections::{BTreeMap, HashMap};

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Tensor::read_npz(path).unwrap().into_iter().collect()
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Max absolute difference relative to the reference's largest magnitude (floored at 1e-3).
fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    let (a, b) = (f64s(got), f64s(want));
    assert_eq!(a.len(), b.len(), "sizes differ");
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn ints(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

#[test]
fn ptb_model_matches_pytorch() {
    let dev = Device::Cpu;
    let fx = fixture("ptb_cell.npz");
    let f32t = |k: &str| fx[k].to_dtype(DType::F32).unwrap();
    let (v, h) = fx["init.encoder.weight"].dims2().unwrap();
    let ab = fx["alpha_beta"].to_vec1::<f64>().unwrap();
    let cfg = PtbSpace {
        embedding: h,
        hidden: h,
        dropout: 0.75,
        dropout_rnn_h: 0.25,
        dropout_rnn_x: 0.75,
        dropout_inp: 0.2,
        dropout_emb: 0.1,
        init_range: 0.04,
        alpha: ab[0],
        beta: ab[1],
    };
    let store = Store::new(&dev);
    let mut r = runner::rng::stream(0, "init", &[]);
    let net = PtbNet::new(&store.root(), &cfg, v, &mut r).unwrap();
    let init: BTreeMap<String, Tensor> = fx
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("init.").map(|n| (n.to_string(), t.clone())))
        .collect();
    store.load(&init).unwrap();
    let act: [usize; 8] = ints(&fx["arch.act"]).try_into().unwrap();
    let sw: [usize; 8] = ints(&fx["arch.switch"]).try_into().unwrap();
    let arch = Arch::new(act, sw).unwrap();
    let tokens = fx["tokens"].to_dtype(DType::U32).unwrap();
    let targets = fx["targets"].to_dtype(DType::U32).unwrap();
    let hidden0 = f32t("hidden0");
    let masks = Masks {
        embedding: Some(f32t("mask.embedding")),
        input: Some(f32t("mask.input")),
        x: Some(f32t("mask.x")),
        h: Some(f32t("mask.h")),
        output: Some(f32t("mask.output")),
    };

    let out = net.forward(&tokens, &hidden0, &arch, &masks, true).unwrap();
    let checks = [
        ("train_logits", &out.logits),
        ("train_hidden", &out.hidden),
        ("train_rnn_h", &out.rnn_h),
        ("train_dropped", &out.dropped),
    ];
    for (k, got) in checks {
        let e = rel_err(got, &fx[k]);
        eprintln!("{k}: rel err {e:.2e}");
        assert!(e <= 1e-4, "{k}: rel err {e}");
    }
    let loss = ptb_model::loss(&out, &targets, cfg.alpha, cfg.beta).unwrap();
    let e = rel_err(
        &loss.cross_entropy.reshape(1).unwrap(),
        &fx["cross_entropy"],
    );
    assert!(e <= 1e-5, "cross-entropy rel err {e}");
    let e = rel_err(&loss.total.reshape(1).unwrap(), &fx["loss"]);
    eprintln!("loss (CE + AR + TAR): rel err {e:.2e}");
    assert!(e <= 1e-5, "loss rel err {e}");
    // The AR and TAR terms are not negligible in the fixture: the check above sees them.
    let gap = f64s(&fx["loss"])[0] - f64s(&fx["cross_entropy"])[0];
    assert!(gap > 1e-2, "{gap}");

    let grads = loss.total.backward().unwrap();
    let mut n = 0;
    for (name, var) in store.params() {
        let want = &fx[&format!("grad.{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let e = rel_err(got, want);
        eprintln!("grad {name}: rel err {e:.2e}");
        assert!(e <= 1e-4, "{name}: gradient rel err {e}");
        n += 1;
    }
    assert_eq!(n, 11);

    let ev = net
        .forward(&tokens, &hidden0, &arch, &Masks::none(), false)
        .unwrap();
    let e = rel_err(&ev.logits, &fx["eval_logits"]);
    assert!(e <= 1e-4, "eval logits rel err {e}");
    let e = rel_err(&ev.hidden, &fx["eval_hidden"]);
    assert!(e <= 1e-4, "eval hidden rel err {e}");
}

#[test]
fn asgd_matches_torch_optim_asgd() {
    let fx = fixture("ptb_asgd.npz");
    let cases = [
        ("study", 40.0, 0.0, 0.0, 8e-7),
        ("general", 0.5, 1e-3, 2.0, 0.01),
    ];
    for (case, lr, lambd, t0, wd) in cases {
        let var = |k: &str| Var::from_tensor(&fx[&format!("{case}.init.{k}")]).unwrap();
        let (a, b, c) = (var("a"), var("b"), var("c"));
        let mut o = Asgd::new(
            vec![
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("c".into(), c.clone()),
            ],
            AsgdConfig {
                lr,
                lambd,
                alpha: 0.75,
                t0,
                weight_decay: wd,
                unsampled: Unsampled::Pytorch1,
            },
        );
        for s in 0..6 {
            let get = |k: &str| fx[&format!("{case}.{s}.{k}")].clone();
            o.set_lr(get("lr").to_vec1::<f64>().unwrap()[0]);
            // d/dp sum(p * g) = g for a and b; c takes no part (no gradient entry).
            let l = a
                .as_tensor()
                .mul(&get("grad.a"))
                .unwrap()
                .sum_all()
                .unwrap()
                .add(
                    &b.as_tensor()
                        .mul(&get("grad.b"))
                        .unwrap()
                        .sum_all()
                        .unwrap(),
                )
                .unwrap();
            let grads = l.backward().unwrap();
            assert!(grads.get(c.as_tensor()).is_none());
            o.step(&grads).unwrap();
            for (k, v) in [("a", &a), ("b", &b), ("c", &c)] {
                let e = rel_err(v.as_tensor(), &get(&format!("param.{k}")));
                assert!(e <= 1e-12, "{case} step {s}: {k} rel err {e}");
            }
            let avgs: HashMap<String, Tensor> = o
                .averages()
                .into_iter()
                .map(|(v, ax)| {
                    let name = if v.as_tensor().id() == a.as_tensor().id() {
                        "a"
                    } else {
                        "b"
                    };
                    (name.to_string(), ax)
                })
                .collect();
            assert_eq!(avgs.len(), 2, "c has no ASGD state");
            for k in ["a", "b"] {
                let e = rel_err(&avgs[k], &get(&format!("ax.{k}")));
                assert!(e <= 1e-12, "{case} step {s}: ax.{k} rel err {e}");
            }
        }
        // The state round-trips through a checkpoint-shaped map into a fresh optimizer.
        let st = o.state().unwrap();
        let mut o2 = Asgd::new(
            vec![
                ("a".into(), a.clone()),
                ("b".into(), b.clone()),
                ("c".into(), c.clone()),
            ],
            AsgdConfig {
                lr,
                lambd,
                alpha: 0.75,
                t0,
                weight_decay: wd,
                unsampled: Unsampled::Pytorch1,
            },
        );
        o2.load_state(&st).unwrap();
        assert_eq!(o2.state().unwrap().len(), st.len());
    }
}
