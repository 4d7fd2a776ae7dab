//! `cosine_restarts`: SGDR with a fixed period (torch's `CosineAnnealingWarmRestarts`,
//! `T_mult = 1`, `T_0 = every * steps_per_epoch`): within each period a cosine from
//! `train.learning_rate` to `train.ending_lr`, back to `train.learning_rate` at every period start.

//!
//! Two more forms for the loops whose schedule is not a per-step cosine:
//! - DARTS-PTB's learning rate is constant (then scaled by each batch's sequence length); with
//!   restarts the constant becomes the same SGDR curve over the fractional epoch (the number
//!   of batches of an epoch varies with the random sequence lengths), see [`lr_at_epoch`].
//! - ProxylessNAS's warm-up + cosine: the warm-up is kept as it is and the cosine after it
//!   restarts every `every` epochs at the warm-up's peak, see [`warmup_lr`].

use std::f64::consts::PI;

/// The learning rate of 0-based step `step` with a period of `period_steps` steps.
pub fn lr(initial: f64, ending: f64, step: usize, period_steps: usize) -> f64 {
    crate::train::schedule::cosine_restarts(initial, ending, step, period_steps)
}

/// SGDR over fractional epochs (0-based `epoch`, period `every` epochs): `initial` exactly at
/// every period start, a cosine to `ending` within the period (the per-step curve of [`lr`]
/// with the step counted in epochs).
pub fn lr_at_epoch(initial: f64, ending: f64, epoch: f64, every: f64) -> f64 {
    if every <= 0.0 {
        return initial;
    }
    let t = epoch.max(0.0).rem_euclid(every);
    if t == 0.0 {
        return initial;
    }
    ending + (initial - ending) * (1.0 + (PI * t / every).cos()) / 2.0
}

/// ProxylessNAS's schedule with restarts, at fractional epoch `epoch` (0-based): during the
/// first `warmup_epochs` the study's linear warm-up from `initial` to `initial * world`
/// unchanged, then periods of `every` epochs, each a cosine from `initial * world` to 0 (the
/// schedule's own end point), counted from the end of the warm-up. The check requires
/// `train.epochs - train.warmup_epochs` to be a multiple of `every`, so the last period ends
/// with the run; with one period this is the plain warm-up + cosine, bit for bit.
pub fn warmup_lr(
    initial: f64,
    world: usize,
    warmup_epochs: usize,
    every: usize,
    epoch: f64,
) -> f64 {
    let epoch = epoch.max(0.0);
    if epoch < warmup_epochs as f64 || every == 0 {
        return crate::train::schedule::warmup_cosine(
            initial,
            world,
            warmup_epochs,
            warmup_epochs + every,
            epoch,
        );
    }
    let run = (epoch - warmup_epochs as f64).rem_euclid(every as f64);
    let factor = 0.5 * (1.0 + (PI * run / every as f64).cos());
    initial * world.max(1) as f64 * factor
}

#[cfg(test)]
mod tests {
    use crate::config::{defaults, CosineRestarts};
    use crate::space::nb201::Nb201;
    use crate::tricks::TrickSet;

    #[test]
    fn lr_returns_to_the_initial_value_at_each_period_start() {
        let space = Nb201::new();
        let mut cfg = defaults::nb201();
        cfg.train.learning_rate = 0.05;
        cfg.train.ending_lr = 0.001;
        cfg.train.epochs = 12;
        cfg.tricks.cosine_restarts = Some(CosineRestarts { every: 3 });
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let spe = 7;
        let total = cfg.train.epochs * spe;
        let period = 3 * spe;
        let lrs: Vec<f64> = (0..total).map(|s| ts.lr(s, spe, total)).collect();
        for (s, &v) in lrs.iter().enumerate() {
            if s % period == 0 {
                assert_eq!(v, 0.05, "step {s}");
            } else {
                assert!(
                    v < lrs[s - 1] && v > 0.001,
                    "step {s}: strictly decreasing within a period, above ending_lr"
                );
            }
        }
        // Every period is the same curve, and its midpoint is the mean of the two bounds.
        for s in 0..period {
            assert_eq!(lrs[s], lrs[s + period]);
            assert_eq!(lrs[s], lrs[s + 3 * period]);
        }
        let mid = crate::train::schedule::cosine_restarts(0.05, 0.001, 4, 8);
        assert!((mid - 0.0255).abs() < 1e-15, "{mid}");
        // Without the trick: one cosine over all steps.
        cfg.tricks.cosine_restarts = None;
        let plain = TrickSet::new(&space, &cfg, None, None).unwrap();
        assert_eq!(
            plain.lr(period, spe, total),
            crate::train::schedule::cosine(0.05, 0.001, period, total)
        );
        assert!(plain.lr(period, spe, total) < 0.05);
    }

    /// PTB's form: over fractional epochs with a varying number of batches per epoch, the
    /// base learning rate is the initial value at every period start, falls within a period
    /// towards ending_lr, and is constant without the trick.
    #[test]
    fn constant_schedule_restarts_at_each_period_start() {
        let space = crate::space::ptb::Ptb;
        let mut cfg = defaults::ptb();
        cfg.train.learning_rate = 40.0;
        cfg.train.ending_lr = 1.0;
        cfg.train.epochs = 6;
        let plain = TrickSet::new(&space, &cfg, None, None).unwrap();
        assert_eq!(plain.constant_lr(40.0, 2.5), 40.0);
        cfg.tricks.cosine_restarts = Some(CosineRestarts { every: 2 });
        let ts = TrickSet::new(&space, &cfg, None, None).unwrap();
        let mut prev = f64::INFINITY;
        for epoch in 0..6usize {
            let n = 5 + 3 * epoch; // batches in this epoch
            for i in 0..n {
                let e = epoch as f64 + i as f64 / n as f64;
                let lr = ts.constant_lr(40.0, e);
                if epoch % 2 == 0 && i == 0 {
                    assert_eq!(lr, 40.0, "epoch {epoch}");
                } else {
                    assert!(lr < prev && lr > 1.0, "epoch {epoch} batch {i}: {lr}");
                }
                prev = lr;
            }
        }
        // Half a period in: the midpoint of the bounds.
        assert!((ts.constant_lr(40.0, 3.0) - 20.5).abs() < 1e-12);
    }

    /// ProxylessNAS's form: the warm-up unchanged, then the cosine to 0 restarts at the peak
    /// (learning_rate x world) every `every` epochs counted from the end of the warm-up; one
    /// period is the plain warm-up + cosine, bit for bit.
    #[test]
    fn warmup_restarts_follow_the_warmup() {
        use crate::train::schedule::warmup_cosine;
        let (lr0, world, warm, epochs) = (0.025, 4usize, 5usize, 35usize);
        let spe = 9;
        for s in 0..epochs * spe {
            let e = s as f64 / spe as f64;
            let r = super::warmup_lr(lr0, world, warm, 10, e);
            if e < warm as f64 {
                assert_eq!(
                    r,
                    warmup_cosine(lr0, world, warm, epochs, e),
                    "warm-up at {e}"
                );
            } else if (s - warm * spe) % (10 * spe) == 0 {
                assert_eq!(r, lr0 * world as f64, "restart at {e}");
            } else {
                let prev = super::warmup_lr(lr0, world, warm, 10, (s - 1) as f64 / spe as f64);
                assert!(r < prev && r > 0.0, "{e}: {r} after {prev}");
            }
            let one = super::warmup_lr(lr0, world, warm, epochs - warm, e);
            assert_eq!(
                one,
                warmup_cosine(lr0, world, warm, epochs, e),
                "one period at {e}"
            );
        }
        // Through the trick set (ProxylessNAS's defaults: 300 epochs, 5 of warm-up, 1 device).
        let mut cfg = defaults::proxyless();
        cfg.tricks.cosine_restarts = Some(CosineRestarts { every: 59 });
        let ts = TrickSet::new(&crate::space::proxyless::Proxyless, &cfg, None, None).unwrap();
        for k in 0..5 {
            let start = (5 + 59 * k) as f64;
            assert_eq!(ts.warmup_lr(1, 5, 300, start), 0.025, "period {k}");
            assert!(ts.warmup_lr(1, 5, 300, start + 29.5) < 0.0126);
        }
        cfg.tricks.cosine_restarts = None;
        let plain = TrickSet::new(&crate::space::proxyless::Proxyless, &cfg, None, None).unwrap();
        assert_eq!(
            plain.warmup_lr(1, 5, 300, 64.0),
            warmup_cosine(0.025, 1, 5, 300, 64.0)
        );
        assert!(plain.warmup_lr(1, 5, 300, 64.0) < 0.025);
    }
}
