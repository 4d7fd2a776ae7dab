//! Per-space set-up: everything between a resolved configuration and the pipeline's
//! [`Parts`](super::pipeline::Parts) for one space (its archset, ground truth, supernet),
//! one file per space, plus the lookups they share. `run::execute` dispatches to them.

pub mod darts;
pub mod nb101;
pub mod nb201;
pub mod proxyless;
pub mod ptb;

use crate::config::{self, Resolved};
use crate::space::{benchmark, GroundTruth, Space};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The folder holding a space's shipped benchmark tables for `eval.ground_truth = "auto"`:
/// `benchmarks/<kind>` next to the experiment folder, inside it, or under the current folder.
pub fn auto_benchmark_dir(resolved: &Resolved, kind: &str) -> Option<PathBuf> {
    let exp_dir = resolved
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidates = vec![];
    for anc in exp_dir.ancestors().take(3) {
        candidates.push(anc.join("benchmarks").join(kind));
    }
    candidates.push(PathBuf::from("benchmarks").join(kind));
    candidates.into_iter().find(|p| p.is_dir())
}

/// The benchmark folder (or file) to read ground truth from, or `None` when the run has none.
pub fn ground_truth_dir(resolved: &Resolved, kind: &str) -> Result<Option<PathBuf>> {
    match resolved.config.eval.ground_truth.as_str() {
        "none" => Ok(None),
        "auto" => Ok(auto_benchmark_dir(resolved, kind)),
        p => {
            let p = PathBuf::from(p);
            if !p.exists() {
                bail!("eval.ground_truth: {} does not exist", p.display());
            }
            Ok(Some(p))
        }
    }
}

/// An `eval.archs` table with the ground truth it gives.
pub type EvalTable<S> = (
    benchmark::Table<<S as Space>::Arch>,
    GroundTruth<<S as Space>::Arch>,
);

/// The `eval.archs` table of space `S` (a seeded subset when `eval.archs_limit` is set) and
/// the ground truth it gives (with `eval.archs_second_seed` for the noise ceiling), or `None`
/// when `eval.archs` is not set.
pub fn eval_table<S: Space>(cfg: &config::Config) -> Result<Option<EvalTable<S>>> {
    let Some(path) = &cfg.eval.archs else {
        return Ok(None);
    };
    let column = match cfg.eval.archs_score.as_str() {
        "auto" => S::BENCHMARK_SCORE,
        c => c,
    };
    let table = benchmark::read::<S>(path, column)
        .context("eval.archs")?
        .subset(cfg.eval.archs_limit, cfg.experiment.seed);
    let second = match &cfg.eval.archs_second_seed {
        Some(p) => Some(benchmark::read::<S>(p, column).context("eval.archs_second_seed")?),
        None => None,
    };
    let gt = table.ground_truth(second.as_ref());
    tracing::info!("ground truth: {} ({} archs)", gt.source, gt.scores.len());
    Ok(Some((table, gt)))
}

/// The `ground truth: ...` line of `runner check`.
pub fn describe_ground_truth<A>(gt: Option<&GroundTruth<A>>) -> String {
    match gt {
        Some(gt) => format!("ground truth: {} ({} archs)\n", gt.source, gt.scores.len()),
        None => "ground truth: none (correlations unavailable)\n".into(),
    }
}
