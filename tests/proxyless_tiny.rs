//! End to end: the `runner` binary on `experiments/tiny/proxyless.toml` (a width-0.25
//! ProxylessNAS supernet on the shipped data/imagenet-mini, scored on the 36 architectures of
//! benchmarks/proxylessnas.csv) into a temporary output root, and the study's command refused
//! with its one-device hint; bad file lists fail with one line naming the list and line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("RAYON_NUM_THREADS", "2").env("NO_COLOR", "1");
    c
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn tiny_run_writes_a_complete_results_folder() {
    let out = tempfile::tempdir().unwrap();
    let status = runner()
        .arg(repo().join("experiments/tiny/proxyless.toml"))
        .arg("--set")
        .arg(format!("experiment.output={}", out.path().display()))
        .status()
        .unwrap();
    assert!(status.success());
    let dirs: Vec<PathBuf> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = &dirs[0];
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "run.log",
        "checkpoints/latest.safetensors",
        "checkpoints/final.safetensors",
        "eval/epoch_0002.csv",
        "eval/epoch_0004.csv",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    assert!(
        !dir.join("eval/epoch_0000.csv").exists(),
        "no evaluation before training"
    );
    let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(cfg.contains("kind = \"proxyless\"") && cfg.contains("schedule = \"warmup-cosine\""));

    // metrics.jsonl: 4 epochs of 9 steps; the lr of step s (0-based) of epoch e is the study's
    // warmup_cosine at e - 1 + s / 9 (flat 0.025 through the warm-up on one device).
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["kind"] == "train_step").collect();
    assert_eq!(steps.len(), 36);
    for (k, s) in steps.iter().enumerate() {
        let (e, i) = (k / 9 + 1, k % 9);
        let want = runner::train::schedule::warmup_cosine(
            0.025,
            1,
            1,
            4,
            runner::train::schedule::fractional_epoch(e, i, 9),
        );
        let lr = s["lr"].as_f64().unwrap();
        assert!((lr - want).abs() < 1e-15, "step {k}: lr {lr} vs {want}");
        assert!(s["loss"].as_f64().unwrap().is_finite());
    }
    assert_eq!(steps[0]["lr"].as_f64(), Some(0.025));
    assert!(steps[35]["lr"].as_f64().unwrap() < 0.002);
    let evals: Vec<u64> = lines
        .iter()
        .filter(|l| l["kind"] == "eval")
        .map(|l| l["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![2, 4]);

    // The eval CSV: 36 architectures with top-5, the supernet's FLOPs/params and the benchmark's.
    let mut rdr = csv::Reader::from_path(dir.join("eval/epoch_0004.csv")).unwrap();
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    for h in [
        "arch",
        "supernet_accuracy",
        "supernet_top5",
        "ground_truth",
        "flops",
        "params",
        "bench_accuracy_top5",
        "bench_flops",
        "bench_params",
    ] {
        assert!(headers.contains(&h.to_string()), "{h} not in {headers:?}");
    }
    let col = |h: &str| headers.iter().position(|x| x == h).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 36);
    for r in &rows {
        let top1: f64 = r[col("supernet_accuracy")].parse().unwrap();
        let top5: f64 = r[col("supernet_top5")].parse().unwrap();
        assert!((0.0..=1.0).contains(&top1) && top5 >= top1 && top5 <= 1.0);
        let flops: u64 = r[col("flops")].parse().unwrap();
        let bench: u64 = r[col("bench_flops")].parse().unwrap();
        // The tiny supernet (width 0.25, 10 classes) costs far less than the benchmark's nets.
        assert!(flops > 1_000_000 && flops < bench / 4, "{flops} vs {bench}");
        assert!(r[col("params")].parse::<u64>().unwrap() > 10_000);
        assert!(r[col("ground_truth")].parse::<f64>().unwrap() > 0.7);
    }

    // summary.json: correlations over all 36 against the benchmark's accuracy.
    let s = json(&dir.join("summary.json"));
    assert_eq!(s["space"], "proxyless");
    assert_eq!(s["steps"], 36);
    let f = &s["final_eval"];
    assert_eq!(f["epoch"], 4);
    assert_eq!(f["num_archs"], 36);
    assert_eq!(f["num_with_ground_truth"], 36);
    for k in [
        "kendall_tau",
        "spearman",
        "pearson",
        "top_k_overlap",
        "mean_top5_accuracy",
    ] {
        assert!(f[k].as_f64().is_some_and(f64::is_finite), "{k}: {}", f[k]);
    }
    assert!(f["mean_top5_accuracy"].as_f64() >= f["mean_accuracy"].as_f64());
    assert_eq!(s["history"].as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(report.contains("<svg"));

    // A second call finds the run finished and trains nothing.
    let again = runner()
        .arg(repo().join("experiments/tiny/proxyless.toml"))
        .arg("--set")
        .arg(format!("experiment.output={}", out.path().display()))
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        text
    );
}

#[test]
fn the_studys_command_asks_for_one_device() {
    let out = runner()
        .arg("check")
        .arg(repo().join("experiments/proxyless_imagenet.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("device.gpus = 8") && err.contains("--set device.gpus=1"),
        "{err}"
    );
    // With one device it gets as far as the data, which is not on this machine.
    let out = runner()
        .arg("check")
        .arg(repo().join("experiments/proxyless_imagenet.toml"))
        .args(["--set", "device.gpus=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // data.imagenet.lists resolves against the experiment file.
    let lists = repo().join("data/proxyless/imagenet/augment_files.txt");
    assert!(
        err.contains(&lists.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    // Out-of-range ImageNet keys are refused naming the key.
    let out = runner()
        .arg("check")
        .arg(repo().join("experiments/tiny/proxyless.toml"))
        .args(["--set", "data.imagenet.num_classes=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data.imagenet.num_classes must be >= 2"),
        "{err}"
    );
}

#[test]
fn bad_file_lists_fail_with_one_line_naming_list_and_line() {
    let t = tempfile::tempdir().unwrap();
    let mini = repo().join("data/imagenet-mini");
    let good = std::fs::read_to_string(mini.join("augment_files.txt")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let cases = [
        (
            "no label",
            format!("{}\n{}\n", lines[0], lines[1].split(' ').next().unwrap()),
            "augment_files.txt:2",
            "expected `relative/path.JPEG label`",
        ),
        (
            "label range",
            format!("{}\n{} 10\n", lines[0], lines[1].split(' ').next().unwrap()),
            "augment_files.txt:2",
            "out of range for 10 classes",
        ),
        (
            "missing file",
            format!("{}\ntrain/n01440764/nope.JPEG 0\n", lines[0]),
            "augment_files.txt:2",
            "does not exist",
        ),
    ];
    for (what, text, at, msg) in cases {
        let lists = t.path().join(what.replace(' ', "_"));
        std::fs::create_dir_all(&lists).unwrap();
        std::fs::write(lists.join("augment_files.txt"), text).unwrap();
        std::fs::copy(mini.join("test_files.txt"), lists.join("test_files.txt")).unwrap();
        let out = runner()
            .arg("check")
            .arg(repo().join("experiments/tiny/proxyless.toml"))
            .arg("--set")
            .arg(format!("data.imagenet.lists=\"{}\"", lists.display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}");
        let err = String::from_utf8_lossy(&out.stderr);
        let err_lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(err_lines.len(), 1, "{what}: {err}");
        assert!(
            err_lines[0].contains(at) && err_lines[0].contains(msg),
            "{what}: {err}"
        );
    }
}
