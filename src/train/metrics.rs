//! Ranking metrics between supernet scores and ground truth.
//! TODO(helper train)

/// Kendall tau-b (ties in either ranking handled); NaN when undefined.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let _ = (x, y);
    todo!("train helper")
}

/// Spearman rho (Pearson on average ranks); NaN when undefined.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let _ = (x, y);
    todo!("train helper")
}

/// Pearson r; NaN when undefined.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let _ = (x, y);
    todo!("train helper")
}

/// Fraction of the top `k` by `x` that are also in the top `k` by `y` (higher is better).
pub fn top_k_overlap(x: &[f64], y: &[f64], k: usize) -> f64 {
    let _ = (x, y, k);
    todo!("train helper")
}
