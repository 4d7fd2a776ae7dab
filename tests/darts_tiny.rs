//! End-to-end DARTS-CIFAR10 runs of the `runner` binary on the shipped CIFAR-10 subset:
//! `experiments/tiny/darts.toml` (a seeded 16 of the benchmark's architectures, with the
//! seed-43 table for the noise ceiling) writes a complete results folder with correlations;
//! killed after its first checkpoint and resumed, it ends with identical numbers;
//! without `eval.archs` the sampled validation architectures are evaluated
//! `num_archs_intermediate` at a time at every evaluation, the last one included.

use runner::space::darts::{count_cost, Darts};
use runner::space::Space;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn run_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Rows of an eval CSV as header -> value maps.
fn eval_rows(p: &Path) -> (Vec<String>, Vec<HashMap<String, String>>) {
    let mut rdr = csv::Reader::from_path(p).unwrap();
    let h: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    let rows = rdr
        .records()
        .map(|r| {
            let r = r.unwrap();
            h.iter().cloned().zip(r.iter().map(String::from)).collect()
        })
        .collect();
    (h, rows)
}

/// The benchmark's accuracy by architecture.
fn benchmark() -> HashMap<<Darts as Space>::Arch, f64> {
    let mut rdr = csv::Reader::from_path(repo().join("benchmarks/darts-cifar10.csv")).unwrap();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            let a = Darts::decode(&serde_json::from_str(&r[0]).unwrap()).unwrap();
            (a, r[1].parse().unwrap())
        })
        .collect()
}

#[test]
fn tiny_darts_run_writes_a_complete_results_folder() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let st = runner()
        .arg(repo().join("experiments/tiny/darts.toml"))
        .arg("--set")
        .arg(format!("experiment.output=\"{}\"", out.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = run_dir(&out);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "report.html",
        "run.log",
        "checkpoints/latest.safetensors",
        "checkpoints/final.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("kind = \"darts\"") && config.contains("final_pool = \"avg7\""));
    assert!(std::fs::read_to_string(dir.join("report.html"))
        .unwrap()
        .contains("<svg"));

    // metrics.jsonl: 2 epochs of 4 steps (loss = CE + 0.4 aux CE, clipped), 3 evaluations.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kind = |k: &str| lines.iter().filter(|l| l["kind"] == k).count();
    assert_eq!(kind("train_step"), 8);
    assert_eq!(kind("train_epoch"), 2);
    assert_eq!(kind("eval"), 3);
    for l in lines.iter().filter(|l| l["kind"] == "train_step") {
        let loss = l["loss"].as_f64().unwrap();
        // At initialisation both heads are near chance: ln 10 x 1.4 = 3.2.
        assert!(loss.is_finite() && loss > 1.0 && loss < 10.0, "{l}");
        assert!(l["grad_norm"].as_f64().is_some(), "clip 5 logs the norm");
    }

    // The same 16 benchmark architectures at every evaluation, with runner's FLOPs/params of
    // this (4-channel, 5-cell) supernet next to the benchmark's own columns.
    let bench = benchmark();
    let mut first: Option<Vec<String>> = None;
    for epoch in ["0000", "0001", "0002"] {
        let (h, rows) = eval_rows(&dir.join(format!("eval/epoch_{epoch}.csv")));
        for c in [
            "arch",
            "supernet_accuracy",
            "ground_truth",
            "flops",
            "params",
            "bench_flops",
            "bench_params",
        ] {
            assert!(h.iter().any(|x| x == c), "{c} not in {h:?}");
        }
        assert_eq!(rows.len(), 16, "epoch {epoch}");
        for r in &rows {
            let a = Darts::decode(&serde_json::from_str(&r["arch"]).unwrap()).unwrap();
            assert_eq!(r["ground_truth"].parse::<f64>().unwrap(), bench[&a]);
            let c = count_cost(4, 5, 10, &a);
            assert_eq!(r["flops"], c.flops.to_string());
            assert_eq!(r["params"], c.params.to_string());
            let big = count_cost(36, 20, 10, &a);
            assert_eq!(r["bench_flops"], big.flops.to_string());
            assert_eq!(r["bench_params"], big.params.to_string());
            let acc: f64 = r["supernet_accuracy"].parse().unwrap();
            assert!((0.0..=1.0).contains(&acc));
        }
        let archs: Vec<String> = rows.iter().map(|r| r["arch"].clone()).collect();
        match &first {
            None => first = Some(archs),
            Some(f) => assert_eq!(f, &archs, "epoch {epoch}"),
        }
    }

    let s = read_json(&dir.join("summary.json"));
    assert_eq!(s["space"], "darts");
    assert_eq!(s["history"].as_array().unwrap().len(), 3);
    let fe = &s["final_eval"];
    assert_eq!(fe["num_archs"], 16);
    assert_eq!(fe["num_with_ground_truth"], 16);
    for k in ["kendall_tau", "spearman", "pearson"] {
        let v = fe[k].as_f64().unwrap_or_else(|| panic!("{k}: {}", fe[k]));
        assert!((-1.0..=1.0).contains(&v), "{k} = {v}");
    }
    // Some of the 16 are among the 101 retrained with seed 43: the noise ceiling is reported.
    assert!(fe["ground_truth_seed_tau"].as_f64().is_some(), "{fe}");
    assert!(s["ground_truth"]
        .as_str()
        .unwrap()
        .ends_with("darts-cifar10.csv: accuracy"));

    // The same run killed once its first checkpoint exists, then resumed, ends with the same
    // numbers (drop-path masks, recalibration stream and sampler restored from the checkpoint).
    let out_b = t.path().join("b");
    let mut child = runner()
        .arg(repo().join("experiments/tiny/darts.toml"))
        .arg("--set")
        .arg(format!("experiment.output=\"{}\"", out_b.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let ck = std::fs::read_dir(&out_b)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("checkpoints/latest.safetensors"));
        if ck.is_some_and(|p| p.exists()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dir_b = run_dir(&out_b);
    assert!(!dir_b.join("summary.json").exists(), "killed too late");
    let st = runner()
        .arg(repo().join("experiments/tiny/darts.toml"))
        .arg("--set")
        .arg(format!("experiment.output=\"{}\"", out_b.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let sb = read_json(&dir_b.join("summary.json"));
    for k in ["history", "final_eval", "final_train_loss", "steps"] {
        assert_eq!(s[k], sb[k], "{k} after resuming");
    }
    for f in ["eval/epoch_0002.csv", "eval/epoch_0001.csv"] {
        assert_eq!(
            std::fs::read_to_string(dir.join(f)).unwrap(),
            std::fs::read_to_string(dir_b.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn sampled_architectures_are_evaluated_intermediate_count_every_time() {
    let t = tempfile::tempdir().unwrap();
    // The tiny experiment without eval.archs, paths made absolute.
    let text = std::fs::read_to_string(repo().join("experiments/tiny/darts.toml"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("archs"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\"../../", &format!("\"{}/", repo().display()));
    let file = t.path().join("sampled.toml");
    std::fs::write(&file, text).unwrap();
    let out = t.path().join("out");
    let st = runner()
        .arg(&file)
        .args([
            "--set",
            "eval.num_archs=6",
            "--set",
            "eval.num_archs_intermediate=3",
        ])
        .args(["--set", "train.epochs=1", "--set", "train.max_steps=2"])
        .arg("--set")
        .arg(format!("experiment.output=\"{}\"", out.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = run_dir(&out);
    let (_, r0) = eval_rows(&dir.join("eval/epoch_0000.csv"));
    let (_, r1) = eval_rows(&dir.join("eval/epoch_0001.csv"));
    // The last evaluation (epoch 1 of 1) scores the same first 3 of the 6 drawn, like every
    // other evaluation (the study's DARTS trainer).
    assert_eq!(r0.len(), 3);
    assert_eq!(r1.len(), 3);
    let archs =
        |r: &[HashMap<String, String>]| r.iter().map(|x| x["arch"].clone()).collect::<Vec<_>>();
    assert_eq!(archs(&r0), archs(&r1));
    let s = read_json(&dir.join("summary.json"));
    assert_eq!(s["final_eval"]["num_archs"], 3);
    assert!(s["final_eval"]["kendall_tau"].is_null(), "no ground truth");
}
