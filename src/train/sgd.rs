//! SGD with momentum, Nesterov and weight decay in PyTorch's order, with saveable state and the
//! two treatments of parameters that have no gradient this step.
//! TODO(helper train)

use crate::config::Unsampled;
use candle_core::{backprop::GradStore, Result, Tensor, Var};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    pub unsampled: Unsampled,
}

pub struct Sgd {
    _private: (),
}

impl Sgd {
    pub fn new(params: Vec<(String, Var)>, cfg: SgdConfig) -> Self {
        let _ = (params, cfg);
        todo!("train helper")
    }
    pub fn set_lr(&mut self, lr: f64) {
        let _ = lr;
        todo!("train helper")
    }
    pub fn lr(&self) -> f64 {
        todo!("train helper")
    }
    /// One step. A parameter without an entry in `grads` is skipped under `Unsampled::Skip`;
    /// under `Unsampled::Pytorch1` it is stepped with a zero gradient if it ever had one.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let _ = grads;
        todo!("train helper")
    }
    /// Optimizer state (momentum buffers, which parameters were touched) as named tensors.
    pub fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        todo!("train helper")
    }
    /// Restores `state()`'s output; refuses names that match no parameter.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        let _ = state;
        todo!("train helper")
    }
}
