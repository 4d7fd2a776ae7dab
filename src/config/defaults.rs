//! Built-in defaults per space: the reference values of `REFERENCE.md`, the lowest layer of
//! every resolved configuration.

use super::schema::*;
use std::path::PathBuf;

/// The spaces runner knows, by `space.kind`.
pub const SPACE_KINDS: &[&str] = &["nb201"];

/// The full default configuration of a space kind, or `None` for an unknown kind.
pub fn for_kind(kind: &str) -> Option<Config> {
    match kind {
        "nb201" => Some(nb201()),
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
