//! What a run records: per-evaluation results, the resumable progress, and the summary.

use crate::rng::RngState;
use crate::tricks::TrickProgress;
use serde::{Deserialize, Serialize};

/// Correlations between supernet scores and ground truth at one evaluation. Non-finite values
/// (an undefined correlation, e.g. all scores equal) are written as JSON `null`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub epoch: usize,
    pub num_archs: usize,
    /// Architectures that had a ground-truth value (the correlations use these).
    pub num_with_ground_truth: usize,
    pub mean_accuracy: f64,
    pub min_accuracy: f64,
    pub max_accuracy: f64,
    pub mean_loss: f64,
    pub kendall_tau: Option<f64>,
    pub spearman: Option<f64>,
    pub pearson: Option<f64>,
    /// Fraction of the top `top_k` architectures by supernet score that are also in the top
    /// `top_k` by ground truth.
    pub top_k_overlap: Option<f64>,
    pub top_k: usize,
    /// Kendall tau between two training seeds of the ground truth on the same architectures
    /// (the noise ceiling), where the benchmark has a second seed.
    pub ground_truth_seed_tau: Option<f64>,
    /// Mean top-5 accuracy (ProxylessNAS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_top5_accuracy: Option<f64>,
    /// Perplexity over the architectures (DARTS-PTB, whose score is perplexity: the
    /// correlations are then of perplexity against the benchmark's perplexity, and the
    /// accuracy fields hold next-token top-1 accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_perplexity: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_perplexity: Option<f64>,
}

/// Everything needed to continue a run exactly where its checkpoint left it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Progress {
    /// Completed epochs (0 before training).
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub sample_rng: RngState,
    /// Batches consumed from the recalibration stream.
    pub recal_consumed: u64,
    pub history: Vec<EvalRecord>,
    /// Mean training loss and accuracy of the last completed epoch.
    pub last_train_loss: Option<f64>,
    pub last_train_accuracy: Option<f64>,
    /// State of the active tricks (focus-branch decisions, training archset size).
    #[serde(default)]
    pub tricks: TrickProgress,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub experiment: String,
    pub config_hash: String,
    pub space: String,
    pub epochs: usize,
    pub steps: u64,
    /// Treatment of unsampled parameters (`pytorch1`: the study's; `skip`: PyTorch >= 2).
    pub unsampled: String,
    pub ground_truth: Option<String>,
    pub final_train_loss: Option<f64>,
    pub final_train_accuracy: Option<f64>,
    /// The last evaluation.
    pub final_eval: Option<EvalRecord>,
    pub history: Vec<EvalRecord>,
    /// Tau of the final evaluation as a fraction of the ground truth's own seed-to-seed tau.
    pub tau_fraction_of_noise_ceiling: Option<f64>,
    /// The active tricks with their settings (`{}` when none), as in `[tricks]`.
    #[serde(default = "empty_object")]
    pub tricks: serde_json::Value,
    /// Architectures training sampled from at the end (after the tricks' filters and
    /// focus-branch decisions), when the space has an archset.
    #[serde(default)]
    pub train_archset_size: Option<usize>,
    /// Architectures training samples from in a space without archset (DARTS, PTB,
    /// ProxylessNAS; after `pruned`): the exact count with its order of magnitude, e.g.
    /// `"46656 (4.67e4)"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_space_size: Option<String>,
    /// What the supernet score is when it is not top-1 accuracy (DARTS-PTB: `perplexity`,
    /// lower is better; its correlations are of perplexity against the benchmark's perplexity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    /// Facts of the run particular to its space (DARTS-PTB: best epoch and perplexity, the
    /// epoch of the switch to ASGD, NaN roll-backs, what the final checkpoint holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_details: Option<serde_json::Value>,
    /// Why the final evaluation has no correlations, when it has none (no ground truth, or
    /// fewer than 2 evaluated architectures with ground truth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlations_unavailable: Option<String>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
