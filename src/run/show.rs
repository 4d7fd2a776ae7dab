//! `runner show DIR`: a run folder's summary table (its evaluations over epochs), or a sweep
//! folder's table of points (overrides, status, key metrics); sortable by any metric; as text or
//! JSON.

use super::folder::{self, Folder, Num, RunView};
use super::records::{EvalRecord, Summary};
use super::table;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

#[derive(Clone, Debug, Default)]
pub struct ShowOptions {
    /// A metric name: an evaluation field for a run (`kendall_tau`, `epoch`, ...), a summary
    /// metric for a sweep (`kendall_tau` or `final_eval.kendall_tau`, `final_train_loss`, ...).
    pub sort: Option<String>,
    pub order: SortOrder,
    pub json: bool,
}

/// The metrics a sweep table always shows, by their `diff` names.
const SWEEP_COLUMNS: [&str; 5] = [
    "final_eval.kendall_tau",
    "final_eval.spearman",
    "final_eval.mean_accuracy",
    "final_train_loss",
    "final_train_accuracy",
];

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into())
}

/// The table printed at the end of a run and by `runner show` for a finished run.
pub fn summary_text(s: &Summary, folder: &Path) -> String {
    let mut t = String::new();
    t.push_str(&format!("run        {}\n", folder.display()));
    t.push_str(&format!(
        "space      {}   epochs {}   steps {}   unsampled params: {}\n",
        s.space, s.epochs, s.steps, s.unsampled
    ));
    if let Some(gt) = &s.ground_truth {
        t.push_str(&format!("truth      {gt}\n"));
    }
    if let Some(score) = &s.score {
        let note = if score == "perplexity" {
            " (lower is better; correlated with the benchmark's perplexity)"
        } else {
            ""
        };
        t.push_str(&format!("score      {score}{note}\n"));
    }
    if let Some(why) = &s.correlations_unavailable {
        t.push_str(&format!("correlations unavailable: {why}\n"));
    }
    if let Some(tricks) = s.tricks.as_object().filter(|o| !o.is_empty()) {
        let names: Vec<&str> = tricks.keys().map(String::as_str).collect();
        let size = s
            .train_archset_size
            .map(|n| format!("   training archset {n}"))
            .unwrap_or_default();
        t.push_str(&format!("tricks     {}{size}\n", names.join(", ")));
    }
    t.push_str(&format!(
        "train      loss {}   accuracy {}\n",
        fmt_opt(s.final_train_loss),
        fmt_opt(s.final_train_accuracy)
    ));
    t.push_str(&history_text(&s.history));
    if let Some(f) = s.tau_fraction_of_noise_ceiling {
        t.push_str(&format!(
            "\nkendall tau = {:.1}% of the ground truth's seed-to-seed tau\n",
            f * 100.0
        ));
    }
    t
}

fn history_text(history: &[EvalRecord]) -> String {
    if history.iter().any(|e| e.mean_perplexity.is_some()) {
        // Perplexity runs (DARTS-PTB): the mean perplexity over the architectures (values of
        // 1e6 and above left out, as the study) instead of the accuracy.
        let mut t = String::from("\n epoch  archs  mean ppl  kendall  spearman  pearson  top-k\n");
        for e in history {
            t.push_str(&format!(
                "{:>6} {:>6} {:>9} {:>8} {:>9} {:>8} {:>6}\n",
                e.epoch,
                e.num_archs,
                e.mean_perplexity
                    .map(|p| format!("{p:.2}"))
                    .unwrap_or_else(|| "n/a".into()),
                fmt_opt(e.kendall_tau),
                fmt_opt(e.spearman),
                fmt_opt(e.pearson),
                fmt_opt(e.top_k_overlap)
            ));
        }
        return t;
    }
    let mut t = String::from("\n epoch  archs  mean acc  kendall  spearman  pearson  top-k\n");
    for e in history {
        t.push_str(&format!(
            "{:>6} {:>6} {:>9.4} {:>8} {:>9} {:>8} {:>6}\n",
            e.epoch,
            e.num_archs,
            e.mean_accuracy,
            fmt_opt(e.kendall_tau),
            fmt_opt(e.spearman),
            fmt_opt(e.pearson),
            fmt_opt(e.top_k_overlap)
        ));
    }
    t
}

/// Compares two optional values: missing ones last in either order.
fn cmp_missing_last(a: Option<f64>, b: Option<f64>, order: SortOrder) -> Ordering {
    match (a, b) {
        (Some(x), Some(y)) => {
            let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            if order == SortOrder::Desc {
                o.reverse()
            } else {
                o
            }
        }
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn unknown_metric(name: &str, known: &[String]) -> anyhow::Error {
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal));
    let hint = match best {
        Some((score, k)) if score > 0.8 => format!(" (did you mean '{k}'?)"),
        _ => String::new(),
    };
    anyhow::anyhow!("unknown metric '{name}'{hint}; known: {}", known.join(", "))
}

fn eval_field(e: &EvalRecord, key: &str) -> Option<f64> {
    serde_json::to_value(e).ok()?.get(key)?.as_f64()
}

fn show_run(dir: &Path, label: &str, opts: &ShowOptions) -> Result<String> {
    let view: RunView = folder::read_run(dir)?;
    let mut history = view.history.clone();
    if let Some(metric) = &opts.sort {
        let key = metric.strip_prefix("final_eval.").unwrap_or(metric);
        let known: Vec<String> = match serde_json::to_value(EvalRecord {
            epoch: 0,
            num_archs: 0,
            num_with_ground_truth: 0,
            mean_accuracy: 0.0,
            min_accuracy: 0.0,
            max_accuracy: 0.0,
            mean_loss: 0.0,
            kendall_tau: None,
            spearman: None,
            pearson: None,
            top_k_overlap: None,
            top_k: 0,
            ground_truth_seed_tau: None,
            // Optional fields are listed only when set: set them so that they are known.
            mean_top5_accuracy: Some(0.0),
            mean_perplexity: Some(0.0),
            min_perplexity: Some(0.0),
            max_perplexity: Some(0.0),
        })? {
            Value::Object(m) => m.keys().cloned().collect(),
            _ => vec![],
        };
        if !known.iter().any(|k| k == key) {
            return Err(unknown_metric(metric, &known));
        }
        history
            .sort_by(|a, b| cmp_missing_last(eval_field(a, key), eval_field(b, key), opts.order));
    }
    let shown = Path::new(label);
    if opts.json {
        let mut v = match &view.summary_json {
            Some(s) => s.clone(),
            None => {
                let last = view.train_epochs.last();
                json!({
                    "experiment": folder::read_config(dir)?.and_then(|c| c.get("experiment")?.get("name")?.as_str().map(String::from)),
                    "epochs_done": last.map(|p| p.epoch),
                    "steps": last.map(|p| p.step),
                    "final_train_loss": last.map(|p| p.loss),
                    "final_train_accuracy": last.map(|p| p.accuracy),
                })
            }
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("run".into(), label.into());
            o.insert("finished".into(), view.summary.is_some().into());
            o.insert("history".into(), serde_json::to_value(&history)?);
        }
        return Ok(format!("{}\n", serde_json::to_string_pretty(&v)?));
    }
    Ok(match &view.summary {
        Some(s) => {
            let mut s = s.clone();
            s.history = history;
            summary_text(&s, shown)
        }
        None => {
            let mut t = format!(
                "run        {}   (not finished: no summary.json yet)\n",
                shown.display()
            );
            if let Some(p) = view.train_epochs.last() {
                t.push_str(&format!(
                    "train      epoch {}   step {}   loss {:.4}   accuracy {:.4}\n",
                    p.epoch, p.step, p.loss, p.accuracy
                ));
            }
            t.push_str(&history_text(&history));
            t
        }
    })
}

struct PointRow {
    point: folder::SweepPoint,
    metrics: std::collections::BTreeMap<String, Option<Num>>,
}

fn show_sweep(dir: &Path, label: &str, opts: &ShowOptions) -> Result<String> {
    let points = folder::read_sweep(dir)?;
    let mut rows = vec![];
    for p in points {
        let run = p.run.as_ref().map(|r| dir.join(r)).filter(|r| r.is_dir());
        let metrics = match &run {
            Some(r) => folder::run_metrics(folder::read_summary_json(r)?.as_ref()),
            None => Default::default(),
        };
        rows.push(PointRow { point: p, metrics });
    }
    let mut columns: Vec<String> = SWEEP_COLUMNS.iter().map(|s| s.to_string()).collect();
    if let Some(metric) = &opts.sort {
        let mut known: Vec<String> = SWEEP_COLUMNS.iter().map(|s| s.to_string()).collect();
        for r in &rows {
            for k in r.metrics.keys() {
                if !known.contains(k) {
                    known.push(k.clone());
                }
            }
        }
        let full = [metric.clone(), format!("final_eval.{metric}")]
            .into_iter()
            .find(|m| known.contains(m));
        let Some(full) = full else {
            return Err(unknown_metric(metric, &known));
        };
        if !columns.contains(&full) {
            columns.push(full.clone());
        }
        let get = |r: &PointRow| r.metrics.get(&full).copied().flatten().map(Num::as_f64);
        rows.sort_by(|a, b| cmp_missing_last(get(a), get(b), opts.order));
    }
    let mut keys: Vec<String> = vec![];
    for r in &rows {
        for k in r.point.overrides.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.sort();
    if opts.json {
        let pts: Vec<Value> = rows
            .iter()
            .map(|r| {
                let metrics: Map<String, Value> = r.metrics.iter().map(|(k, v)| (k.clone(), v.map(Num::to_json).unwrap_or(Value::Null))).collect();
                json!({"point": r.point.point, "overrides": r.point.overrides, "status": r.point.status, "run": r.point.run, "metrics": metrics})
            })
            .collect();
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({"sweep": label, "points": pts}))?
        ));
    }
    let short = |c: &str| c.strip_prefix("final_eval.").unwrap_or(c).to_string();
    let mut header: Vec<String> = vec!["point".into()];
    header.extend(keys.iter().cloned());
    header.push("status".into());
    header.extend(columns.iter().map(|c| short(c)));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.point.point.clone()];
            for k in &keys {
                row.push(match r.point.overrides.get(k) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => "-".into(),
                });
            }
            row.push(r.point.status.clone());
            for c in &columns {
                row.push(match r.metrics.get(c).copied().flatten() {
                    Some(Num::Int(i)) => i.to_string(),
                    Some(Num::Float(x)) => format!("{x:.4}"),
                    None => "-".into(),
                });
            }
            row
        })
        .collect();
    let mut counts: Vec<(String, usize)> = vec![];
    for r in &rows {
        match counts.iter_mut().find(|(s, _)| *s == r.point.status) {
            Some(c) => c.1 += 1,
            None => counts.push((r.point.status.clone(), 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let header_refs: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    Ok(format!(
        "sweep      {label}   {} points: {}\n\n{}",
        rows.len(),
        counts.join(", "),
        table::plain(&header_refs, &body)
    ))
}

/// The text (or JSON) `runner show` prints for `dir`, named `label` (as given).
pub fn show(dir: &Path, label: &str, opts: &ShowOptions) -> Result<String> {
    match folder::classify(dir)? {
        Folder::Run(_) => show_run(dir, label, opts),
        Folder::Sweep(_) => show_sweep(dir, label, opts),
    }
}

/// Parses `asc` / `desc`.
pub fn parse_order(s: &str) -> Result<SortOrder> {
    match s {
        "asc" => Ok(SortOrder::Asc),
        "desc" => Ok(SortOrder::Desc),
        other => bail!("sort order must be 'asc' or 'desc', not '{other}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixtures(rel: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(rel)
    }

    #[test]
    fn run_table_and_sorting() {
        let dir = fixtures("report/run");
        let text = show(&dir, "r", &ShowOptions::default()).unwrap();
        assert!(
            text.starts_with("run        r\nspace      nb201   epochs 2   steps 8"),
            "{text}"
        );
        let epochs: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("epoch  archs"))
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(epochs, ["0", "1", "2"]);
        // Sorted by tau, descending: the order of the taus in summary.json.
        let s: Summary =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        let mut by_tau: Vec<(f64, usize)> = s
            .history
            .iter()
            .map(|e| (e.kendall_tau.unwrap(), e.epoch))
            .collect();
        by_tau.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        let opts = ShowOptions {
            sort: Some("kendall_tau".into()),
            order: SortOrder::Desc,
            json: true,
        };
        let v: Value = serde_json::from_str(&show(&dir, "r", &opts).unwrap()).unwrap();
        let got: Vec<u64> = v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["epoch"].as_u64().unwrap())
            .collect();
        assert_eq!(got, by_tau.iter().map(|p| p.1 as u64).collect::<Vec<_>>());
        assert_eq!(v["finished"], true);
        let err = show(
            &dir,
            "r",
            &ShowOptions {
                sort: Some("kendal_tau".into()),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("did you mean 'kendall_tau'"), "{err}");
    }

    #[test]
    fn sweep_table_sorted_by_metric() {
        let dir = fixtures("diff/sweep_b");
        let asc = show(
            &dir,
            "sweep_b",
            &ShowOptions {
                sort: Some("kendall_tau".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let want = "sweep      sweep_b   3 points: 3 done\n\n\
point  experiment.seed  train.learning_rate  status  kendall_tau  spearman  mean_accuracy  final_train_loss  final_train_accuracy\n\
p1     1                0.1                  done    0.4053       0.5000    0.3100         2.1000            0.2000\n\
p2     2                0.1                  done    0.4200       0.5800    0.2900         2.1000            0.2000\n\
p0     0                0.1                  done    0.4500       0.6000    0.3000         2.1000            0.2000\n";
        assert_eq!(asc, want);
        let desc = show(
            &dir,
            "sweep_b",
            &ShowOptions {
                sort: Some("final_eval.top_k".into()),
                order: SortOrder::Desc,
                json: false,
            },
        )
        .unwrap();
        assert!(desc.lines().nth(2).unwrap().ends_with("top_k"), "{desc}");
        let v: Value = serde_json::from_str(
            &show(
                &dir,
                "sweep_b",
                &ShowOptions {
                    sort: Some("spearman".into()),
                    order: SortOrder::Desc,
                    json: true,
                },
            )
            .unwrap(),
        )
        .unwrap();
        let order: Vec<&str> = v["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["point"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["p0", "p2", "p1"]);
        assert_eq!(v["points"][0]["metrics"]["final_eval.spearman"], 0.6);
        assert!(show(
            &dir,
            "s",
            &ShowOptions {
                sort: Some("nope".into()),
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn unfinished_points_and_runs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("sweep.toml"), "").unwrap();
        std::fs::write(
            t.path().join("sweep.jsonl"),
            "{\"point\": 0, \"overrides\": {\"a\": \"x\"}, \"status\": \"pending\"}\n",
        )
        .unwrap();
        let text = show(
            t.path(),
            "s",
            &ShowOptions {
                sort: Some("kendall_tau".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(text.contains("1 points: 1 pending"));
        assert!(
            text.lines()
                .last()
                .unwrap()
                .starts_with("0      x  pending  -"),
            "{text}"
        );

        let run = t.path().join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::copy(fixtures("report/run/config.toml"), run.join("config.toml")).unwrap();
        let metrics = std::fs::read_to_string(fixtures("report/run/metrics.jsonl")).unwrap();
        let part: String = metrics.lines().take(7).map(|l| format!("{l}\n")).collect();
        std::fs::write(run.join("metrics.jsonl"), part).unwrap();
        let text = show(&run, "run", &ShowOptions::default()).unwrap();
        assert!(
            text.contains("not finished") && text.contains("train      epoch 1   step 4"),
            "{text}"
        );
        let v: Value = serde_json::from_str(
            &show(
                &run,
                "run",
                &ShowOptions {
                    json: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                v["finished"].as_bool(),
                v["experiment"].as_str(),
                v["history"].as_array().map(|h| h.len())
            ),
            (Some(false), Some("tiny"), Some(2))
        );
    }
}
