//! Averaged SGD with `torch.optim.ASGD`'s semantics (PyTorch 1.13), with saveable state.
//!
//! Per parameter with a gradient, its state (created on its first update: step 0, eta = the
//! group's current lr, mu = 1, ax = 0) advances as
//! `step += 1; d = g + wd * p; p *= 1 - lambd * eta; p -= eta * d;
//! ax = p if mu == 1 else ax + (p - ax) * mu; eta = lr / (1 + lambd * lr * step)^alpha;
//! mu = 1 / max(1, step - t0)`.
//! Two consequences the study inherits: the update uses the eta computed at the END of the
//! previous step, so with a learning rate that changes every batch (DARTS-PTB scales it by
//! seq_len / bptt) step k moves by the lr of batch k - 1 (the first step by its own); and with
//! t0 = 0, mu is 1 for the first two steps, so `ax` averages the iterates from step 2 on.
//! PyTorch keeps eta and mu in float32 tensors; they are rounded to f32 here too.

use crate::config::Unsampled;
use anyhow::{anyhow, bail, Context};
use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AsgdConfig {
    pub lr: f64,
    /// Decay term (the study: 0).
    pub lambd: f64,
    /// Power of the eta update (PyTorch's default 0.75).
    pub alpha: f64,
    /// Step after which averaging starts (the study: 0).
    pub t0: f64,
    pub weight_decay: f64,
    pub unsampled: Unsampled,
}

/// State keys: per-parameter flags and scalars (parameter order) and `ax.<name>` averages.
pub const TOUCHED_KEY: &str = "asgd.touched";
pub const HAS_STATE_KEY: &str = "asgd.has_state";
pub const STEP_KEY: &str = "asgd.step";
pub const ETA_KEY: &str = "asgd.eta";
pub const MU_KEY: &str = "asgd.mu";
pub const LR_KEY: &str = "asgd.lr";
pub const AX_PREFIX: &str = "ax.";

#[derive(Clone)]
struct PState {
    step: f64,
    eta: f64,
    mu: f64,
    ax: Tensor,
}

struct Param {
    name: String,
    var: Var,
    state: Option<PState>,
    touched: bool,
}

pub struct Asgd {
    params: Vec<Param>,
    cfg: AsgdConfig,
    problem: Option<String>,
}

/// PyTorch holds eta and mu as float32 tensors.
fn f32r(x: f64) -> f64 {
    x as f32 as f64
}

impl Asgd {
    pub fn new(params: Vec<(String, Var)>, cfg: AsgdConfig) -> Self {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        let mut problem = None;
        for (name, var) in &params {
            if !names.insert(name.clone()) {
                problem.get_or_insert_with(|| format!("parameter name {name:?} given twice"));
            }
            if !ids.insert(var.as_tensor().id()) {
                problem
                    .get_or_insert_with(|| format!("parameter {name:?} is a variable given twice"));
            }
        }
        let params = params
            .into_iter()
            .map(|(name, var)| Param {
                name,
                var,
                state: None,
                touched: false,
            })
            .collect();
        Self {
            params,
            cfg,
            problem,
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    pub fn lr(&self) -> f64 {
        self.cfg.lr
    }

    /// Marks a parameter as having had a gradient before this optimizer existed (PyTorch 1.x
    /// keeps a zeroed `.grad` on it, so a new ASGD steps it even without a fresh gradient).
    pub fn set_touched(&mut self, name: &str, touched: bool) {
        if let Some(p) = self.params.iter_mut().find(|p| p.name == name) {
            p.touched = touched;
        }
    }

    fn check(&self) -> Result<()> {
        match &self.problem {
            Some(p) => candle_core::bail!("asgd: {p}"),
            None => Ok(()),
        }
    }

    /// One step (see the module comment). Parameters without a gradient are skipped under
    /// `Skip`, and under `Pytorch1` stepped with a zero gradient once they have had one.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.check()?;
        let c = self.cfg;
        for p in &mut self.params {
            let grad = grads.get(p.var.as_tensor());
            match (grad, c.unsampled) {
                (Some(_), _) => p.touched = true,
                (None, Unsampled::Pytorch1) if p.touched => {}
                (None, _) => continue,
            }
            update(p, grad, &c).map_err(|e| e.context(format!("asgd step of {:?}", p.name)))?;
        }
        Ok(())
    }

    /// The averaged value of every parameter that has ASGD state (the study evaluates with
    /// these after the switch), as (variable, average) pairs.
    pub fn averages(&self) -> Vec<(Var, Tensor)> {
        self.params
            .iter()
            .filter_map(|p| Some((p.var.clone(), p.state.as_ref()?.ax.clone())))
            .collect()
    }

    /// Optimizer state as named tensors (copies): per-parameter `asgd.touched`,
    /// `asgd.has_state` (u8), `asgd.step`, `asgd.eta`, `asgd.mu` (f64), `ax.<name>`, and `asgd.lr`.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        self.check()?;
        let n = self.params.len();
        let cpu = Device::Cpu;
        let mut out = BTreeMap::new();
        let flags = |f: &dyn Fn(&Param) -> bool| -> Result<Tensor> {
            let v: Vec<u8> = self.params.iter().map(|p| u8::from(f(p))).collect();
            Tensor::from_vec(v, n, &cpu)
        };
        let scalars = |f: &dyn Fn(&PState) -> f64| -> Result<Tensor> {
            let v: Vec<f64> = self
                .params
                .iter()
                .map(|p| p.state.as_ref().map_or(0.0, f))
                .collect();
            Tensor::from_vec(v, n, &cpu)
        };
        out.insert(TOUCHED_KEY.into(), flags(&|p| p.touched)?);
        out.insert(HAS_STATE_KEY.into(), flags(&|p| p.state.is_some())?);
        out.insert(STEP_KEY.into(), scalars(&|s| s.step)?);
        out.insert(ETA_KEY.into(), scalars(&|s| s.eta)?);
        out.insert(MU_KEY.into(), scalars(&|s| s.mu)?);
        out.insert(LR_KEY.into(), Tensor::from_vec(vec![self.cfg.lr], 1, &cpu)?);
        for p in &self.params {
            if let Some(s) = &p.state {
                out.insert(format!("{AX_PREFIX}{}", p.name), s.ax.copy()?);
            }
        }
        Ok(out)
    }

    /// Restores `state()`'s output; refuses unknown entries, wrong shapes and missing
    /// averages. Nothing changes when it fails.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        if let Some(p) = &self.problem {
            bail!("asgd: {p}");
        }
        let n = self.params.len();
        let vec_of = |key: &str| -> anyhow::Result<Vec<f64>> {
            let t = state
                .get(key)
                .ok_or_else(|| anyhow!("optimizer state has no {key:?} entry"))?;
            if t.dims() != [n] {
                bail!(
                    "optimizer state {key:?} has shape {:?}, expected [{n}] (one per parameter)",
                    t.dims()
                );
            }
            t.to_dtype(DType::F64)?
                .to_vec1::<f64>()
                .with_context(|| format!("reading optimizer state {key:?}"))
        };
        let touched = vec_of(TOUCHED_KEY)?;
        let has = vec_of(HAS_STATE_KEY)?;
        let steps = vec_of(STEP_KEY)?;
        let etas = vec_of(ETA_KEY)?;
        let mus = vec_of(MU_KEY)?;
        let lr = match state.get(LR_KEY) {
            Some(t) => match t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[..] {
                [lr] => Some(lr),
                _ => bail!("optimizer state {LR_KEY:?} must hold one value"),
            },
            None => None,
        };
        for key in state.keys() {
            let known = [
                TOUCHED_KEY,
                HAS_STATE_KEY,
                STEP_KEY,
                ETA_KEY,
                MU_KEY,
                LR_KEY,
            ]
            .contains(&key.as_str());
            if !known
                && key
                    .strip_prefix(AX_PREFIX)
                    .is_none_or(|name| !self.params.iter().any(|p| p.name == name))
            {
                bail!("unknown optimizer state entry {key:?}");
            }
        }
        let mut new_states = Vec::with_capacity(n);
        for (i, p) in self.params.iter().enumerate() {
            let key = format!("{AX_PREFIX}{}", p.name);
            let st = match (has[i] != 0.0, state.get(&key)) {
                (false, None) => None,
                (false, Some(_)) => bail!("optimizer state {key:?} of a parameter without state"),
                (true, None) => bail!("optimizer state lacks {key:?}"),
                (true, Some(t)) => {
                    if t.shape() != p.var.shape() {
                        bail!(
                            "optimizer state {key:?} has shape {:?}, parameter has {:?}",
                            t.dims(),
                            p.var.dims()
                        );
                    }
                    let ax = t
                        .to_device(p.var.device())?
                        .to_dtype(p.var.dtype())?
                        .copy()?;
                    Some(PState {
                        step: steps[i],
                        eta: etas[i],
                        mu: mus[i],
                        ax,
                    })
                }
            };
            new_states.push(st);
        }
        for ((p, st), t) in self.params.iter_mut().zip(new_states).zip(touched) {
            p.state = st;
            p.touched = t != 0.0;
        }
        if let Some(lr) = lr {
            self.cfg.lr = lr;
        }
        Ok(())
    }
}

fn update(p: &mut Param, grad: Option<&Tensor>, c: &AsgdConfig) -> Result<()> {
    let param = p.var.as_tensor();
    if let Some(g) = grad {
        if g.shape() != param.shape() || g.dtype() != param.dtype() {
            candle_core::bail!(
                "gradient {:?} {:?} does not match the parameter {:?} {:?}",
                g.dims(),
                g.dtype(),
                param.dims(),
                param.dtype()
            );
        }
    }
    let st = match &mut p.state {
        Some(s) => s,
        None => p.state.insert(PState {
            step: 0.0,
            eta: f32r(c.lr),
            mu: 1.0,
            ax: param.zeros_like()?,
        }),
    };
    st.step += 1.0;
    let d = match (grad, c.weight_decay != 0.0) {
        (Some(g), true) => g.add(&(param * c.weight_decay)?)?,
        (Some(g), false) => g.clone(),
        (None, true) => (param * c.weight_decay)?,
        (None, false) => param.zeros_like()?,
    };
    let mut new = param.clone();
    if c.lambd != 0.0 {
        new = (new * (1.0 - c.lambd * st.eta))?;
    }
    let new = new.sub(&(d * st.eta)?)?;
    p.var.set(&new)?;
    st.ax = if st.mu != 1.0 {
        st.ax.add(&(new.sub(&st.ax)? * st.mu)?)?
    } else {
        // `set` copied `new` into the parameter's storage, so `new` is not aliased by it.
        new
    };
    st.eta = f32r(c.lr / (1.0 + c.lambd * c.lr * st.step).powf(c.alpha));
    st.mu = f32r(1.0 / (st.step - c.t0).max(1.0));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AsgdConfig {
        AsgdConfig {
            lr: 1.0,
            lambd: 0.0,
            alpha: 0.75,
            t0: 0.0,
            weight_decay: 0.0,
            unsampled: Unsampled::Pytorch1,
        }
    }

    fn grads_for(v: &Var, g: &[f64]) -> GradStore {
        // d(sum(v * g))/dv = g
        let gt = Tensor::new(g, &Device::Cpu).unwrap();
        v.as_tensor()
            .mul(&gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn eta_lags_one_step_and_ax_averages_from_step_two() {
        let v = Var::new(&[0f64, 0.0], &Device::Cpu).unwrap();
        let mut o = Asgd::new(vec![("w".into(), v.clone())], cfg());
        let lrs = [1.0, 2.0, 4.0, 8.0];
        let mut iterates = vec![];
        for lr in lrs {
            o.set_lr(lr);
            o.step(&grads_for(&v, &[1.0, -1.0])).unwrap();
            iterates.push(v.as_tensor().to_vec1::<f64>().unwrap()[0]);
        }
        // Step 1 moves by its own lr (1), step k by the lr of step k - 1: 1, 1, 2, 4.
        assert_eq!(iterates, vec![-1.0, -2.0, -4.0, -8.0]);
        // ax after step 4 = mean of the iterates of steps 2..4.
        let ax = o.averages()[0].1.to_vec1::<f64>().unwrap();
        assert!((ax[0] - (-2.0 - 4.0 - 8.0) / 3.0).abs() < 1e-6, "{ax:?}");
        // State round trip: a restored optimizer continues identically.
        let st = o.state().unwrap();
        let v2 = Var::new(
            v.as_tensor().to_vec1::<f64>().unwrap().as_slice(),
            &Device::Cpu,
        )
        .unwrap();
        let mut o2 = Asgd::new(vec![("w".into(), v2.clone())], cfg());
        o2.load_state(&st).unwrap();
        o.set_lr(3.0);
        o2.set_lr(3.0);
        o.step(&grads_for(&v, &[0.5, 0.25])).unwrap();
        o2.step(&grads_for(&v2, &[0.5, 0.25])).unwrap();
        assert_eq!(
            v.as_tensor().to_vec1::<f64>().unwrap(),
            v2.as_tensor().to_vec1::<f64>().unwrap()
        );
        assert_eq!(
            o.averages()[0].1.to_vec1::<f64>().unwrap(),
            o2.averages()[0].1.to_vec1::<f64>().unwrap()
        );
    }

    #[test]
    fn load_state_refuses_mismatches() {
        let v = Var::new(&[0f64, 0.0], &Device::Cpu).unwrap();
        let mut o = Asgd::new(vec![("w".into(), v.clone())], cfg());
        o.step(&grads_for(&v, &[1.0, 1.0])).unwrap();
        let st = o.state().unwrap();
        let mut bad = st.clone();
        bad.insert(
            "ax.other".into(),
            Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap(),
        );
        assert!(o.load_state(&bad).is_err());
        let mut bad = st.clone();
        bad.remove("ax.w");
        assert!(o.load_state(&bad).is_err());
        let mut bad = st.clone();
        bad.insert(
            "ax.w".into(),
            Tensor::zeros(3, DType::F64, &Device::Cpu).unwrap(),
        );
        assert!(o.load_state(&bad).is_err());
        assert!(o.load_state(&st).is_ok());
    }
}
