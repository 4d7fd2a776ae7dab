//! Global gradient-norm clipping (PyTorch's `clip_grad_norm_`).
//! TODO(helper train)

use candle_core::{backprop::GradStore, Result, Var};

/// Scales the gradients of `params` in place so their global L2 norm is at most `max_norm`
/// (factor max_norm / (norm + 1e-6) when below 1); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut GradStore, params: &[Var], max_norm: f64) -> Result<f64> {
    let _ = (grads, params, max_norm);
    todo!("train helper")
}
