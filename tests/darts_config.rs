//! The DARTS-CIFAR10 experiment files resolve to the study's hyperparameters.

use runner::config::{self, FinalPool, Schedule, Space as SpaceCfg, Unsampled};
use runner::space::darts::Darts;
use runner::space::Space;
use std::path::PathBuf;

fn experiment(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("experiments")
        .join(name)
}

/// The study's DARTS-CIFAR10 command (`--cifar_split 50k --batch_size 112 --epochs 1000
/// --parallel_sampling true`, 4 devices) on top of its DartsCifarParser defaults.
#[test]
fn darts_cifar_50k_resolves_to_the_studys_hyperparameters() {
    // No environment layer: the test sees the file and the defaults only.
    let r = config::load_from(&experiment("darts_cifar_50k.toml"), None, &[], &[]).unwrap();
    let c = &r.config;
    let SpaceCfg::Darts(s) = &c.space else {
        panic!("space.kind is {}", c.space.kind())
    };
    // (what, resolved, the study's value)
    let table: Vec<(&str, f64, f64)> = vec![
        ("init_channels", s.channels as f64, 36.0),
        ("layers", s.layers as f64, 20.0),
        ("aux_weight", s.auxiliary_weight, 0.4),
        ("drop_path_prob", s.drop_path, 0.2),
        ("batch_size (per device)", c.data.batch_size as f64, 112.0),
        ("cutout", c.data.cutout as f64, 16.0),
        ("epochs", c.train.epochs as f64, 1000.0),
        ("initial_lr (per device)", c.train.learning_rate, 0.025),
        ("ending lr (eta_min)", c.train.ending_lr, 0.0),
        ("momentum", c.train.momentum, 0.9),
        ("weight_decay", c.train.weight_decay, 3e-4),
        ("grad_clip", c.train.grad_clip, 5.0),
        (
            "bn_sanitize_steps",
            c.eval.bn_recalibration.steps as f64,
            100.0,
        ),
        (
            "bn_sanitize_batch_size",
            c.eval.bn_recalibration.batch_size as f64,
            200.0,
        ),
        ("num_valid_arch", c.eval.num_archs as f64, 256.0),
        (
            "num_arch_intermediate",
            c.eval.num_archs_intermediate as f64,
            32.0,
        ),
        ("eval_every", c.eval.every as f64, 50.0),
        ("devices (nproc_per_node)", c.device.gpus as f64, 4.0),
    ];
    for (what, got, want) in table {
        assert_eq!(got, want, "{what}");
    }
    assert!(!c.train.nesterov, "nesterov");
    assert!(c.train.parallel_sampling, "parallel_sampling");
    assert_eq!(c.train.schedule, Schedule::Cosine);
    assert_eq!(c.train.unsampled, Unsampled::Pytorch1);
    assert_eq!(c.data.split, "50k");
    assert_eq!(c.data.dataset, config::Dataset::Cifar10);
    assert!(c.data.augment, "crop 4 + flip");
    assert_eq!(
        runner::data::build::normalize_for(&c.data),
        runner::data::Normalize::darts()
    );
    assert!(c.eval.at_start, "evaluation before training");
    assert!(
        c.eval.archs.is_none(),
        "the study evaluates sampled architectures"
    );
    assert_eq!(s.final_pool, FinalPool::Avg7);
    // 32 architectures at every evaluation, the last one included.
    const { assert!(Darts::LAST_EVAL_INTERMEDIATE) };

    // The 40k file: the reference defaults, scored against the benchmark.
    let r = config::load_from(&experiment("darts_cifar_40k.toml"), None, &[], &[]).unwrap();
    let c = &r.config;
    assert_eq!(c.data.split, "40k");
    assert_eq!(c.data.batch_size, 128);
    assert_eq!(c.train.epochs, 600);
    assert_eq!(c.device.gpus, 1);
    assert!(c
        .eval
        .archs
        .as_ref()
        .is_some_and(|p| p.ends_with("benchmarks/darts-cifar10.csv") && p.exists()));
    assert!(c
        .eval
        .archs_second_seed
        .as_ref()
        .is_some_and(|p| p.ends_with("benchmarks/darts-cifar10-seed43.csv") && p.exists()));
}

#[test]
fn bad_darts_settings_are_refused_before_work() {
    let e = config::load_from(
        &experiment("darts_cifar_50k.toml"),
        None,
        &["space.layers=4".into()],
        &[],
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("space.layers must be >= 5"), "{e}");
    let e = config::load_from(
        &experiment("darts_cifar_50k.toml"),
        None,
        &["space.final_pool=\"max\"".into()],
        &[],
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("final_pool"), "{e:#}");
    let r = config::load_from(
        &experiment("darts_cifar_50k.toml"),
        None,
        &["space.final_pool=\"global\"".into()],
        &[],
    )
    .unwrap();
    let SpaceCfg::Darts(s) = &r.config.space else {
        panic!()
    };
    assert_eq!(s.final_pool, FinalPool::Global);
}
