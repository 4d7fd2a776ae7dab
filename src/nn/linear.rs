//! Fully connected layer, `y = x W^T + b` (PyTorch layout: weight (out, in)).

use super::host::param;
use super::store::Path;
use candle_core::{Result, Tensor, Var};

pub struct Linear {
    pub weight: Var,
    pub bias: Option<Var>,
}

impl Linear {
    pub fn new(path: &Path, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        let weight = path.param("weight", weight)?;
        let bias = match bias {
            Some(b) => Some(path.param("bias", b)?),
            None => None,
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&param(&self.weight).t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&param(b)),
            None => Ok(y),
        }
    }
}
