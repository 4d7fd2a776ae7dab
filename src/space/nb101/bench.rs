//! NAS-Bench-101 ground truth for space 3 from a CSV export of NAS-Bench-101 cells (one row
//! per cell: `adjacency_rowmajor` bits, `|`-separated `ops` labels, `trainable_parameters`, the
//! 108-epoch `val_acc_run0..2`; the shape of `benchmarks/nb101/*.csv`).
//!
//! NAS-Bench-101 stores one cell per isomorphism class; space 3 enumerates labelled graphs and
//! keeps isomorphic duplicates, which the study scores alike (its pickle gives each entry the
//! metrics of its NAS-Bench-101 hash). So a row's score goes to EVERY archset entry isomorphic
//! to it: each relabelling of vertices 1..5 (the input and output stay) that turns its matrix
//! into a space-3 topology. A row is representable when at least one exists (7 vertices, 9
//! edges, in-degrees that fit num_parents after some relabelling, no input -> output edge).

use super::{Arch, OPS, OP_VERTICES, VERTICES};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// One cell of a NAS-Bench-101 table.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub matrix: Vec<Vec<bool>>,
    pub ops: Vec<String>,
}

impl Cell {
    /// Checks the cell's shape: square matrix of the ops' size, upper triangular, `input`
    /// first, `output` last, NAS-Bench-101 op labels between.
    pub fn new(matrix: Vec<Vec<bool>>, ops: Vec<String>) -> Result<Cell> {
        let n = ops.len();
        if n < 2 {
            bail!("a cell needs at least the input and output vertices, got ops {ops:?}");
        }
        if matrix.len() != n || matrix.iter().any(|r| r.len() != n) {
            bail!("the adjacency matrix is not {n} x {n} (ops {ops:?})");
        }
        for (i, row) in matrix.iter().enumerate() {
            if row.iter().take(i + 1).any(|&e| e) {
                bail!("the adjacency matrix is not strictly upper triangular (row {i})");
            }
        }
        if ops[0] != "input" || ops[n - 1] != "output" {
            bail!("ops must start with \"input\" and end with \"output\", got {ops:?}");
        }
        if let Some(o) = ops[1..n - 1].iter().find(|o| !OPS.contains(&o.as_str())) {
            bail!("unknown op {o:?} (NAS-Bench-101 ops: {OPS:?})");
        }
        Ok(Cell { matrix, ops })
    }

    /// Every space-3 architecture isomorphic to this cell (sorted, distinct); empty when the
    /// cell is not representable.
    pub fn isomorphs(&self) -> Vec<Arch> {
        let mut out = BTreeSet::new();
        if self.ops.len() != VERTICES {
            return vec![];
        }
        let edges: usize = self.matrix.iter().flatten().filter(|&&e| e).count();
        if edges != super::NUM_PARENTS.iter().sum::<usize>() {
            return vec![];
        }
        let op_index = |v: usize| OPS.iter().position(|&o| o == self.ops[v]).unwrap_or(0) as u8;
        for perm in permutations(OP_VERTICES) {
            // New vertex i (1..5) is old vertex 1 + perm[i - 1]; input and output stay.
            let old = |i: usize| {
                if i == 0 || i == VERTICES - 1 {
                    i
                } else {
                    1 + perm[i - 1]
                }
            };
            let mut adj = [[false; VERTICES]; VERTICES];
            for (a, row) in adj.iter_mut().enumerate() {
                for (b, e) in row.iter_mut().enumerate() {
                    *e = self.matrix[old(a)][old(b)];
                }
            }
            let mut ops = [0u8; OP_VERTICES];
            for (i, o) in ops.iter_mut().enumerate() {
                *o = op_index(old(i + 1));
            }
            if let Ok(a) = Arch::from_adjacency(&adj, ops) {
                out.insert(a);
            }
        }
        out.into_iter().collect()
    }
}

/// All permutations of 0..n (Heap's algorithm; order irrelevant).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    let mut a: Vec<usize> = (0..n).collect();
    let mut out = vec![a.clone()];
    let mut c = vec![0usize; n];
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                a.swap(0, i);
            } else {
                a.swap(c[i], i);
            }
            out.push(a.clone());
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    out
}

/// Ground truth of space 3 read from a NAS-Bench-101 table.
#[derive(Clone, Debug, Default)]
pub struct Truth {
    /// Mean 108-epoch validation accuracy (fraction), per archset entry.
    pub scores: HashMap<Arch, f64>,
    /// Trainable parameters in millions, per archset entry.
    pub params: HashMap<Arch, f64>,
    /// Rows read, rows representable in space 3, archset entries they cover.
    pub rows: usize,
    pub representable: usize,
    pub source: String,
}

impl Truth {
    /// One line for the log and `runner check`.
    pub fn describe(&self) -> String {
        format!(
            "{}; {} of {} NAS-Bench-101 cells in space 3 ({} archset entries, isomorphic labellings included)",
            self.source,
            self.representable,
            self.rows,
            self.scores.len()
        )
    }
}

/// The columns a CSV export needs.
const NEEDED: [&str; 3] = ["adjacency_rowmajor", "ops", "trainable_parameters"];

/// Reads a CSV export of NAS-Bench-101 cells. Every row must decode (a bad row fails with the
/// file and line); rows outside space 3 are counted, not errors.
pub fn read_csv(path: &Path) -> Result<Truth> {
    let text = crate::data::read_maybe_gz(path)
        .with_context(|| format!("cannot read NAS-Bench-101 table {}", path.display()))?;
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = rdr
        .headers()
        .with_context(|| format!("{}: cannot read the header", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str| headers.iter().position(|h| h == name);
    for c in NEEDED {
        if col(c).is_none() {
            bail!(
                "{}: no `{c}` column: not a NAS-Bench-101 cell table (needs {}, and val_acc_run0.. or val_acc_mean; has {})",
                path.display(),
                NEEDED.join(", "),
                headers.join(", ")
            );
        }
    }
    let runs: Vec<usize> = (0..)
        .map_while(|k| col(&format!("val_acc_run{k}")))
        .collect();
    let mean_col = col("val_acc_mean");
    if runs.is_empty() && mean_col.is_none() {
        bail!(
            "{}: no validation accuracy columns (val_acc_run0, val_acc_run1, ... or val_acc_mean)",
            path.display()
        );
    }
    let (adj_col, ops_col, par_col) = (
        col("adjacency_rowmajor").unwrap_or(0),
        col("ops").unwrap_or(0),
        col("trainable_parameters").unwrap_or(0),
    );
    let mut truth = Truth {
        source: format!(
            "{}: mean of {} (fraction)",
            path.display(),
            if runs.is_empty() {
                "val_acc_mean".to_string()
            } else {
                format!("val_acc_run0..{}", runs.len() - 1)
            }
        ),
        ..Truth::default()
    };
    let mut conflicts = 0;
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("{}: malformed CSV", path.display()))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let at = || format!("{}:{line}", path.display());
        let field = |c: usize| {
            rec.get(c).with_context(|| {
                format!(
                    "{}: the row has {} fields, the header {}",
                    at(),
                    rec.len(),
                    headers.len()
                )
            })
        };
        let num = |c: usize| -> Result<f64> {
            let s = field(c)?;
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| format!("{}: {} = {s:?} is not a number", at(), headers[c]))
        };
        let ops: Vec<String> = field(ops_col)?
            .split('|')
            .map(|s| s.trim().to_string())
            .collect();
        let bits = field(adj_col)?.trim();
        let n = ops.len();
        if bits.len() != n * n || !bits.bytes().all(|b| b == b'0' || b == b'1') {
            bail!(
                "{}: adjacency_rowmajor must be {} 0/1 digits for the {n} ops, got {bits:?}",
                at(),
                n * n
            );
        }
        let b = bits.as_bytes();
        let matrix: Vec<Vec<bool>> = (0..n)
            .map(|i| (0..n).map(|j| b[i * n + j] == b'1').collect())
            .collect();
        let cell =
            Cell::new(matrix, ops).with_context(|| format!("{}: cell does not decode", at()))?;
        let accs: Vec<f64> = if runs.is_empty() {
            vec![num(mean_col.unwrap_or(0))?]
        } else {
            runs.iter().map(|&c| num(c)).collect::<Result<_>>()?
        };
        let score = accs.iter().sum::<f64>() / accs.len() as f64;
        let params = num(par_col)? / 1e6;
        truth.rows += 1;
        let archs = cell.isomorphs();
        if !archs.is_empty() {
            truth.representable += 1;
        }
        for a in archs {
            if truth.scores.contains_key(&a) {
                conflicts += 1;
                continue;
            }
            truth.scores.insert(a, score);
            truth.params.insert(a, params);
        }
    }
    if truth.rows == 0 {
        bail!("{}: no rows", path.display());
    }
    if conflicts > 0 {
        tracing::warn!(
            "{}: {conflicts} archset entries matched several rows (first row kept)",
            path.display()
        );
    }
    Ok(truth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::nb101::Nb101;
    use crate::space::Space;

    fn shipped() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benchmarks/nb101/naslib_nb101_dummy_30archs.csv")
    }

    #[test]
    fn permutations_are_all_120() {
        let p = permutations(5);
        let set: BTreeSet<Vec<usize>> = p.iter().cloned().collect();
        assert_eq!((p.len(), set.len()), (120, 120));
    }

    /// The shipped 30 real cells: 2 are representable (the rows the export flags with the
    /// space-3 in-degree pattern), one of them in two labellings.
    #[test]
    fn shipped_table_maps_two_cells_to_three_entries() {
        let t = read_csv(&shipped()).unwrap();
        assert_eq!((t.rows, t.representable, t.scores.len()), (30, 2, 3));
        let set = Nb101::new();
        let archset: BTreeSet<&Arch> = set.archset().unwrap().iter().collect();
        assert!(t.scores.keys().all(|a| archset.contains(a)));
        // Row ff968f80...: val 0.865986, 0.882512, 0.877804; 3,292,298 parameters; two
        // labellings. Row ff97db03...: one.
        let want = (0.865986 + 0.882512 + 0.877804) / 3.0;
        assert_eq!(
            t.scores
                .values()
                .filter(|&&s| (s - want).abs() < 1e-12)
                .count(),
            2
        );
        assert_eq!(
            t.params
                .values()
                .filter(|&&p| (p - 3.292298).abs() < 1e-12)
                .count(),
            2
        );
        let want = (0.906350 + 0.903646 + 0.899139) / 3.0;
        assert_eq!(
            t.scores
                .values()
                .filter(|&&s| (s - want).abs() < 1e-12)
                .count(),
            1
        );
        assert!(t.describe().contains("2 of 30"), "{}", t.describe());
    }

    /// Every labelling of an archset entry maps back to the same isomorphism class, which
    /// holds the entry itself.
    #[test]
    fn isomorphs_contain_the_cell_itself() {
        let set = Nb101::new();
        for a in set.archset().unwrap().iter().step_by(977) {
            let adj = a.adjacency();
            let mut ops: Vec<String> = vec!["input".into()];
            ops.extend(a.ops().iter().map(|&o| OPS[o as usize].to_string()));
            ops.push("output".into());
            let cell = Cell::new(adj.iter().map(|r| r.to_vec()).collect(), ops).unwrap();
            let iso = cell.isomorphs();
            assert!(iso.contains(a));
            // Isomorphs are closed: any of them gives the same class.
            let b = iso[iso.len() - 1];
            let mut ops: Vec<String> = vec!["input".into()];
            ops.extend(b.ops().iter().map(|&o| OPS[o as usize].to_string()));
            ops.push("output".into());
            let cell_b =
                Cell::new(b.adjacency().iter().map(|r| r.to_vec()).collect(), ops).unwrap();
            assert_eq!(cell_b.isomorphs(), iso);
        }
    }

    #[test]
    fn bad_rows_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let head = "hash,adjacency_rowmajor,ops,trainable_parameters,val_acc_run0,val_acc_run1,val_acc_run2\n";
        let good = "h,0100000001000000010000000100000001000000010000000,input|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,0.9,0.9\n";
        let cases = [
            ("h,010,input|output,100,0.9,0.9,0.9\n", "adjacency_rowmajor must be 4 0/1 digits"),
            ("h,0100000001000000010000000100000001000000010000000,input|conv5x5|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,0.9,0.9\n", "unknown op \"conv5x5\""),
            ("h,0100000001000000010000000100000001000000010000000,input|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,n/a,0.9\n", "val_acc_run1 = \"n/a\" is not a number"),
            ("h,1100000001000000010000000100000001000000010000000,input|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,0.9,0.9\n", "not strictly upper triangular"),
        ];
        for (i, (row, msg)) in cases.iter().enumerate() {
            let p = dir.path().join(format!("t{i}.csv"));
            std::fs::write(&p, format!("{head}{good}{row}")).unwrap();
            let e = format!("{:#}", read_csv(&p).unwrap_err());
            assert!(e.contains(&format!("t{i}.csv:3")) && e.contains(msg), "{e}");
        }
        // The good row alone (a chain: not representable) reads fine.
        let p = dir.path().join("ok.csv");
        std::fs::write(&p, format!("{head}{good}")).unwrap();
        let t = read_csv(&p).unwrap();
        assert_eq!((t.rows, t.representable), (1, 0));
        let p = dir.path().join("cols.csv");
        std::fs::write(&p, "hash,ops\nh,input|output\n").unwrap();
        let e = format!("{:#}", read_csv(&p).unwrap_err());
        assert!(e.contains("no `adjacency_rowmajor` column"), "{e}");
    }
}
