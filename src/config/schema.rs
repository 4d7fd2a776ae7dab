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
    /// Supernet-training interventions of the study (none active by default). Left out of the
    /// resolved TOML (and so of the hash) when none is active.
    #[serde(default, skip_serializing_if = "Tricks::is_empty")]
    pub tricks: Tricks,
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
    Nb101(Nb101Space),
    Nb201(Nb201Space),
    Darts(DartsSpace),
    Ptb(PtbSpace),
    Proxyless(ProxylessSpace),
}

impl Space {
    pub fn kind(&self) -> &'static str {
        match self {
            Space::Nb101(_) => "nb101",
            Space::Nb201(_) => "nb201",
            Space::Darts(_) => "darts",
            Space::Ptb(_) => "ptb",
            Space::Proxyless(_) => "proxyless",
        }
    }

    /// The datasets a space's supernet can take (checked before any work starts).
    pub fn datasets(&self) -> &'static [Dataset] {
        match self {
            Space::Nb101(_) | Space::Darts(_) => &[Dataset::Cifar10],
            Space::Nb201(_) => &[Dataset::Cifar10, Dataset::Cifar100, Dataset::ImageNet16_120],
            Space::Ptb(_) => &[Dataset::Ptb],
            Space::Proxyless(_) => &[Dataset::Imagenet],
        }
    }
}

// Each space's own table. One block per space: a space's fields, defaults (`defaults.rs`) and
// checks (`validate.rs`) change together and nowhere else.

/// NAS-Bench-101 (NAS-Bench-1Shot1 space 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nb101Space {
    /// Output channels of the stem (128 in NAS-Bench-101); doubled before stacks 2 and 3.
    pub channels: usize,
    /// Stacks of cells (3).
    pub stacks: usize,
    /// Cells per stack (3).
    pub cells_per_stack: usize,
    /// BatchNorm momentum (PyTorch convention; NAS-Bench-101's TensorFlow decay 0.997).
    pub bn_momentum: f64,
    pub bn_eps: f64,
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

/// DARTS-CIFAR10.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DartsSpace {
    /// Initial channels C (36); the stem has 3C.
    pub channels: usize,
    /// Cells (20); reduction cells at layers / 3 and 2 * layers / 3.
    pub layers: usize,
    /// Weight of the auxiliary head's loss in training (0 = no auxiliary head).
    pub auxiliary_weight: f64,
    /// Final drop-path probability; the probability at epoch e is drop_path * e / epochs.
    pub drop_path: f64,
    /// Pooling before the classifier: `avg7` (the study's `AvgPool2d(7)`, which on the final
    /// 8x8 map reads only the top-left 7x7) or `global` (average over the whole map).
    #[serde(default)]
    pub final_pool: FinalPool,
}

/// DARTS-CIFAR10's pooling before the classifier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalPool {
    /// The study's quirk: a 7x7 average pool with stride 7 (the top-left 7x7 of the 8x8 map).
    #[default]
    Avg7,
    /// Global average pooling (the clean behaviour).
    Global,
}

/// DARTS-PTB: the recurrent cell language model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PtbSpace {
    /// Embedding size (850), tied to the decoder, so it must equal `hidden`.
    pub embedding: usize,
    /// Hidden size (850).
    pub hidden: usize,
    /// Locked dropout on the RNN output (0.75).
    pub dropout: f64,
    /// Variational dropout on the hidden state fed to every step matrix (0.25).
    pub dropout_rnn_h: f64,
    /// Variational dropout on the input fed to the first matrix (0.75).
    pub dropout_rnn_x: f64,
    /// Locked dropout on the embedding output (0.2).
    pub dropout_inp: f64,
    /// Word (embedding-row) dropout (0.1).
    pub dropout_emb: f64,
    /// Uniform initialisation range of every weight (0.04).
    pub init_range: f64,
    /// Activation regularisation weight: alpha * mean(dropped output^2) (0).
    pub alpha: f64,
    /// Temporal activation regularisation weight: beta * mean((h_t - h_{t-1})^2) (1e-3).
    pub beta: f64,
}

/// ProxylessNAS (ImageNet, MBConv choices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxylessSpace {
    /// Width multiplier (1.35).
    pub width_mult: f64,
    pub bn_momentum: f64,
    pub bn_eps: f64,
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
    /// `[data.text]`: the PTB corpus options (only with `dataset = "ptb"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextData>,
    /// `[data.imagenet]`: the ImageNet file-list options (only with `dataset = "imagenet"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagenet: Option<ImagenetData>,
}

/// `[data.text]`: language-model data (DARTS-PTB).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextData {
    /// Mean training sequence length (35); evaluation uses it as the fixed length.
    pub bptt: usize,
    /// Training sequence lengths are clamped to [5, bptt + max_seq_len_delta] (20).
    pub max_seq_len_delta: usize,
    /// Train on the first this many tokens of `train.txt` only (0 = all); for small runs.
    pub train_tokens: usize,
    /// Evaluate on the first this many tokens of `valid.txt` only (0 = all); for small runs.
    pub valid_tokens: usize,
}

/// `[data.imagenet]`: ImageNet read through the study's file lists (ProxylessNAS).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagenetData {
    /// Training crop size (224).
    pub image_size: usize,
    /// Evaluation: the shorter side is resized to this, then centre-cropped to `image_size`.
    pub resize: usize,
    /// Classes of the classifier (1000); every file-list label must be below it.
    #[serde(default = "imagenet_classes")]
    pub num_classes: usize,
    /// Folder holding the `<list>_files.txt` file lists (default: `data.root`, which the
    /// lists' image paths are relative to; the study keeps them in `data/proxyless/imagenet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<PathBuf>,
    /// The list evaluated on: `test` (the official validation images, the study's) or `val`
    /// (50 images per class held out of train).
    #[serde(default)]
    pub valid_split: ImagenetEvalList,
    /// Colour jitter of training images: `normal` (the study's default), `tf` or `none`.
    #[serde(default)]
    pub color_jitter: ColorJitter,
    /// A JPEG that does not decode: `fail` (stop, naming the file) or `skip` (leave it out of
    /// its batch with a warning).
    #[serde(default)]
    pub bad_images: BadImages,
}

fn imagenet_classes() -> usize {
    1000
}

/// `data.imagenet.valid_split`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImagenetEvalList {
    #[default]
    Test,
    Val,
}

impl ImagenetEvalList {
    /// The list's name (`<name>_files.txt`).
    pub fn name(&self) -> &'static str {
        match self {
            ImagenetEvalList::Test => "test",
            ImagenetEvalList::Val => "val",
        }
    }
}

/// `data.imagenet.color_jitter` (the study's `--color_jitter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorJitter {
    /// Brightness, contrast and saturation U[0.6, 1.4], hue U[0.9, 1.1] degrees.
    #[default]
    Normal,
    /// Brightness U[1 - 32/255, 1 + 32/255], saturation U[0.5, 1.5].
    Tf,
    None,
}

/// `data.imagenet.bad_images`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadImages {
    #[default]
    Fail,
    Skip,
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
    /// Penn Treebank (the DARTS-PTB space).
    Ptb,
    /// ImageNet from file lists (the ProxylessNAS space).
    Imagenet,
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
    /// With `device.gpus` > 1: every rank trains a different sampled architecture in the same
    /// step (the study's DARTS-CIFAR10 command), instead of all ranks training the same one.
    #[serde(default)]
    pub parallel_sampling: bool,
    /// Label smoothing of the training loss: `eps / (K - 1)` on every wrong class, `1 - eps` on
    /// the right one (the study's ProxylessNAS; 0 = off).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub label_smoothing: f64,
    /// The learning-rate schedule.
    #[serde(default, skip_serializing_if = "Schedule::is_cosine")]
    pub schedule: Schedule,
    /// With `schedule = "warmup-cosine"`: epochs of linear warm-up (ProxylessNAS: 5).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub warmup_epochs: usize,
    /// `[train.asgd]`: switch from SGD to averaged SGD when the validation score stops
    /// improving (DARTS-PTB only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asgd: Option<Asgd>,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

/// Learning-rate schedules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Cosine annealing per step from `learning_rate` to `ending_lr` (NB101, NB201, DARTS, PTB).
    #[default]
    Cosine,
    /// ProxylessNAS: set before each step at the fractional epoch; linear warm-up over
    /// `warmup_epochs` from `learning_rate` to `learning_rate * world size`, then a cosine to 0.
    WarmupCosine,
}

impl Schedule {
    pub fn is_cosine(&self) -> bool {
        *self == Schedule::Cosine
    }
}

/// `[train.asgd]`: DARTS-PTB's switch to averaged SGD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asgd {
    /// Evaluations without improvement of the mean validation perplexity before switching (5).
    pub patience: usize,
    /// ASGD's t0 (0) and lambda (0), as in `torch.optim.ASGD`.
    pub t0: f64,
    pub lambda: f64,
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
    /// A benchmark CSV (`architecture` + score columns, e.g. `benchmarks/darts-cifar10.csv`):
    /// when set, every evaluation scores exactly its architectures and correlates with its
    /// `archs_score` column, instead of a sampled validation set and `ground_truth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archs: Option<PathBuf>,
    /// The score column of `archs`: `auto` (the space's: `accuracy`, PTB `valid_ppl`) or a name.
    #[serde(default = "auto_string")]
    pub archs_score: String,
    /// Evaluate a seeded subset of this many rows of `archs` (0 = all).
    #[serde(default)]
    pub archs_limit: usize,
    /// The same architectures trained with another seed (e.g. `darts-cifar10-seed43.csv`), for
    /// the noise ceiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archs_second_seed: Option<PathBuf>,
}

fn auto_string() -> String {
    "auto".into()
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
    /// Data-parallel devices (the study: 4 for DARTS-CIFAR10, 8 for ProxylessNAS). The
    /// learning rate is multiplied by this number, as in the study.
    #[serde(default = "one")]
    pub gpus: usize,
    /// Seconds a rank of a data-parallel run waits for the others (rendezvous, NCCL set-up,
    /// every collective) before it fails naming the missing rank. Changes no result.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// CPU convolution kernels: `auto` or `rust` (runner's own, the measured faster default,
    /// which give the same bits on any thread count) or `onednn` (a build with the `onednn`
    /// feature; an error otherwise). The engines differ only in float rounding.
    /// Left out of the resolved config (and so of the hash) when `auto`, so that configs from
    /// before this key resolve to the same run folders.
    #[serde(default, skip_serializing_if = "ConvEngineCfg::is_auto")]
    pub conv_engine: ConvEngineCfg,
}

/// `device.conv_engine` (also `runner bench --conv-engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConvEngineCfg {
    #[default]
    Auto,
    Onednn,
    Rust,
}

impl ConvEngineCfg {
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Onednn => "onednn",
            Self::Rust => "rust",
        }
    }
}

fn one() -> usize {
    1
}

fn default_timeout_s() -> u64 {
    1800
}

impl Default for DeviceCfg {
    fn default() -> Self {
        Self {
            kind: DeviceKind::Auto,
            index: 0,
            threads: 0,
            gpus: 1,
            timeout_s: default_timeout_s(),
            conv_engine: ConvEngineCfg::Auto,
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

/// `[tricks]`: each trick is an optional sub-table; a present table (even empty, `{}`) turns the
/// trick on with the study's defaults for the keys it does not set. See `crate::tricks`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tricks {
    /// Restrict arch keys to allowed values: `{ "0_1" = [1, 3], ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipath: Option<Multipath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omniscience: Option<Omniscience>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_split: Option<TrainSplit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmented: Option<Augmented>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine_restarts: Option<CosineRestarts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub focus_branch: Option<FocusBranch>,
}

impl Tricks {
    /// Names of the active tricks, in registry order.
    pub fn active(&self) -> Vec<&'static str> {
        let on = [
            ("pruned", self.pruned.is_some()),
            ("multipath", self.multipath.is_some()),
            ("omniscience", self.omniscience.is_some()),
            ("train_split", self.train_split.is_some()),
            ("augmented", self.augmented.is_some()),
            ("cosine_restarts", self.cosine_restarts.is_some()),
            ("focus_branch", self.focus_branch.is_some()),
        ];
        on.iter().filter(|(_, a)| *a).map(|(n, _)| *n).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.active().is_empty()
    }
}

/// `pruned`: allowed values per arch key, written either as a table of lists
/// (`{ "0_1" = [1, 3] }`) or as a list of `{ key, values }` tables
/// (`[{ key = "0_1", values = [1, 3] }]`). Validation rewrites the list form into the table
/// form, so the resolved config (and its hash) does not depend on the spelling. Values are the
/// benchmark JSON values of the key (NB201: op indices).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Pruned {
    Map(std::collections::BTreeMap<String, Vec<serde_json::Value>>),
    List(Vec<PrunedKey>),
}

impl Pruned {
    /// The table form (later entries of a list win over earlier ones with the same key).
    pub fn to_map(&self) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
        match self {
            Pruned::Map(m) => m.clone(),
            Pruned::List(l) => l
                .iter()
                .map(|k| (k.key.clone(), k.values.clone()))
                .collect(),
        }
    }
}

// By hand rather than `untagged`, whose error ("did not match any variant") names neither form.
impl<'de> Deserialize<'de> for Pruned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pruned;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of allowed-value lists ({ \"0_1\" = [1, 3] }) or a list of { key, values } tables")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pruned, A::Error> {
                let mut m = std::collections::BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Vec<serde_json::Value>>()? {
                    m.insert(k, v);
                }
                Ok(Pruned::Map(m))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Pruned, A::Error> {
                let mut l = vec![];
                while let Some(k) = seq.next_element::<PrunedKey>()? {
                    l.push(k);
                }
                Ok(Pruned::List(l))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunedKey {
    pub key: String,
    pub values: Vec<serde_json::Value>,
}

/// `multipath`: `paths` architectures trained on the same batch per step, their gradients
/// summed (not averaged), then one clip and one optimizer step. `fairnas`: the paths are built from
/// per-key permutations so that every choice of every key is used exactly once per step
/// (needs `paths` = the number of choices of each key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Multipath {
    /// Paths per step (the study: 5 on NB201, 3 on NB101; a present table on NB101 defaults
    /// to 3).
    pub paths: usize,
    pub fairnas: bool,
}

impl Default for Multipath {
    fn default() -> Self {
        Self {
            paths: 5,
            fairnas: false,
        }
    }
}

/// `omniscience`: train only on the best `ratio` of the archset by ground truth (or a seeded
/// random `ratio` of it with `random = true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Omniscience {
    pub ratio: f64,
    pub random: bool,
}

impl Default for Omniscience {
    fn default() -> Self {
        Self {
            ratio: 0.33,
            random: false,
        }
    }
}

/// `train_split`: train on fold `index` of `folds` folds of the archset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSplit {
    pub kind: SplitKind,
    /// Number of folds (the study: 5 on NB201, 3 on NB101). With `structured` the folds are the
    /// first `folds` choices of `key`.
    pub folds: usize,
    /// Which fold to train on (0-based; with `val_acc` fold 0 is the worst).
    pub index: usize,
    /// The arch key whose choice defines the folds of `structured`.
    pub key: String,
    /// Seed of the `shuffle` permutation (the study's `split_seed`, independent of
    /// `experiment.seed`).
    pub seed: u64,
}

impl Default for TrainSplit {
    fn default() -> Self {
        Self {
            kind: SplitKind::Shuffle,
            folds: 5,
            index: 0,
            key: "0_1".into(),
            seed: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitKind {
    /// Seeded shuffle, then consecutive chunks of `len / folds`.
    Shuffle,
    /// Fold k holds the architectures whose `key` takes its k-th choice.
    Structured,
    /// Ground-truth quantiles, ascending: consecutive chunks of `len / folds` after sorting.
    ValAcc,
}

/// `augmented`: fix every node's op from `setup` (NB201: 6 digits, op indices of the edges
/// 0_1, 0_2, 1_2, 0_3, 1_3, 2_3 in this order, the reference's node-major order). With
/// `replicate`, every op of the supernet gets `copies` independently initialised copies and
/// each forward call picks one copy per edge at random.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augmented {
    pub setup: String,
    pub replicate: bool,
    pub copies: usize,
}

impl Default for Augmented {
    fn default() -> Self {
        Self {
            setup: "444444".into(),
            replicate: false,
            copies: 5,
        }
    }
}

/// `cosine_restarts`: SGDR with a fixed period of `every` epochs (the learning rate returns to
/// `train.learning_rate` at the start of each period) instead of one cosine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CosineRestarts {
    pub every: usize,
}

impl Default for CosineRestarts {
    fn default() -> Self {
        Self { every: 50 }
    }
}

/// `focus_branch`: every `every` epochs, score each (key, choice) on `num_archs` evaluated
/// architectures, fix the best choice, shrink the archset, restart the sampler.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FocusBranch {
    pub every: usize,
    pub metric: FocusMetric,
    /// A choice taken by fewer evaluated architectures than this is not scored.
    pub min_archs: usize,
    /// Architectures evaluated for each decision (the first of the validation subset; at most
    /// `eval.num_archs`).
    pub num_archs: usize,
}

impl Default for FocusBranch {
    fn default() -> Self {
        Self {
            every: 500,
            metric: FocusMetric::Nondominated,
            min_archs: 10,
            num_archs: 150,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FocusMetric {
    /// Mean supernet accuracy of the architectures taking the choice.
    Accuracy,
    /// Fraction of (with, without) pairs where the one with the choice has fewer parameters and
    /// a higher accuracy.
    Nondominated,
    /// Mean accuracy residual after a least-squares fit of accuracy on log(params).
    Lstsq,
}

/// What a trick needs of a space, and the spaces it is implemented and verified for.
pub struct TrickInfo {
    pub name: &'static str,
    /// `space.kind`s the trick supports.
    pub spaces: &'static [&'static str],
    /// Why the other spaces are refused (what the trick needs that they lack).
    pub needs: &'static str,
}

/// Every trick, in the order they are applied and listed.
pub const TRICKS: &[TrickInfo] = &[
    TrickInfo {
        name: "pruned",
        spaces: &["nb201", "nb101", "darts", "ptb", "proxyless"],
        needs: "an enumerated archset to filter or a sampler restricted per key",
    },
    TrickInfo {
        name: "multipath",
        spaces: &["nb201", "nb101", "darts", "proxyless"],
        needs: "several paths through the supernet on one batch; DARTS-PTB carries the RNN hidden state from batch to batch through the sampled architecture, so several paths on one batch would leave several next hidden states (the study's multipath trains image supernets only)",
    },
    TrickInfo {
        name: "omniscience",
        spaces: &["nb201", "nb101"],
        needs: "an enumerated archset ranked by ground truth; DARTS, DARTS-PTB and ProxylessNAS have no archset (about 2.8e20, 2.6e9 and 2.2e17 architectures) and ground truth for only their 377, 137 and 36 benchmark architectures (the study ran it on NB201 and NB101)",
    },
    TrickInfo {
        name: "train_split",
        spaces: &["nb201", "nb101"],
        needs: "an enumerated archset to split into folds, which DARTS, DARTS-PTB and ProxylessNAS lack (the study ran it on NB201 and NB101); a structured fold, one value of one key, is tricks.pruned = { key = [value] }, which every space supports",
    },
    TrickInfo {
        name: "augmented",
        spaces: &["nb201", "nb101"],
        needs: "a setup string fixing every op and, for replicate, op copies in the supernet, both defined by the study for NB201 and NB101 only; one fixed architecture of DARTS, DARTS-PTB or ProxylessNAS is tricks.pruned with one value per key",
    },
    TrickInfo {
        name: "cosine_restarts",
        spaces: &["nb201", "nb101", "darts", "ptb", "proxyless"],
        needs: "a learning-rate schedule",
    },
    TrickInfo {
        name: "focus_branch",
        spaces: &["nb201", "nb101"],
        needs: "an enumerated archset whose choices it fixes one by one, with ground-truth parameter counts of every architecture (nondominated / lstsq); DARTS, DARTS-PTB and ProxylessNAS have no archset and no such counts (the study ran it on NB101)",
    },
];
