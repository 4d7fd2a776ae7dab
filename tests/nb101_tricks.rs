//! The study's supernet-training tricks on NAS-Bench-101 (space 3): the NB101 trick defaults
//! a bare table gets, the config checks, and what each trick does to the archset and sampler.

use runner::config::{self, Resolved};
use runner::space::nb101::{Arch, Nb101, ARCHSET_SIZE};
use runner::space::{GroundTruth, Space};
use runner::tricks::TrickSet;
use std::collections::HashMap;
use std::path::Path;

fn load(extra: &str) -> anyhow::Result<Resolved> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        "[space]\nkind = \"nb101\"\nchannels = 4\n[data]\nroot = \"{}\"\nsplit = \"custom\"\ntrain = [\"train\"]\nvalid = [\"test\"]\n{extra}",
        root.join("data/cifar10-mini-jpg").display()
    );
    config::load_str(&text, &root.join("experiments/x.toml"), &[])
}

fn err(extra: &str) -> String {
    format!("{:#}", load(extra).unwrap_err())
}

#[test]
fn bare_tables_take_the_studys_nb101_defaults() {
    let c = load("[tricks.multipath]\n[tricks.cosine_restarts]\nevery = 54\n")
        .unwrap()
        .config;
    assert_eq!(c.tricks.multipath.unwrap().paths, 3);
    let c = load("[tricks.train_split]\n").unwrap().config;
    let s = c.tricks.train_split.unwrap();
    assert_eq!((s.folds, s.key.as_str()), (3, "op1"));
    let c = load("[tricks.augmented]\nreplicate = true\n")
        .unwrap()
        .config;
    let a = c.tricks.augmented.unwrap();
    assert_eq!((a.setup.as_str(), a.copies), ("00000", 3));
    // Explicit values win; tricks not turned on stay off.
    let c = load("[tricks.multipath]\npaths = 2\n").unwrap().config;
    assert_eq!(c.tricks.multipath.unwrap().paths, 2);
    assert!(c.tricks.train_split.is_none() && c.tricks.augmented.is_none());
    // NB201 keeps its own defaults.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = config::load_str(
        "[space]\nkind = \"nb201\"\n[tricks.multipath]\n",
        &root.join("experiments/y.toml"),
        &[],
    )
    .unwrap()
    .config;
    assert_eq!(c.tricks.multipath.unwrap().paths, 5);
}

#[test]
fn nb101_trick_settings_are_checked() {
    let e = err("[tricks.multipath]\npaths = 5\nfairnas = true\n");
    assert!(e.contains("tricks.multipath.paths must be 3"), "{e}");
    let e = err("[tricks.augmented]\nsetup = \"444444\"\n");
    assert!(e.contains("5 NB101 op indices 0..2"), "{e}");
    let e = err("[tricks.train_split]\nkind = \"structured\"\nkey = \"input4\"\n");
    assert!(e.contains("by the op of one vertex"), "{e}");
    let e = err("[tricks.train_split]\nkind = \"structured\"\nfolds = 4\nindex = 0\n");
    assert!(e.contains("folds must be <= 3"), "{e}");
    let e = err("[tricks.pruned]\n\"0_1\" = [1]\n");
    assert!(e.contains("not an NB101 key"), "{e}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e = config::load_str(
        "[space]\nkind = \"nb101\"\n",
        &root.join("experiments/x.toml"),
        &["space.channels=5".to_string()],
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("space.channels must be even"),
        "{e:#}"
    );
}

fn tricks(extra: &str, truth: Option<&GroundTruth<Arch>>) -> (Nb101, TrickSet<Nb101>) {
    let space = Nb101::new();
    let cfg = load(extra).unwrap().config;
    let ts = TrickSet::new(&space, &cfg, truth, None).unwrap();
    (space, ts)
}

#[test]
fn augmented_fixes_the_ops_and_keeps_the_topologies() {
    let (space, ts) = tricks("[tricks.augmented]\nsetup = \"01201\"\n", None);
    let set = ts.archset(&space).unwrap();
    assert_eq!(set.len(), 395);
    assert!(set.iter().all(|a| a.ops() == [0, 1, 2, 0, 1]));
}

#[test]
fn fairnas_permutes_the_ops_and_samples_the_inputs() {
    let (space, ts) = tricks("[tricks.multipath]\nfairnas = true\n", None);
    let mut r = runner::rng::stream(3, "sample", &[]);
    let mut topologies = std::collections::HashSet::new();
    for _ in 0..100 {
        let paths = ts.paths(&space, &mut r).unwrap();
        assert_eq!(paths.len(), 3);
        for v in 0..5 {
            let mut ops: Vec<u8> = paths.iter().map(|a| a.ops()[v]).collect();
            ops.sort_unstable();
            assert_eq!(ops, [0, 1, 2], "vertex {}: {paths:?}", v + 1);
        }
        for a in &paths {
            topologies.insert((1..=6).map(|t| a.input_mask(t)).collect::<Vec<u8>>());
        }
    }
    // Each path draws its own topology from the archset.
    assert!(topologies.len() > 100, "{}", topologies.len());
}

#[test]
fn structured_split_numbers_ops_by_the_one_hot_position() {
    for (index, op) in [(0, 0u8), (1, 1), (2, 2)] {
        let (space, ts) = tricks(
            &format!(
                "[tricks.train_split]\nkind = \"structured\"\nkey = \"op3\"\nindex = {index}\n"
            ),
            None,
        );
        let set = ts.archset(&space).unwrap();
        assert_eq!(set.len(), ARCHSET_SIZE / 3);
        assert!(set.iter().all(|a| a.ops()[2] == op), "fold {index}");
    }
    // Shuffle folds: len // 3 each.
    let (space, ts) = tricks("[tricks.train_split]\nindex = 2\n", None);
    assert_eq!(ts.archset(&space).unwrap().len(), ARCHSET_SIZE / 3);
}

#[test]
fn omniscience_and_pruned_on_the_archset() {
    // A synthetic ground truth over every entry (the study's pickle covers them all).
    let space = Nb101::new();
    let scores: HashMap<Arch, f64> = space
        .archset()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, (i % 1000) as f64))
        .collect();
    let gt = GroundTruth {
        scores,
        source: "synthetic".into(),
        second_seed: None,
    };
    let (space, ts) = tricks("[tricks.omniscience]\n", Some(&gt));
    let set = ts.archset(&space).unwrap();
    assert_eq!(set.len(), (ARCHSET_SIZE as f64 * 0.33) as usize);
    // 95 full blocks of 0..999 plus 0..984: the best 31,675 reach down to 669.
    assert!(set.iter().all(|a| gt.scores[a] >= 669.0));
    assert!(set.iter().filter(|a| gt.scores[a] == 669.0).count() == 10);
    let (space, ts) = tricks(
        "[tricks.pruned]\nop1 = [[0, 0, 1]]\ninput6 = [[0, 0, 0, 0, 1, 1]]\n",
        None,
    );
    let set = ts.archset(&space).unwrap();
    assert!(!set.is_empty());
    assert!(set
        .iter()
        .all(|a| a.op(1) == 2 && a.input_mask(6) == 0b110000));
    let want = space
        .archset()
        .unwrap()
        .iter()
        .filter(|a| a.op(1) == 2 && a.input_mask(6) == 0b110000)
        .count();
    assert_eq!(set.len(), want);
    // Values are the encoding's 0/1 lists; a value no architecture takes is refused.
    let cfg = load("[tricks.pruned]\nop1 = [[1, 1, 0]]\n").unwrap().config;
    let e = TrickSet::new(&space, &cfg, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("is not one of its values"), "{e}");
    let _ = Nb101::encode(&set[0]);
}

#[test]
fn replicate_builds_copies_drawn_per_vertex() {
    use candle_core::{DType, Device, Tensor};
    use runner::nn::{Mode, Store};
    use runner::space::nb101::Nb101Net;
    use runner::space::{Ctx, Supernet};
    let dev = Device::Cpu;
    let sc = config::Nb101Space {
        channels: 4,
        stacks: 1,
        cells_per_stack: 1,
        bn_momentum: 0.003,
        bn_eps: 1e-5,
    };
    let store = Store::new(&dev);
    let net = Nb101Net::with_copies(
        &store.root(),
        &sc,
        10,
        3,
        &mut runner::rng::stream(0, "init", &[]),
    )
    .unwrap();
    let t = store.tensors();
    assert!(t.contains_key("cells.0.vertex5.conv3x3_copy2.conv.weight"));
    assert!(!t.contains_key("cells.0.vertex5.conv3x3_copy3.conv.weight"));
    let arch = Nb101::new().archset().unwrap()[0];
    let x = Tensor::ones((2, 3, 8, 8), DType::F32, &dev).unwrap();
    // 5 copy draws per cell and forward call: the RNG moves by exactly that much.
    let mut r = runner::rng::stream(1, "t", &[]);
    net.forward(&x, &arch, &mut Ctx::new(Mode::Eval, &mut r))
        .unwrap();
    let mut want = runner::rng::stream(1, "t", &[]);
    for _ in 0..5 {
        runner::space::nb101::net::copy_draw(&mut want, 3);
    }
    assert_eq!(r.get_word_pos(), want.get_word_pos());
}

/// The study-scale NB101 trick files resolve to the study's settings and build their tricks
/// on the space-3 archset (their data is not shipped, so they are not trained here).
#[test]
fn study_nb101_trick_files_resolve_and_build() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/tricks");
    let space = Nb101::new();
    // Focus-branch's nondominated metric needs parameter counts of every architecture (the
    // study's pickle has them); synthetic ones stand in.
    let params: HashMap<Arch, f64> = space
        .archset()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, 1.0 + (i % 7) as f64))
        .collect();
    let m = config::load(&dir.join("nb101_multipath.toml"), &[])
        .unwrap()
        .config;
    let mp = m.tricks.multipath.clone().unwrap();
    assert_eq!(
        (
            mp.paths,
            mp.fairnas,
            m.train.epochs,
            m.eval.every,
            m.eval.num_archs,
            m.eval.num_archs_intermediate,
            m.eval.at_start
        ),
        (3, false, 333, 100, 50, 50, false)
    );
    assert_eq!(m.space.kind(), "nb101");
    let ts = TrickSet::new(&space, &m, None, None).unwrap();
    assert_eq!(ts.train_archset_size(), Some(ARCHSET_SIZE));
    let f = config::load(&dir.join("nb101_focus_branch.toml"), &[])
        .unwrap()
        .config;
    let fb = f.tricks.focus_branch.clone().unwrap();
    assert_eq!(
        (
            f.train.epochs,
            fb.every,
            fb.num_archs,
            fb.min_archs,
            f.eval.num_archs,
            f.eval.at_start
        ),
        (2000, 500, 150, 10, 150, false)
    );
    assert_eq!(fb.metric, config::FocusMetric::Nondominated);
    let ts = TrickSet::new(&space, &f, None, Some(params)).unwrap();
    assert_eq!(ts.focus_due(500), Some(150));
    // The study's command file.
    let s = config::load(&dir.join("../nb101.toml"), &[])
        .unwrap()
        .config;
    assert_eq!(
        (
            s.train.epochs,
            s.eval.every,
            s.eval.num_archs,
            s.eval.num_archs_intermediate,
            s.experiment.seed
        ),
        (1000, 100, 300, 50, 42)
    );
    assert_eq!(s.data.split, "40k");
    let config::Space::Nb101(sc) = &s.space else {
        panic!()
    };
    assert_eq!(
        (sc.channels, sc.stacks, sc.cells_per_stack, sc.bn_momentum),
        (128, 3, 3, 0.003)
    );
    assert_eq!(
        (s.train.weight_decay, s.train.grad_clip, s.train.nesterov),
        (1e-4, 5.0, false)
    );
    assert_eq!(
        (
            s.eval.bn_recalibration.steps,
            s.eval.bn_recalibration.batch_size
        ),
        (25, 400)
    );
}

/// The validation subset is the study's `sorted(RandomState(seed).permutation(95985)[:k])`
/// of the archset in its enumeration order (fixture computed by NumPy:
/// tests/fixtures/gen_nb101_archset.py), so a seed evaluates the study's architectures.
#[test]
fn validation_subset_is_the_studys() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nb101_archset.json");
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let space = Nb101::new();
    let set = space.archset().unwrap();
    for sub in fx["subsets"].as_array().unwrap() {
        let seed = sub["seed"].as_u64().unwrap();
        let k = sub["k"].as_u64().unwrap() as usize;
        let mut cfg = config::defaults::for_kind("nb101").unwrap();
        cfg.experiment.seed = seed;
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let got = ts.eval_archs(&space, k);
        let want: Vec<Arch> = sub["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| set[i.as_u64().unwrap() as usize])
            .collect();
        assert_eq!(got.len(), k);
        assert_eq!(got, want, "seed {seed}");
    }
}
