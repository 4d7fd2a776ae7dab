//! Learning-rate schedules as pure functions of the step (or fractional epoch).
//!
//! Closed forms rather than torch's recursive updates: they agree with torch's per-step sequence
//! to ~1e-15 relative (checked against a fixture) and need no state to resume.

use std::f64::consts::PI;

/// Cosine annealing from `initial` at step 0 to `ending` at `total` steps; steps at or beyond
/// `total` stay at `ending` (torch's scheduler would climb back up; training never goes there).
/// Step 0 returns `initial` exactly, also when `total` is 0.
pub fn cosine(initial: f64, ending: f64, step: usize, total: usize) -> f64 {
    if step == 0 {
        return initial;
    }
    if step >= total {
        return ending;
    }
    ending + (initial - ending) * (1.0 + (PI * step as f64 / total as f64).cos()) / 2.0
}

/// SGDR with a fixed period (torch's `CosineAnnealingWarmRestarts` with `T_mult` 1): a cosine
/// from `initial` to `ending` over `period_steps`, restarting at `initial` at every multiple
/// of the period. A period of 0 means no schedule: `initial` throughout.
pub fn cosine_restarts(initial: f64, ending: f64, step: usize, period_steps: usize) -> f64 {
    if period_steps == 0 {
        return initial;
    }
    cosine(initial, ending, step % period_steps, period_steps)
}

/// The ProxylessNAS trainer's fractional epoch for 0-based `step` of 1-based `epoch`:
/// `epoch - 1 + step / steps_per_epoch`.
pub fn fractional_epoch(epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
    let frac = if steps_per_epoch == 0 {
        0.0
    } else {
        step as f64 / steps_per_epoch as f64
    };
    epoch.saturating_sub(1) as f64 + frac
}

/// ProxylessNAS's schedule at fractional `epoch` (see [`fractional_epoch`]): during the first
/// `warmup_epochs` the lr rises linearly from `initial` to `initial * world`, then a cosine
/// takes it from `initial * world` to exactly 0 at `total_epochs` (held at 0 beyond). With
/// `world == 1` there is no visible warm-up. The arithmetic follows the study's operation order
/// so that the values agree to the last bit.
pub fn warmup_cosine(
    initial: f64,
    world: usize,
    warmup_epochs: usize,
    total_epochs: usize,
    epoch: f64,
) -> f64 {
    let world = world.max(1) as f64;
    let epoch = epoch.max(0.0);
    let warmup = warmup_epochs as f64;
    let factor = if epoch < warmup {
        1.0 / world * (epoch * (world - 1.0) / warmup + 1.0)
    } else if total_epochs <= warmup_epochs || epoch >= total_epochs as f64 {
        0.0
    } else {
        let run = epoch - warmup;
        let span = total_epochs as f64 - warmup;
        0.5 * (1.0 + (PI * run / span).cos())
    };
    initial * world * factor
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct CosineCase {
        initial: f64,
        ending: f64,
        total: usize,
        lrs: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct RestartCase {
        initial: f64,
        ending: f64,
        period: usize,
        lrs: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct WarmupCase {
        initial: f64,
        world: usize,
        warmup: usize,
        epochs: usize,
        points: Vec<(f64, f64)>,
    }

    #[derive(Deserialize)]
    struct Fixture {
        cosine: Vec<CosineCase>,
        cosine_restarts: Vec<RestartCase>,
        warmup_cosine: Vec<WarmupCase>,
    }

    fn fixture() -> Fixture {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedule.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn cosine_matches_torch_recursive_sequence() {
        let f = fixture();
        assert_eq!(f.cosine.len(), 3);
        for c in &f.cosine {
            assert_eq!(c.lrs.len(), c.total + 1);
            for (step, &want) in c.lrs.iter().enumerate() {
                let got = cosine(c.initial, c.ending, step, c.total);
                assert!(
                    (got - want).abs() <= 1e-12 * c.initial,
                    "T={} step {step}: {got} vs torch {want}",
                    c.total
                );
            }
        }
    }

    #[test]
    fn cosine_exact_values() {
        assert_eq!(cosine(0.1, 0.0, 0, 100), 0.1);
        assert_eq!(cosine(0.1, 0.0, 100, 100), 0.0);
        assert_eq!(cosine(0.1, 0.0, 250, 100), 0.0);
        assert_eq!(cosine(0.1, 0.02, 100, 100), 0.02);
        // Half way the cosine term is cos(pi/2) ~ 6e-17, so the value is the midpoint.
        assert!((cosine(0.1, 0.02, 50, 100) - 0.06).abs() < 1e-17);
        assert!((cosine(1.0, 0.0, 25, 100) - (2f64.sqrt() / 2.0 + 1.0) / 2.0).abs() < 1e-15);
        assert_eq!(cosine(0.3, 0.0, 0, 0), 0.3);
    }

    #[test]
    fn cosine_restarts_matches_torch() {
        let f = fixture();
        for c in &f.cosine_restarts {
            for (step, &want) in c.lrs.iter().enumerate() {
                let got = cosine_restarts(c.initial, c.ending, step, c.period);
                assert!((got - want).abs() <= 1e-12 * c.initial, "step {step}");
            }
        }
        assert_eq!(cosine_restarts(0.1, 0.0, 20, 10), 0.1);
        assert_eq!(cosine_restarts(0.1, 0.0, 7, 0), 0.1);
    }

    #[test]
    fn warmup_cosine_matches_study_formula() {
        let f = fixture();
        for c in &f.warmup_cosine {
            for &(e, want) in &c.points {
                let got = warmup_cosine(c.initial, c.world, c.warmup, c.epochs, e);
                assert!(
                    (got - want).abs() <= 1e-15 * c.initial * c.world as f64,
                    "world {} epoch {e}: {got} vs {want}",
                    c.world
                );
            }
        }
    }

    #[test]
    fn warmup_cosine_exact_values() {
        // Start of warm-up: the single-GPU lr; end of warm-up: scaled by the world size.
        assert_eq!(warmup_cosine(0.025, 8, 5, 300, 0.0), 0.025);
        assert!((warmup_cosine(0.025, 8, 5, 300, 5.0) - 0.2).abs() < 1e-16);
        assert!((warmup_cosine(0.025, 8, 5, 300, 2.5) - 0.1125).abs() < 1e-16);
        assert_eq!(warmup_cosine(0.025, 8, 5, 300, 300.0), 0.0);
        assert_eq!(warmup_cosine(0.025, 8, 5, 300, 301.0), 0.0);
        // One GPU: flat at the initial lr through the warm-up.
        assert_eq!(warmup_cosine(0.025, 1, 5, 300, 3.7), 0.025);
        assert!((warmup_cosine(0.1, 1, 0, 10, 5.0) - 0.05).abs() < 1e-16);
        assert_eq!(fractional_epoch(1, 0, 100), 0.0);
        assert_eq!(fractional_epoch(3, 25, 100), 2.25);
    }
}
