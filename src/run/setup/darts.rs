//! DARTS-CIFAR10 set-up: the space, its ground truth (a benchmark CSV: `eval.archs`, or
//! `eval.ground_truth` naming one), the supernet.
//!
//! The space has no archset: without `eval.archs` the validation architectures are the first
//! draws of the sampler's stream (as in the study) and almost never appear in a benchmark, so
//! correlations need `eval.archs = "benchmarks/darts-cifar10.csv"`.

use super::{describe_ground_truth, eval_table, ground_truth_dir};
use crate::config::{DartsSpace, Resolved};
use crate::nn::Store;
use crate::rng;
use crate::run::dir::RunDir;
use crate::run::pipeline::{self, Outcome, Parts};
use crate::space::darts::{Darts, DartsNet};
use crate::space::{benchmark, GroundTruth, Space};
use crate::tricks::TrickSet;
use anyhow::{bail, Context, Result};
use candle_core::Device;

/// Ground truth without `eval.archs`: `eval.ground_truth` naming a benchmark CSV scores the
/// sampled validation architectures that appear in it; `auto` and `none` give none.
fn sampled_ground_truth(
    resolved: &Resolved,
) -> Result<Option<GroundTruth<<Darts as Space>::Arch>>> {
    let cfg = &resolved.config;
    if cfg.eval.ground_truth == "auto" {
        // The shipped table found the way `auto` finds benchmarks, named absolutely: a relative
        // path given with --set resolves against the experiment file's folder, not the shell's.
        let shipped = resolved
            .file
            .ancestors()
            .skip(1)
            .take(5)
            .map(|d| d.join("benchmarks").join("darts-cifar10.csv"))
            .find(|p| p.is_file());
        let csv = shipped.map_or_else(
            || "benchmarks/darts-cifar10.csv".to_string(),
            |p| p.display().to_string(),
        );
        tracing::warn!("no ground truth for sampled DARTS architectures: set eval.archs = \"{csv}\" to evaluate (and correlate with) the benchmark's architectures");
        return Ok(None);
    }
    let Some(path) = ground_truth_dir(resolved, Darts::KIND)? else {
        return Ok(None);
    };
    if !path.is_file() {
        bail!(
            "eval.ground_truth: {} is not a benchmark CSV (the DARTS ground truth is a file such as benchmarks/darts-cifar10.csv)",
            path.display()
        );
    }
    let column = match cfg.eval.archs_score.as_str() {
        "auto" => Darts::BENCHMARK_SCORE,
        c => c,
    };
    let t = benchmark::read::<Darts>(&path, column).context("eval.ground_truth")?;
    Ok(Some(t.ground_truth(None)))
}

/// The `eval.archs` table (when set) and the ground truth of the run.
type Truth = (
    Option<benchmark::Table<<Darts as Space>::Arch>>,
    Option<GroundTruth<<Darts as Space>::Arch>>,
);

fn ground_truth(resolved: &Resolved) -> Result<Truth> {
    Ok(match eval_table::<Darts>(&resolved.config)? {
        Some((t, gt)) => (Some(t), Some(gt)),
        None => (None, sampled_ground_truth(resolved)?),
    })
}

/// What `runner check` reports for a DARTS-CIFAR10 experiment.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    let data = crate::data::build(&cfg.data)?;
    let mut report = format!(
        "data: {} training images, {} validation images, {} classes\n",
        data.train_indices.len(),
        data.valid_indices.len(),
        data.num_classes
    );
    report.push_str("space: darts (no archset: architectures are sampled per node)\n");
    let (table, gt) = ground_truth(resolved)?;
    match &table {
        Some(t) => report.push_str(&format!(
            "eval.archs: {} architectures at every evaluation\n",
            t.rows.len()
        )),
        None => report.push_str(&format!(
            "validation: {} architectures drawn from the sampler's stream, {} evaluated at every evaluation\n",
            cfg.eval.num_archs, cfg.eval.num_archs_intermediate
        )),
    }
    report.push_str(&describe_ground_truth(gt.as_ref()));
    if !cfg.tricks.is_empty() {
        let ts = TrickSet::new(&Darts::new(), cfg, gt.as_ref(), None).context("tricks")?;
        for line in ts.report() {
            report.push_str(&format!("tricks: {line}\n"));
        }
    }
    Ok(report)
}

/// Builds the DARTS-CIFAR10 parts and runs the pipeline.
pub fn execute(
    resolved: &Resolved,
    sc: &DartsSpace,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let data = crate::data::build(&cfg.data)?;
    let (eval_table, ground_truth) = ground_truth(resolved)?;
    let store = Store::new(device);
    let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
    let net = DartsNet::new(&store.root(), sc, data.num_classes, &mut init_rng)?;
    let parts = Parts {
        space: Darts::new(),
        net,
        store,
        ground_truth,
        params: None,
        data,
        eval_table,
    };
    pipeline::run(resolved, parts, dir, device)
}
