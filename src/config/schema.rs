//! The experiment file's schema: every key runner understands, typed.
//!
//! Every struct denies unknown fields so that a misspelt key fails instead of being ignored.
//! Defaults here are the NAS-Bench-201 reference values; other spaces override them in
//! `defaults.rs`, which is the first layer of every resolved configuration.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Another experiment file this one builds on (relative to this file). Consumed while
    /// layering; absent from the resolved configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<PathBuf>,
    pub experiment: Experiment,
    pub space: Space,
    pub data: Data,
    pub train: Train,
    pub eval: Eval,
    #[serde(default)]
    pub device: DeviceCfg,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the results folder (`<output>/<name>-<hash>`).
    pub name: String,
    pub seed: u64,
    /// The output root; relative paths resolve against the experiment file.
    pub output: PathBuf,
    /// Allow `name` to contain path separators or `..` (off: results stay under `output`).
    #[serde(default)]
    pub allow_outside_output: bool,
    /// Write `checkpoints/latest.safetensors` every this many epochs (and always at the end).
    pub checkpoint_every: usize,
}

/// The search space, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Space {
    Nb201(Nb201Space),
}

impl Space {
    pub fn kind(&self) -> &'static str {
        match self {
            Space::Nb201(_) => "nb201",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nb201Space {
    /// Channels of the first stage (16 in NAS-Bench-201).
    pub channels: usize,
    /// Cells per stage (5 in NAS-Bench-201).
    pub cells_per_stage: usize,
    /// BatchNorm momentum (PyTorch convention).
    pub bn_momentum: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// Which dataset the images are: sets classes, normalisation and augmentation.
    pub dataset: Dataset,
    /// Folder holding the data files (relative to the experiment file).
    pub root: PathBuf,
    /// `40k`, `50k`, an NB201 split name, or `custom` (then `train` / `valid` list the files).
    pub split: String,
    /// With `split = "custom"`: files or image folders under `root` forming the training set.
    #[serde(default)]
    pub train: Vec<PathBuf>,
    /// With `split = "custom"`: files or image folders under `root` forming the validation set.
    #[serde(default)]
    pub valid: Vec<PathBuf>,
    /// NB201 split file (`split-<name>.txt`); by default looked up in `root` and `root/../nb201`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_file: Option<PathBuf>,
    /// Normalisation constants: `auto` (NB201's for NB201 split names and `custom`, DARTS's for
    /// `40k` / `50k`), `nb201` or `darts`.
    pub normalize: NormalizeKind,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    /// Random crop padding and horizontal flip on training images.
    pub augment: bool,
    /// Cutout length after normalisation (0 = off).
    pub cutout: usize,
    /// Batches prepared ahead by the loader thread.
    pub prefetch: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormalizeKind {
    Auto,
    Nb201,
    Darts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    Cifar10,
    Cifar100,
    #[serde(rename = "imagenet16-120")]
    ImageNet16_120,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Train {
    pub epochs: usize,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    /// Final learning rate of the cosine schedule.
    pub ending_lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f64,
    /// How parameters without a gradient this step are treated (see REFERENCE section 1).
    pub unsampled: Unsampled,
    /// Stop after this many optimizer steps per epoch (0 = the whole epoch); for smoke runs.
    pub max_steps: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Optimizer {
    Sgd,
}

/// Treatment of parameters that are not on this step's sampled path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unsampled {
    /// The study's PyTorch 1.x: once a parameter has had a gradient it is updated at every
    /// later step with a zero gradient (weight decay and momentum keep acting).
    Pytorch1,
    /// PyTorch >= 2.0 (`set_to_none=True`): parameters without a gradient are skipped.
    Skip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Eval {
    /// Evaluate every this many epochs (and at the last epoch).
    pub every: usize,
    /// Architectures evaluated at the last evaluation.
    pub num_archs: usize,
    /// Architectures evaluated at intermediate evaluations (capped by `num_archs`).
    pub num_archs_intermediate: usize,
    /// Evaluate before training (epoch 0).
    pub at_start: bool,
    pub bn_recalibration: BnRecalibration,
    /// Ground truth: `auto` (the space's shipped benchmark for the dataset), `none`, or a path.
    pub ground_truth: String,
    /// Which benchmark table of the ground truth to score against: `auto` (the data split's
    /// name) or an NB201 dataset name (`cifar10-valid`, `cifar10`, `cifar100`, `imagenet-16-120`).
    pub ground_truth_dataset: String,
    /// Evaluate on a seeded random subset of this many validation images (0 = all).
    pub valid_images: usize,
    /// Fraction of evaluated architectures used for top-k overlap.
    pub top_k_fraction: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BnRecalibration {
    /// Batches of training images per architecture (0 = keep the running statistics).
    pub steps: usize,
    pub batch_size: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCfg {
    /// `cpu`, `cuda`, or `auto` (CUDA when built with it and a GPU is present).
    pub kind: DeviceKind,
    /// CUDA ordinal.
    pub index: usize,
    /// CPU threads for candle and the kernels (0 = all cores).
    pub threads: usize,
}

impl Default for DeviceCfg {
    fn default() -> Self {
        Self {
            kind: DeviceKind::Auto,
            index: 0,
            threads: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    Auto,
    Cpu,
    Cuda,
}
