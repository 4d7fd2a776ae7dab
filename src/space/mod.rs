//! Search spaces: choices, sampling, architecture encodings, ground truth decoding, supernets.
//!
//! One file per space. A space names its typed `Arch` (serialisable to exactly the JSON of the
//! benchmark CSVs), draws architectures from a caller's RNG, and builds a supernet that runs
//! only the sampled path. The pipeline is generic over [`Space`]; the registry is the single
//! `match` on `space.kind` in `run`.

pub mod benchmark;
pub mod darts;
pub mod factors;
pub mod nb101;
pub mod nb201;
pub mod proxyless;
pub mod ptb;
pub mod ptb_model;

use crate::nn::Mode;
use crate::rng::Rng;
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

/// A search space: its typed architectures, their benchmark encoding and sampling. The
/// supernet is a separate type ([`Supernet`] for image classifiers; DARTS-PTB has its own), so
/// that the archset-level machinery (tricks, benchmark tables, validation subsets) serves every
/// space.
pub trait Space: Send + Sync + Sized + 'static {
    type Arch: Clone + Eq + Hash + Debug + Send + Sync;

    /// The `space.kind` name.
    const KIND: &'static str;

    /// The score column of the space's benchmark CSV that `eval.archs_score = "auto"` means.
    const BENCHMARK_SCORE: &'static str = "accuracy";

    /// Whether evaluations also report top-5 accuracy (ProxylessNAS).
    const TOP5: bool = false;
    /// Whether the last evaluation scores `eval.num_archs_intermediate` architectures like the
    /// others (DARTS and PTB in the study) instead of all `eval.num_archs` drawn.
    const LAST_EVAL_INTERMEDIATE: bool = false;

    /// The benchmark JSON object of an architecture (as in `benchmarks/*.csv`).
    fn encode(arch: &Self::Arch) -> serde_json::Value;

    /// Parses a benchmark JSON object; the error says what is wrong with it.
    fn decode(value: &serde_json::Value) -> anyhow::Result<Self::Arch>;

    /// A short human-readable form (NB201's `|op~0|+|...|` string).
    fn arch_string(arch: &Self::Arch) -> String;

    /// The enumerated set of architectures training samples from, when the space has one.
    fn archset(&self) -> Option<&[Self::Arch]>;

    /// One architecture drawn uniformly.
    fn sample(&self, rng: &mut Rng) -> Self::Arch;

    /// The position of `value` among the choices of `key` where the reference numbers them
    /// differently from their sorted JSON order (NB101's one-hot ops: by the hot position);
    /// `None` keeps the sorted order. The structured train split's fold k is choice k.
    fn choice_rank(_key: &str, _value: &serde_json::Value) -> Option<usize> {
        None
    }

    /// The keys FairNAS permutes (each choice of each such key used once per step); the other
    /// keys of each path come from an architecture the path samples. `None`: every key.
    fn fair_keys() -> Option<Vec<String>> {
        None
    }

    /// A space without an enumerated archset as the study's mutator samples it: independent
    /// factors, each one uniform draw (see [`factors`]). `pruned` restricts them; with no
    /// restriction, sampling them is draw for draw [`Space::sample`]. `None` for spaces with
    /// an archset.
    fn factors(&self) -> Option<factors::Factors> {
        None
    }
}

/// What a forward pass needs besides the input: the mode, the drop-path probability, and the
/// RNG its random masks (dropout, drop-path) come from.
pub struct Ctx<'a> {
    pub mode: Mode,
    /// Drop-path probability for this pass (0 when the space has none).
    pub drop_path: f64,
    pub rng: &'a mut Rng,
}

impl<'a> Ctx<'a> {
    pub fn new(mode: Mode, rng: &'a mut Rng) -> Self {
        Self {
            mode,
            drop_path: 0.0,
            rng,
        }
    }
}

/// A forward pass's result.
pub struct Output {
    pub logits: Tensor,
    /// Auxiliary-head logits (DARTS, in training mode only).
    pub aux_logits: Option<Tensor>,
}

/// A weight-sharing supernet.
pub trait Supernet {
    type Arch;
    /// Logits of the sampled architecture (only its path runs).
    fn forward(&self, x: &Tensor, arch: &Self::Arch, ctx: &mut Ctx) -> Result<Output>;

    /// Weight of the auxiliary loss in training (0 without an auxiliary head).
    fn aux_weight(&self) -> f64 {
        0.0
    }

    /// Drop-path probability at `epoch` (1-based) of `epochs` (0 without drop-path).
    fn drop_path(&self, _epoch: usize, _epochs: usize) -> f64 {
        0.0
    }

    /// FLOPs and parameters of `arch` counted the study's way (REFERENCE section 1), for
    /// spaces whose benchmark CSVs carry them; written next to the benchmark's own columns.
    fn cost(&self, _arch: &Self::Arch) -> Option<Cost> {
        None
    }
}

/// FLOPs and parameter count of one architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub flops: u64,
    pub params: u64,
}

/// Ground truth scores by architecture, with a description of where they came from.
pub struct GroundTruth<A> {
    pub scores: HashMap<A, f64>,
    /// What the score is, e.g. `acc200_cifar10-valid.csv: valid_acc_mean (percent)`.
    pub source: String,
    /// A second, independent measurement of the same architectures (another training seed),
    /// for the noise ceiling.
    pub second_seed: Option<HashMap<A, f64>>,
}
