//! Built-in defaults per space: the reference values of `REFERENCE.md`, the lowest layer of
//! every resolved configuration.

use super::schema::*;
use std::path::PathBuf;

/// The spaces runner knows, by `space.kind`.
pub const SPACE_KINDS: &[&str] = &["nb101", "nb201", "darts", "ptb", "proxyless"];

/// The full default configuration of a space kind, or `None` for an unknown kind.
pub fn for_kind(kind: &str) -> Option<Config> {
    match kind {
        "nb101" => Some(nb101()),
        "nb201" => Some(nb201()),
        "darts" => Some(darts()),
        "ptb" => Some(ptb()),
        "proxyless" => Some(proxyless()),
        _ => None,
    }
}

/// NAS-Bench-201: SGD Nesterov lr 0.1 momentum 0.9 wd 5e-4, batch 256, 200 epochs, cosine to 0,
/// no clipping, BN recalibration 25 x 256 (the study's loader used the training batch size),
/// 100 architectures, evaluation every 100 epochs, cifar10-valid.
pub fn nb201() -> Config {
    Config {
        extends: None,
        experiment: Experiment {
            name: "nb201".into(),
            seed: 0,
            output: PathBuf::from("results"),
            allow_outside_output: false,
            checkpoint_every: 1,
        },
        space: Space::Nb201(Nb201Space {
            channels: 16,
            cells_per_stage: 5,
            bn_momentum: 0.1,
        }),
        data: Data {
            dataset: Dataset::Cifar10,
            root: PathBuf::from("data/cifar10"),
            split: "cifar10-valid".into(),
            train: vec![],
            valid: vec![],
            split_file: None,
            normalize: NormalizeKind::Auto,
            batch_size: 256,
            eval_batch_size: 256,
            augment: true,
            cutout: 0,
            prefetch: 4,
            text: None,
            imagenet: None,
        },
        train: Train {
            epochs: 200,
            optimizer: Optimizer::Sgd,
            learning_rate: 0.1,
            ending_lr: 0.0,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            grad_clip: 0.0,
            unsampled: Unsampled::Pytorch1,
            max_steps: 0,
            parallel_sampling: false,
            label_smoothing: 0.0,
            schedule: Schedule::Cosine,
            warmup_epochs: 0,
            asgd: None,
        },
        eval: Eval {
            every: 100,
            num_archs: 100,
            num_archs_intermediate: 100,
            at_start: true,
            bn_recalibration: BnRecalibration {
                steps: 25,
                batch_size: 256,
            },
            ground_truth: "auto".into(),
            ground_truth_dataset: "auto".into(),
            valid_images: 0,
            top_k_fraction: 0.1,
            archs: None,
            archs_score: "auto".into(),
            archs_limit: 0,
            archs_second_seed: None,
        },
        device: DeviceCfg::default(),
        tricks: Tricks::default(),
    }
}

/// NAS-Bench-101 (1Shot1 space 3): SGD lr 0.1 momentum 0.9 wd 1e-4 (no Nesterov), clip 5,
/// batch 256, 108 epochs, BN recalibration 25 x 400, evaluation every 12 epochs on 300
/// architectures, CIFAR-10 40k/10k.
pub fn nb101() -> Config {
    let mut c = nb201();
    c.experiment.name = "nb101".into();
    c.space = Space::Nb101(Nb101Space {
        channels: 128,
        stacks: 3,
        cells_per_stack: 3,
        bn_momentum: 0.003,
        bn_eps: 1e-5,
    });
    c.data.split = "40k".into();
    c.train.epochs = 108;
    c.train.nesterov = false;
    c.train.weight_decay = 1e-4;
    c.train.grad_clip = 5.0;
    c.eval.every = 12;
    c.eval.num_archs = 300;
    c.eval.num_archs_intermediate = 300;
    c.eval.bn_recalibration = BnRecalibration {
        steps: 25,
        batch_size: 400,
    };
    c
}

/// Trick settings whose study default depends on the space, by trick name: the layer of
/// built-in defaults gets them under `tricks.<name>` only when a higher layer turns that trick
/// on (so a bare `[tricks.multipath]` on NB101 means the study's NB101 script). NB101: 3
/// multipath paths (tricks/nb101/multipath.py), 3 train-split folds by `op1`
/// (tricks/nb101/train_split.py), augmented setup `00000` with 3 replicate copies
/// (tricks/nb101/augmented_space.py).
pub fn trick_defaults(kind: &str) -> Vec<(&'static str, toml::Table)> {
    let table = |pairs: &[(&str, toml::Value)]| -> toml::Table {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    match kind {
        "nb101" => vec![
            ("multipath", table(&[("paths", 3.into())])),
            (
                "train_split",
                table(&[("folds", 3.into()), ("key", "op1".into())]),
            ),
            (
                "augmented",
                table(&[("setup", "00000".into()), ("copies", 3.into())]),
            ),
        ],
        _ => vec![],
    }
}

/// DARTS-CIFAR10: C = 36, 20 cells, auxiliary head 0.4, drop-path 0.2, cutout 16, batch 128,
/// SGD lr 0.025 momentum 0.9 wd 3e-4 (no Nesterov), clip 5, 600 epochs, BN recalibration
/// 100 x 200, 256 validation architectures drawn of which 32 are evaluated at every
/// evaluation, evaluation every 50 epochs, split 40k.
pub fn darts() -> Config {
    let mut c = nb201();
    c.experiment.name = "darts".into();
    c.space = Space::Darts(DartsSpace {
        channels: 36,
        layers: 20,
        auxiliary_weight: 0.4,
        drop_path: 0.2,
        final_pool: FinalPool::Avg7,
    });
    c.data.split = "40k".into();
    c.data.batch_size = 128;
    c.data.eval_batch_size = 128;
    c.data.cutout = 16;
    c.train.epochs = 600;
    c.train.learning_rate = 0.025;
    c.train.nesterov = false;
    c.train.weight_decay = 3e-4;
    c.train.grad_clip = 5.0;
    c.eval.every = 50;
    // The study draws `num_valid_arch` = 256 validation architectures from the sampler's stream
    // (training sampling continues after them) and evaluates the first 32 at every evaluation.
    c.eval.num_archs = 256;
    c.eval.num_archs_intermediate = 32;
    c.eval.bn_recalibration = BnRecalibration {
        steps: 100,
        batch_size: 200,
    };
    c
}

/// DARTS-PTB: embedding and hidden 850, dropouts 0.75 (output), 0.25 (h), 0.75 (x), 0.2
/// (embedding output), 0.1 (words), init range 0.04, AR 0, TAR 1e-3; SGD lr 40 (scaled per
/// batch by seq_len / bptt) momentum 0 wd 8e-7, clip 0.1, batch 256, bptt 35 (clamped to
/// [5, 55]; evaluation batch 10), 3000 epochs, ASGD (t0 0, lambda 0) after 5 evaluations
/// without improvement, 10 architectures at every evaluation, evaluation every 5 epochs, no
/// evaluation before training, no BN (the study's `state_bn` is off).
pub fn ptb() -> Config {
    let mut c = nb201();
    c.experiment.name = "ptb".into();
    c.space = Space::Ptb(PtbSpace {
        embedding: 850,
        hidden: 850,
        dropout: 0.75,
        dropout_rnn_h: 0.25,
        dropout_rnn_x: 0.75,
        dropout_inp: 0.2,
        dropout_emb: 0.1,
        init_range: 0.04,
        alpha: 0.0,
        beta: 1e-3,
    });
    c.data.dataset = Dataset::Ptb;
    c.data.root = PathBuf::from("data/ptb");
    c.data.split = "ptb".into();
    c.data.augment = false;
    c.data.batch_size = 256;
    c.data.eval_batch_size = 10;
    c.data.text = Some(TextData {
        bptt: 35,
        max_seq_len_delta: 20,
        train_tokens: 0,
        valid_tokens: 0,
    });
    c.train.epochs = 3000;
    c.train.learning_rate = 40.0;
    c.train.momentum = 0.0;
    c.train.nesterov = false;
    c.train.weight_decay = 8e-7;
    c.train.grad_clip = 0.1;
    c.train.asgd = Some(Asgd {
        patience: 5,
        t0: 0.0,
        lambda: 0.0,
    });
    c.eval.every = 5;
    c.eval.num_archs = 10;
    c.eval.num_archs_intermediate = 10;
    c.eval.at_start = false;
    c.eval.bn_recalibration = BnRecalibration {
        steps: 0,
        batch_size: 1,
    };
    c
}

/// ProxylessNAS (`configs/proxyless.py` of the study): width 1.35, BN momentum 0.1 eps 1e-3,
/// ImageNet trained on the `augment` list and evaluated on `test`, batch 128 (evaluation 256),
/// SGD lr 0.025 momentum 0.9 wd 5e-5 without Nesterov, label smoothing 0.1, 5 warm-up epochs
/// then cosine to 0, 300 epochs, BN recalibration 100 x 200, 300 architectures at every
/// evaluation, evaluation every 50 epochs, none before training, 1000 classes, `normal` colour
/// jitter.
pub fn proxyless() -> Config {
    let mut c = nb201();
    c.experiment.name = "proxyless".into();
    c.space = Space::Proxyless(ProxylessSpace {
        width_mult: 1.35,
        bn_momentum: 0.1,
        bn_eps: 1e-3,
    });
    c.data.dataset = Dataset::Imagenet;
    c.data.root = PathBuf::from("data/imagenet");
    c.data.split = "augment".into();
    c.data.batch_size = 128;
    c.data.eval_batch_size = 256;
    c.data.imagenet = Some(ImagenetData {
        image_size: 224,
        resize: 256,
        num_classes: 1000,
        lists: None,
        valid_split: ImagenetEvalList::Test,
        color_jitter: ColorJitter::Normal,
        bad_images: BadImages::Fail,
    });
    c.train.epochs = 300;
    c.train.learning_rate = 0.025;
    c.train.nesterov = false;
    c.train.weight_decay = 5e-5;
    c.train.label_smoothing = 0.1;
    c.train.schedule = Schedule::WarmupCosine;
    c.train.warmup_epochs = 5;
    c.eval.every = 50;
    c.eval.num_archs = 300;
    c.eval.num_archs_intermediate = 300;
    c.eval.at_start = false;
    c.eval.bn_recalibration = BnRecalibration {
        steps: 100,
        batch_size: 200,
    };
    c
}
