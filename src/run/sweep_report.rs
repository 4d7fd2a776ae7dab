//! `report.html` of a sweep: each key metric plotted against each swept key.

use super::plot;
use super::report::escape;
use super::sweep::Entry;
use anyhow::Result;
use std::path::Path;

/// The metrics plotted against every swept key.
const METRICS: [&str; 3] = ["kendall_tau", "spearman", "mean_accuracy"];

fn metric(e: &Entry, name: &str) -> Option<f64> {
    match name {
        "kendall_tau" => e.metrics.kendall_tau,
        "spearman" => e.metrics.spearman,
        "mean_accuracy" => e.metrics.mean_accuracy,
        _ => None,
    }
}

/// Swept keys in first-seen order.
fn keys(entries: &[Entry]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for e in entries {
        for (k, _) in &e.overrides.0 {
            if !out.contains(k) {
                out.push(k.clone());
            }
        }
    }
    out
}

/// A value's position on the x axis: the number itself, or the index of a category.
fn x_of(v: &serde_json::Value, categories: &mut Vec<String>) -> f64 {
    if let Some(x) = v.as_f64() {
        return x;
    }
    let s = match v.as_str() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    };
    match categories.iter().position(|c| *c == s) {
        Some(i) => i as f64,
        None => {
            categories.push(s);
            (categories.len() - 1) as f64
        }
    }
}

/// The page: one scatter per (swept key, metric) over the finished points, and the points table.
pub fn render(entries: &[Entry], title: &str) -> Result<String> {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px}}</style></head>\
         <body><h1>Sweep {t}</h1><p>{n} points, {d} done.</p>",
        t = escape(title),
        n = entries.len(),
        d = entries.iter().filter(|e| metric(e, "mean_accuracy").is_some()).count()
    );
    for key in keys(entries) {
        html.push_str(&format!("<h2>{}</h2>", escape(&key)));
        for m in METRICS {
            let mut categories = vec![];
            let pts: Vec<(f64, f64)> = entries
                .iter()
                .filter_map(|e| {
                    let v = e.overrides.0.iter().find(|(k, _)| *k == key)?.1.clone();
                    Some((x_of(&v, &mut categories), metric(e, m)?))
                })
                .collect();
            let x_desc = if categories.is_empty() {
                key.clone()
            } else {
                format!(
                    "{key} ({})",
                    categories
                        .iter()
                        .enumerate()
                        .map(|(i, c)| format!("{i}={c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            html.push_str(&plot::scatter(
                &format!("{m} vs {key}"),
                &x_desc,
                m,
                &pts,
                (480, 320),
            )?);
        }
    }
    html.push_str("<h2>Points</h2><table><tr><th>point</th><th>overrides</th><th>status</th>");
    for m in METRICS {
        html.push_str(&format!("<th>{m}</th>"));
    }
    html.push_str("</tr>");
    for e in entries {
        let ov: Vec<String> = e
            .overrides
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            escape(&e.point),
            escape(&ov.join(" ")),
            escape(serde_json::to_value(e.status)?.as_str().unwrap_or("?"))
        ));
        for m in METRICS {
            let v = metric(e, m)
                .map(|x| format!("{x:.4}"))
                .unwrap_or_else(|| "-".into());
            html.push_str(&format!("<td>{v}</td>"));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table></body></html>\n");
    Ok(html)
}

/// Writes `<folder>/report.html` atomically.
pub fn write(folder: &Path, entries: &[Entry], title: &str) -> Result<()> {
    super::dir::write_atomic(
        &folder.join("report.html"),
        render(entries, title)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_metric_against_every_swept_key() {
        let lines = [
            r#"{"point":"a","index":0,"overrides":{"train.learning_rate":0.1,"data.augment":true},"run":"r1","status":"done","kendall_tau":0.2,"spearman":0.3,"mean_accuracy":0.5}"#,
            r#"{"point":"b","index":1,"overrides":{"train.learning_rate":0.05,"data.augment":false},"run":"r2","status":"done","kendall_tau":0.4,"spearman":0.5,"mean_accuracy":0.6}"#,
            r#"{"point":"c","index":2,"overrides":{"train.learning_rate":0.01,"data.augment":true},"run":"r3","status":"failed","error":"boom"}"#,
        ];
        let entries: Vec<Entry> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let html = render(&entries, "grid").unwrap();
        assert_eq!(html.matches("<svg").count(), 6, "3 metrics x 2 keys");
        for t in [
            "kendall_tau vs train.learning_rate",
            "mean_accuracy vs data.augment",
            "data.augment (0=true, 1=false)",
        ] {
            assert!(html.contains(t), "{t}");
        }
        // The failed point has no metrics: 2 points per plot, so 12 circles in all.
        assert_eq!(html.matches("<circle").count(), 12);
        assert!(html.contains("<td>failed</td>"));
    }
}
