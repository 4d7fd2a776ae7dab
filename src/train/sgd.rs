//! SGD with momentum, Nesterov and weight decay in PyTorch's order, with saveable state and the
//! two treatments of parameters that have no gradient this step.
//!
//! Per parameter (dampening 0): `d = g + wd * p`; with momentum `buf = d` on the parameter's
//! first update and `buf = momentum * buf + d` afterwards; `d = d + momentum * buf` (Nesterov)
//! or `d = buf`; `p -= lr * d`. On the CPU (f32 / f64, contiguous) this runs as two fused
//! in-place passes through candle's in-place custom ops (one over the buffer, one over the
//! parameter) without temporaries; elsewhere it uses plain tensor ops.

use crate::config::Unsampled;
use anyhow::{anyhow, bail, Context};
use candle_core::{
    backprop::GradStore, CpuStorage, DType, Device, InplaceOp1, InplaceOp2, InplaceOp3, Layout,
    Result, Tensor, Var, WithDType,
};
use std::collections::{BTreeMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub unsampled: Unsampled,
}

/// State key of the per-parameter "has had a gradient" flags (u8, parameter order).
pub const TOUCHED_KEY: &str = "touched";
/// State key of the learning rate (f64, one element).
pub const LR_KEY: &str = "lr";
/// Prefix of the momentum buffer keys: `momentum.<parameter name>`.
pub const MOMENTUM_PREFIX: &str = "momentum.";

struct Param {
    name: String,
    var: Var,
    /// Created on the parameter's first update, as PyTorch does.
    buf: Option<Tensor>,
    /// Whether the parameter has ever had a gradient (PyTorch 1.x keeps a zero one afterwards).
    touched: bool,
}

pub struct Sgd {
    params: Vec<Param>,
    cfg: SgdConfig,
    /// Duplicate names or variables make the state ambiguous and would update twice; reported
    /// by every fallible call rather than panicking in `new`.
    problem: Option<String>,
}

/// The scalars of one update, in the dtype-independent form the kernels convert from.
#[derive(Clone, Copy)]
struct Coefs {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

/// What a fused pass writes, and which read-only operands it receives (in this order: the
/// gradient when `grad`, then the parameter for `Buf` or the buffer for `Param` with momentum).
#[derive(Clone, Copy)]
enum Pass {
    /// `buf = d` when `first`, else `buf = momentum * buf + d`.
    Buf { first: bool },
    /// `p -= lr * step`, recomputing `d` from the not yet updated `p`.
    Param,
}

#[derive(Clone, Copy)]
struct Fused {
    c: Coefs,
    pass: Pass,
    grad: bool,
}

fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("sgd: non-contiguous operand".into()))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// The update's scalars converted to the storage dtype, as torch converts its `alpha`s.
struct Kernel<T> {
    lr: T,
    m: T,
    wd: T,
}

impl<T: WithDType> Kernel<T> {
    /// `d = g + wd * p` with `g` = 0 when there is no gradient, exactly as torch forms it.
    #[inline(always)]
    fn d<const G: bool, const W: bool>(&self, g: T, p: T) -> T {
        let g = if G { g } else { T::from_f64(0.0) };
        if W {
            g + self.wd * p
        } else {
            g
        }
    }

    /// One pass over `dst` (the buffer or the parameter); `grad` is empty without a gradient,
    /// `other` is the parameter (buffer pass), the buffer (parameter pass with momentum) or empty.
    // Index loops: the gradient slice is empty when `G` is false, so it cannot be zipped.
    #[allow(clippy::needless_range_loop)]
    fn pass<const G: bool, const W: bool>(
        &self,
        op: &Fused,
        dst: &mut [T],
        grad: &[T],
        other: &[T],
    ) {
        let n = dst.len();
        let zero = T::from_f64(0.0);
        // Re-sliced to `n` (lengths were checked by the caller) so the loops need no bounds checks.
        let grad = if G { &grad[..n] } else { grad };
        let g = |i: usize| if G { grad[i] } else { zero };
        match op.pass {
            Pass::Buf { first } => {
                let p = &other[..n];
                if first {
                    for i in 0..n {
                        dst[i] = self.d::<G, W>(g(i), p[i]);
                    }
                } else {
                    for i in 0..n {
                        dst[i] = self.m * dst[i] + self.d::<G, W>(g(i), p[i]);
                    }
                }
            }
            Pass::Param if op.c.momentum == 0.0 => {
                for i in 0..n {
                    let p = dst[i];
                    dst[i] = p - self.lr * self.d::<G, W>(g(i), p);
                }
            }
            Pass::Param if op.c.nesterov => {
                let buf = &other[..n];
                for i in 0..n {
                    let p = dst[i];
                    dst[i] = p - self.lr * (self.d::<G, W>(g(i), p) + self.m * buf[i]);
                }
            }
            Pass::Param => {
                let buf = &other[..n];
                for i in 0..n {
                    dst[i] -= self.lr * buf[i];
                }
            }
        }
    }
}

impl Fused {
    fn run<T: WithDType>(&self, dst: &mut [T], srcs: &[&[T]]) -> Result<()> {
        let n = dst.len();
        if srcs.iter().any(|s| s.len() != n) {
            candle_core::bail!("sgd: operand lengths differ");
        }
        let (grad, rest): (&[T], &[&[T]]) = if self.grad {
            match srcs.split_first() {
                Some((g, rest)) => (g, rest),
                None => candle_core::bail!("sgd: missing gradient operand"),
            }
        } else {
            (&[], srcs)
        };
        let other: &[T] = match (self.pass, self.c.momentum != 0.0) {
            // The parameter pass without momentum reads nothing besides the gradient.
            (Pass::Param, false) => &[],
            _ => rest
                .first()
                .ok_or_else(|| candle_core::Error::Msg("sgd: missing operand".into()))?,
        };
        let k = Kernel {
            lr: T::from_f64(self.c.lr),
            m: T::from_f64(self.c.momentum),
            wd: T::from_f64(self.c.weight_decay),
        };
        // Monomorphised per (gradient present, weight decay on) so the loops carry no branches.
        match (self.grad, self.c.weight_decay != 0.0) {
            (true, true) => k.pass::<true, true>(self, dst, grad, other),
            (true, false) => k.pass::<true, false>(self, dst, grad, other),
            (false, true) => k.pass::<false, true>(self, dst, grad, other),
            (false, false) => k.pass::<false, false>(self, dst, grad, other),
        }
        Ok(())
    }

    fn cpu(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        srcs: &[(&CpuStorage, &Layout)],
    ) -> Result<()> {
        let (start, end) = dl
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("sgd: non-contiguous target".into()))?;
        match dst {
            CpuStorage::F32(v) => {
                let s = srcs
                    .iter()
                    .map(|(s, l)| contiguous::<f32>(s, l))
                    .collect::<Result<Vec<_>>>()?;
                self.run(&mut v[start..end], &s)
            }
            CpuStorage::F64(v) => {
                let s = srcs
                    .iter()
                    .map(|(s, l)| contiguous::<f64>(s, l))
                    .collect::<Result<Vec<_>>>()?;
                self.run(&mut v[start..end], &s)
            }
            _ => candle_core::bail!("sgd: fused update supports f32 and f64 only"),
        }
    }
}

impl InplaceOp1 for Fused {
    fn name(&self) -> &'static str {
        "sgd-fused"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        self.cpu(s, l, &[])
    }
}

impl InplaceOp2 for Fused {
    fn name(&self) -> &'static str {
        "sgd-fused"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        self.cpu(s1, l1, &[(s2, l2)])
    }
}

impl InplaceOp3 for Fused {
    fn name(&self) -> &'static str {
        "sgd-fused"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        self.cpu(s1, l1, &[(s2, l2), (s3, l3)])
    }
}

/// Applies `op` in place on `dst` with the given read-only operands (0 to 2 of them).
fn apply_fused(dst: &Tensor, srcs: &[&Tensor], op: &Fused) -> Result<()> {
    match srcs {
        [] => dst.inplace_op1(op),
        [a] => dst.inplace_op2(a, op),
        [a, b] => dst.inplace_op3(a, b, op),
        _ => candle_core::bail!("sgd: too many operands"),
    }
}

fn fusable(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu)
        && matches!(t.dtype(), DType::F32 | DType::F64)
        && t.is_contiguous()
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> Self {
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
                buf: None,
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

    pub fn config(&self) -> SgdConfig {
        self.cfg
    }

    /// Marks every parameter as having had a gradient, as the study's parallel sampling does by
    /// pre-filling all gradients with zeros: under `Pytorch1` every parameter is then updated
    /// from the first step on.
    pub fn mark_all_touched(&mut self) {
        for p in &mut self.params {
            p.touched = true;
        }
    }

    /// Whether the named parameter has ever had a gradient (None for an unknown name).
    pub fn touched(&self, name: &str) -> Option<bool> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.touched)
    }

    fn check(&self) -> Result<()> {
        match &self.problem {
            Some(p) => candle_core::bail!("sgd: {p}"),
            None => Ok(()),
        }
    }

    /// One step. A parameter without an entry in `grads` is skipped under `Unsampled::Skip`;
    /// under `Unsampled::Pytorch1` it is stepped with a zero gradient if it ever had one.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.check()?;
        let c = Coefs {
            lr: self.cfg.lr,
            momentum: self.cfg.momentum,
            nesterov: self.cfg.nesterov,
            weight_decay: self.cfg.weight_decay,
        };
        let unsampled = self.cfg.unsampled;
        for p in &mut self.params {
            let grad = grads.get(p.var.as_tensor());
            match (grad, unsampled) {
                (Some(_), _) => p.touched = true,
                (None, Unsampled::Pytorch1) if p.touched => {}
                (None, _) => continue,
            }
            update(p, grad, c).map_err(|e| e.context(format!("sgd step of {:?}", p.name)))?;
        }
        Ok(())
    }

    /// Optimizer state (momentum buffers, which parameters were touched) as named tensors:
    /// `momentum.<name>` per existing buffer, `touched` (u8, parameter order) and `lr` (f64).
    /// The tensors are copies, unaffected by later steps.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        self.check()?;
        let mut out = BTreeMap::new();
        for p in &self.params {
            if let Some(buf) = &p.buf {
                out.insert(format!("{MOMENTUM_PREFIX}{}", p.name), buf.copy()?);
            }
        }
        let touched: Vec<u8> = self.params.iter().map(|p| u8::from(p.touched)).collect();
        let n = touched.len();
        out.insert(
            TOUCHED_KEY.to_string(),
            Tensor::from_vec(touched, n, &Device::Cpu)?,
        );
        out.insert(
            LR_KEY.to_string(),
            Tensor::from_vec(vec![self.cfg.lr], 1, &Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores `state()`'s output; refuses names that match no parameter.
    /// Also refuses a missing `touched`, shapes that differ from the parameters and a buffer of
    /// a parameter marked untouched; nothing changes when it fails. Buffers are copied to the
    /// parameter's dtype and device; parameters without a buffer in `state` lose theirs. `lr`
    /// is optional (the schedule usually sets it before the next step).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        if let Some(p) = &self.problem {
            bail!("sgd: {p}");
        }
        let touched_t = state
            .get(TOUCHED_KEY)
            .ok_or_else(|| anyhow!("optimizer state has no {TOUCHED_KEY:?} entry"))?;
        if touched_t.dims() != [self.params.len()] {
            bail!(
                "optimizer state {TOUCHED_KEY:?} has shape {:?}, expected [{}] (one per parameter)",
                touched_t.dims(),
                self.params.len()
            );
        }
        let touched = touched_t
            .to_dtype(DType::U8)?
            .to_vec1::<u8>()
            .with_context(|| format!("reading optimizer state {TOUCHED_KEY:?}"))?;
        if let Some(v) = touched.iter().find(|&&v| v > 1) {
            bail!("optimizer state {TOUCHED_KEY:?} holds {v}, expected 0 or 1");
        }
        let lr = match state.get(LR_KEY) {
            None => None,
            Some(t) => {
                let v = t
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()
                    .with_context(|| format!("reading optimizer state {LR_KEY:?}"))?;
                match v.as_slice() {
                    [lr] => Some(*lr),
                    _ => bail!(
                        "optimizer state {LR_KEY:?} has {} values, expected 1",
                        v.len()
                    ),
                }
            }
        };
        let mut bufs: Vec<Option<Tensor>> = vec![None; self.params.len()];
        for (key, t) in state {
            if key == TOUCHED_KEY || key == LR_KEY {
                continue;
            }
            let name = key
                .strip_prefix(MOMENTUM_PREFIX)
                .ok_or_else(|| anyhow!("unknown optimizer state entry {key:?}"))?;
            let i = self
                .params
                .iter()
                .position(|p| p.name == name)
                .ok_or_else(|| anyhow!("optimizer state {key:?} names no parameter"))?;
            let var = &self.params[i].var;
            if t.shape() != var.shape() {
                bail!(
                    "optimizer state {key:?} has shape {:?}, parameter has {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            if touched[i] == 0 {
                bail!("optimizer state {key:?} is a buffer of a parameter marked untouched");
            }
            // A private copy: the fused update writes into it.
            let buf = t
                .to_device(var.device())?
                .to_dtype(var.dtype())?
                .copy()
                .with_context(|| format!("copying optimizer state {key:?}"))?;
            bufs[i] = Some(buf);
        }
        for ((p, buf), t) in self.params.iter_mut().zip(bufs).zip(touched) {
            p.buf = buf;
            p.touched = t == 1;
        }
        if let Some(lr) = lr {
            self.cfg.lr = lr;
        }
        Ok(())
    }
}

/// One parameter's update; `grad` None means a zero gradient.
fn update(p: &mut Param, grad: Option<&Tensor>, c: Coefs) -> Result<()> {
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
    let fused = fusable(param) && grad.is_none_or(fusable) && p.buf.as_ref().is_none_or(fusable);
    if fused {
        update_fused(p, grad, c)
    } else {
        update_tensors(p, grad, c)
    }
}

fn update_fused(p: &mut Param, grad: Option<&Tensor>, c: Coefs) -> Result<()> {
    let param = p.var.as_tensor();
    let with_grad = |other: &Tensor| -> Vec<Tensor> {
        grad.into_iter().cloned().chain([other.clone()]).collect()
    };
    if c.momentum != 0.0 {
        let first = p.buf.is_none();
        let buf = match &p.buf {
            Some(b) => b.clone(),
            None => param.zeros_like()?,
        };
        let op = Fused {
            c,
            pass: Pass::Buf { first },
            grad: grad.is_some(),
        };
        let srcs = with_grad(param);
        apply_fused(&buf, &srcs.iter().collect::<Vec<_>>(), &op)?;
        let op = Fused {
            c,
            pass: Pass::Param,
            grad: grad.is_some(),
        };
        let srcs = with_grad(&buf);
        apply_fused(param, &srcs.iter().collect::<Vec<_>>(), &op)?;
        p.buf = Some(buf);
    } else {
        let op = Fused {
            c,
            pass: Pass::Param,
            grad: grad.is_some(),
        };
        let srcs: Vec<&Tensor> = grad.into_iter().collect();
        apply_fused(param, &srcs, &op)?;
    }
    Ok(())
}

/// Device-generic path with tensor ops, in the same order of operations as the fused one.
fn update_tensors(p: &mut Param, grad: Option<&Tensor>, c: Coefs) -> Result<()> {
    let param = p.var.as_tensor().detach();
    let d = match (grad, c.weight_decay != 0.0) {
        (Some(g), true) => (g.detach() + param.affine(c.weight_decay, 0.0)?)?,
        (Some(g), false) => g.detach(),
        (None, true) => param.affine(c.weight_decay, 0.0)?,
        (None, false) => param.zeros_like()?,
    };
    let step = if c.momentum != 0.0 {
        let buf = match &p.buf {
            None => d.copy()?,
            Some(b) => (b.affine(c.momentum, 0.0)? + &d)?,
        };
        let step = if c.nesterov {
            (&d + buf.affine(c.momentum, 0.0)?)?
        } else {
            buf.clone()
        };
        p.buf = Some(buf);
        step
    } else {
        d
    };
    p.var.set(&(param - step.affine(c.lr, 0.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    type Fixture = HashMap<String, Tensor>;

    fn fixture() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sgd.npz");
        Tensor::read_npz(path).unwrap().into_iter().collect()
    }

    const NAMES: [&str; 8] = [
        "A.weight", "A.bias", "B.weight", "B.bias", "C.weight", "C.bias", "D.weight", "D.bias",
    ];
    /// The layers on the path at steps 1, 2 and 3 (as in gen_sgd.py).
    const PATHS: [&[&str]; 3] = [&["A", "B"], &["A"], &["A", "D"]];

    fn vars(f: &Fixture, dtype: DType) -> Vec<(String, Var)> {
        NAMES
            .iter()
            .map(|n| {
                let t = f[&format!("init.{n}")].to_dtype(dtype).unwrap();
                (n.to_string(), Var::from_tensor(&t.copy().unwrap()).unwrap())
            })
            .collect()
    }

    fn grads_at(f: &Fixture, params: &[(String, Var)], step: usize) -> GradStore {
        let get = |n: &str| &params.iter().find(|(k, _)| k == n).unwrap().1;
        let dtype = get("A.weight").dtype();
        let mut y = f[&format!("x{}", step + 1)].to_dtype(dtype).unwrap();
        for layer in PATHS[step] {
            let w = get(&format!("{layer}.weight"));
            let b = get(&format!("{layer}.bias"));
            y = y
                .matmul(&w.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
        }
        let t = f[&format!("t{}", step + 1)].to_dtype(dtype).unwrap();
        let loss = (y - t).unwrap().sqr().unwrap().mean_all().unwrap();
        loss.backward().unwrap()
    }

    fn cfg(run: &str, unsampled: Unsampled) -> SgdConfig {
        let (momentum, nesterov) = match run {
            "nesterov" => (0.9, true),
            "momentum" => (0.9, false),
            _ => (0.0, false),
        };
        SgdConfig {
            lr: 0.1,
            momentum,
            nesterov,
            weight_decay: 5e-4,
            unsampled,
        }
    }

    fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let got = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let want = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
        let diff = (&got - &want).unwrap().abs().unwrap().max(0).unwrap();
        let scale = want.abs().unwrap().max(0).unwrap();
        diff.to_scalar::<f64>().unwrap() / scale.to_scalar::<f64>().unwrap().max(1e-12)
    }

    fn compare_runs(dtype: DType, force_tensor_path: bool) {
        let f = fixture();
        for run in ["nesterov", "momentum", "plain"] {
            for (treatment, unsampled) in
                [("pytorch1", Unsampled::Pytorch1), ("skip", Unsampled::Skip)]
            {
                let params = vars(&f, dtype);
                let mut opt = Sgd::new(params.clone(), cfg(run, unsampled));
                for step in 0..3 {
                    let grads = grads_at(&f, &params, step);
                    if force_tensor_path {
                        let c = Coefs {
                            lr: opt.cfg.lr,
                            momentum: opt.cfg.momentum,
                            nesterov: opt.cfg.nesterov,
                            weight_decay: opt.cfg.weight_decay,
                        };
                        for p in &mut opt.params {
                            let g = grads.get(p.var.as_tensor());
                            if g.is_some() {
                                p.touched = true;
                            } else if !(unsampled == Unsampled::Pytorch1 && p.touched) {
                                continue;
                            }
                            update_tensors(p, g, c).unwrap();
                        }
                    } else {
                        opt.step(&grads).unwrap();
                    }
                    for (name, var) in &params {
                        let key = format!("{run}.{treatment}.step{}.{name}", step + 1);
                        let err = rel_err(var.as_tensor(), &f[&key]);
                        assert!(err <= 1e-5, "{key}: rel err {err}");
                    }
                }
            }
        }
    }

    #[test]
    fn fused_f32_matches_torch() {
        compare_runs(DType::F32, false);
    }

    #[test]
    fn fused_f64_matches_torch() {
        compare_runs(DType::F64, false);
    }

    #[test]
    fn tensor_path_matches_torch() {
        compare_runs(DType::F32, true);
    }

    #[test]
    fn treatments_differ_where_expected() {
        // Guards the fixture itself: B moves after step 1 only under Pytorch1, C never moves,
        // D's first update is at step 3.
        let f = fixture();
        let same = |a: &str, b: &str| rel_err(&f[a], &f[b]) == 0.0;
        assert!(!same(
            "nesterov.pytorch1.step3.B.weight",
            "nesterov.pytorch1.step1.B.weight"
        ));
        assert!(same(
            "nesterov.skip.step3.B.weight",
            "nesterov.skip.step1.B.weight"
        ));
        assert!(same("nesterov.pytorch1.step3.C.weight", "init.C.weight"));
        assert!(same("nesterov.pytorch1.step2.D.weight", "init.D.weight"));
        assert!(!same("nesterov.pytorch1.step3.D.weight", "init.D.weight"));
    }

    #[test]
    fn state_round_trip_is_bit_exact() {
        let f = fixture();
        for unsampled in [Unsampled::Pytorch1, Unsampled::Skip] {
            let params = vars(&f, DType::F32);
            let mut opt = Sgd::new(params.clone(), cfg("nesterov", unsampled));
            for step in 0..2 {
                opt.step(&grads_at(&f, &params, step)).unwrap();
            }
            let state = opt.state().unwrap();
            assert!(state.contains_key("momentum.A.weight"));
            assert!(state.contains_key("momentum.B.bias"));
            assert!(!state.contains_key("momentum.C.weight"));
            assert!(!state.contains_key("momentum.D.weight"));
            assert_eq!(
                state["touched"].to_vec1::<u8>().unwrap(),
                vec![1, 1, 1, 1, 0, 0, 0, 0]
            );

            // A fresh optimizer over copies of the step-2 parameters.
            let copies: Vec<(String, Var)> = params
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
                    )
                })
                .collect();
            let mut resumed = Sgd::new(copies.clone(), cfg("nesterov", unsampled));
            resumed.set_lr(1.0);
            resumed.load_state(&state).unwrap();
            assert_eq!(resumed.lr(), 0.1);

            // Stepping the original must not alter the saved state.
            let before = state["momentum.A.weight"].to_vec2::<f32>().unwrap();
            opt.step(&grads_at(&f, &params, 2)).unwrap();
            assert_eq!(state["momentum.A.weight"].to_vec2::<f32>().unwrap(), before);

            resumed.step(&grads_at(&f, &copies, 2)).unwrap();
            for ((name, a), (_, b)) in params.iter().zip(&copies) {
                let a = a
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let b = b
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
                let b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
                assert_eq!(a, b, "{name} after resumed step 3");
            }
            let sa = opt.state().unwrap();
            let sb = resumed.state().unwrap();
            assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
        }
    }

    #[test]
    fn load_state_refuses_bad_entries() {
        let f = fixture();
        let params = vars(&f, DType::F32);
        let mut opt = Sgd::new(params.clone(), cfg("nesterov", Unsampled::Pytorch1));
        opt.step(&grads_at(&f, &params, 0)).unwrap();
        let good = opt.state().unwrap();

        let mut bad = good.clone();
        bad.insert(
            "momentum.E.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.load_state(&bad).unwrap_err().to_string();
        assert!(err.contains("momentum.E.weight"), "{err}");

        let mut bad = good.clone();
        bad.insert(
            "velocity".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.load_state(&bad).unwrap_err().to_string();
        assert!(err.contains("velocity"), "{err}");

        let mut bad = good.clone();
        bad.insert(
            "momentum.A.bias".into(),
            Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.load_state(&bad).unwrap_err().to_string();
        assert!(
            err.contains("momentum.A.bias") && err.contains("shape"),
            "{err}"
        );

        let mut bad = good.clone();
        bad.insert(
            "momentum.C.bias".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let err = opt.load_state(&bad).unwrap_err().to_string();
        assert!(err.contains("untouched"), "{err}");

        let mut bad = good.clone();
        bad.remove("touched");
        assert!(opt
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("touched"));

        let mut bad = good.clone();
        bad.insert(
            "touched".into(),
            Tensor::zeros(3, DType::U8, &Device::Cpu).unwrap(),
        );
        assert!(opt
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("touched"));

        // Failed loads left the optimizer as it was.
        let after = opt.state().unwrap();
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            good.keys().collect::<Vec<_>>()
        );
        opt.load_state(&good).unwrap();
    }

    #[test]
    fn duplicates_are_reported() {
        let v = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let w = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let c = cfg("plain", Unsampled::Skip);
        let mut opt = Sgd::new(vec![("a".into(), v.clone()), ("a".into(), w)], c);
        let grads = v.as_tensor().sum_all().unwrap().backward().unwrap();
        assert!(opt.step(&grads).unwrap_err().to_string().contains("\"a\""));
        let mut opt = Sgd::new(vec![("a".into(), v.clone()), ("b".into(), v.clone())], c);
        assert!(opt.step(&grads).is_err());
        assert!(opt.state().is_err());
    }

    #[test]
    fn mark_all_touched_updates_unreached_parameters() {
        // PyTorch 1.x with pre-filled zero gradients: an unreached parameter decays by
        // lr * wd at the first step and its buffer starts as wd * p.
        let p = Var::new(&[2.0f64, -4.0], &Device::Cpu).unwrap();
        let q = Var::new(&[1.0f64], &Device::Cpu).unwrap();
        let mut opt = Sgd::new(
            vec![("p".into(), p.clone()), ("q".into(), q.clone())],
            SgdConfig {
                lr: 0.5,
                momentum: 0.9,
                nesterov: false,
                weight_decay: 0.25,
                unsampled: Unsampled::Pytorch1,
            },
        );
        let grads = q.as_tensor().sum_all().unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
        assert_eq!(p.as_tensor().to_vec1::<f64>().unwrap(), vec![2.0, -4.0]);
        assert_eq!(opt.touched("p"), Some(false));
        opt.mark_all_touched();
        opt.step(&grads).unwrap();
        // buf = 0.25 * p = [0.5, -1]; p -= 0.5 * buf.
        assert_eq!(p.as_tensor().to_vec1::<f64>().unwrap(), vec![1.75, -3.5]);
        // q: step 1 d = 1 + 0.25 = 1.25, buf = 1.25, q = 0.375;
        // step 2 d = 1 + 0.09375 = 1.09375, buf = 1.125 + 1.09375 = 2.21875, q = -0.734375.
        assert_eq!(q.as_tensor().to_vec1::<f64>().unwrap(), vec![-0.734375]);
    }
}
