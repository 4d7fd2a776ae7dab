//! `runner bench`: per search space, time one supernet training step and one architecture
//! evaluation at the study's shape and at a reduced one, side by side with a float32 PyTorch
//! twin of the same network and step (`benchmarks/pytorch/<space>_bench.py`) when PyTorch is
//! installed.
//!
//! Each side runs in its own process per round (runner as `runner bench-worker`, PyTorch as
//! `python3 <twin> --spec JSON`), both with the same thread count and on the same device
//! (`--device cpu`, or `cuda`: CUDA device 0), so that both build the same model from scratch,
//! warm up, time their phases and report their own peak memory. Rounds alternate which side
//! goes first. Before timing a space, an honesty check runs both sides
//! from runner's initial weights on runner's batch (exported as `.npz`) and compares the losses
//! of two deterministic training steps.

pub mod memory;
pub mod report;
pub mod spec;
pub mod worker;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use report::{Check, Report, Row};
use spec::{Nb201Overrides, Spec, Timing, SHAPES, SPACES};
use std::path::{Path, PathBuf};
use std::process::Command;
use worker::SideResult;

/// The PyTorch side: an interpreter that imports torch and the twins' folder.
#[derive(Clone, Debug)]
pub struct Pytorch {
    pub python: String,
    pub version: String,
    pub scripts: PathBuf,
}

/// Where both sides compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchDevice {
    /// The CPU.
    Cpu,
    /// CUDA device 0 (`CUDA_VISIBLE_DEVICES` picks another).
    Cuda,
}

impl BenchDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            BenchDevice::Cpu => "cpu",
            BenchDevice::Cuda => "cuda",
        }
    }

    /// Refuses CUDA where it cannot work, before any child starts: a build without the `cuda`
    /// feature, or a machine whose driver finds no device. Opening the device is left to the
    /// workers, so that this process holds no CUDA context while they are measured.
    pub fn require(self) -> Result<()> {
        if self == BenchDevice::Cuda {
            crate::run::execute::require_cuda_build("--device cuda", "use --device cpu")?;
            let (n, why) = crate::run::execute::cuda_devices();
            if n == 0 {
                bail!(
                    "--device cuda but this machine has no CUDA device{}",
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// The device a worker computes on.
    pub fn open(self) -> Result<Device> {
        match self {
            BenchDevice::Cpu => Ok(Device::Cpu),
            BenchDevice::Cuda => {
                self.require()?;
                Device::new_cuda(0).context("cannot open CUDA device 0")
            }
        }
    }
}

/// What `runner bench` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Spaces in the order given (`all` expanded).
    pub spaces: Vec<String>,
    pub shapes: Vec<String>,
    pub overrides: Nb201Overrides,
    pub timing: Timing,
    pub rounds: usize,
    pub pytorch: Option<Pytorch>,
    /// Why there is no PyTorch side, for the table.
    pub no_pytorch_reason: Option<String>,
    /// Run the loss check before timing (needs PyTorch).
    pub check: bool,
    /// Only the loss checks, no timing.
    pub check_only: bool,
    /// The runner binary that serves `bench-worker`.
    pub exe: PathBuf,
    pub device: BenchDevice,
    /// runner's CPU convolution kernels in the workers.
    pub conv_engine: crate::config::schema::ConvEngineCfg,
}

/// `all` -> every space; a comma list stays in its order, duplicates dropped.
pub fn expand_spaces(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for s in list {
        let names: Vec<&str> = if s == "all" {
            SPACES.to_vec()
        } else if SPACES.contains(&s.as_str()) {
            vec![s.as_str()]
        } else {
            bail!(
                "--space {s:?}: expected one of {}, or all",
                SPACES.join(", ")
            );
        };
        for n in names {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    if out.is_empty() {
        bail!("--space: no space given");
    }
    Ok(out)
}

/// `both` -> study and reduced.
pub fn expand_shapes(list: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = vec![];
    for s in list {
        let names: Vec<&str> = if s == "both" {
            vec!["study", "reduced"]
        } else if SHAPES.contains(&s.as_str()) {
            vec![s.as_str()]
        } else {
            bail!(
                "--shape {s:?}: expected one of {}, or both",
                SHAPES.join(", ")
            );
        };
        for n in names {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    if out.is_empty() {
        bail!("--shape: no shape given");
    }
    Ok(out)
}

/// Every row's spec, in table order (space by space, shapes in the order given).
pub fn specs(o: &Options) -> Result<Vec<Spec>> {
    if o.overrides.any() && !o.spaces.iter().any(|s| s == "nb201") {
        bail!("--channels, --cells, --batch, --recal-steps, --recal-batch, --valid-images and --eval-batch apply to nb201 only; add --space nb201");
    }
    if o.rounds == 0 && !o.check_only {
        bail!("--rounds must be at least 1");
    }
    if o.check_only && (o.pytorch.is_none() || !o.check) {
        bail!("--check-only needs PyTorch and the check (not --no-pytorch or --no-check)");
    }
    let mut out = vec![];
    for k in &o.spaces {
        for sh in &o.shapes {
            let mut s = spec::spec(k, sh, o.timing)?;
            if k == "nb201" {
                o.overrides.apply(&mut s)?;
            }
            spec::validate(&s)?;
            out.push(s);
        }
    }
    Ok(out)
}

/// The last JSON object line of a child's stdout.
fn parse_json_line(stdout: &[u8]) -> Option<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(|v| v.is_object())
}

fn run_child(mut cmd: Command, what: &str, threads: usize) -> Result<serde_json::Value> {
    // Both sides get the same thread budget: candle and rayon read RAYON_NUM_THREADS, the
    // PyTorch twins call torch.set_num_threads and OpenMP/MKL read theirs.
    for var in [
        "RAYON_NUM_THREADS",
        "CANDLE_NUM_THREADS",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
    ] {
        cmd.env(var, threads.to_string());
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("(no message)");
        bail!("{what} failed ({}): {last}", out.status);
    }
    parse_json_line(&out.stdout).with_context(|| format!("{what} printed no JSON result"))
}

fn runner_cmd(o: &Options, spec: &Spec, check: Option<&Path>) -> Result<Command> {
    let mut c = Command::new(&o.exe);
    c.arg("bench-worker")
        .arg("--device")
        .arg(o.device.as_str())
        .arg("--conv-engine")
        .arg(o.conv_engine.as_str())
        .arg("--spec")
        .arg(serde_json::to_string(spec)?);
    if let Some(p) = check {
        c.arg("--check-out").arg(p);
    }
    Ok(c)
}

fn pytorch_cmd(
    py: &Pytorch,
    device: BenchDevice,
    spec: &Spec,
    check: Option<&Path>,
) -> Result<Command> {
    let script = py.scripts.join(format!("{}_bench.py", spec.kind()));
    if !script.is_file() {
        bail!("{} is missing", script.display());
    }
    let mut c = Command::new(&py.python);
    c.arg(&script)
        .arg("--device")
        .arg(device.as_str())
        .arg("--spec")
        .arg(serde_json::to_string(spec)?);
    if let Some(p) = check {
        c.arg("--check").arg(p);
    }
    Ok(c)
}

fn side(v: serde_json::Value, what: &str) -> Result<SideResult> {
    serde_json::from_value(v).with_context(|| format!("{what}: unexpected result fields"))
}

fn numbers(v: &serde_json::Value, key: &str, what: &str) -> Result<Vec<f64>> {
    v.get(key)
        .and_then(|l| l.as_array())
        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
        .with_context(|| format!("{what}: no {key} in its check result"))
}

/// Runs the check of `spec` on both sides.
fn check(o: &Options, py: &Pytorch, spec: &Spec) -> Result<Check> {
    let npz = std::env::temp_dir().join(format!(
        "runner-bench-check-{}-{}.npz",
        std::process::id(),
        spec.kind()
    ));
    let after = worker::after_path(&npz);
    let result = (|| -> Result<Check> {
        let threads = spec.threads;
        let r = run_child(runner_cmd(o, spec, Some(&npz))?, "runner check", threads)?;
        let mut cmd = pytorch_cmd(py, o.device, spec, Some(&npz))?;
        cmd.arg("--check-after").arg(&after);
        let p = run_child(cmd, "PyTorch check", threads)?;
        let num = |k: &str| p.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        Ok(Check::new(
            &spec.shape,
            numbers(&r, "losses", "runner check")?,
            numbers(&p, "losses", "PyTorch check")?,
            numbers(&p, "float32_losses", "PyTorch check")?,
            num("update_error_runner"),
            num("update_error_float32"),
        ))
    })();
    let _ = std::fs::remove_file(&npz);
    let _ = std::fs::remove_file(&after);
    result
}

fn summary(r: &SideResult) -> String {
    format!(
        "step {:.1} ms, evaluation {:.1} ms",
        report::median(&r.train_step),
        report::median(&r.evaluate)
    )
}

/// Runs every row; progress goes to stderr.
pub fn run(o: &Options) -> Result<Report> {
    let specs = specs(o)?;
    let mut rows = vec![];
    let mut checks = vec![];
    for spec in specs {
        let name = format!("{} {}", spec.kind(), spec.shape);
        // The check runs once per space before its first row, at the tiny shape when that is
        // asked for, else at the reduced one (a float64 step at the study's shape would be
        // slow and take twice the memory; the check is about the twin's code, not the size).
        if let (Some(py), true) = (&o.pytorch, o.check) {
            if !checks
                .iter()
                .any(|(k, _): &(String, Check)| k == spec.kind())
            {
                let shape = if o.shapes.iter().any(|s| s == "tiny") {
                    "tiny"
                } else {
                    "reduced"
                };
                let cs = spec::spec(spec.kind(), shape, o.timing)?;
                let cname = format!("{} {shape}", spec.kind());
                eprintln!("bench {cname}: checking that both sides compute the same thing");
                let c = check(o, py, &cs).with_context(|| format!("{cname}: the check"))?;
                eprintln!(
                    "bench {cname}: check runner {:?} PyTorch {:?}, update error {:.1e} (float32 PyTorch {:.1e}): {}",
                    c.runner,
                    c.pytorch,
                    c.update_error_runner,
                    c.update_error_float32,
                    if c.ok { "agree" } else { "DISAGREE" }
                );
                checks.push((spec.kind().to_string(), c));
            }
        }
        let mut row = Row {
            spec: spec.clone(),
            runner: vec![],
            pytorch: vec![],
            errors: vec![],
        };
        let rounds = if o.check_only { 0 } else { o.rounds };
        for round in 0..rounds {
            // Alternate who goes first, so that a drift in machine load hits both sides.
            let runner_first = round % 2 == 0;
            for turn in 0..2 {
                let runner_turn = (turn == 0) == runner_first;
                if runner_turn {
                    let r = run_child(runner_cmd(o, &spec, None)?, "runner", spec.threads)
                        .and_then(|v| side(v, "runner"));
                    match r {
                        Ok(r) => {
                            eprintln!(
                                "bench {name}: round {}/{} runner {}",
                                round + 1,
                                o.rounds,
                                summary(&r)
                            );
                            row.runner.push(r);
                        }
                        Err(e) => row
                            .errors
                            .push(format!("{name} round {}: {e:#}", round + 1)),
                    }
                } else if let Some(py) = &o.pytorch {
                    let r = pytorch_cmd(py, o.device, &spec, None)
                        .and_then(|c| run_child(c, "PyTorch", spec.threads))
                        .and_then(|v| side(v, "PyTorch"));
                    match r {
                        Ok(r) => {
                            eprintln!(
                                "bench {name}: round {}/{} PyTorch {}",
                                round + 1,
                                o.rounds,
                                summary(&r)
                            );
                            row.pytorch.push(r);
                        }
                        Err(e) => row
                            .errors
                            .push(format!("{name} round {}: {e:#}", round + 1)),
                    }
                }
            }
        }
        rows.push(row);
    }
    Ok(Report {
        rows,
        checks,
        rounds: o.rounds,
        threads: o.timing.threads,
        warmup: o.timing.warmup,
        repeats: o.timing.repeats,
        pytorch: o
            .pytorch
            .as_ref()
            .map(|p| (p.python.clone(), p.version.clone())),
        no_pytorch_reason: o.no_pytorch_reason.clone(),
        device: o.device,
        // The workers were given `o.conv_engine`; this process set the same one.
        conv_engine: crate::nn::onednn::describe(),
    })
}

/// The version of torch that `python` imports, if it does.
pub fn torch_version(python: &str) -> Option<String> {
    let out = Command::new(python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Where the twins live: next to the sources this binary was built from, or under the
/// current folder.
pub fn scripts_dir() -> Option<PathBuf> {
    [
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benchmarks/pytorch"),
        PathBuf::from("benchmarks/pytorch"),
    ]
    .into_iter()
    .find(|p| p.join("common.py").is_file())
}

/// How to get PyTorch, for the message when it is missing.
pub const INSTALL_HINT: &str = "run scripts/install-pytorch.sh (Debian's python3-torch, or a CPU wheel in a virtual environment), then pass --python PATH or set RUNNER_BENCH_PYTHON";

/// Whether the torch that `python` imports sees a CUDA device.
fn torch_sees_cuda(python: &str) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// The interpreter to compare with: `--python`, then `RUNNER_BENCH_PYTHON`, then `python3`,
/// then `/usr/bin/python3`, the first that imports torch (with `--device cuda`, a torch that
/// sees a CUDA device); `Err` says why there is none.
pub fn find_pytorch(
    explicit: Option<&str>,
    device: BenchDevice,
) -> std::result::Result<Pytorch, String> {
    let Some(scripts) = scripts_dir() else {
        return Err("benchmarks/pytorch/ not found (run from the repository)".into());
    };
    let env = std::env::var("RUNNER_BENCH_PYTHON").ok();
    let candidates: Vec<String> = match (explicit, env) {
        (Some(p), _) => vec![p.to_string()],
        (None, Some(p)) => vec![p],
        (None, None) => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    for python in &candidates {
        if let Some(version) = torch_version(python) {
            if device == BenchDevice::Cuda && !torch_sees_cuda(python) {
                return Err(format!(
                    "{python}'s torch {version} sees no CUDA device (torch.cuda.is_available() is false)"
                ));
            }
            return Ok(Pytorch {
                python: python.clone(),
                version,
                scripts,
            });
        }
    }
    Err(format!(
        "{} cannot import torch; {INSTALL_HINT}",
        candidates.join(" / ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_and_shapes_expand_in_order_without_duplicates() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(expand_spaces(&s(&["all"])).unwrap(), s(&SPACES));
        assert_eq!(
            expand_spaces(&s(&["ptb", "nb101", "ptb"])).unwrap(),
            s(&["ptb", "nb101"])
        );
        assert!(expand_spaces(&s(&["nb301"])).is_err());
        assert_eq!(
            expand_shapes(&s(&["both", "tiny"])).unwrap(),
            s(&["study", "reduced", "tiny"])
        );
        assert!(expand_shapes(&s(&["large"])).is_err());
    }

    #[test]
    fn the_last_json_line_is_the_result() {
        let v = parse_json_line(b"warming up\n{\"a\": 1}\n").unwrap();
        assert_eq!(v["a"], 1);
        assert!(parse_json_line(b"no json\n[1]\n").is_none());
    }
}
