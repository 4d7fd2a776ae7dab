//! Benchmark CSVs of the study (`benchmarks/darts-cifar10.csv`, `ptb.csv`, `proxylessnas.csv`):
//! an `architecture` column holding the space's JSON encoding, a score column, and extra
//! columns (FLOPs, params, top-5) carried through to the evaluation CSVs.
//!
//! `eval.archs` points a run at such a file: the run evaluates exactly its architectures and
//! correlates the supernet's scores with the chosen column.

use super::{GroundTruth, Space};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One architecture of a benchmark CSV.
#[derive(Clone, Debug)]
pub struct Row<A> {
    /// 1-based line of the file the row starts on (the header is line 1).
    pub line: usize,
    pub arch: A,
    pub score: f64,
    /// The other columns, by header name, as written.
    pub extra: BTreeMap<String, String>,
}

/// A parsed benchmark CSV.
#[derive(Clone, Debug)]
pub struct Table<A> {
    pub rows: Vec<Row<A>>,
    /// The extra columns in file order.
    pub extra_columns: Vec<String>,
    /// `file: column` for logs and the summary.
    pub source: String,
}

/// Reads `path`, decoding every architecture for space `S` and the score column `score`.
/// A row that does not decode, or whose score is not a finite number, fails with the file and line.
/// Repeated architectures keep their first row (a warning says how many were dropped).
pub fn read<S: Space>(path: &Path, score: &str) -> Result<Table<S::Arch>> {
    let text = crate::data::read_maybe_gz(path)
        .with_context(|| format!("cannot read benchmark CSV {}", path.display()))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let arch_col = headers
        .iter()
        .position(|h| h == "architecture")
        .with_context(|| {
            format!(
                "{}: no `architecture` column (columns: {})",
                path.display(),
                headers.join(", ")
            )
        })?;
    let Some(score_col) = headers.iter().position(|h| h == score) else {
        bail!(
            "{}: no score column `{score}` (columns: {}); set eval.archs_score",
            path.display(),
            headers.join(", ")
        );
    };
    let extra_columns: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != arch_col && *i != score_col)
        .map(|(_, h)| h.clone())
        .collect();
    let mut rows = vec![];
    let mut seen = HashMap::new();
    let mut duplicates = 0;
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let at = || format!("{}:{line}", path.display());
        let (Some(a), Some(s)) = (rec.get(arch_col), rec.get(score_col)) else {
            bail!(
                "{}: row has {} fields, the header {}",
                at(),
                rec.len(),
                headers.len()
            );
        };
        let json: serde_json::Value = serde_json::from_str(a)
            .with_context(|| format!("{}: architecture is not JSON", at()))?;
        let arch = S::decode(&json)
            .with_context(|| format!("{}: architecture does not decode for {}", at(), S::KIND))?;
        // A NaN or infinite score would silently turn every correlation into n/a.
        let value: f64 = s
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{}: {score} = {s:?} is not a number", at()))?;
        if !value.is_finite() {
            bail!("{}: {score} = {s:?} is not finite", at());
        }
        if seen.insert(arch.clone(), line).is_some() {
            duplicates += 1;
            continue;
        }
        let extra = headers
            .iter()
            .zip(rec.iter())
            .enumerate()
            .filter(|(i, _)| *i != arch_col && *i != score_col)
            .map(|(_, (h, v))| (h.clone(), v.to_string()))
            .collect();
        rows.push(Row {
            line,
            arch,
            score: value,
            extra,
        });
    }
    if rows.is_empty() {
        bail!("{}: no architectures", path.display());
    }
    if duplicates > 0 {
        tracing::warn!(
            "{}: {duplicates} repeated architectures ignored (first row kept)",
            path.display()
        );
    }
    Ok(Table {
        rows,
        extra_columns,
        source: format!("{}: {score}", path.display()),
    })
}

impl<A: Clone + Eq + std::hash::Hash> Table<A> {
    /// The rows kept by `limit` (0 = all): a seeded subset in file order.
    pub fn subset(mut self, limit: usize, seed: u64) -> Self {
        if limit > 0 && limit < self.rows.len() {
            let mut pick: Vec<usize> =
                crate::data::shuffled(self.rows.len(), seed, "eval-archs-csv", &[])
                    .into_iter()
                    .take(limit)
                    .collect();
            pick.sort_unstable();
            self.rows = pick.into_iter().map(|i| self.rows[i].clone()).collect();
        }
        self
    }

    /// The table as ground truth, with `second` (another training seed of the same
    /// architectures) for the noise ceiling.
    pub fn ground_truth(&self, second: Option<&Table<A>>) -> GroundTruth<A> {
        GroundTruth {
            scores: self
                .rows
                .iter()
                .map(|r| (r.arch.clone(), r.score))
                .collect(),
            source: self.source.clone(),
            second_seed: second.map(|t| t.rows.iter().map(|r| (r.arch.clone(), r.score)).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::nb201::Nb201;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const A: &str = r#""{""0_1"":3,""0_2"":3,""0_3"":3,""1_2"":3,""1_3"":3,""2_3"":3}""#;
    const B: &str = r#""{""0_1"":1,""0_2"":3,""0_3"":3,""1_2"":3,""1_3"":3,""2_3"":3}""#;

    #[test]
    fn reads_rows_scores_and_extra_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "b.csv",
            &format!("architecture,accuracy,flops\n{A},93.5,100\n{B},91.0,80\n{A},1,1\n"),
        );
        let t = read::<Nb201>(&p, "accuracy").unwrap();
        assert_eq!(t.rows.len(), 2, "the repeated first arch is dropped");
        assert_eq!(t.rows[0].score, 93.5);
        assert_eq!(t.rows[1].line, 3);
        assert_eq!(t.rows[1].extra["flops"], "80");
        assert_eq!(t.extra_columns, vec!["flops".to_string()]);
        let gt = t.ground_truth(None);
        assert_eq!(gt.scores[&t.rows[1].arch], 91.0);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad_arch = r#""{""0_1"":9,""0_2"":3,""0_3"":3,""1_2"":3,""1_3"":3,""2_3"":3}""#;
        let p = write(
            dir.path(),
            "b.csv",
            &format!("architecture,accuracy\n{A},93.5\n{bad_arch},91.0\n"),
        );
        let e = format!("{:#}", read::<Nb201>(&p, "accuracy").unwrap_err());
        assert!(e.contains("b.csv:3"), "{e}");
        let p = write(
            dir.path(),
            "c.csv",
            &format!("architecture,accuracy\n{A},n/a\n"),
        );
        let e = format!("{:#}", read::<Nb201>(&p, "accuracy").unwrap_err());
        assert!(e.contains("c.csv:2") && e.contains("not a number"), "{e}");
        let e = format!("{:#}", read::<Nb201>(&p, "valid_ppl").unwrap_err());
        assert!(e.contains("no score column `valid_ppl`"), "{e}");
        for bad in ["nan", "inf", "-inf"] {
            let p = write(
                dir.path(),
                "d.csv",
                &format!("architecture,accuracy\n{A},93.5\n{B},{bad}\n"),
            );
            let e = format!("{:#}", read::<Nb201>(&p, "accuracy").unwrap_err());
            assert!(
                e.contains(&format!("d.csv:3: accuracy = \"{bad}\" is not finite")),
                "{e}"
            );
        }
    }

    #[test]
    fn subset_is_seeded_and_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("architecture,accuracy\n");
        let set = Nb201::new();
        for (i, a) in set.archset().unwrap().iter().take(50).enumerate() {
            let j = Nb201::encode(a).to_string().replace('"', "\"\"");
            text.push_str(&format!("\"{j}\",{i}\n"));
        }
        let p = write(dir.path(), "b.csv", &text);
        let t = read::<Nb201>(&p, "accuracy").unwrap();
        let a = t.clone().subset(10, 7);
        let b = t.clone().subset(10, 7);
        let c = t.clone().subset(10, 8);
        let scores = |t: &Table<_>| t.rows.iter().map(|r| r.score).collect::<Vec<_>>();
        assert_eq!(a.rows.len(), 10);
        assert_eq!(scores(&a), scores(&b));
        assert_ne!(scores(&a), scores(&c));
        assert!(scores(&a).windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.subset(0, 7).rows.len(), 50);
    }
}
