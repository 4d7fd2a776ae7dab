//! `report.html` of a run folder: one self-contained page (inline CSS and SVG, no scripts, nothing
//! fetched) with the final evaluation's supernet-vs-ground-truth scatter, the correlations over
//! epochs and the training curves. Built only from the folder's files (`metrics.jsonl`,
//! `eval/epoch_NNNN.csv`, `config.toml`, and `summary.json` where it exists), so the pipeline can
//! write it before `summary.json` and `runner report DIR` can rewrite it at any time.

use super::folder::{self, RunView, TrainPoint};
use super::plot::{self, Series};
use super::records::{EvalRecord, Summary};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// More points than this per training curve are averaged in consecutive bins (a 200-epoch run
/// has ~40k steps; the page stays small and the curve reads the same).
const MAX_CURVE_POINTS: usize = 1500;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fmt4(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.4}"))
        .unwrap_or_else(|| "n/a".into())
}

/// Bin-averages `points` down to at most `max` points.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let bin = points.len().div_ceil(max);
    points
        .chunks(bin)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

fn cfg_str(v: &RunView, key: &str) -> Option<String> {
    let mut cur = v.config.as_ref()?;
    for part in key.split('.') {
        cur = cur.get(part)?;
    }
    Some(folder::toml_text(cur))
}

/// The scatter of the last evaluation: ground truth on x, supernet accuracy on y.
fn scatter_figure(dir: &Path, last: Option<&EvalRecord>) -> Result<String> {
    let Some(rec) = last else {
        return Ok("<p class=\"none\">No evaluation yet.</p>".into());
    };
    let csv = folder::eval_csv(dir, rec.epoch);
    if !csv.is_file() {
        return Ok(format!(
            "<p class=\"none\">{} is missing.</p>",
            escape(&csv.display().to_string())
        ));
    }
    let rows = folder::read_eval_csv(&csv)?;
    // Perplexity runs (DARTS-PTB) plot supernet perplexity against the benchmark's.
    let ppl = rows.iter().any(|r| r.supernet_perplexity.is_some());
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let y = if ppl {
                r.supernet_perplexity?
            } else {
                r.supernet_accuracy
            };
            Some((r.ground_truth?, y))
        })
        .collect();
    if points.is_empty() {
        return Ok(format!("<p class=\"none\">Epoch {}: none of the {} architectures has a ground truth value.</p>", rec.epoch, rows.len()));
    }
    let title = format!(
        "Supernet vs ground truth, epoch {}: Kendall tau = {}",
        rec.epoch,
        fmt4(rec.kendall_tau)
    );
    let (x_desc, y_desc) = if ppl {
        (
            "ground truth perplexity (benchmark)",
            "supernet perplexity (inherited weights)",
        )
    } else {
        (
            "ground truth accuracy (benchmark)",
            "supernet accuracy (inherited weights)",
        )
    };
    let svg = plot::scatter(&title, x_desc, y_desc, &points, (580, 440))?;
    Ok(format!("{svg}\n<figcaption>{} architectures with ground truth of {} evaluated; Spearman rho = {}, Pearson r = {}.</figcaption>", points.len(), rows.len(), fmt4(rec.spearman), fmt4(rec.pearson)))
}

fn correlation_figure(history: &[EvalRecord]) -> Result<String> {
    if history.is_empty() {
        return Ok("<p class=\"none\">No evaluation yet.</p>".into());
    }
    let pts = |f: fn(&EvalRecord) -> Option<f64>| {
        history
            .iter()
            .map(|e| (e.epoch as f64, f(e).unwrap_or(f64::NAN)))
            .collect::<Vec<_>>()
    };
    let mut series = vec![
        Series {
            name: "Kendall tau".into(),
            points: pts(|e| e.kendall_tau),
            color: plot::BLUE_,
            markers: true,
            width: 2,
            faint: false,
        },
        Series {
            name: "Spearman rho".into(),
            points: pts(|e| e.spearman),
            color: plot::ORANGE,
            markers: true,
            width: 2,
            faint: false,
        },
    ];
    if history.iter().any(|e| e.ground_truth_seed_tau.is_some()) {
        series.push(Series {
            name: "ground truth seed-to-seed tau".into(),
            points: pts(|e| e.ground_truth_seed_tau),
            color: plot::GREY,
            markers: true,
            width: 1,
            faint: false,
        });
    }
    plot::lines(
        "Ranking correlation over epochs",
        "epoch",
        "correlation with ground truth",
        &series,
        Some((-1.0, 1.0)),
        true,
        (580, 440),
    )
}

fn train_figure(
    title: &str,
    y_desc: &str,
    steps: &[TrainPoint],
    epochs: &[TrainPoint],
    get: fn(&TrainPoint) -> f64,
    color: plotters::style::RGBColor,
) -> Result<String> {
    if steps.is_empty() && epochs.is_empty() {
        return Ok("<p class=\"none\">No training step yet.</p>".into());
    }
    let per_step: Vec<(f64, f64)> = steps.iter().map(|p| (p.step as f64, get(p))).collect();
    let series = vec![
        Series {
            name: "per step".into(),
            points: thin(&per_step, MAX_CURVE_POINTS),
            color,
            markers: false,
            width: 1,
            faint: true,
        },
        Series {
            name: "epoch mean".into(),
            points: epochs.iter().map(|p| (p.step as f64, get(p))).collect(),
            color,
            markers: true,
            width: 2,
            faint: false,
        },
    ];
    plot::lines(
        title,
        "optimizer step",
        y_desc,
        &series,
        None,
        true,
        (580, 360),
    )
}

fn eval_table(history: &[EvalRecord]) -> String {
    if history.iter().any(|e| e.mean_perplexity.is_some()) {
        return eval_table_ppl(history);
    }
    let mut t = String::from("<table>\n<tr><th>epoch</th><th>archs</th><th>with truth</th><th>mean acc</th><th>min acc</th><th>max acc</th><th>Kendall tau</th><th>Spearman</th><th>Pearson</th><th>top-k</th><th>truth seed tau</th></tr>\n");
    for e in history {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{}</td><td>{} (k={})</td><td>{}</td></tr>",
            e.epoch,
            e.num_archs,
            e.num_with_ground_truth,
            e.mean_accuracy,
            e.min_accuracy,
            e.max_accuracy,
            fmt4(e.kendall_tau),
            fmt4(e.spearman),
            fmt4(e.pearson),
            fmt4(e.top_k_overlap),
            e.top_k,
            fmt4(e.ground_truth_seed_tau)
        );
    }
    t.push_str("</table>\n");
    t
}

/// The evaluation table of a perplexity run (DARTS-PTB): perplexities instead of accuracies.
fn eval_table_ppl(history: &[EvalRecord]) -> String {
    let mut t = String::from("<table>\n<tr><th>epoch</th><th>archs</th><th>with truth</th><th>mean ppl</th><th>min ppl</th><th>max ppl</th><th>Kendall tau</th><th>Spearman</th><th>Pearson</th><th>top-k (lowest)</th><th>truth seed tau</th></tr>\n");
    for e in history {
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} (k={})</td><td>{}</td></tr>",
            e.epoch,
            e.num_archs,
            e.num_with_ground_truth,
            fmt4(e.mean_perplexity),
            fmt4(e.min_perplexity),
            fmt4(e.max_perplexity),
            fmt4(e.kendall_tau),
            fmt4(e.spearman),
            fmt4(e.pearson),
            fmt4(e.top_k_overlap),
            e.top_k,
            fmt4(e.ground_truth_seed_tau)
        );
    }
    t.push_str("</table>\n");
    t
}

const STYLE: &str = "body{font-family:sans-serif;margin:16px 20px;color:#222;max-width:1240px}\
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:22px 0 8px}\
.meta{color:#555;font-size:13px;line-height:1.6}.meta b{color:#222}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th{background:#f3f3f3}.grid{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px}\
svg{display:block;width:100%;height:auto}\
figure{margin:0;border:1px solid #ddd;padding:4px}figcaption{font-size:12px;color:#555;padding:4px}\
.none{color:#888;font-style:italic;padding:20px}";

/// The report page of the run folder `dir`.
pub fn render_report(dir: &Path) -> Result<String> {
    render_report_with(dir, None)
}

/// The report page of `dir`, with `summary` standing in for its `summary.json` (the pipeline
/// writes the report just before the summary file, so that a run whose summary exists always
/// has its report).
pub fn render_report_with(dir: &Path, summary: Option<&Summary>) -> Result<String> {
    if !matches!(folder::classify(dir)?, folder::Folder::Run(_)) {
        bail!(
            "{} is a sweep folder; `runner report` takes a run folder",
            dir.display()
        );
    }
    let mut view = folder::read_run(dir)?;
    if let Some(s) = summary {
        view.summary = Some(s.clone());
        view.history = s.history.clone();
        view.summary_json = Some(serde_json::to_value(s)?);
    }
    let folder_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string());
    let name = view
        .summary
        .as_ref()
        .map(|s| s.experiment.clone())
        .or_else(|| cfg_str(&view, "experiment.name"))
        .unwrap_or_else(|| folder_name.clone());
    let mut meta: Vec<(String, String)> = vec![("folder".into(), folder_name)];
    match &view.summary {
        Some(s) => {
            meta.push(("space".into(), s.space.clone()));
            meta.push(("epochs".into(), s.epochs.to_string()));
            meta.push(("steps".into(), s.steps.to_string()));
            meta.push(("unsampled params".into(), s.unsampled.clone()));
            meta.push(("config hash".into(), s.config_hash.clone()));
            if let Some(gt) = &s.ground_truth {
                meta.push(("ground truth".into(), gt.clone()));
            }
            meta.push(("final train loss".into(), fmt4(s.final_train_loss)));
            meta.push(("final train accuracy".into(), fmt4(s.final_train_accuracy)));
            if let Some(f) = s.tau_fraction_of_noise_ceiling {
                meta.push(("tau / noise ceiling".into(), format!("{:.1}%", f * 100.0)));
            }
        }
        None => {
            for (label, key) in [
                ("space", "space.kind"),
                ("epochs", "train.epochs"),
                ("unsampled params", "train.unsampled"),
            ] {
                if let Some(v) = cfg_str(&view, key) {
                    meta.push((label.into(), v));
                }
            }
            if let Some(last) = view.train_epochs.last() {
                meta.push(("epochs done".into(), last.epoch.to_string()));
                meta.push(("train loss".into(), fmt4(Some(last.loss))));
                meta.push(("train accuracy".into(), fmt4(Some(last.accuracy))));
            }
        }
    }
    for (label, key) in [
        ("learning rate", "train.learning_rate"),
        ("seed", "experiment.seed"),
        ("dataset", "data.dataset"),
    ] {
        if let Some(v) = cfg_str(&view, key) {
            meta.push((label.into(), v));
        }
    }
    let status = if view.summary.is_some() {
        "finished"
    } else {
        "not finished (no summary.json yet)"
    };
    let last = view.history.last();
    let figures = [
        (
            "scatter",
            scatter_figure(dir, last)
                .with_context(|| format!("{}: scatter plot", dir.display()))?,
        ),
        ("correlations", correlation_figure(&view.history)?),
        (
            "loss",
            train_figure(
                "Training loss",
                "cross-entropy",
                &view.train_steps,
                &view.train_epochs,
                |p| p.loss,
                plot::RED_,
            )?,
        ),
        (
            "accuracy",
            train_figure(
                "Training accuracy",
                "top-1 accuracy (sampled path)",
                &view.train_steps,
                &view.train_epochs,
                |p| p.accuracy,
                plot::GREEN_,
            )?,
        ),
    ];
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{} - runner report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<div class=\"meta\">{} &middot; ",
        escape(&name),
        escape(&name),
        escape(status)
    );
    let meta_html: Vec<String> = meta
        .iter()
        .map(|(k, v)| format!("{} <b>{}</b>", escape(k), escape(v)))
        .collect();
    html.push_str(&meta_html.join(" &middot; "));
    html.push_str("</div>\n<h2>Evaluations</h2>\n");
    if view.history.is_empty() {
        html.push_str("<p class=\"none\">No evaluation yet.</p>\n");
    } else {
        html.push_str(&eval_table(&view.history));
    }
    html.push_str("<h2>Plots</h2>\n<div class=\"grid\">\n");
    for (id, body) in figures {
        let _ = writeln!(html, "<figure id=\"{id}\">\n{body}\n</figure>");
    }
    let _ = write!(
        html,
        "</div>\n<p class=\"meta\">Written by runner {}.</p>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    Ok(html)
}

/// Writes `<run>/report.html` (atomically) from the folder's files.
pub fn write_report(run_dir: &Path) -> Result<()> {
    write_report_with(run_dir, None)
}

/// Writes `<run>/report.html` with `summary` in place of `summary.json`.
pub fn write_report_with(run_dir: &Path, summary: Option<&Summary>) -> Result<()> {
    let html = render_report_with(run_dir, summary)?;
    super::dir::write_atomic(&run_dir.join("report.html"), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/report/run"
        ))
    }

    /// The part of the page inside `<figure id="...">`.
    fn figure<'a>(html: &'a str, id: &str) -> &'a str {
        let start = html
            .find(&format!("<figure id=\"{id}\">"))
            .unwrap_or_else(|| panic!("no figure {id}"));
        let len = html[start..].find("</figure>").unwrap();
        &html[start..start + len]
    }

    #[test]
    fn report_of_fixture_run() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("tiny-0123abcd");
        std::fs::create_dir_all(dir.join("eval")).unwrap();
        for f in [
            "config.toml",
            "metrics.jsonl",
            "summary.json",
            "eval/epoch_0000.csv",
            "eval/epoch_0001.csv",
            "eval/epoch_0002.csv",
        ] {
            std::fs::copy(fixture().join(f), dir.join(f)).unwrap();
        }
        write_report(&dir).unwrap();
        let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        // Self-contained: no scripts, nothing loaded from elsewhere.
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));
        assert_eq!(html.matches("<svg").count(), 4);

        // The final evaluation (epoch 2) scores 20 archs, 18 with ground truth; its tau
        // (scipy's, in summary.json) is in the scatter's title.
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture().join("summary.json")).unwrap())
                .unwrap();
        let tau = summary["final_eval"]["kendall_tau"].as_f64().unwrap();
        let scatter = figure(&html, "scatter");
        assert!(scatter.contains("<svg"));
        assert_eq!(scatter.matches("<circle").count(), 18);
        let title = format!("Supernet vs ground truth, epoch 2: Kendall tau = {tau:.4}");
        assert!(scatter.contains(&title), "no {title:?} in the scatter");
        assert!(scatter.contains("18 architectures with ground truth of 20 evaluated"));

        // Correlations: tau and rho at the 3 evaluations (3 markers each).
        let corr = figure(&html, "correlations");
        assert_eq!(corr.matches("<circle").count(), 6);
        assert!(
            corr.contains(">\nKendall tau\n</text>") && corr.contains(">\nSpearman rho\n</text>")
        );
        // Training curves: the 2 epoch means are marked; the 8 steps are one faint line.
        for id in ["loss", "accuracy"] {
            let f = figure(&html, id);
            assert_eq!(f.matches("<circle").count(), 2, "{id}");
            assert!(
                f.contains(">\nper step\n</text>") && f.contains(">\nepoch mean\n</text>"),
                "{id}"
            );
        }
        // The evaluation table has one row per evaluation.
        assert_eq!(html.matches("<tr><td>").count(), 3);
        assert!(html.contains(&format!("<td>{tau:.4}</td>")));
    }

    #[test]
    fn report_of_unfinished_run_uses_metrics_only() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("running");
        std::fs::create_dir_all(dir.join("eval")).unwrap();
        std::fs::copy(fixture().join("config.toml"), dir.join("config.toml")).unwrap();
        std::fs::copy(
            fixture().join("eval/epoch_0000.csv"),
            dir.join("eval/epoch_0000.csv"),
        )
        .unwrap();
        // The first 4 lines: the epoch-0 evaluation and three training steps, then a line cut
        // by a kill.
        let metrics = std::fs::read_to_string(fixture().join("metrics.jsonl")).unwrap();
        let mut partial: String = metrics.lines().take(4).map(|l| format!("{l}\n")).collect();
        partial.push_str("{\"kind\": \"train_st");
        std::fs::write(dir.join("metrics.jsonl"), partial).unwrap();
        let html = render_report(&dir).unwrap();
        assert!(html.contains("not finished"));
        // 10 archs at epoch 0, 8 with ground truth.
        assert_eq!(figure(&html, "scatter").matches("<circle").count(), 8);
        assert!(figure(&html, "loss").contains("<svg"));

        // A corrupt line that is not the last one is an error naming the file and line.
        std::fs::write(dir.join("metrics.jsonl"), "not json\n{}\n").unwrap();
        let err = format!("{:#}", render_report(&dir).unwrap_err());
        assert!(err.contains("metrics.jsonl line 1"), "{err}");
    }

    #[test]
    fn thinning_averages_bins() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, (i * 2) as f64)).collect();
        assert_eq!(
            thin(&pts, 5),
            vec![(0.5, 1.0), (2.5, 5.0), (4.5, 9.0), (6.5, 13.0), (8.5, 17.0)]
        );
        assert_eq!(thin(&pts, 20), pts);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
    }
}
