//! The `[sweep]` table: a grid, parallel lists and seeds over dotted configuration keys,
//! expanded into points (lists of overrides), each validated by resolving it exactly as the
//! point's run will: the experiment file with the overrides given as `--set`.
//!
//! ```toml
//! [sweep]
//! name = "lr_seeds"                                   # optional
//! grid = { "train.learning_rate" = [0.1, 0.05], "space.channels" = [8, 16] }
//! zip = { "train.epochs" = [10, 20], "eval.every" = [5, 10] }
//! seeds = [0, 1]
//! ```
//!
//! Points are the cartesian product of the grid keys (in the order written, the first varying
//! slowest), then the zip lists as one axis, then the seeds (fastest).

// ConfigError is large (place + key + message strings) but it is built once, on the cold path
// of reading a configuration; boxing it would only add noise to every constructor.
#![allow(clippy::result_large_err)]

use super::errors::{ConfigError, Place};
use super::load::{Resolved, SweepSource};
use super::spans::{self, KeyMap};
use super::suggest;
use std::path::PathBuf;

/// Keys a `[sweep]` table may hold.
pub const SWEEP_KEYS: &[&str] = &["name", "grid", "zip", "seeds"];

/// Sweeps larger than this are refused: every point is resolved (and later run), so a product
/// this large is almost certainly a mistake in the grid.
pub const MAX_POINTS: usize = 100_000;

/// One swept key and its values, in the order written.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Dotted configuration key (`train.learning_rate`).
    pub key: String,
    pub values: Vec<toml::Value>,
    /// Where the key is written.
    pub at: Place,
    /// `grid`, `zip` or `seeds`.
    pub kind: &'static str,
}

/// A parsed, checked `[sweep]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    /// The file holding the table.
    pub file: PathBuf,
    /// The `[sweep]` table itself.
    pub at: Place,
    pub name: Option<String>,
    pub grid: Vec<Axis>,
    pub zip: Vec<Axis>,
    /// `experiment.seed` values.
    pub seeds: Option<Axis>,
}

/// One override of a point: `key = value`, taken from position `pos` of an axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
    pub at: Place,
    pub kind: &'static str,
    pub pos: usize,
}

impl Override {
    /// The `--set` argument that applies this override.
    pub fn set_arg(&self) -> String {
        format!("{}={}", self.key, literal(&self.value))
    }
}

/// One point of the sweep: its position in expansion order and its overrides (grid keys in
/// written order, then zip keys, then `experiment.seed`).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub index: usize,
    pub overrides: Vec<Override>,
}

impl Point {
    /// The overrides as `--set` arguments.
    pub fn set_args(&self) -> Vec<String> {
        self.overrides.iter().map(Override::set_arg).collect()
    }

    /// `key=value key=value`, for messages and listings.
    pub fn label(&self) -> String {
        self.set_args().join(" ")
    }
}

/// A point with the configuration it resolves to.
#[derive(Clone, Debug)]
pub struct ResolvedPoint {
    pub point: Point,
    pub resolved: Resolved,
}

/// A TOML value written as TOML (strings quoted), as `--set` parses it back.
pub fn literal(value: &toml::Value) -> String {
    value.to_string()
}

fn found(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// Parses and checks the shape of a `[sweep]` table. Whether its keys exist and its values
/// have the right types is checked by [`resolve_points`].
pub fn parse(src: &SweepSource) -> Result<SweepSpec, ConfigError> {
    let keys = KeyMap::parse(&src.text);
    let place = |path: &[String]| Place::file(&src.file, spans::line_of(&src.text, path));
    // Byte offset of a key in the text: the written order, which toml's map does not keep.
    let offset = |path: &[String]| {
        keys.as_ref()
            .and_then(|k| k.span_of(path))
            .map_or(usize::MAX, |s| s.start)
    };
    let root = vec!["sweep".to_string()];
    let at = place(&root);
    let table = match &src.table {
        toml::Value::Table(t) => t,
        other => {
            return Err(ConfigError::WrongType {
                at,
                key: "sweep".into(),
                expected: "a table".into(),
                found: found(other),
            })
        }
    };
    for key in table.keys() {
        if !SWEEP_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey {
                at: place(&path_of(&root, &[key])),
                key: format!("sweep.{key}"),
                hint: suggest::hint(key, SWEEP_KEYS.iter().copied(), str::to_string),
            });
        }
    }
    let name = match table.get("name") {
        None => None,
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(toml::Value::String(_)) => {
            return Err(ConfigError::Invalid {
                at: place(&path_of(&root, &["name"])),
                message: "sweep.name must not be empty".into(),
            })
        }
        Some(other) => {
            return Err(ConfigError::WrongType {
                at: place(&path_of(&root, &["name"])),
                key: "sweep.name".into(),
                expected: "a string".into(),
                found: found(other),
            })
        }
    };
    let axes_of = |kind: &'static str| -> Result<Vec<Axis>, ConfigError> {
        let Some(value) = table.get(kind) else {
            return Ok(Vec::new());
        };
        let path = path_of(&root, &[kind]);
        let toml::Value::Table(t) = value else {
            return Err(ConfigError::WrongType {
                at: place(&path),
                key: format!("sweep.{kind}"),
                expected: "a table of dotted keys to lists of values".into(),
                found: found(value),
            });
        };
        let mut leaves = Vec::new();
        collect_leaves(t, &mut path.clone(), &mut leaves);
        if leaves.is_empty() {
            return Err(ConfigError::Invalid {
                at: place(&path),
                message: format!("sweep.{kind} is empty (give it \"dotted.key\" = [values, ...])"),
            });
        }
        leaves.sort_by_key(|(p, _)| offset(p));
        leaves
            .into_iter()
            .map(|(p, v)| {
                let key = p[2..].join(".");
                let at = place(&p);
                let toml::Value::Array(values) = v else {
                    return Err(ConfigError::WrongType {
                        at,
                        key: format!("sweep.{kind} \"{key}\""),
                        expected: "a list of values".into(),
                        found: found(v),
                    });
                };
                if values.is_empty() {
                    return Err(ConfigError::Invalid {
                        at,
                        message: format!("sweep.{kind} \"{key}\" is an empty list"),
                    });
                }
                Ok(Axis {
                    key,
                    values: values.clone(),
                    at,
                    kind,
                })
            })
            .collect()
    };
    let grid = axes_of("grid")?;
    let zip = axes_of("zip")?;
    if let Some(first) = zip.first() {
        if let Some(other) = zip.iter().find(|a| a.values.len() != first.values.len()) {
            return Err(ConfigError::Invalid {
                at: place(&path_of(&root, &["zip"])),
                message: format!(
                    "sweep.zip lists must have equal lengths: \"{}\" has {}, \"{}\" has {}",
                    first.key,
                    first.values.len(),
                    other.key,
                    other.values.len()
                ),
            });
        }
    }
    let seeds = match table.get("seeds") {
        None => None,
        Some(value) => {
            let path = path_of(&root, &["seeds"]);
            let at = place(&path);
            let wrong = |found: String| ConfigError::WrongType {
                at: at.clone(),
                key: "sweep.seeds".into(),
                expected: "a list of non-negative integers".into(),
                found,
            };
            let toml::Value::Array(values) = value else {
                return Err(wrong(found(value)));
            };
            if values.is_empty() {
                return Err(ConfigError::Invalid {
                    at,
                    message: "sweep.seeds is an empty list".into(),
                });
            }
            if let Some(bad) = values
                .iter()
                .find(|v| !matches!(v, toml::Value::Integer(i) if *i >= 0))
            {
                return Err(wrong(found(bad)));
            }
            Some(Axis {
                key: "experiment.seed".into(),
                values: values.clone(),
                at,
                kind: "seeds",
            })
        }
    };
    let spec = SweepSpec {
        file: src.file.clone(),
        at: at.clone(),
        name,
        grid,
        zip,
        seeds,
    };
    let axes = spec.axes();
    if axes.is_empty() {
        return Err(ConfigError::Invalid {
            at,
            message: "[sweep] declares no grid, zip or seeds".into(),
        });
    }
    for (i, a) in axes.iter().enumerate() {
        if let Some(b) = axes[..i].iter().find(|b| overlaps(&a.key, &b.key)) {
            return Err(ConfigError::Invalid {
                at: a.at.clone(),
                message: if a.key == b.key {
                    format!(
                        "\"{}\" is swept twice (sweep.{} and sweep.{})",
                        a.key, b.kind, a.kind
                    )
                } else {
                    format!(
                        "\"{}\" (sweep.{}) overlaps \"{}\" (sweep.{})",
                        a.key, a.kind, b.key, b.kind
                    )
                },
            });
        }
    }
    let size = spec.len_checked().ok_or_else(|| ConfigError::Invalid {
        at: spec.at.clone(),
        message: format!("the sweep has more than {MAX_POINTS} points"),
    })?;
    if size > MAX_POINTS {
        return Err(ConfigError::Invalid {
            at: spec.at.clone(),
            message: format!("the sweep has {size} points (more than {MAX_POINTS})"),
        });
    }
    Ok(spec)
}

fn path_of(root: &[String], rest: &[&str]) -> Vec<String> {
    root.iter()
        .cloned()
        .chain(rest.iter().map(|s| s.to_string()))
        .collect()
}

/// Every non-table value under `table` with its key path; nested tables spell dotted keys
/// (`grid.train.learning_rate` is `grid."train.learning_rate"`).
fn collect_leaves<'a>(
    table: &'a toml::Table,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, &'a toml::Value)>,
) {
    for (k, v) in table {
        prefix.push(k.clone());
        match v {
            toml::Value::Table(t) => collect_leaves(t, prefix, out),
            _ => out.push((prefix.clone(), v)),
        }
        prefix.pop();
    }
}

/// Whether two dotted keys set the same value (equal, or one is a table holding the other).
fn overlaps(a: &str, b: &str) -> bool {
    let prefix = |short: &str, long: &str| {
        long.strip_prefix(short)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    a == b || prefix(a, b) || prefix(b, a)
}

impl SweepSpec {
    /// The axes in expansion order (slowest first); the zip keys count as one axis of the
    /// product but are listed one by one here.
    pub fn axes(&self) -> Vec<&Axis> {
        self.grid
            .iter()
            .chain(self.zip.iter())
            .chain(self.seeds.iter())
            .collect()
    }

    /// Lengths of the product's factors, slowest first.
    fn factors(&self) -> Vec<usize> {
        let mut f: Vec<usize> = self.grid.iter().map(|a| a.values.len()).collect();
        if let Some(z) = self.zip.first() {
            f.push(z.values.len());
        }
        if let Some(s) = &self.seeds {
            f.push(s.values.len());
        }
        f
    }

    fn len_checked(&self) -> Option<usize> {
        self.factors()
            .into_iter()
            .try_fold(1usize, |n, f| n.checked_mul(f))
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.len_checked().unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The points in expansion order.
    pub fn points(&self) -> Vec<Point> {
        let factors = self.factors();
        (0..self.len())
            .map(|index| {
                // Mixed-radix digits of the index, the last factor varying fastest.
                let mut digits = vec![0; factors.len()];
                let mut rest = index;
                for (d, f) in digits.iter_mut().zip(&factors).rev() {
                    *d = rest % f;
                    rest /= f;
                }
                let mut overrides = Vec::new();
                let mut digit = digits.into_iter();
                let mut take = |axis: &Axis, pos: usize| {
                    overrides.push(Override {
                        key: axis.key.clone(),
                        value: axis.values[pos].clone(),
                        at: axis.at.clone(),
                        kind: axis.kind,
                        pos,
                    })
                };
                for axis in &self.grid {
                    take(axis, digit.next().unwrap_or(0));
                }
                if !self.zip.is_empty() {
                    let pos = digit.next().unwrap_or(0);
                    for axis in &self.zip {
                        take(axis, pos);
                    }
                }
                if let Some(seeds) = &self.seeds {
                    take(seeds, digit.next().unwrap_or(0));
                }
                Point { index, overrides }
            })
            .collect()
    }

    /// The `[sweep]` table as TOML, keys in the order written (so that reading it back expands
    /// to the same points in the same order).
    pub fn to_toml(&self) -> String {
        let key = |k: &str| toml::Value::String(k.into()).to_string();
        let list = |v: &[toml::Value]| literal(&toml::Value::Array(v.to_vec()));
        let table = |axes: &[Axis]| {
            let items: Vec<String> = axes
                .iter()
                .map(|a| format!("{} = {}", key(&a.key), list(&a.values)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        };
        let mut t = String::from("[sweep]\n");
        if let Some(name) = &self.name {
            t.push_str(&format!("name = {}\n", key(name)));
        }
        if !self.grid.is_empty() {
            t.push_str(&format!("grid = {}\n", table(&self.grid)));
        }
        if !self.zip.is_empty() {
            t.push_str(&format!("zip = {}\n", table(&self.zip)));
        }
        if let Some(seeds) = &self.seeds {
            t.push_str(&format!("seeds = {}\n", list(&seeds.values)));
        }
        t
    }
}

/// Resolves every point with `load(overrides as --set)`, which is [`super::load`] on the
/// experiment file with the command line's own `--set` first. Fails with one line naming the
/// sweep file's line and key when a point does not resolve (unknown key, wrong type, invalid
/// value), when a command-line `--set` sets a swept key, and when two points resolve to the
/// same configuration.
pub fn resolve_points(
    spec: &SweepSpec,
    cli_sets: &[String],
    load: &dyn Fn(&[String]) -> anyhow::Result<Resolved>,
) -> anyhow::Result<Vec<ResolvedPoint>> {
    for arg in cli_sets {
        let key = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k).trim();
        if let Some(axis) = spec.axes().into_iter().find(|a| overlaps(key, &a.key)) {
            return Err(ConfigError::Syntax {
                at: Place::Set { arg: arg.clone() },
                message: format!(
                    "\"{}\" is swept by sweep.{} ({}); drop the --set or the sweep key",
                    axis.key, axis.kind, axis.at
                ),
            }
            .into());
        }
    }
    let mut out: Vec<ResolvedPoint> = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for point in spec.points() {
        let sets: Vec<String> = cli_sets.iter().cloned().chain(point.set_args()).collect();
        let resolved = load(&sets).map_err(|e| blame_override(e, &point))?;
        if let Some(&first) = seen.get(&resolved.hash) {
            let earlier = &out[first].point;
            let at = point
                .overrides
                .iter()
                .zip(&earlier.overrides)
                .find(|(a, b)| a.pos != b.pos)
                .map_or_else(|| spec.at.clone(), |(a, _)| a.at.clone());
            return Err(ConfigError::Invalid {
                at,
                message: format!(
                    "duplicate sweep points: {} ({}) and {} ({}) resolve to the same \
                     configuration (hash {})",
                    earlier.index,
                    earlier.label(),
                    point.index,
                    point.label(),
                    resolved.hash
                ),
            }
            .into());
        }
        seen.insert(resolved.hash.clone(), out.len());
        out.push(ResolvedPoint { point, resolved });
    }
    Ok(out)
}

/// A configuration error caused by one of the point's overrides, re-placed at the sweep key
/// that produced it (the `--set` it went through is an implementation detail). Also used for
/// checks made after loading (the run layer's `device.conv_engine`).
pub fn blame_override(error: anyhow::Error, point: &Point) -> anyhow::Error {
    let Some(ce) = error.downcast_ref::<ConfigError>() else {
        return error;
    };
    let at = place_of(ce);
    let Place::Set { arg } = at else {
        return error;
    };
    let Some(o) = point.overrides.iter().find(|o| o.set_arg() == *arg) else {
        return error;
    };
    let text = ce.to_string();
    let rest = text
        .strip_prefix(&format!("{at}: "))
        .unwrap_or(&text)
        .to_string();
    ConfigError::Invalid {
        at: o.at.clone(),
        message: format!("sweep.{}: {rest}", o.kind),
    }
    .into()
}

fn place_of(e: &ConfigError) -> &Place {
    match e {
        ConfigError::InvalidToml { at, .. }
        | ConfigError::Io { at, .. }
        | ConfigError::UnknownKey { at, .. }
        | ConfigError::UnknownSection { at, .. }
        | ConfigError::WrongType { at, .. }
        | ConfigError::UnknownValue { at, .. }
        | ConfigError::Extends { at, .. }
        | ConfigError::Invalid { at, .. }
        | ConfigError::Syntax { at, .. } => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{load_from, load_str, sweep_source, sweep_source_str};
    use std::path::Path;

    const BASE: &str = "[space]\nkind = \"nb201\"\n";

    fn src(text: &str) -> SweepSource {
        sweep_source_str(text, Path::new("x.toml"))
            .unwrap()
            .expect("a [sweep] table")
    }

    fn spec(text: &str) -> Result<SweepSpec, String> {
        parse(&src(text)).map_err(|e| e.to_string())
    }

    fn resolve(text: &str, cli: &[&str]) -> Result<Vec<ResolvedPoint>, String> {
        let spec = spec(text)?;
        let cli: Vec<String> = cli.iter().map(|s| s.to_string()).collect();
        resolve_points(&spec, &cli, &|sets| {
            load_str(text, Path::new("x.toml"), sets)
        })
        .map_err(|e| e.to_string())
    }

    fn labels(spec: &SweepSpec) -> Vec<String> {
        spec.points().iter().map(Point::label).collect()
    }

    #[test]
    fn grid_zip_and_seeds_expand_in_written_order() {
        // Written order differs from alphabetical order on purpose.
        let text = format!(
            "{BASE}[sweep]\nseeds = [0, 7]\n\
             zip = {{ \"train.epochs\" = [1, 2], \"eval.every\" = [1, 2] }}\n\
             grid = {{ \"train.learning_rate\" = [0.1, 0.05], \"space.channels\" = [8, 16] }}\n"
        );
        let s = spec(&text).unwrap();
        assert_eq!(s.len(), 16);
        let keys: Vec<&str> = s.axes().iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "train.learning_rate",
                "space.channels",
                "train.epochs",
                "eval.every",
                "experiment.seed"
            ]
        );
        let l = labels(&s);
        assert_eq!(
            l[0],
            "train.learning_rate=0.1 space.channels=8 train.epochs=1 eval.every=1 experiment.seed=0"
        );
        assert_eq!(
            l[1],
            "train.learning_rate=0.1 space.channels=8 train.epochs=1 eval.every=1 experiment.seed=7"
        );
        assert_eq!(
            l[2],
            "train.learning_rate=0.1 space.channels=8 train.epochs=2 eval.every=2 experiment.seed=0"
        );
        assert_eq!(
            l[4],
            "train.learning_rate=0.1 space.channels=16 train.epochs=1 eval.every=1 experiment.seed=0"
        );
        assert_eq!(
            l[15],
            "train.learning_rate=0.05 space.channels=16 train.epochs=2 eval.every=2 experiment.seed=7"
        );
        let points = s.points();
        assert!(points.iter().enumerate().all(|(i, p)| p.index == i));
        // Every combination exactly once.
        let mut sorted = l.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 16);
        assert_eq!(s.at, Place::file("x.toml", Some(3)));
        assert_eq!(s.axes()[0].at, Place::file("x.toml", Some(6)));
        assert_eq!(s.seeds.as_ref().unwrap().at, Place::file("x.toml", Some(4)));
    }

    #[test]
    fn nested_tables_spell_dotted_keys() {
        let text = format!(
            "{BASE}[sweep.grid]\ntrain.learning_rate = [0.1, 0.2]\n\"space.channels\" = [4]\n\
             data.augment = [true, false]\n"
        );
        let s = spec(&text).unwrap();
        let keys: Vec<&str> = s.grid.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            ["train.learning_rate", "space.channels", "data.augment"]
        );
        assert_eq!(s.grid[2].at, Place::file("x.toml", Some(6)));
        assert_eq!(s.len(), 4);
        assert_eq!(
            labels(&s)[1],
            "train.learning_rate=0.1 space.channels=4 data.augment=false"
        );
    }

    #[test]
    fn shape_errors_name_file_line_and_key() {
        let cases = [
            (
                "[sweep]\ngird = { \"train.epochs\" = [1] }\n",
                "x.toml:5: unknown key 'sweep.gird' (did you mean 'grid'?)",
            ),
            ("[sweep]\ngrid = {}\n", "x.toml:5: sweep.grid is empty (give it \"dotted.key\" = [values, ...])"),
            (
                "[sweep]\ngrid = { \"train.epochs\" = [] }\n",
                "x.toml:5: sweep.grid \"train.epochs\" is an empty list",
            ),
            (
                "[sweep]\ngrid = { \"train.epochs\" = 3 }\n",
                "x.toml:5: sweep.grid \"train.epochs\": expected a list of values, found integer 3",
            ),
            (
                "[sweep]\ngrid = [1, 2]\n",
                "x.toml:5: sweep.grid: expected a table of dotted keys to lists of values, found an array",
            ),
            (
                "[sweep]\n\nzip = { \"train.epochs\" = [1, 2], \"eval.every\" = [1, 2, 3] }\n",
                "x.toml:6: sweep.zip lists must have equal lengths: \"train.epochs\" has 2, \"eval.every\" has 3",
            ),
            (
                "[sweep]\nseeds = [0, -1]\n",
                "x.toml:5: sweep.seeds: expected a list of non-negative integers, found integer -1",
            ),
            ("[sweep]\nseeds = []\n", "x.toml:5: sweep.seeds is an empty list"),
            ("[sweep]\nname = \"x\"\n", "x.toml:4: [sweep] declares no grid, zip or seeds"),
            (
                "[sweep]\nname = 3\nseeds = [1]\n",
                "x.toml:5: sweep.name: expected a string, found integer 3",
            ),
            (
                "[sweep]\ngrid = { \"experiment.seed\" = [1, 2] }\nseeds = [0]\n",
                "x.toml:6: \"experiment.seed\" is swept twice (sweep.grid and sweep.seeds)",
            ),
            (
                "[sweep]\ngrid = { \"eval.bn_recalibration\" = [{ steps = 1, batch_size = 2 }] }\n\
                 zip = { \"eval.bn_recalibration.steps\" = [3] }\n",
                "x.toml:6: \"eval.bn_recalibration.steps\" (sweep.zip) overlaps \
                 \"eval.bn_recalibration\" (sweep.grid)",
            ),
        ];
        for (sweep, want) in cases {
            let text = format!("{BASE}\n{sweep}");
            assert_eq!(spec(&text).unwrap_err(), want, "{sweep}");
        }
        assert_eq!(
            spec(&format!("sweep = 3\n{BASE}")).unwrap_err(),
            "x.toml:1: sweep: expected a table, found integer 3"
        );
    }

    #[test]
    fn points_resolve_to_their_overrides() {
        let text = format!(
            "{BASE}[train]\nepochs = 4\n[sweep]\ngrid = {{ \"train.learning_rate\" = [0.1, 0.05] }}\n\
             seeds = [3, 4]\n"
        );
        let points = resolve(&text, &["train.epochs=2"]).unwrap();
        assert_eq!(points.len(), 4);
        let got: Vec<(f64, u64, usize)> = points
            .iter()
            .map(|p| {
                let c = &p.resolved.config;
                (c.train.learning_rate, c.experiment.seed, c.train.epochs)
            })
            .collect();
        assert_eq!(got, [(0.1, 3, 2), (0.1, 4, 2), (0.05, 3, 2), (0.05, 4, 2)]);
        // Same hash as running the point by hand.
        let by_hand = load_str(
            &text,
            Path::new("x.toml"),
            &[
                "train.epochs=2".into(),
                "train.learning_rate=0.05".into(),
                "experiment.seed=4".into(),
            ],
        )
        .unwrap();
        assert_eq!(points[3].resolved.hash, by_hand.hash);
        let mut hashes: Vec<&str> = points.iter().map(|p| p.resolved.hash.as_str()).collect();
        hashes.dedup();
        assert_eq!(hashes.len(), 4);
    }

    #[test]
    fn point_errors_are_placed_at_the_sweep_key() {
        let grid = |g: &str| format!("{BASE}[sweep]\ngrid = {{ {g} }}\nseeds = [0]\n");
        let cases = [
            (
                grid("\"train.lerning_rate\" = [0.1]"),
                "x.toml:4: sweep.grid: unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)",
            ),
            (
                grid("\"space.chanels\" = [4]"),
                "x.toml:4: sweep.grid: unknown key 'space.chanels' (did you mean 'channels'?)",
            ),
            (
                grid("\"trian.epochs\" = [4]"),
                "x.toml:4: sweep.grid: unknown section '[trian]' (did you mean '[train]'?)",
            ),
            (
                grid("\"train.learning_rate\" = [0.1, \"fast\"]"),
                "x.toml:4: sweep.grid: train.learning_rate: expected a number, found string \"fast\"",
            ),
            (
                grid("\"train.momentum\" = [0.5, 1.5]"),
                "x.toml:4: sweep.grid: train.momentum must be in [0, 1) (got 1.5)",
            ),
            (
                grid("\"train.learning_rate\" = [0.1, 0.10]"),
                "x.toml:4: duplicate sweep points: 0 (train.learning_rate=0.1 experiment.seed=0) \
                 and 1 (train.learning_rate=0.1 experiment.seed=0) resolve to the same configuration",
            ),
            (
                // Distinct values, same configuration: the intermediate count is capped at
                // eval.num_archs (100).
                format!("{BASE}[sweep]\n\ngrid = {{ \"eval.num_archs_intermediate\" = [100, 200] }}\n"),
                "x.toml:5: duplicate sweep points: 0 (eval.num_archs_intermediate=100) and 1 \
                 (eval.num_archs_intermediate=200) resolve to the same configuration",
            ),
            (
                format!("{BASE}[sweep]\nzip = {{ \"train.epochs\" = [200, 3], \"eval.every\" = [100, 100] }}\n"),
                "",
            ),
            (
                format!("{BASE}[sweep]\nseeds = [1, 2, 1]\n"),
                "x.toml:4: duplicate sweep points: 0 (experiment.seed=1) and 2 (experiment.seed=1) \
                 resolve to the same configuration",
            ),
        ];
        for (text, want) in cases {
            match resolve(&text, &[]) {
                Ok(points) => assert!(want.is_empty(), "{text}: resolved {} points", points.len()),
                Err(e) => assert!(
                    !want.is_empty() && e.starts_with(want),
                    "{text}\n got {e}\nwant {want}"
                ),
            }
        }
        let text = grid("\"train.learning_rate\" = [0.1, 0.2]");
        assert_eq!(
            resolve(&text, &["train.learning_rate=0.3"]).unwrap_err(),
            "--set train.learning_rate=0.3: \"train.learning_rate\" is swept by sweep.grid \
             (x.toml:4); drop the --set or the sweep key"
        );
        // An error in a command-line --set stays with it.
        assert_eq!(
            resolve(&text, &["train.epochz=3"]).unwrap_err(),
            "--set train.epochz=3: unknown key 'train.epochz' (did you mean 'epochs'?)"
        );
    }

    #[test]
    fn the_sweep_table_is_not_part_of_the_run_config() {
        let with = format!("{BASE}[train]\nepochs = 3\n[sweep]\nseeds = [0, 1]\n");
        let without = format!("{BASE}[train]\nepochs = 3\n");
        let a = load_str(&with, Path::new("x.toml"), &[]).unwrap();
        let b = load_str(&without, Path::new("x.toml"), &[]).unwrap();
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.toml, b.toml);
        assert!(!a.toml.contains("[sweep]") && !a.toml.contains("seeds"));
        assert!(sweep_source_str(&without, Path::new("x.toml"))
            .unwrap()
            .is_none());
        for set in ["sweep.seeds=[1]", "sweep=3"] {
            let err = load_str(&without, Path::new("x.toml"), &[set.into()])
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("--set {set}: sweep can only be given in an experiment file")
            );
        }
        let env = [("RUNNER_SWEEP__SEEDS".to_string(), "[1]".to_string())];
        let err = load_from(Path::new("x.toml"), Some(&without), &[], &env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable RUNNER_SWEEP__SEEDS: sweep can only be given in an experiment file"
        );
    }

    #[test]
    fn a_sweep_is_inherited_through_extends() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("base.toml"), format!("{BASE}[sweep]\nseeds = [5]\n")).unwrap();
        std::fs::write(
            d.join("mid.toml"),
            "extends = \"base.toml\"\n[train]\nepochs = 2\n",
        )
        .unwrap();
        std::fs::write(
            d.join("top.toml"),
            "extends = \"mid.toml\"\n\n[sweep]\ngrid = { \"train.epochs\" = [1] }\n",
        )
        .unwrap();
        let s = sweep_source(&d.join("mid.toml")).unwrap().unwrap();
        assert_eq!(s.file, d.join("base.toml"));
        assert_eq!(labels(&parse(&s).unwrap()), ["experiment.seed=5"]);
        // The nearest table wins as a whole; tables are not merged.
        let s = sweep_source(&d.join("top.toml")).unwrap().unwrap();
        assert_eq!(s.file, d.join("top.toml"));
        let spec = parse(&s).unwrap();
        assert_eq!(labels(&spec), ["train.epochs=1"]);
        assert_eq!(spec.grid[0].at, Place::file(d.join("top.toml"), Some(4)));
    }

    #[test]
    fn the_written_table_reads_back_to_the_same_points() {
        let text = format!(
            "{BASE}[sweep]\nname = \"a b\"\nseeds = [2]\n\
             grid = {{ \"train.unsampled\" = [\"skip\", \"pytorch1\"], \"train.learning_rate\" = [1.0, 2e-3] }}\n\
             zip = {{ \"data.train\" = [[\"a\"], [\"b\", \"c\"]], \"eval.every\" = [1, 2] }}\n"
        );
        let s = spec(&text).unwrap();
        let written = s.to_toml();
        assert_eq!(
            written,
            "[sweep]\nname = \"a b\"\n\
             grid = { \"train.unsampled\" = [\"skip\", \"pytorch1\"], \"train.learning_rate\" = [1.0, 0.002] }\n\
             zip = { \"data.train\" = [[\"a\"], [\"b\", \"c\"]], \"eval.every\" = [1, 2] }\n\
             seeds = [2]\n"
        );
        let back = spec(&format!("{BASE}{written}")).unwrap();
        assert_eq!(labels(&back), labels(&s));
        assert_eq!(back.name.as_deref(), Some("a b"));
        // Values survive the trip through --set with their types.
        let points = resolve(
            &format!("{BASE}[data]\nsplit = \"custom\"\nvalid = [\"v\"]\n{written}"),
            &[],
        )
        .unwrap();
        let c = &points[0].resolved.config;
        assert_eq!(c.train.unsampled, crate::config::Unsampled::Skip);
        assert_eq!(c.train.learning_rate, 1.0);
        assert_eq!(c.data.train, [PathBuf::from("a")]);
        assert_eq!(
            points[3].resolved.config.data.train,
            [PathBuf::from("b"), PathBuf::from("c")]
        );
        assert_eq!(points[3].resolved.config.train.learning_rate, 0.002);
    }
}
