//! Losses.
//! TODO(helper nn-bn)

use candle_core::{Result, Tensor};

/// Mean cross-entropy of `logits` (N, K) against integer `targets` (N,) (u32).
/// `smoothing` > 0 puts `smoothing / (K - 1)` on every wrong class and `1 - smoothing` on the
/// right one (the study's ProxylessNAS label smoothing, not PyTorch's `eps / K`).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, smoothing: f64) -> Result<Tensor> {
    let _ = (logits, targets, smoothing);
    todo!("nn-bn helper")
}

/// Number of rows whose arg-max equals the target, and the number of rows whose target is
/// among the `k` largest logits.
pub fn correct_topk(logits: &Tensor, targets: &Tensor, k: usize) -> Result<(usize, usize)> {
    let _ = (logits, targets, k);
    todo!("nn-bn helper")
}
