//! Reading finished or running results folders: a run folder, or a sweep folder that indexes
//! run folders. Used by `diff`, `show` and the report; writes nothing.
//!
//! A **run folder** holds `config.toml` (written when the run starts) and, once finished,
//! `summary.json`; `metrics.jsonl` and `eval/epoch_NNNN.csv` grow while it runs.
//!
//! A **sweep folder** holds `sweep.toml` and `sweep.jsonl`, one JSON object per line and point:
//! `{"point": "<id>", "overrides": {"<dotted key>": <value>, ...}, "run": "<run folder, relative
//! to the sweep folder>", "status": "<text>", ...}` (`point` may be a string or an integer; `run`
//! may be null or absent before the point has a folder; other fields are ignored). A point may
//! appear on several lines (a status update appended): the last line wins, the first fixes its
//! position.

use super::records::{EvalRecord, Summary};
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub enum Folder {
    Run(PathBuf),
    Sweep(PathBuf),
}

/// Tells a run folder from a sweep folder; anything else is an error naming `path`.
pub fn classify(path: &Path) -> Result<Folder> {
    if !path.is_dir() {
        bail!("{} is not a folder", path.display());
    }
    if path.join("sweep.jsonl").is_file() || path.join("sweep.toml").is_file() {
        return Ok(Folder::Sweep(path.to_path_buf()));
    }
    if path.join("config.toml").is_file() || path.join("summary.json").is_file() {
        return Ok(Folder::Run(path.to_path_buf()));
    }
    bail!("{} is neither a run folder (config.toml, summary.json) nor a sweep folder (sweep.toml, sweep.jsonl)", path.display())
}

/// One point of a sweep index.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    pub point: String,
    pub overrides: Map<String, Value>,
    /// Relative to the sweep folder.
    pub run: Option<String>,
    pub status: String,
}

impl SweepPoint {
    /// `key=value` pairs in key order, values as JSON (strings unquoted): how points are named
    /// in tables.
    pub fn label(&self) -> String {
        let mut keys: Vec<&String> = self.overrides.keys().collect();
        keys.sort();
        keys.iter()
            .map(|k| {
                let v = &self.overrides[k.as_str()];
                match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Equal for points whose overrides are equal, whatever their order.
    pub fn match_key(&self) -> String {
        let sorted: BTreeMap<&String, &Value> = self.overrides.iter().collect();
        serde_json::to_string(&sorted).unwrap_or_default()
    }
}

/// The points of `<sweep>/sweep.jsonl`, in first-appearance order.
pub fn read_sweep(dir: &Path) -> Result<Vec<SweepPoint>> {
    let path = dir.join("sweep.jsonl");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("cannot read sweep index {}", path.display()))?;
    let mut points: Vec<SweepPoint> = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let v: Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let o = v
            .as_object()
            .with_context(|| format!("{}: not a JSON object", at()))?;
        let point = match o.get("point") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => bail!("{}: `point` (a string or integer) is missing", at()),
        };
        let overrides = match o.get("overrides") {
            Some(Value::Object(m)) => m.clone(),
            _ => bail!(
                "{}: `overrides` (an object of dotted key -> value) is missing",
                at()
            ),
        };
        let run = match o.get("run") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(_) => bail!("{}: `run` must be a path string", at()),
        };
        // Run folders sit beside the sweep folder (`../<name>-<hash>`) or anywhere
        // (absolute); callers join the path onto the sweep folder, which handles both.
        let status = o
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown")
            .to_string();
        let p = SweepPoint {
            point,
            overrides,
            run,
            status,
        };
        match points.iter_mut().find(|q| q.point == p.point) {
            Some(q) => *q = p,
            None => points.push(p),
        }
    }
    Ok(points)
}

/// A flat view of a run folder, read from `summary.json` where the run finished and from
/// `metrics.jsonl` (+ `config.toml`) where it has not.
#[derive(Clone, Debug, Default)]
pub struct RunView {
    pub summary: Option<Summary>,
    /// The raw `summary.json` (its fields flattened become metrics).
    pub summary_json: Option<Value>,
    pub config: Option<toml::Value>,
    /// Evaluations in order (from the summary, else from `metrics.jsonl`).
    pub history: Vec<EvalRecord>,
    pub train_epochs: Vec<TrainPoint>,
    pub train_steps: Vec<TrainPoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainPoint {
    pub epoch: usize,
    pub step: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub lr: Option<f64>,
}

pub fn read_config(dir: &Path) -> Result<Option<toml::Value>> {
    let path = dir.join("config.toml");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: toml::Value =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    Ok(Some(v))
}

pub fn read_summary_json(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("summary.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Some(v))
}

fn num(o: &Map<String, Value>, key: &str) -> Option<f64> {
    o.get(key).and_then(|v| v.as_f64())
}

/// Reads `metrics.jsonl` of a run: evaluations and training curves. A line that is not JSON is
/// an error naming it, except a last partial line (a run killed mid-write), which is skipped.
pub fn read_metrics(dir: &Path) -> Result<(Vec<EvalRecord>, Vec<TrainPoint>, Vec<TrainPoint>)> {
    let path = dir.join("metrics.jsonl");
    let (mut evals, mut epochs, mut steps) = (vec![], vec![], vec![]);
    if !path.is_file() {
        return Ok((evals, epochs, steps));
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let n = text.lines().count();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == n && !text.ends_with('\n') => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))
            }
        };
        let Some(o) = v.as_object() else {
            bail!("{} line {}: not a JSON object", path.display(), i + 1)
        };
        match o.get("kind").and_then(|k| k.as_str()) {
            Some("eval") => {
                let rec: EvalRecord = serde_json::from_value(v.clone()).with_context(|| {
                    format!(
                        "{} line {}: not an evaluation record",
                        path.display(),
                        i + 1
                    )
                })?;
                evals.push(rec);
            }
            Some(kind @ ("train_step" | "train_epoch")) => {
                let point = (|| {
                    Some(TrainPoint {
                        epoch: o.get("epoch")?.as_u64()? as usize,
                        step: o.get("step")?.as_u64()?,
                        loss: num(o, "loss")?,
                        accuracy: num(o, "accuracy")?,
                        lr: num(o, "lr"),
                    })
                })()
                .with_context(|| {
                    format!(
                        "{} line {}: a {kind} line needs epoch, step, loss and accuracy",
                        path.display(),
                        i + 1
                    )
                })?;
                if kind == "train_step" {
                    steps.push(point);
                } else {
                    epochs.push(point);
                }
            }
            _ => {}
        }
    }
    Ok((evals, epochs, steps))
}

/// Everything `show` and the report need of a run folder.
pub fn read_run(dir: &Path) -> Result<RunView> {
    let summary_json = read_summary_json(dir)?;
    let summary = match &summary_json {
        Some(v) => Some(
            serde_json::from_value::<Summary>(v.clone()).with_context(|| {
                format!(
                    "{} does not hold a run summary",
                    dir.join("summary.json").display()
                )
            })?,
        ),
        None => None,
    };
    let config = read_config(dir)?;
    let (evals, train_epochs, train_steps) = read_metrics(dir)?;
    let history = match &summary {
        Some(s) => s.history.clone(),
        None => evals,
    };
    Ok(RunView {
        summary,
        summary_json,
        config,
        history,
        train_epochs,
        train_steps,
    })
}

/// A metric value: integers stay integers (counts, epochs), so they print without a decimal
/// point and their differences are exact.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn from_json(v: &Value) -> Option<Num> {
        if let Some(i) = v.as_i64() {
            Some(Num::Int(i))
        } else {
            v.as_f64().map(Num::Float)
        }
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(x) => x,
        }
    }

    pub fn minus(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a
                .checked_sub(b)
                .map(Num::Int)
                .unwrap_or(Num::Float(a as f64 - b as f64)),
            (a, b) => Num::Float(a.as_f64() - b.as_f64()),
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            Num::Int(i) => Value::from(i),
            // JSON has no NaN or infinity: such a value is written as null.
            Num::Float(x) => serde_json::Number::from_f64(x)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        }
    }
}

/// The metrics of a run that `diff` and `show` compare: the numeric fields of `final_eval`
/// (as `final_eval.<field>`), `final_train_loss`, `final_train_accuracy` and
/// `tau_fraction_of_noise_ceiling`. A null value is kept as a missing metric (`None`). Empty for a
/// run without `summary.json`.
pub fn run_metrics(summary_json: Option<&Value>) -> BTreeMap<String, Option<Num>> {
    let mut out = BTreeMap::new();
    let Some(o) = summary_json.and_then(|v| v.as_object()) else {
        return out;
    };
    fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Option<Num>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    flatten(&format!("{prefix}.{k}"), x, out);
                }
            }
            Value::Null => {
                out.insert(prefix.to_string(), None);
            }
            Value::Number(_) => {
                out.insert(prefix.to_string(), Num::from_json(v));
            }
            _ => {}
        }
    }
    if let Some(fe @ Value::Object(_)) = o.get("final_eval") {
        flatten("final_eval", fe, &mut out);
    }
    for k in [
        "final_train_loss",
        "final_train_accuracy",
        "tau_fraction_of_noise_ceiling",
    ] {
        if let Some(v) = o.get(k) {
            flatten(k, v, &mut out);
        }
    }
    out
}

/// `config.toml` flattened to dotted keys (tables recurse; arrays are one value).
pub fn flatten_toml(v: &toml::Value) -> BTreeMap<String, toml::Value> {
    fn go(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, x) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    go(&key, x, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    go("", v, &mut out);
    out
}

/// How a config value prints in a table: strings bare, everything else as TOML writes it.
pub fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The path of `eval/epoch_NNNN.csv` of an evaluation.
pub fn eval_csv(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("eval/epoch_{epoch:04}.csv"))
}

/// One scored architecture of an evaluation CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoredArch {
    pub arch: String,
    pub supernet_accuracy: f64,
    pub ground_truth: Option<f64>,
    /// The `supernet_perplexity` column (DARTS-PTB, whose score and ground truth are
    /// perplexities).
    pub supernet_perplexity: Option<f64>,
}

/// Reads an `eval/epoch_NNNN.csv`; errors name the file and the row.
pub fn read_eval_csv(path: &Path) -> Result<Vec<ScoredArch>> {
    let mut r = ::csv::Reader::from_path(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let headers = r
        .headers()
        .with_context(|| format!("{}: no header", path.display()))?
        .clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let (c_arch, c_acc, c_gt) = (
        col("arch_string")?,
        col("supernet_accuracy")?,
        col("ground_truth")?,
    );
    let c_ppl = headers.iter().position(|h| h == "supernet_perplexity");
    let mut out = vec![];
    for (i, rec) in r.records().enumerate() {
        let row = i + 2;
        let rec = rec.with_context(|| format!("{} line {row}", path.display()))?;
        let field = |c: usize| {
            rec.get(c)
                .with_context(|| format!("{} line {row}: too few fields", path.display()))
        };
        let acc: f64 = field(c_acc)?.trim().parse().with_context(|| {
            format!(
                "{} line {row}: supernet_accuracy is not a number",
                path.display()
            )
        })?;
        let gt_text = field(c_gt)?.trim();
        let ground_truth = if gt_text.is_empty() {
            None
        } else {
            Some(gt_text.parse::<f64>().with_context(|| {
                format!(
                    "{} line {row}: ground_truth is not a number",
                    path.display()
                )
            })?)
        };
        let supernet_perplexity = match c_ppl {
            Some(c) => Some(field(c)?.trim().parse::<f64>().with_context(|| {
                format!(
                    "{} line {row}: supernet_perplexity is not a number",
                    path.display()
                )
            })?),
            None => None,
        };
        out.push(ScoredArch {
            arch: field(c_arch)?.to_string(),
            supernet_accuracy: acc,
            ground_truth,
            supernet_perplexity,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_index_last_line_wins_and_bad_lines_are_named() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("sweep.toml"), "").unwrap();
        fs::write(
            t.path().join("sweep.jsonl"),
            concat!(
                "{\"point\": 0, \"overrides\": {\"train.learning_rate\": 0.1}, \"run\": \"runs/a\", \"status\": \"running\"}\n",
                "{\"point\": \"1\", \"overrides\": {\"train.learning_rate\": 0.2}, \"status\": \"pending\"}\n",
                "\n",
                "{\"point\": 0, \"overrides\": {\"train.learning_rate\": 0.1}, \"run\": \"runs/a\", \"status\": \"done\"}\n",
            ),
        )
        .unwrap();
        assert!(matches!(classify(t.path()).unwrap(), Folder::Sweep(_)));
        let pts = read_sweep(t.path()).unwrap();
        assert_eq!(pts.len(), 2);
        assert_eq!(
            (
                pts[0].point.as_str(),
                pts[0].status.as_str(),
                pts[0].run.as_deref()
            ),
            ("0", "done", Some("runs/a"))
        );
        assert_eq!((pts[1].point.as_str(), pts[1].run.as_deref()), ("1", None));
        assert_eq!(pts[1].label(), "train.learning_rate=0.2");

        fs::write(
            t.path().join("sweep.jsonl"),
            "{\"point\": 0, \"overrides\": {}}\n{\"point\": 1}\n",
        )
        .unwrap();
        let err = format!("{:#}", read_sweep(t.path()).unwrap_err());
        assert!(
            err.contains("sweep.jsonl line 2") && err.contains("overrides"),
            "{err}"
        );
        // A run beside the sweep folder is accepted.
        fs::write(
            t.path().join("sweep.jsonl"),
            "{\"point\": 0, \"overrides\": {}, \"run\": \"../elsewhere\"}\n",
        )
        .unwrap();
        assert!(read_sweep(t.path()).is_ok());
    }

    #[test]
    fn neither_run_nor_sweep_is_named() {
        let t = tempfile::tempdir().unwrap();
        let err = classify(t.path()).err().unwrap().to_string();
        assert!(
            err.contains(&t.path().display().to_string()) && err.contains("neither a run folder"),
            "{err}"
        );
        let missing = t.path().join("nope");
        assert!(classify(&missing)
            .err()
            .unwrap()
            .to_string()
            .contains("is not a folder"));
    }

    #[test]
    fn match_key_ignores_order() {
        let a = SweepPoint {
            point: "0".into(),
            overrides: serde_json::from_str(r#"{"a": 1, "b": "x"}"#).unwrap(),
            run: None,
            status: String::new(),
        };
        let b = SweepPoint {
            point: "7".into(),
            overrides: serde_json::from_str(r#"{"b": "x", "a": 1}"#).unwrap(),
            run: None,
            status: String::new(),
        };
        assert_eq!(a.match_key(), b.match_key());
        assert_eq!(a.label(), "a=1 b=x");
    }

    #[test]
    fn metrics_flatten_keeps_nulls_and_ints() {
        let v: Value = serde_json::from_str(r#"{"final_eval": {"epoch": 2, "kendall_tau": null, "mean_accuracy": 0.5}, "final_train_loss": 1.25, "tau_fraction_of_noise_ceiling": null, "experiment": "x", "history": []}"#).unwrap();
        let m = run_metrics(Some(&v));
        let keys: Vec<&str> = m.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            keys,
            [
                "final_eval.epoch",
                "final_eval.kendall_tau",
                "final_eval.mean_accuracy",
                "final_train_loss",
                "tau_fraction_of_noise_ceiling"
            ]
        );
        assert_eq!(m["final_eval.epoch"], Some(Num::Int(2)));
        assert_eq!(m["final_eval.kendall_tau"], None);
        assert_eq!(m["final_train_loss"], Some(Num::Float(1.25)));
    }
}
