//! NAS-Bench-101 (NAS-Bench-1Shot1 space 3) set-up: the archset (in the order of the study's
//! `nb1shot1c.pkl` when one is given), the ground truth and parameter counts, the supernet.
//!
//! Ground truth, by `eval.ground_truth`:
//! - `auto`: the study's layout `<data.root>/../nb101/nb1shot1c.pkl` if it exists, else the
//!   shipped folder `benchmarks/nb101` (see a folder, below);
//! - a `.pkl` file: the study's `nb1shot1c.pkl` (or one in its structure);
//! - a CSV file (`.csv`, `.csv.gz`): NAS-Bench-101 cells (adjacency, ops, accuracies), mapped
//!   onto every isomorphic archset entry;
//! - a folder: its `nb1shot1c.pkl` if present, else every CSV in it (in name order);
//! - `none`: no ground truth (the run trains and evaluates; correlations are unavailable).

mod truth;

use super::{describe_ground_truth, eval_table};
use crate::config::{self, Nb101Space, Resolved};
use crate::data::Split;
use crate::nn::Store;
use crate::rng;
use crate::run::dir::RunDir;
use crate::run::pipeline::{self, Outcome, Parts};
use crate::space::nb101::{bench, Arch, Nb101, Nb101Net, ARCHSET_SIZE};
use crate::space::{GroundTruth, Space};
use crate::tricks::{self, TrickSet};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the ground truth comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Pickle(PathBuf),
    Csv(Vec<PathBuf>),
}

fn is_pickle(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "pkl" || e == "pickle")
}

fn is_csv(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

/// The ground truth in a folder: its `nb1shot1c.pkl`, else its CSVs.
fn in_folder(dir: &Path) -> Result<Option<Source>> {
    let pkl = dir.join("nb1shot1c.pkl");
    if pkl.is_file() {
        return Ok(Some(Source::Pickle(pkl)));
    }
    let mut csvs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_csv(p))
        .collect();
    csvs.sort();
    Ok((!csvs.is_empty()).then_some(Source::Csv(csvs)))
}

fn locate(resolved: &Resolved) -> Result<Option<Source>> {
    let cfg = &resolved.config;
    match cfg.eval.ground_truth.as_str() {
        "none" => Ok(None),
        "auto" => {
            let study = cfg.data.root.join("..").join("nb101").join("nb1shot1c.pkl");
            if study.is_file() {
                return Ok(Some(Source::Pickle(study)));
            }
            match super::auto_benchmark_dir(resolved, "nb101") {
                Some(d) => in_folder(&d),
                None => Ok(None),
            }
        }
        p => {
            let p = PathBuf::from(p);
            if p.is_dir() {
                return in_folder(&p)?.with_context(|| {
                    format!(
                        "eval.ground_truth: {} holds neither nb1shot1c.pkl nor a CSV of NAS-Bench-101 cells",
                        p.display()
                    )
                })
                .map(Some);
            }
            if !p.exists() {
                bail!("eval.ground_truth: {} does not exist", p.display());
            }
            if is_pickle(&p) {
                Ok(Some(Source::Pickle(p)))
            } else {
                Ok(Some(Source::Csv(vec![p])))
            }
        }
    }
}

/// The space, ground truth and parameter counts of a run.
struct Loaded {
    space: Nb101,
    truth: Option<GroundTruth<Arch>>,
    params: Option<HashMap<Arch, f64>>,
}

fn load(resolved: &Resolved) -> Result<Loaded> {
    let Some(source) = locate(resolved)? else {
        tracing::warn!("no NB101 ground truth (eval.ground_truth = {:?}): correlations are unavailable for this run", resolved.config.eval.ground_truth);
        return Ok(Loaded {
            space: Nb101::new(),
            truth: None,
            params: None,
        });
    };
    match source {
        Source::Pickle(p) => {
            let t = truth::read(&p)?;
            let n = t.order.len();
            let space = if n == ARCHSET_SIZE {
                let space = Nb101::with_order(t.order)
                    .with_context(|| format!("{}: not the space-3 archset", p.display()))?;
                if space.archset() != Nb101::new().archset() {
                    tracing::warn!("{}: the archset order differs from the study's enumeration; training draws and the validation subset follow the file", p.display());
                }
                space
            } else {
                tracing::warn!("{}: {n} of the {ARCHSET_SIZE} architectures; the archset keeps the study's enumeration order", p.display());
                Nb101::new()
            };
            let source = format!("{}: mean of val_acc (fraction)", p.display());
            tracing::info!("ground truth: {source} ({n} archs)");
            Ok(Loaded {
                space,
                truth: Some(GroundTruth {
                    scores: t.scores,
                    source,
                    second_seed: None,
                }),
                params: Some(t.params),
            })
        }
        Source::Csv(paths) => {
            let mut scores = HashMap::new();
            let mut params = HashMap::new();
            let mut lines = vec![];
            for p in &paths {
                let t = bench::read_csv(p)?;
                tracing::info!("ground truth: {}", t.describe());
                lines.push(t.describe());
                for (a, s) in t.scores {
                    scores.entry(a).or_insert(s);
                }
                for (a, s) in t.params {
                    params.entry(a).or_insert(s);
                }
            }
            Ok(Loaded {
                space: Nb101::new(),
                truth: Some(GroundTruth {
                    scores,
                    source: lines.join("; "),
                    second_seed: None,
                }),
                params: Some(params),
            })
        }
    }
}

/// Parameter counts when a trick needs them (focus-branch's nondominated and lstsq metrics),
/// which must cover the whole archset: a decision scores any architecture it evaluated.
fn needed_params(cfg: &config::Config, loaded: &Loaded) -> Result<Option<HashMap<Arch, f64>>> {
    let needed = cfg
        .tricks
        .focus_branch
        .as_ref()
        .is_some_and(|f| f.metric != config::FocusMetric::Accuracy);
    if !needed {
        return Ok(None);
    }
    let Some(params) = &loaded.params else {
        bail!("tricks.focus_branch.metric needs parameter counts from the ground truth (the study's nb1shot1c.pkl), and none was found (set eval.ground_truth)");
    };
    let n = loaded
        .space
        .archset()
        .map_or(0, |s| s.iter().filter(|a| params.contains_key(a)).count());
    if n < ARCHSET_SIZE {
        bail!("tricks.focus_branch.metric needs the parameter count of every architecture (the study's nb1shot1c.pkl); the ground truth covers {n} of {ARCHSET_SIZE}");
    }
    Ok(Some(params.clone()))
}

/// An `eval.archs` table (when set) and the ground truth the run correlates with.
type Truths = (
    Option<crate::space::benchmark::Table<Arch>>,
    Option<GroundTruth<Arch>>,
);

/// The ground truth a run correlates with: `eval.archs` when set, else the loaded one.
fn truth_for(cfg: &config::Config, loaded: &mut Loaded) -> Result<Truths> {
    Ok(match eval_table::<Nb101>(cfg)? {
        Some((t, gt)) => (Some(t), Some(gt)),
        None => (None, loaded.truth.take()),
    })
}

/// What `runner check` reports for an NB101 experiment.
pub fn check(resolved: &Resolved) -> Result<String> {
    let cfg = &resolved.config;
    let mut report = String::new();
    let mut loaded = load(resolved)?;
    report.push_str(&format!(
        "space: nb101 (NAS-Bench-1Shot1 space 3), archset of {} cells\n",
        loaded.space.archset().map_or(0, |a| a.len())
    ));
    let params = needed_params(cfg, &loaded)?;
    let (table, gt) = truth_for(cfg, &mut loaded)?;
    if let Some(t) = &table {
        report.push_str(&format!("eval.archs: {} architectures\n", t.rows.len()));
    }
    report.push_str(&describe_ground_truth(gt.as_ref()));
    if !cfg.tricks.is_empty() {
        let ts = TrickSet::new(&loaded.space, cfg, gt.as_ref(), params).context("tricks")?;
        for line in ts.report() {
            report.push_str(&format!("tricks: {line}\n"));
        }
    }
    Ok(report)
}

/// Builds the NB101 parts and runs the pipeline.
pub fn execute(
    resolved: &Resolved,
    sc: &Nb101Space,
    data: Split,
    dir: &RunDir,
    device: &Device,
) -> Result<Outcome> {
    let cfg = &resolved.config;
    let mut loaded = load(resolved)?;
    let params = needed_params(cfg, &loaded)?;
    let (eval_table, ground_truth) = truth_for(cfg, &mut loaded)?;
    let store = Store::new(device);
    let mut init_rng = rng::stream(cfg.experiment.seed, "init", &[]);
    let copies = tricks::replicate_copies(&cfg.tricks);
    let net = Nb101Net::with_copies(&store.root(), sc, data.num_classes, copies, &mut init_rng)?;
    let parts = Parts {
        space: loaded.space,
        net,
        store,
        ground_truth,
        params,
        data,
        eval_table,
    };
    pipeline::run(resolved, parts, dir, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(extra: &str) -> Resolved {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = format!(
            "[space]\nkind = \"nb101\"\nchannels = 4\n[data]\nroot = \"{}\"\nsplit = \"custom\"\ntrain = [\"train\"]\nvalid = [\"test\"]\n{extra}",
            root.join("data/cifar10-mini-jpg").display()
        );
        config::load_str(&text, &root.join("experiments/x.toml"), &[]).unwrap()
    }

    #[test]
    fn ground_truth_sources() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        // auto: the shipped CSV folder.
        let r = resolved("");
        assert_eq!(
            locate(&r).unwrap(),
            Some(Source::Csv(vec![
                root.join("benchmarks/nb101/naslib_nb101_dummy_30archs.csv")
            ]))
        );
        let l = load(&r).unwrap();
        assert_eq!(l.truth.as_ref().unwrap().scores.len(), 3);
        assert!(l.truth.unwrap().source.contains("2 of 30"));
        let pkl = root.join("tests/fixtures/nb101_p4.pkl");
        let r = resolved(&format!("[eval]\nground_truth = \"{}\"\n", pkl.display()));
        assert_eq!(locate(&r).unwrap(), Some(Source::Pickle(pkl)));
        let l = load(&r).unwrap();
        assert_eq!(l.truth.unwrap().scores.len(), 4);
        assert_eq!(l.space.archset().unwrap().len(), ARCHSET_SIZE);
        assert!(load(&resolved("[eval]\nground_truth = \"none\"\n"))
            .unwrap()
            .truth
            .is_none());
        // A bad pickle fails naming the file and entry.
        let bad = root.join("tests/fixtures/nb101_bad_arch.pkl");
        let e = format!(
            "{:#}",
            load(&resolved(&format!(
                "[eval]\nground_truth = \"{}\"\n",
                bad.display()
            )))
            .err()
            .unwrap()
        );
        assert!(e.contains("nb101_bad_arch.pkl: entry 1"), "{e}");
    }

    #[test]
    fn focus_branch_params_must_cover_the_archset() {
        let r = resolved(
            "[train]\nepochs = 2\n[eval]\nnum_archs = 150\n[tricks.focus_branch]\nevery = 1\n",
        );
        let e = format!("{:#}", check(&r).unwrap_err());
        assert!(e.contains("covers 3 of 95985"), "{e}");
        let r = resolved("[train]\nepochs = 2\n[eval]\nnum_archs = 150\n[tricks.focus_branch]\nevery = 1\nmetric = \"accuracy\"\n");
        let report = check(&r).unwrap();
        assert!(report.contains("focus_branch: every 1 epochs"), "{report}");
    }
}
