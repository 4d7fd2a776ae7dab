//! `cosine_restarts`: SGDR with a fixed period (torch's `CosineAnnealingWarmRestarts`,
//! `T_mult = 1`, `T_0 = every * steps_per_epoch`): within each period a cosine from
//! `train.learning_rate` to `train.ending_lr`, back to `train.learning_rate` at every period start.

/// The learning rate of 0-based step `step` with a period of `period_steps` steps.
pub fn lr(initial: f64, ending: f64, step: usize, period_steps: usize) -> f64 {
    crate::train::schedule::cosine_restarts(initial, ending, step, period_steps)
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
}
