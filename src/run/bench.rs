//! `runner bench`: time one NB201 training step and one architecture evaluation, side by side
//! with the PyTorch twin in `benchmarks/pytorch/nb201_bench.py` when PyTorch is installed.

use crate::config::{Nb201Space, Unsampled};
use crate::nn::{self, Mode, Store};
use crate::rng;
use crate::space::{nb201, Ctx, Space, Supernet};
use crate::train::sgd::{Sgd, SgdConfig};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    pub channels: usize,
    pub cells: usize,
    pub batch: usize,
    pub recal_steps: usize,
    pub recal_batch: usize,
    pub valid_images: usize,
    pub eval_batch: usize,
    pub repeats: usize,
    pub rounds: usize,
    pub threads: usize,
    /// `benchmarks/pytorch/nb201_bench.py`, when PyTorch is to be compared.
    pub pytorch_script: Option<PathBuf>,
    pub python: String,
}

/// Median times in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub train_step: Vec<f64>,
    pub evaluate: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
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

/// The architecture both sides run: conv3x3, conv3x3, conv1x1, avg pool, conv3x3, skip.
const ARCH: &str = r#"{"0_1":3,"0_2":3,"0_3":2,"1_2":4,"1_3":3,"2_3":1}"#;

struct RunnerSide {
    net: nb201::Nb201Net,
    store: Store,
    opt: Sgd,
    arch: nb201::Arch,
    x: Tensor,
    y: Tensor,
    xr: Tensor,
    xv: Tensor,
    valid_batches: usize,
    recal_steps: usize,
}

impl RunnerSide {
    fn new(a: &BenchArgs, dev: &Device) -> Result<Self> {
        let store = Store::new(dev);
        let mut r = rng::stream(0, "bench", &[]);
        let cfg = Nb201Space {
            channels: a.channels,
            cells_per_stage: a.cells,
            bn_momentum: 0.1,
        };
        let net = nb201::Nb201Net::new(&store.root(), &cfg, 10, &mut r)?;
        let opt = Sgd::new(
            store.params(),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 5e-4,
                unsampled: Unsampled::Pytorch1,
            },
        );
        let arch = nb201::Nb201::decode(&serde_json::from_str(ARCH)?)?;
        let x = nn::init::normal(&mut r, &[a.batch, 3, 32, 32], 1.0, dev)?;
        let labels: Vec<u32> = (0..a.batch as u32).map(|i| i % 10).collect();
        let y = Tensor::new(labels, dev)?;
        let xr = nn::init::normal(&mut r, &[a.recal_batch, 3, 32, 32], 1.0, dev)?;
        let xv = nn::init::normal(&mut r, &[a.eval_batch, 3, 32, 32], 1.0, dev)?;
        Ok(Self {
            net,
            store,
            opt,
            arch,
            x,
            y,
            xr,
            xv,
            valid_batches: (a.valid_images / a.eval_batch).max(1),
            recal_steps: a.recal_steps,
        })
    }

    fn step(&mut self) -> Result<()> {
        let mut r = rng::stream(0, "bench-dropout", &[]);
        let logits = self
            .net
            .forward(&self.x, &self.arch, &mut Ctx::new(Mode::Train, &mut r))?
            .logits;
        let loss = nn::loss::cross_entropy(&logits, &self.y, 0.0)?;
        let grads = loss.backward()?;
        self.opt.step(&grads)?;
        Ok(())
    }

    fn evaluate(&mut self) -> Result<()> {
        let saved: Vec<Tensor> = self
            .store
            .buffers()
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        self.store.begin_recalibration();
        for _ in 0..self.recal_steps {
            let mut r = rng::stream(0, "bench-dropout", &[]);
            self.net.forward(
                &self.xr,
                &self.arch,
                &mut Ctx::new(Mode::Recalibrate, &mut r),
            )?;
        }
        self.store.finish_recalibration()?;
        for _ in 0..self.valid_batches {
            let mut r = rng::stream(0, "bench-dropout", &[]);
            let l = self
                .net
                .forward(&self.xv, &self.arch, &mut Ctx::new(Mode::Eval, &mut r))?
                .logits;
            l.argmax(1)?.to_vec1::<u32>()?;
        }
        for ((_, v), t) in self.store.buffers().iter().zip(saved) {
            v.set(&t)?;
        }
        Ok(())
    }
}

fn time_ms(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn pytorch_round(a: &BenchArgs, script: &Path) -> Result<(f64, f64)> {
    let out = std::process::Command::new(&a.python)
        .arg(script)
        .args([
            "--channels",
            &a.channels.to_string(),
            "--cells",
            &a.cells.to_string(),
            "--batch",
            &a.batch.to_string(),
        ])
        .args([
            "--recal-steps",
            &a.recal_steps.to_string(),
            "--recal-batch",
            &a.recal_batch.to_string(),
        ])
        .args([
            "--valid-images",
            &a.valid_images.to_string(),
            "--eval-batch",
            &a.eval_batch.to_string(),
        ])
        .args([
            "--repeats",
            &a.repeats.to_string(),
            "--threads",
            &a.threads.to_string(),
            "--arch",
            ARCH,
        ])
        .output()
        .with_context(|| format!("cannot run {} {}", a.python, script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("PyTorch benchmark output")?;
    let get = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_f64())
            .with_context(|| format!("PyTorch benchmark output lacks {k}"))
    };
    Ok((get("train_step")?, get("evaluate")?))
}

/// Whether `python` can import torch.
pub fn has_torch(python: &str) -> bool {
    std::process::Command::new(python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs the benchmark and returns the printed table.
pub fn bench(a: &BenchArgs) -> Result<String> {
    let dev = Device::Cpu;
    let mut side = RunnerSide::new(a, &dev)?;
    side.step()?;
    side.evaluate()?;
    let mut ours = Timings::default();
    let mut theirs = Timings::default();
    for round in 0..a.rounds {
        for _ in 0..a.repeats {
            ours.train_step.push(time_ms(&mut || side.step())?);
        }
        for _ in 0..a.repeats {
            ours.evaluate.push(time_ms(&mut || side.evaluate())?);
        }
        if let Some(script) = &a.pytorch_script {
            let (s, e) = pytorch_round(a, script)?;
            theirs.train_step.push(s);
            theirs.evaluate.push(e);
        }
        tracing::info!("bench round {}/{} done", round + 1, a.rounds);
    }
    let mut t = format!(
        "NB201 supernet, C={} N={} ({} threads), arch {ARCH}\ntrain step: batch {}; evaluation: {} x {} recalibration + {} validation images in batches of {}\n\n",
        a.channels, a.cells, a.threads, a.batch, a.recal_steps, a.recal_batch, a.valid_images, a.eval_batch
    );
    t.push_str(&format!(
        "{:<12} {:>14} {:>14} {:>16}\n",
        "what", "runner ms", "pytorch ms", "pytorch/runner"
    ));
    for (name, o, p) in [
        ("train step", &ours.train_step, &theirs.train_step),
        ("evaluation", &ours.evaluate, &theirs.evaluate),
    ] {
        let (mo, mp) = (median(o), median(p));
        let ratio = if p.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}x", mp / mo)
        };
        let mp_s = if p.is_empty() {
            "-".to_string()
        } else {
            format!("{mp:.1}")
        };
        t.push_str(&format!("{name:<12} {mo:>14.1} {mp_s:>14} {ratio:>16}\n"));
    }
    if a.pytorch_script.is_none() {
        t.push_str(
            "\n(PyTorch not found: install python3-torch or set RUNNER_BENCH_PYTHON to compare)\n",
        );
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(super::median(&[]).is_nan());
    }
}
