//! `runner diff A B [C...]`: the params and metrics that differ between run folders (or between
//! the matched points of sweep folders), laid out like DVC's `params diff` / `metrics diff`.
//!
//! Params are the resolved `config.toml`s flattened to dotted keys, without the keys that do
//! not change results (`experiment.output`, `device.threads`, `device.timeout_s`; the config
//! hash leaves them out too). Metrics are [`folder::run_metrics`]. With more than two folders each is compared against
//! the first; the Path column names the newer folder. Sweeps are matched point by point by their
//! overrides; a Point column names the point, and points without a partner are listed.

use super::folder::{self, Folder, Num, SweepPoint};
use super::table;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Keys that differ between otherwise identical runs without changing what they compute.
const IGNORED_PARAMS: [&str; 3] = ["experiment.output", "device.threads", "device.timeout_s"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Markdown,
    Csv,
}

/// A folder to compare, with the name it is shown under (as given on the command line).
#[derive(Clone, Debug)]
pub struct Input {
    pub label: String,
    pub path: PathBuf,
}

impl Input {
    pub fn new(path: impl Into<PathBuf>) -> Input {
        let path = path.into();
        Input {
            label: path.display().to_string(),
            path,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamRow {
    pub path: String,
    pub point: Option<String>,
    pub param: String,
    pub old: Option<toml::Value>,
    pub new: Option<toml::Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub path: String,
    pub point: Option<String>,
    pub metric: String,
    pub old: Option<Num>,
    pub new: Option<Num>,
}

impl MetricRow {
    /// New - Old, where both exist.
    pub fn change(&self) -> Option<Num> {
        Some(self.new?.minus(self.old?))
    }
}

/// A sweep point that has no point with the same overrides in the folder it is compared with.
#[derive(Clone, Debug, PartialEq)]
pub struct Unmatched {
    /// The sweep folder holding the point.
    pub path: String,
    pub point: String,
    pub overrides: String,
    /// The sweep folder that lacks it.
    pub missing_in: String,
}

#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// The inputs were sweep folders (tables get a Point column).
    pub sweeps: bool,
    pub params: Vec<ParamRow>,
    pub metrics: Vec<MetricRow>,
    pub unmatched: Vec<Unmatched>,
}

/// What one run folder contributes to a comparison.
struct RunSide {
    params: Option<BTreeMap<String, toml::Value>>,
    metrics: BTreeMap<String, Option<Num>>,
}

fn read_side(dir: Option<&Path>) -> Result<RunSide> {
    let Some(dir) = dir.filter(|d| d.is_dir()) else {
        return Ok(RunSide {
            params: None,
            metrics: BTreeMap::new(),
        });
    };
    let params = folder::read_config(dir)?.map(|c| {
        let mut flat = folder::flatten_toml(&c);
        for k in IGNORED_PARAMS {
            flat.remove(k);
        }
        flat
    });
    let metrics = folder::run_metrics(folder::read_summary_json(dir)?.as_ref());
    Ok(RunSide { params, metrics })
}

fn compare(d: &mut Diff, path: &str, point: Option<&str>, old: &RunSide, new: &RunSide, all: bool) {
    // Params only where both configs exist: a point without a run yet is not "every key differs".
    if let (Some(po), Some(pn)) = (&old.params, &new.params) {
        let keys: BTreeSet<&String> = po.keys().chain(pn.keys()).collect();
        for k in keys {
            let (o, n) = (po.get(k), pn.get(k));
            if all || o != n {
                d.params.push(ParamRow {
                    path: path.into(),
                    point: point.map(String::from),
                    param: k.clone(),
                    old: o.cloned(),
                    new: n.cloned(),
                });
            }
        }
    }
    let keys: BTreeSet<&String> = old.metrics.keys().chain(new.metrics.keys()).collect();
    for k in keys {
        let o = old.metrics.get(k).copied().flatten();
        let n = new.metrics.get(k).copied().flatten();
        // Exact comparison of the stored values, as DVC does; NaN never occurs (JSON has none).
        if all || o != n {
            d.metrics.push(MetricRow {
                path: path.into(),
                point: point.map(String::from),
                metric: k.clone(),
                old: o,
                new: n,
            });
        }
    }
}

fn sweep_run(sweep: &Path, p: &SweepPoint) -> Option<PathBuf> {
    p.run.as_ref().map(|r| sweep.join(r))
}

/// Compares `inputs[1..]` against `inputs[0]`: all run folders or all sweep folders.
pub fn diff(inputs: &[Input], all: bool) -> Result<Diff> {
    if inputs.len() < 2 {
        bail!("diff needs at least two folders");
    }
    let kinds: Vec<Folder> = inputs
        .iter()
        .map(|i| folder::classify(&i.path))
        .collect::<Result<_>>()?;
    let sweeps = matches!(kinds[0], Folder::Sweep(_));
    for (k, i) in kinds.iter().zip(inputs) {
        if matches!(k, Folder::Sweep(_)) != sweeps {
            bail!(
                "cannot compare {} (a {}) with {} (a {}): give all run folders or all sweep folders",
                inputs[0].label,
                if sweeps { "sweep" } else { "run" },
                i.label,
                if sweeps { "run" } else { "sweep" }
            );
        }
    }
    let mut d = Diff {
        sweeps,
        ..Default::default()
    };
    let base = &inputs[0];
    if !sweeps {
        let old = read_side(Some(&base.path))?;
        for new_in in &inputs[1..] {
            let new = read_side(Some(&new_in.path))?;
            compare(&mut d, &new_in.label, None, &old, &new, all);
        }
        return Ok(d);
    }
    let old_points = folder::read_sweep(&base.path)?;
    for new_in in &inputs[1..] {
        let new_points = folder::read_sweep(&new_in.path)?;
        let mut used = vec![false; new_points.len()];
        for op in &old_points {
            let key = op.match_key();
            let found = new_points
                .iter()
                .enumerate()
                .find(|(j, np)| !used[*j] && np.match_key() == key);
            let Some((j, np)) = found else {
                d.unmatched.push(Unmatched {
                    path: base.label.clone(),
                    point: op.point.clone(),
                    overrides: op.label(),
                    missing_in: new_in.label.clone(),
                });
                continue;
            };
            used[j] = true;
            let old = read_side(sweep_run(&base.path, op).as_deref())?;
            let new = read_side(sweep_run(&new_in.path, np).as_deref())?;
            compare(&mut d, &new_in.label, Some(&op.label()), &old, &new, all);
        }
        for (np, u) in new_points.iter().zip(&used) {
            if !u {
                d.unmatched.push(Unmatched {
                    path: new_in.label.clone(),
                    point: np.point.clone(),
                    overrides: np.label(),
                    missing_in: base.label.clone(),
                });
            }
        }
    }
    Ok(d)
}

fn param_text(v: &Option<toml::Value>) -> String {
    v.as_ref()
        .map(folder::toml_text)
        .unwrap_or_else(|| "-".into())
}

fn num_text(v: Option<Num>, precision: usize) -> String {
    match v {
        None => "-".into(),
        Some(Num::Int(i)) => i.to_string(),
        Some(Num::Float(x)) => table::fmt_sig(x, precision),
    }
}

impl Diff {
    fn param_table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = if self.sweeps {
            vec!["Path", "Point", "Param", "Old", "New"]
        } else {
            vec!["Path", "Param", "Old", "New"]
        };
        let rows = self
            .params
            .iter()
            .map(|r| {
                let mut row = vec![r.path.clone()];
                if self.sweeps {
                    row.push(r.point.clone().unwrap_or_default());
                }
                row.extend([r.param.clone(), param_text(&r.old), param_text(&r.new)]);
                row
            })
            .collect();
        (header, rows)
    }

    fn metric_table(&self, precision: usize) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = if self.sweeps {
            vec!["Path", "Point", "Metric", "Old", "New", "Change"]
        } else {
            vec!["Path", "Metric", "Old", "New", "Change"]
        };
        let rows = self
            .metrics
            .iter()
            .map(|r| {
                let mut row = vec![r.path.clone()];
                if self.sweeps {
                    row.push(r.point.clone().unwrap_or_default());
                }
                row.extend([
                    r.metric.clone(),
                    num_text(r.old, precision),
                    num_text(r.new, precision),
                    num_text(r.change(), precision),
                ]);
                row
            })
            .collect();
        (header, rows)
    }

    fn unmatched_lines(&self) -> Vec<String> {
        self.unmatched
            .iter()
            .map(|u| {
                format!(
                    "{}: point {} ({}) has no match in {}",
                    u.path, u.point, u.overrides, u.missing_in
                )
            })
            .collect()
    }

    /// The JSON form: `{"params": [...], "metrics": [...], "unmatched": [...]}` with the stored
    /// values (not rounded; missing values are null). Rows carry `point` for sweeps.
    pub fn to_json(&self) -> Value {
        let params: Vec<Value> = self
            .params
            .iter()
            .map(|r| {
                let conv = |v: &Option<toml::Value>| v.as_ref().and_then(|x| serde_json::to_value(x).ok()).unwrap_or(Value::Null);
                let mut o = json!({"path": r.path, "param": r.param, "old": conv(&r.old), "new": conv(&r.new)});
                if let (Some(p), Some(m)) = (&r.point, o.as_object_mut()) {
                    m.insert("point".into(), p.clone().into());
                }
                o
            })
            .collect();
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|r| {
                let conv = |v: Option<Num>| v.map(Num::to_json).unwrap_or(Value::Null);
                let mut o = json!({"path": r.path, "metric": r.metric, "old": conv(r.old), "new": conv(r.new), "change": conv(r.change())});
                if let (Some(p), Some(m)) = (&r.point, o.as_object_mut()) {
                    m.insert("point".into(), p.clone().into());
                }
                o
            })
            .collect();
        let unmatched: Vec<Value> = self.unmatched.iter().map(|u| json!({"path": u.path, "point": u.point, "overrides": u.overrides, "missing_in": u.missing_in})).collect();
        json!({"params": params, "metrics": metrics, "unmatched": unmatched})
    }

    /// The text of one output format. Empty tables are left out of table and Markdown output.
    pub fn render(&self, format: Format, precision: usize) -> Result<String> {
        let (ph, pr) = self.param_table();
        let (mh, mr) = self.metric_table(precision);
        let mut parts: Vec<String> = vec![];
        match format {
            Format::Json => {
                return Ok(format!(
                    "{}\n",
                    serde_json::to_string_pretty(&self.to_json())?
                ))
            }
            Format::Table | Format::Markdown => {
                let render = |h: &[&str], r: &[Vec<String>]| {
                    if format == Format::Table {
                        table::plain(h, r)
                    } else {
                        table::markdown(h, r)
                    }
                };
                if !pr.is_empty() {
                    parts.push(render(&ph, &pr));
                }
                if !mr.is_empty() {
                    parts.push(render(&mh, &mr));
                }
                let un = self.unmatched_lines();
                if !un.is_empty() {
                    let bullet = if format == Format::Markdown { "- " } else { "" };
                    parts.push(un.iter().map(|l| format!("{bullet}{l}\n")).collect());
                }
            }
            Format::Csv => {
                // One CSV: params and metrics as rows of one table told apart by Kind, and
                // unmatched sweep points as Kind `unmatched` (Name = the folder lacking them).
                let mut header = vec!["Path"];
                if self.sweeps {
                    header.push("Point");
                }
                header.extend(["Kind", "Name", "Old", "New", "Change"]);
                let mut rows = vec![];
                let cut = if self.sweeps { 2 } else { 1 };
                for r in &pr {
                    let mut row = r[..cut].to_vec();
                    row.push("param".into());
                    row.extend(r[cut..].iter().cloned());
                    row.push(String::new());
                    rows.push(row);
                }
                for r in &mr {
                    let mut row = r[..cut].to_vec();
                    row.push("metric".into());
                    row.extend(r[cut..].iter().cloned());
                    rows.push(row);
                }
                for u in &self.unmatched {
                    let mut row = vec![u.path.clone()];
                    if self.sweeps {
                        row.push(u.overrides.clone());
                    }
                    row.extend([
                        "unmatched".to_string(),
                        u.missing_in.clone(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]);
                    rows.push(row);
                }
                return table::csv(&header, &rows);
            }
        }
        Ok(parts.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fixture(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/diff")).join(rel)
    }

    /// The fixtures' folders under the names the golden files show.
    fn input(rel: &str) -> Input {
        Input {
            label: format!("tests/fixtures/diff/{rel}"),
            path: fixture(rel),
        }
    }

    /// Compares with a golden file; `RUNNER_BLESS=1` rewrites it (review the change with git diff).
    fn golden(name: &str, got: &str) {
        let path = fixture(name);
        if std::env::var("RUNNER_BLESS").is_ok_and(|v| v == "1") {
            fs::write(&path, got).unwrap();
        }
        let want = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(got, want, "output differs from {}", path.display());
    }

    fn runs() -> Diff {
        diff(&[input("run_a"), input("run_b")], false).unwrap()
    }

    #[test]
    fn golden_table() {
        let d = runs();
        // The fixture runs differ in the learning rate only.
        assert_eq!(d.params.len(), 1);
        assert_eq!(d.params[0].param, "train.learning_rate");
        golden("expected.table.txt", &d.render(Format::Table, 5).unwrap());
    }

    #[test]
    fn golden_markdown() {
        golden("expected.md", &runs().render(Format::Markdown, 5).unwrap());
    }

    #[test]
    fn golden_csv() {
        golden("expected.csv", &runs().render(Format::Csv, 5).unwrap());
    }

    #[test]
    fn golden_json_parses_and_holds_the_table_rows() {
        let d = runs();
        let text = d.render(Format::Json, 5).unwrap();
        golden("expected.json", &text);
        let v: Value = serde_json::from_str(&text).unwrap();
        // Every table row, re-formatted from the JSON values, is in the JSON in the same order.
        let (_, mrows) = d.metric_table(5);
        let jm = v["metrics"].as_array().unwrap();
        assert_eq!(jm.len(), mrows.len());
        for (j, row) in jm.iter().zip(&mrows) {
            let f = |x: &Value| num_text(Num::from_json(x), 5);
            assert_eq!(
                vec![
                    j["path"].as_str().unwrap().to_string(),
                    j["metric"].as_str().unwrap().to_string(),
                    f(&j["old"]),
                    f(&j["new"]),
                    f(&j["change"])
                ],
                *row
            );
        }
        let (_, prows) = d.param_table();
        let jp = v["params"].as_array().unwrap();
        assert_eq!(jp.len(), prows.len());
        for (j, row) in jp.iter().zip(&prows) {
            assert_eq!(j["param"].as_str().unwrap(), row[1]);
            assert_eq!(j["old"].as_f64().unwrap().to_string(), row[2]);
            assert_eq!(j["new"].as_f64().unwrap().to_string(), row[3]);
        }
    }

    #[test]
    fn changed_rows_only_unless_all_and_missing_prints_dash() {
        let d = runs();
        assert!(d.metrics.iter().all(|r| r.old != r.new));
        // run_b has no ground_truth_seed_tau (null): shown as "-" with no change.
        let r = d
            .metrics
            .iter()
            .find(|r| r.metric == "final_eval.ground_truth_seed_tau")
            .unwrap();
        assert_eq!(
            (
                num_text(r.old, 5),
                num_text(r.new, 5),
                num_text(r.change(), 5)
            ),
            ("0.61".into(), "-".into(), "-".into())
        );
        // Unchanged metrics (num_archs) only with --all; every key of both sides then has a row.
        assert!(!d.metrics.iter().any(|r| r.metric == "final_eval.num_archs"));
        let all = diff(&[input("run_a"), input("run_b")], true).unwrap();
        let r = all
            .metrics
            .iter()
            .find(|r| r.metric == "final_eval.num_archs")
            .unwrap();
        assert_eq!(
            (r.old, r.new, r.change()),
            (Some(Num::Int(20)), Some(Num::Int(20)), Some(Num::Int(0)))
        );
        assert_eq!(all.metrics.len(), 16);
        // Ignored keys never show up, even with --all.
        assert!(!all
            .params
            .iter()
            .any(|p| IGNORED_PARAMS.contains(&p.param.as_str())));
        // Against itself nothing differs.
        let same = diff(&[input("run_a"), input("run_a")], false).unwrap();
        assert!(same.params.is_empty() && same.metrics.is_empty());
        assert_eq!(same.render(Format::Table, 5).unwrap(), "");
    }

    #[test]
    fn precision_changes_significant_digits() {
        let d = runs();
        let r = d
            .metrics
            .iter()
            .find(|r| r.metric == "final_eval.kendall_tau")
            .unwrap();
        assert_eq!(num_text(r.old, 5), "0.51579");
        assert_eq!(num_text(r.old, 2), "0.52");
        let t = d.render(Format::Table, 2).unwrap();
        assert!(t.contains("0.52") && !t.contains("0.51579"), "{t}");
    }

    #[test]
    fn many_runs_compare_against_the_first() {
        let d = diff(&[input("run_a"), input("run_b"), input("run_a")], false).unwrap();
        let paths: BTreeSet<&str> = d.metrics.iter().map(|r| r.path.as_str()).collect();
        // The third folder equals the first, so only run_b has rows.
        assert_eq!(paths, BTreeSet::from(["tests/fixtures/diff/run_b"]));
        let d = diff(&[input("run_b"), input("run_a"), input("run_a")], false).unwrap();
        let paths: BTreeSet<&str> = d.metrics.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths.len(), 1);
        assert_eq!(d.metrics.len(), 2 * runs().metrics.len());
    }

    #[test]
    fn sweeps_match_points_by_overrides() {
        let d = diff(&[input("sweep_a"), input("sweep_b")], false).unwrap();
        assert!(d.sweeps);
        golden(
            "expected.sweep.table.txt",
            &d.render(Format::Table, 5).unwrap(),
        );
        // sweep_a's points: seed 0 and 1 at lr 0.1; sweep_b: the same two (other order, other
        // ids) plus seed 2. The seed-0 runs are identical; the seed-1 runs differ in tau.
        let points: BTreeSet<&str> = d
            .metrics
            .iter()
            .filter_map(|r| r.point.as_deref())
            .collect();
        assert_eq!(
            points,
            BTreeSet::from(["experiment.seed=1 train.learning_rate=0.1"])
        );
        assert_eq!(d.unmatched.len(), 1);
        assert_eq!(
            (d.unmatched[0].path.as_str(), d.unmatched[0].point.as_str()),
            ("tests/fixtures/diff/sweep_b", "p2")
        );
        let v: Value = serde_json::from_str(&d.render(Format::Json, 5).unwrap()).unwrap();
        assert_eq!(
            v["unmatched"][0]["overrides"],
            "experiment.seed=2 train.learning_rate=0.1"
        );
        assert_eq!(
            v["metrics"][0]["point"],
            "experiment.seed=1 train.learning_rate=0.1"
        );
        let csv = d.render(Format::Csv, 5).unwrap();
        assert!(
            csv.starts_with("Path,Point,Kind,Name,Old,New,Change\n"),
            "{csv}"
        );
        assert!(csv.contains("tests/fixtures/diff/sweep_b,experiment.seed=2 train.learning_rate=0.1,unmatched,tests/fixtures/diff/sweep_a,,,\n"), "{csv}");
    }

    #[test]
    fn bad_folders_are_named() {
        let t = tempfile::tempdir().unwrap();
        let err = diff(&[input("run_a"), Input::new(t.path())], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&t.path().display().to_string()) && err.contains("neither a run folder"),
            "{err}"
        );
        let err = diff(&[input("run_a"), input("sweep_a")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot compare tests/fixtures/diff/run_a (a run) with tests/fixtures/diff/sweep_a (a sweep)"), "{err}");
        assert!(diff(&[input("run_a")], false).is_err());
    }
}
