//! DARTS-PTB set-up: the corpus, the ground truth (an `eval.archs` table or
//! `benchmarks/ptb.csv`), the language model, then the PTB training loop.

use super::{describe_ground_truth, eval_table};
use crate::config::{self, PtbSpace, Resolved};
use crate::data::ptb::Corpus;
use crate::nn::Store;
use crate::rng;
use crate::run::dir::RunDir;
use crate::run::pipeline::Outcome;
use crate::run::pipeline_ptb::{self, PtbParts};
use crate::space::ptb::{self as space_ptb, Arch, Ptb, STEPS};
use crate::space::ptb_model::PtbNet;
use crate::space::{benchmark, GroundTruth, Space};
use crate::tricks::TrickSet;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

fn space_cfg(cfg: &config::Config) -> Result<&PtbSpace> {
    match &cfg.space {
        config::Space::Ptb(s) => Ok(s),
        _ => bail!("not a ptb experiment"),
    }
}

/// `benchmarks/ptb.csv` next to the experiment folder, in one of its two parents, or under
/// the current folder.
fn auto_benchmark(resolved: &Resolved) -> Option<PathBuf> {
    let exp_dir = resolved
        .file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidates = vec![];
    for anc in exp_dir.ancestors().take(3) {
        candidates.push(anc.join("benchmarks").join("ptb.csv"));
    }
    candidates.push(PathBuf::from("benchmarks").join("ptb.csv"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The ground truth without `eval.archs`: a benchmark CSV (`eval.ground_truth` = a path, or
/// `auto` for the shipped `benchmarks/ptb.csv`). The study's validation architectures are
/// random draws from 2.6e9, so they rarely appear in it: correlations need `eval.archs`.
fn ground_truth(resolved: &Resolved) -> Result<Option<GroundTruth<Arch>>> {
    let cfg = &resolved.config;
    let path = match cfg.eval.ground_truth.as_str() {
        "none" => return Ok(None),
        "auto" => {
            match auto_benchmark(resolved) {
                Some(p) => p,
                None => {
                    tracing::warn!("benchmarks/ptb.csv not found: no ground truth, correlations are unavailable");
                    return Ok(None);
                }
            }
        }
        p => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!("eval.ground_truth: {} is not a file (space ptb reads a benchmark CSV such as benchmarks/ptb.csv)", p.display());
            }
            p
        }
    };
    let column = match cfg.eval.archs_score.as_str() {
        "auto" => Ptb::BENCHMARK_SCORE,
        c => c,
    };
    let t = benchmark::read::<Ptb>(&path, column).context("eval.ground_truth")?;
    Ok(Some(t.ground_truth(None)))
}

/// Parameters of the model: embedding V x H (tied decoder), decoder bias V, W0 2H x 2H and
/// 8 step matrices H x 2H.
fn param_count(vocab: usize, h: usize) -> usize {
    vocab * h + vocab + 4 * h * h + STEPS * 2 * h * h
}

/// What `runner check` reports for a DARTS-PTB experiment.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    let sc = space_cfg(cfg)?;
    let corpus = Corpus::read(&cfg.data.root)?;
    let mut r = format!(
        "data: {} training, {} validation, {} test tokens, vocabulary {}\n",
        corpus.train.len(),
        corpus.valid.len(),
        corpus.test.len(),
        corpus.vocab()
    );
    r.push_str(&format!(
        "space: ptb, {} steps x 4 activations (4^8 * 8! = {} architectures), {} parameters\n",
        STEPS,
        4usize.pow(8) * (1..=8).product::<usize>(),
        param_count(corpus.vocab(), sc.hidden)
    ));
    let gt = match eval_table::<Ptb>(cfg)? {
        Some((t, gt)) => {
            r.push_str(&format!("eval.archs: {} architectures\n", t.rows.len()));
            Some(gt)
        }
        None => ground_truth(resolved)?,
    };
    r.push_str(&describe_ground_truth(gt.as_ref()));
    if !cfg.tricks.is_empty() {
        let ts = TrickSet::new(&Ptb, cfg, gt.as_ref(), None).context("tricks")?;
        for line in ts.report() {
            r.push_str(&format!("tricks: {line}\n"));
        }
    }
    Ok(r)
}

/// Builds the DARTS-PTB parts and runs the PTB training loop.
pub fn execute(
    resolved: &Resolved,
    sc: &PtbSpace,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let corpus = Corpus::read(&cfg.data.root)?;
    let (eval_table, ground_truth) = match eval_table::<Ptb>(cfg)? {
        Some((t, gt)) => (Some(t), Some(gt)),
        None => (None, ground_truth(resolved)?),
    };
    let store = Store::new(device);
    let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
    let net = PtbNet::new(&store.root(), sc, corpus.vocab(), &mut init_rng)?;
    tracing::info!("space ptb: keys {}", space_ptb::keys().join(" "));
    let parts = PtbParts {
        net,
        store,
        space: sc.clone(),
        corpus,
        ground_truth,
        eval_table,
    };
    pipeline_ptb::run(resolved, parts, dir, device)
}
