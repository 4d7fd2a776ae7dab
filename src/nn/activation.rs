//! Activations with PyTorch's gradients (candle's ReLU passes gradient 1 at exactly 0).
//! TODO(helper nn-bn)

use candle_core::{Result, Tensor};

/// ReLU whose gradient at 0 is 0, like PyTorch.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    todo!("nn-bn helper")
}

/// ReLU6 (min(max(x, 0), 6)) with PyTorch's gradient (0 at 0 and at 6).
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    let _ = x;
    todo!("nn-bn helper")
}
