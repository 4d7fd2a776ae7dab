//! The benchmark's results: medians, the table, the JSON document.

use super::spec::Spec;
use super::worker::SideResult;
use super::BenchDevice;
use serde::Serialize;

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The honesty check of one space: runner (float32) against the PyTorch twin in float64 (the
/// reference), with the twin in float32 as the measure of float32 noise.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub shape: String,
    /// [step 1 loss, step 1 gradient norm before clipping, step 2 loss].
    pub runner: Vec<f64>,
    pub pytorch: Vec<f64>,
    pub pytorch_float32: Vec<f64>,
    /// || runner's parameters after step 1 - the reference's || / || the reference's update ||.
    pub update_error_runner: f64,
    /// The same for the float32 twin: float32 arithmetic's own error.
    pub update_error_float32: f64,
    /// Relative differences from the reference of runner's three numbers.
    pub rel_diff: Vec<f64>,
    pub ok: bool,
    /// What failed, when not ok.
    pub why: Option<String>,
}

/// The relative tolerance of the step-1 loss and gradient norm.
pub const CHECK_TOLERANCE: f64 = 1e-3;
/// runner's update may be this many times further from the float64 reference than the float32
/// twin's (float32 rounding differs from library to library; a wrong optimizer or gradient is
/// off by far more), or within [`CHECK_TOLERANCE`].
pub const UPDATE_NOISE_FACTOR: f64 = 4.0;

fn rel(a: f64, b: f64) -> f64 {
    let d = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
    if d.is_nan() {
        f64::INFINITY
    } else {
        d
    }
}

impl Check {
    pub fn new(
        shape: &str,
        runner: Vec<f64>,
        pytorch: Vec<f64>,
        pytorch_float32: Vec<f64>,
        update_error_runner: f64,
        update_error_float32: f64,
    ) -> Self {
        let rel_diff: Vec<f64> = runner
            .iter()
            .zip(&pytorch)
            .map(|(a, b)| rel(*a, *b))
            .collect();
        let mut why = vec![];
        if runner.len() != 3 || pytorch.len() != 3 {
            why.push(format!(
                "expected 3 numbers per side, got {runner:?} and {pytorch:?}"
            ));
        } else {
            if rel_diff[0] > CHECK_TOLERANCE {
                why.push(format!("step 1 loss differs by {:.1e}", rel_diff[0]));
            }
            if rel_diff[1] > CHECK_TOLERANCE {
                why.push(format!(
                    "step 1 gradient norm differs by {:.1e}",
                    rel_diff[1]
                ));
            }
        }
        let bound = CHECK_TOLERANCE.max(UPDATE_NOISE_FACTOR * update_error_float32);
        if update_error_runner.is_nan() || update_error_runner > bound {
            why.push(format!(
                "the first update is {update_error_runner:.1e} off the reference (float32 PyTorch: {update_error_float32:.1e})"
            ));
        }
        Self {
            shape: shape.to_string(),
            runner,
            pytorch,
            pytorch_float32,
            update_error_runner,
            update_error_float32,
            rel_diff,
            ok: why.is_empty(),
            why: (!why.is_empty()).then(|| why.join("; ")),
        }
    }
}

/// One space at one shape: every round of both sides.
#[derive(Clone, Debug)]
pub struct Row {
    pub spec: Spec,
    pub runner: Vec<SideResult>,
    pub pytorch: Vec<SideResult>,
    /// Failures of either side (the row's numbers then cover the rounds that ran).
    pub errors: Vec<String>,
}

/// A side's samples of one phase over all rounds, its median and its peak memory.
struct Phase {
    samples: Vec<f64>,
    median: f64,
    peak_mib: Option<f64>,
    gpu_peak_mib: Option<f64>,
}

fn phase(rounds: &[SideResult], eval: bool) -> Phase {
    let samples: Vec<f64> = rounds
        .iter()
        .flat_map(|r| if eval { &r.evaluate } else { &r.train_step })
        .copied()
        .collect();
    let peak_mib = rounds
        .iter()
        .filter_map(|r| {
            if eval {
                r.eval_peak_mib
            } else {
                r.train_peak_mib
            }
        })
        .reduce(f64::max);
    let gpu_peak_mib = rounds
        .iter()
        .filter_map(|r| {
            if eval {
                r.eval_gpu_peak_mib
            } else {
                r.train_gpu_peak_mib
            }
        })
        .reduce(f64::max);
    Phase {
        median: median(&samples),
        samples,
        peak_mib,
        gpu_peak_mib,
    }
}

/// The whole benchmark.
#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Per space (first shape checked).
    pub checks: Vec<(String, Check)>,
    pub rounds: usize,
    pub threads: usize,
    pub warmup: usize,
    pub repeats: usize,
    /// The PyTorch interpreter and version, when compared.
    pub pytorch: Option<(String, String)>,
    /// Why PyTorch is not compared, when it is not.
    pub no_pytorch_reason: Option<String>,
    pub device: BenchDevice,
    /// runner's CPU convolution kernels, as `describe()` words them.
    pub conv_engine: String,
}

const WHAT: [(&str, bool); 2] = [("train step", false), ("evaluation", true)];

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_mb(v: Option<f64>) -> String {
    v.map_or("-".into(), |m| format!("{m:.0}"))
}

/// What the memory numbers are, for the table and the JSON.
fn memory_note(device: BenchDevice) -> &'static str {
    match device {
        BenchDevice::Cpu => "MB: peak resident memory (MiB, VmHWM) of each side's process during the phase, model included.",
        BenchDevice::Cuda => "RSS MB: peak resident host memory (MiB, VmHWM) of each side's process during the phase (the PyTorch process includes its CUDA libraries). PyTorch GPU MB: torch.cuda.max_memory_allocated() during the phase (reset between the phases, model included). runner's GPU memory is not measured: candle keeps no allocator statistics, so there is no runner GPU column.",
    }
}

impl Report {
    /// Whether every check passed and no side failed.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.rows.iter().flat_map(|r| r.errors.clone()).collect();
        for (space, c) in &self.checks {
            if !c.ok {
                p.push(format!(
                    "{space} {}: runner and the PyTorch twin disagree: {}",
                    c.shape,
                    c.why.as_deref().unwrap_or("?")
                ));
            }
        }
        p
    }

    /// The table, the shapes, the architectures and the checks, as printed.
    pub fn table(&self) -> String {
        let cuda = self.device == BenchDevice::Cuda;
        let mut header = vec![
            "space",
            "shape",
            "what",
            "runner ms",
            "PyTorch ms",
            "PyTorch/runner",
        ];
        if cuda {
            header.extend(["runner RSS MB", "PyTorch RSS MB", "PyTorch GPU MB"]);
        } else {
            header.extend(["runner MB", "PyTorch MB"]);
        }
        let mut cells: Vec<Vec<String>> = vec![];
        for row in &self.rows {
            for (what, eval) in WHAT {
                let o = phase(&row.runner, eval);
                let p = phase(&row.pytorch, eval);
                let ratio = if p.samples.is_empty() || o.samples.is_empty() {
                    "-".into()
                } else {
                    format!("{:.2}", p.median / o.median)
                };
                let mut c = vec![
                    row.spec.kind().to_string(),
                    row.spec.shape.clone(),
                    what.to_string(),
                    fmt_ms(o.median),
                    fmt_ms(p.median),
                    ratio,
                    fmt_mb(o.peak_mib),
                    fmt_mb(p.peak_mib),
                ];
                if cuda {
                    c.push(fmt_mb(p.gpu_peak_mib));
                }
                cells.push(c);
            }
        }
        let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.len());
            }
        }
        let line = |c: &[String]| {
            let parts: Vec<String> = c
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i < 3 {
                        format!("{s:<width$}", width = w[i])
                    } else {
                        format!("{s:>width$}", width = w[i])
                    }
                })
                .collect();
            format!("| {} |\n", parts.join(" | "))
        };
        let on = if cuda {
            "CUDA device 0 (the device synchronised around every timed run; the threads only bound each process's host-side work)"
        } else {
            "the CPU"
        };
        let mut t = format!(
            "on {on}; {} thread(s); {} round(s), runner and PyTorch alternating; per round {} warm-up + {} timed run(s) of each phase; medians over all timed runs; runner's CPU convolution: {}\n\n",
            self.threads, self.rounds, self.warmup, self.repeats, self.conv_engine
        );
        let header: Vec<String> = header.into_iter().map(String::from).collect();
        t.push_str(&line(&header));
        let rule: Vec<String> = w
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if i < 3 {
                    "-".repeat(n + 2)
                } else {
                    format!("{}:", "-".repeat(n + 1))
                }
            })
            .collect();
        t.push_str(&format!("|{}|\n", rule.join("|")));
        for c in &cells {
            t.push_str(&line(c));
        }
        t.push_str(&format!(
            "\nPyTorch/runner > 1: runner is faster. {}\n",
            memory_note(self.device)
        ));
        match &self.pytorch {
            Some((py, v)) => t.push_str(&format!(
                "PyTorch {v} ({py}), float32{}, twins in benchmarks/pytorch/.\n",
                if cuda {
                    " with TF32 off (as candle's float32 matrix products)"
                } else {
                    ""
                }
            )),
            None => t.push_str(&format!(
                "PyTorch not compared: {}\n",
                self.no_pytorch_reason.as_deref().unwrap_or("--no-pytorch")
            )),
        }
        t.push_str("\nShapes:\n");
        for row in &self.rows {
            let s = &row.spec;
            t.push_str(&format!(
                "  {} {}: {}\n    train step: {}\n    evaluation: {}\n",
                s.kind(),
                s.shape,
                s.describe_net(),
                s.describe_step(),
                s.describe_eval()
            ));
        }
        t.push_str("\nArchitectures (the same on both sides):\n");
        let mut seen = vec![];
        for row in &self.rows {
            let k = row.spec.kind();
            if !seen.contains(&k) {
                seen.push(k);
                t.push_str(&format!("  {k}: {}\n", row.spec.arch));
            }
        }
        if !self.checks.is_empty() {
            t.push_str("\nCheck: runner (float32) vs the PyTorch twin in float64 from runner's initial weights and batch, drop-path and dropout off; step 1 loss, step 1 gradient norm before clipping, step 2 loss; update error = distance of the parameters after step 1 from float64's, relative to float64's update (the float32 twin's own error in brackets, the float32 noise floor):\n");
            let f = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.6}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            for (space, c) in &self.checks {
                t.push_str(&format!(
                    "  {space} {}: runner [{}], PyTorch [{}]; update error {:.1e} ({:.1e}): {}\n",
                    c.shape,
                    f(&c.runner),
                    f(&c.pytorch),
                    c.update_error_runner,
                    c.update_error_float32,
                    if c.ok { "agree" } else { "DISAGREE" },
                ));
            }
        }
        t
    }

    /// The machine-readable results.
    pub fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .flat_map(|row| {
                WHAT.iter().map(move |(what, eval)| {
                    let o = phase(&row.runner, *eval);
                    let p = phase(&row.pytorch, *eval);
                    let num = |v: f64| if v.is_finite() { Some(v) } else { None };
                    serde_json::json!({
                        "space": row.spec.kind(),
                        "shape": row.spec.shape,
                        "what": what,
                        "runner_ms": num(o.median),
                        "pytorch_ms": num(p.median),
                        "pytorch_over_runner": num(p.median / o.median),
                        "runner_peak_mib": o.peak_mib,
                        "pytorch_peak_mib": p.peak_mib,
                        "runner_gpu_peak_mib": o.gpu_peak_mib,
                        "pytorch_gpu_peak_mib": p.gpu_peak_mib,
                        "runner_samples_ms": o.samples,
                        "pytorch_samples_ms": p.samples,
                        "errors": row.errors,
                        "network": row.spec.describe_net(),
                        "step": row.spec.describe_step(),
                        "evaluation": row.spec.describe_eval(),
                        "spec": row.spec,
                    })
                })
            })
            .collect();
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|(space, c)| {
                // serde_json writes non-finite numbers as null.
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("space".into(), space.clone().into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "device": self.device,
            "memory": memory_note(self.device),
            "gpu_memory_measured": {
                "runner": false,
                "pytorch": self.device == BenchDevice::Cuda && self.pytorch.is_some(),
            },
            "threads": self.threads,
            "conv_engine": self.conv_engine,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "pytorch": self.pytorch.as_ref().map(|(py, v)| serde_json::json!({"python": py, "version": v})),
            "no_pytorch_reason": self.no_pytorch_reason,
            "rows": rows,
            "checks": checks,
            "problems": self.problems(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::bench::spec::{spec, Timing};

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn check_tolerances() {
        let c = |r: Vec<f64>, p: Vec<f64>, ur: f64, uf: f64| Check::new("s", r, p, vec![], ur, uf);
        // Step 1 within 1e-3 relative; step 2 is reported, not judged.
        assert!(c(vec![2.0, 50.0, 1.0], vec![2.001, 50.0, 1.5], 1e-6, 1e-6).ok);
        assert!(!c(vec![2.0, 50.0, 1.0], vec![2.01, 50.0, 1.0], 1e-6, 1e-6).ok);
        assert!(!c(vec![2.0, 50.0, 1.0], vec![2.0, 50.1, 1.0], 1e-6, 1e-6).ok);
        assert!(!c(vec![2.0, f64::NAN, 1.0], vec![2.0, 50.0, 1.0], 1e-6, 1e-6).ok);
        assert!(!c(vec![2.0, 50.0], vec![2.0, 50.0], 1e-6, 1e-6).ok);
        // The update: within 1e-3, or within 4x the float32 twin's own error.
        assert!(c(vec![2.0, 50.0, 1.0], vec![2.0, 50.0, 1.0], 9e-4, 1e-7).ok);
        assert!(c(vec![2.0, 50.0, 1.0], vec![2.0, 50.0, 1.0], 0.03, 0.01).ok);
        assert!(!c(vec![2.0, 50.0, 1.0], vec![2.0, 50.0, 1.0], 0.05, 0.01).ok);
        assert!(!c(vec![2.0, 50.0, 1.0], vec![2.0, 50.0, 1.0], f64::NAN, 0.01).ok);
    }

    #[test]
    fn table_has_medians_ratio_and_memory() {
        let t = Timing {
            threads: 2,
            warmup: 1,
            repeats: 2,
        };
        let side = |a: f64, b: f64, mb: f64| SideResult {
            train_step: vec![a, 3.0 * a],
            evaluate: vec![b, b],
            train_peak_mib: Some(mb),
            eval_peak_mib: Some(mb + 1.0),
            peak_reset: true,
            threads: 2,
            torch: None,
            train_gpu_peak_mib: None,
            eval_gpu_peak_mib: None,
        };
        let r = Report {
            rows: vec![Row {
                spec: spec("nb201", "tiny", t).unwrap(),
                runner: vec![side(10.0, 5.0, 100.0), side(10.0, 5.0, 120.0)],
                pytorch: vec![side(20.0, 2.5, 300.0)],
                errors: vec![],
            }],
            checks: vec![(
                "nb201".into(),
                Check::new(
                    "tiny",
                    vec![2.3, 9.0, 2.1],
                    vec![2.3, 9.0, 2.1],
                    vec![],
                    1e-6,
                    1e-6,
                ),
            )],
            rounds: 2,
            threads: 2,
            warmup: 1,
            repeats: 2,
            pytorch: Some(("python3".into(), "1.13".into())),
            no_pytorch_reason: None,
            device: BenchDevice::Cpu,
            conv_engine: "runner's own kernels".into(),
        };
        let table = r.table();
        // runner train samples 10, 30, 10, 30 -> 20; PyTorch 20, 60 -> 40; ratio 2.00.
        assert!(table.contains("| nb201 | tiny  | train step |      20.0 |       40.0 |           2.00 |       120 |        300 |"), "{table}");
        assert!(table.contains("| nb201 | tiny  | evaluation |       5.0 |        2.5 |           0.50 |       121 |        301 |"), "{table}");
        assert!(table.contains("agree"));
        let j = r.json();
        assert_eq!(j["rows"][0]["pytorch_over_runner"], 2.0);
        assert_eq!(j["rows"][1]["runner_peak_mib"], 121.0);
        assert_eq!(j["checks"][0]["ok"], true);
        assert!(r.problems().is_empty());
        assert_eq!(j["device"], "cpu");
        assert!(!table.contains("GPU MB"), "{table}");
    }

    #[test]
    fn on_cuda_the_table_has_pytorch_gpu_memory_and_says_runner_has_none() {
        let t = Timing {
            threads: 2,
            warmup: 1,
            repeats: 1,
        };
        // A twin's result line on CUDA, as common.py prints it.
        let py: SideResult = serde_json::from_str(
            r#"{"threads": 2, "torch": "2.11.0", "train_step": [4.0], "train_peak_mib": 2100.0,
                "peak_reset": true, "train_gpu_peak_mib": 812.5, "evaluate": [2.0],
                "eval_peak_mib": 2101.0, "eval_gpu_peak_mib": 640.0}"#,
        )
        .unwrap();
        let runner = SideResult {
            train_step: vec![2.0],
            evaluate: vec![4.0],
            train_peak_mib: Some(900.0),
            eval_peak_mib: Some(901.0),
            peak_reset: true,
            threads: 2,
            torch: None,
            train_gpu_peak_mib: None,
            eval_gpu_peak_mib: None,
        };
        let r = Report {
            rows: vec![Row {
                spec: spec("darts", "tiny", t).unwrap(),
                runner: vec![runner],
                pytorch: vec![py],
                errors: vec![],
            }],
            checks: vec![],
            rounds: 1,
            threads: 2,
            warmup: 1,
            repeats: 1,
            pytorch: Some(("python3".into(), "2.11.0".into())),
            no_pytorch_reason: None,
            device: BenchDevice::Cuda,
            conv_engine: "runner's own kernels".into(),
        };
        let table = r.table();
        assert!(
            table.starts_with("on CUDA device 0 (the device synchronised"),
            "{table}"
        );
        assert!(
            table.contains("| runner RSS MB | PyTorch RSS MB | PyTorch GPU MB |"),
            "{table}"
        );
        assert!(table.contains("| darts | tiny  | train step |       2.0 |        4.0 |           2.00 |           900 |           2100 |            812 |"), "{table}");
        assert!(table.contains("| darts | tiny  | evaluation |       4.0 |        2.0 |           0.50 |           901 |           2101 |            640 |"), "{table}");
        assert!(
            table.contains("runner's GPU memory is not measured"),
            "{table}"
        );
        assert!(table.contains("TF32 off"), "{table}");
        let j = r.json();
        assert_eq!(j["device"], "cuda");
        assert_eq!(j["gpu_memory_measured"]["runner"], false);
        assert_eq!(j["gpu_memory_measured"]["pytorch"], true);
        assert_eq!(j["rows"][0]["pytorch_gpu_peak_mib"], 812.5);
        assert!(j["rows"][0]["runner_gpu_peak_mib"].is_null());
        assert_eq!(j["rows"][1]["pytorch_gpu_peak_mib"], 640.0);
    }
}
