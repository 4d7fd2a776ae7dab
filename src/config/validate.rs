//! Range and consistency checks on a layered configuration, run before any work starts.
//!
//! Each failure names the dotted key and the place that set its value (`origin`), so the user
//! edits the right file, variable or `--set`.

// ConfigError is large (place + key + message strings) but it is built once, on the cold path
// of reading a configuration; boxing it would only add noise to every constructor.
#![allow(clippy::result_large_err)]

use super::errors::{ConfigError, Place};
use super::schema::{Config, Dataset, Space};
use super::suggest;

/// Values `data.split` accepts.
pub const SPLITS: &[&str] = &[
    "40k",
    "50k",
    "cifar10-valid",
    "cifar10",
    "cifar100",
    "imagenet-16-120",
    "custom",
];

/// Checks `config` and applies the caps the reference applies (`num_archs_intermediate` is
/// capped at `num_archs`). `origin` maps a dotted key to where its value was set.
pub fn validate(config: &mut Config, origin: &dyn Fn(&str) -> Place) -> Result<(), ConfigError> {
    let c = Checker { origin };
    c.experiment(config)?;
    c.space(config)?;
    c.data(config)?;
    c.train(config)?;
    c.eval(config)?;
    config.eval.num_archs_intermediate = config
        .eval
        .num_archs_intermediate
        .min(config.eval.num_archs);
    Ok(())
}

struct Checker<'a> {
    origin: &'a dyn Fn(&str) -> Place,
}

impl Checker<'_> {
    fn fail(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            at: (self.origin)(key),
            message,
        }
    }

    /// `key` must hold a finite value satisfying `ok`; `rule` completes "key must be ...".
    fn float(&self, key: &str, v: f64, ok: bool, rule: &str) -> Result<(), ConfigError> {
        if !v.is_finite() {
            return Err(self.fail(key, format!("{key} must be finite (got {v})")));
        }
        if !ok {
            return Err(self.fail(key, format!("{key} must be {rule} (got {v})")));
        }
        Ok(())
    }

    fn at_least_one(&self, key: &str, v: usize) -> Result<(), ConfigError> {
        if v < 1 {
            return Err(self.fail(key, format!("{key} must be >= 1 (got {v})")));
        }
        Ok(())
    }

    fn experiment(&self, config: &Config) -> Result<(), ConfigError> {
        let e = &config.experiment;
        let name = e.name.as_str();
        if name.trim().is_empty() {
            return Err(self.fail(
                "experiment.name",
                "experiment.name must not be empty".into(),
            ));
        }
        // The name becomes a folder under `output`; these would let it escape or hide.
        let escapes = name.contains('/')
            || name.contains('\\')
            || name.contains("..")
            || name.starts_with('.');
        if escapes && !e.allow_outside_output {
            return Err(self.fail(
                "experiment.name",
                format!(
                    "experiment.name must not contain '/', '\\' or '..' nor start with '.' \
                     (got {name:?}; set experiment.allow_outside_output = true to allow it)"
                ),
            ));
        }
        self.at_least_one("experiment.checkpoint_every", e.checkpoint_every)
    }

    fn space(&self, config: &Config) -> Result<(), ConfigError> {
        match &config.space {
            Space::Nb201(s) => {
                self.at_least_one("space.channels", s.channels)?;
                self.at_least_one("space.cells_per_stage", s.cells_per_stage)?;
                self.float(
                    "space.bn_momentum",
                    s.bn_momentum,
                    (0.0..=1.0).contains(&s.bn_momentum),
                    "in [0, 1]",
                )
            }
        }
    }

    fn data(&self, config: &Config) -> Result<(), ConfigError> {
        let d = &config.data;
        if !SPLITS.contains(&d.split.as_str()) {
            return Err(ConfigError::UnknownValue {
                at: (self.origin)("data.split"),
                key: "data.split".into(),
                value: d.split.clone(),
                expected: SPLITS.join(", "),
                hint: suggest::hint(&d.split, SPLITS.iter().copied(), str::to_string),
            });
        }
        if d.split == "custom" && (d.train.is_empty() || d.valid.is_empty()) {
            let key = if d.train.is_empty() {
                "data.train"
            } else {
                "data.valid"
            };
            return Err(self.fail(
                "data.split",
                format!("data.split = \"custom\" needs a non-empty {key}"),
            ));
        }
        let needs = match d.split.as_str() {
            "cifar100" => Some(Dataset::Cifar100),
            "imagenet-16-120" => Some(Dataset::ImageNet16_120),
            "40k" | "50k" | "cifar10" | "cifar10-valid" => Some(Dataset::Cifar10),
            _ => None,
        };
        if let Some(needed) = needs {
            if needed != d.dataset {
                return Err(self.fail(
                    "data.split",
                    format!(
                        "data.split = \"{}\" needs data.dataset = \"{}\" (got \"{}\")",
                        d.split,
                        dataset_name(needed),
                        dataset_name(d.dataset)
                    ),
                ));
            }
        }
        self.at_least_one("data.batch_size", d.batch_size)?;
        self.at_least_one("data.eval_batch_size", d.eval_batch_size)?;
        self.at_least_one("data.prefetch", d.prefetch)
    }

    fn train(&self, config: &Config) -> Result<(), ConfigError> {
        let t = &config.train;
        self.at_least_one("train.epochs", t.epochs)?;
        let lr = t.learning_rate;
        self.float("train.learning_rate", lr, lr > 0.0, "> 0")?;
        self.float("train.ending_lr", t.ending_lr, t.ending_lr >= 0.0, ">= 0")?;
        if t.ending_lr > lr {
            return Err(self.fail(
                "train.ending_lr",
                format!(
                    "train.ending_lr must be <= train.learning_rate (got {} > {lr})",
                    t.ending_lr
                ),
            ));
        }
        let m = t.momentum;
        self.float("train.momentum", m, (0.0..1.0).contains(&m), "in [0, 1)")?;
        // PyTorch's SGD refuses Nesterov without momentum; so do we, before any work.
        if t.nesterov && m == 0.0 {
            return Err(self.fail(
                "train.nesterov",
                "train.nesterov = true needs train.momentum > 0 (got 0)".into(),
            ));
        }
        let wd = t.weight_decay;
        self.float("train.weight_decay", wd, wd >= 0.0, ">= 0")?;
        self.float("train.grad_clip", t.grad_clip, t.grad_clip >= 0.0, ">= 0")
    }

    fn eval(&self, config: &Config) -> Result<(), ConfigError> {
        let e = &config.eval;
        self.at_least_one("eval.every", e.every)?;
        self.at_least_one("eval.num_archs", e.num_archs)?;
        self.at_least_one("eval.num_archs_intermediate", e.num_archs_intermediate)?;
        let bn = &e.bn_recalibration;
        if bn.steps > 0 && bn.batch_size < 1 {
            return Err(self.fail(
                "eval.bn_recalibration.batch_size",
                format!(
                    "eval.bn_recalibration.batch_size must be >= 1 when \
                     eval.bn_recalibration.steps > 0 (got {})",
                    bn.batch_size
                ),
            ));
        }
        let f = e.top_k_fraction;
        self.float("eval.top_k_fraction", f, f > 0.0 && f <= 1.0, "in (0, 1]")
    }
}

/// The spelling of a dataset in the experiment file.
pub fn dataset_name(d: Dataset) -> &'static str {
    match d {
        Dataset::Cifar10 => "cifar10",
        Dataset::Cifar100 => "cifar100",
        Dataset::ImageNet16_120 => "imagenet16-120",
    }
}

// Written for spaces to come: with one variant today the space patterns are irrefutable.
#[cfg(test)]
#[allow(irrefutable_let_patterns)]
mod tests {
    use super::*;
    use crate::config::defaults;

    type Edit = Box<dyn FnOnce(&mut Config)>;

    fn at(key: &str) -> Place {
        // Distinct line per key so tests see that the failing key's origin is reported.
        Place::file("x.toml", Some(key.len()))
    }

    fn check(edit: impl FnOnce(&mut Config)) -> Result<Config, String> {
        let mut c = defaults::nb201();
        edit(&mut c);
        validate(&mut c, &at).map(|_| c).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(check(|_| {}), Ok(defaults::nb201()));
    }

    #[test]
    fn out_of_range_values_name_key_and_place() {
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|c| c.train.learning_rate = -0.1),
                "x.toml:19: train.learning_rate must be > 0 (got -0.1)",
            ),
            (
                Box::new(|c| c.train.learning_rate = 0.0),
                "x.toml:19: train.learning_rate must be > 0 (got 0)",
            ),
            (
                Box::new(|c| c.train.learning_rate = f64::NAN),
                "x.toml:19: train.learning_rate must be finite (got NaN)",
            ),
            (
                Box::new(|c| c.train.ending_lr = -1e-3),
                "x.toml:15: train.ending_lr must be >= 0 (got -0.001)",
            ),
            (
                Box::new(|c| c.train.ending_lr = 0.5),
                "x.toml:15: train.ending_lr must be <= train.learning_rate (got 0.5 > 0.1)",
            ),
            (
                Box::new(|c| c.train.momentum = 1.0),
                "x.toml:14: train.momentum must be in [0, 1) (got 1)",
            ),
            (
                Box::new(|c| c.train.momentum = 0.0),
                "x.toml:14: train.nesterov = true needs train.momentum > 0 (got 0)",
            ),
            (
                Box::new(|c| c.train.weight_decay = -1.0),
                "x.toml:18: train.weight_decay must be >= 0 (got -1)",
            ),
            (
                Box::new(|c| c.train.grad_clip = -5.0),
                "x.toml:15: train.grad_clip must be >= 0 (got -5)",
            ),
            (
                Box::new(|c| c.train.epochs = 0),
                "x.toml:12: train.epochs must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.batch_size = 0),
                "x.toml:15: data.batch_size must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.eval_batch_size = 0),
                "x.toml:20: data.eval_batch_size must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.data.prefetch = 0),
                "x.toml:13: data.prefetch must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.every = 0),
                "x.toml:10: eval.every must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.num_archs = 0),
                "x.toml:14: eval.num_archs must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.num_archs_intermediate = 0),
                "x.toml:27: eval.num_archs_intermediate must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| c.eval.bn_recalibration.batch_size = 0),
                "x.toml:32: eval.bn_recalibration.batch_size must be >= 1 when \
                 eval.bn_recalibration.steps > 0 (got 0)",
            ),
            (
                Box::new(|c| c.eval.top_k_fraction = 0.0),
                "x.toml:19: eval.top_k_fraction must be in (0, 1] (got 0)",
            ),
            (
                Box::new(|c| c.eval.top_k_fraction = 1.5),
                "x.toml:19: eval.top_k_fraction must be in (0, 1] (got 1.5)",
            ),
            (
                Box::new(|c| c.experiment.checkpoint_every = 0),
                "x.toml:27: experiment.checkpoint_every must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.channels = 0
                    }
                }),
                "x.toml:14: space.channels must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.cells_per_stage = 0
                    }
                }),
                "x.toml:21: space.cells_per_stage must be >= 1 (got 0)",
            ),
            (
                Box::new(|c| {
                    if let Space::Nb201(s) = &mut c.space {
                        s.bn_momentum = 1.5
                    }
                }),
                "x.toml:17: space.bn_momentum must be in [0, 1] (got 1.5)",
            ),
        ];
        for (edit, want) in cases {
            assert_eq!(check(edit), Err(want.to_string()));
        }
    }

    #[test]
    fn boundary_values_pass() {
        let ok = check(|c| {
            c.train.momentum = 0.0;
            c.train.nesterov = false;
            c.train.ending_lr = c.train.learning_rate;
            c.train.weight_decay = 0.0;
            c.eval.top_k_fraction = 1.0;
            c.eval.bn_recalibration = crate::config::BnRecalibration {
                steps: 0,
                batch_size: 0,
            };
            if let Space::Nb201(s) = &mut c.space {
                s.bn_momentum = 1.0;
            }
        });
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn intermediate_count_is_capped() {
        let c = check(|c| {
            c.eval.num_archs = 30;
            c.eval.num_archs_intermediate = 100;
        })
        .map_err(|e| e.to_string());
        assert_eq!(c.map(|c| c.eval.num_archs_intermediate), Ok(30));
        let c = check(|c| c.eval.num_archs_intermediate = 7);
        assert_eq!(c.map(|c| c.eval.num_archs_intermediate), Ok(7));
    }

    #[test]
    fn splits_and_datasets() {
        assert_eq!(
            check(|c| c.data.split = "cifar10valid".into()),
            Err(
                "x.toml:10: data.split: unknown value 'cifar10valid' (expected one of: \
                 40k, 50k, cifar10-valid, cifar10, cifar100, imagenet-16-120, custom) \
                 (did you mean 'cifar10-valid'?)"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "mnist".into()),
            Err(
                "x.toml:10: data.split: unknown value 'mnist' (expected one of: \
                 40k, 50k, cifar10-valid, cifar10, cifar100, imagenet-16-120, custom)"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "cifar100".into()),
            Err(
                "x.toml:10: data.split = \"cifar100\" needs data.dataset = \"cifar100\" \
                 (got \"cifar10\")"
                    .into()
            )
        );
        assert_eq!(
            check(|c| c.data.split = "imagenet-16-120".into()),
            Err(
                "x.toml:10: data.split = \"imagenet-16-120\" needs data.dataset = \
                 \"imagenet16-120\" (got \"cifar10\")"
                    .into()
            )
        );
        assert_eq!(
            check(|c| {
                c.data.dataset = Dataset::Cifar100;
                c.data.split = "40k".into();
            }),
            Err(
                "x.toml:10: data.split = \"40k\" needs data.dataset = \"cifar10\" \
                 (got \"cifar100\")"
                    .into()
            )
        );
        assert!(check(|c| {
            c.data.dataset = Dataset::ImageNet16_120;
            c.data.split = "imagenet-16-120".into();
        })
        .is_ok());
        assert_eq!(
            check(|c| c.data.split = "custom".into()),
            Err("x.toml:10: data.split = \"custom\" needs a non-empty data.train".into())
        );
        assert_eq!(
            check(|c| {
                c.data.split = "custom".into();
                c.data.train = vec!["a.bin".into()];
            }),
            Err("x.toml:10: data.split = \"custom\" needs a non-empty data.valid".into())
        );
        // A custom split may hold any dataset's images.
        assert!(check(|c| {
            c.data.split = "custom".into();
            c.data.dataset = Dataset::Cifar100;
            c.data.train = vec!["a.bin".into()];
            c.data.valid = vec!["b.bin".into()];
        })
        .is_ok());
    }

    #[test]
    fn experiment_names() {
        let escape = |name: &str| {
            format!(
                "x.toml:15: experiment.name must not contain '/', '\\' or '..' nor start \
                 with '.' (got {name:?}; set experiment.allow_outside_output = true to allow it)"
            )
        };
        assert_eq!(
            check(|c| c.experiment.name = "  ".into()),
            Err("x.toml:15: experiment.name must not be empty".into())
        );
        for bad in ["a/b", "a\\b", "up..", ".hidden", "../x"] {
            assert_eq!(check(|c| c.experiment.name = bad.into()), Err(escape(bad)));
        }
        assert!(check(|c| {
            c.experiment.name = "../elsewhere/x".into();
            c.experiment.allow_outside_output = true;
        })
        .is_ok());
        assert!(check(|c| c.experiment.name = "nb201-lr.05_x".into()).is_ok());
    }
}
