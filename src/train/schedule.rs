//! Learning-rate schedules as pure functions of the step.
//! TODO(helper train)

/// Cosine annealing from `initial` at step 0 to `ending` at `total` steps.
pub fn cosine(initial: f64, ending: f64, step: usize, total: usize) -> f64 {
    let _ = (initial, ending, step, total);
    todo!("train helper")
}
