//! End-to-end DARTS-PTB runs of the `runner` binary on `experiments/tiny/ptb.toml` (the real
//! PTB corpus, a 32-unit model, 16 architectures of benchmarks/ptb.csv): a complete results
//! folder correlated with `valid_ppl`; a run killed with SIGKILL after its switch to ASGD and
//! resumed ends with exactly the numbers and weights of an uninterrupted run; an absurd
//! learning rate rolls back to the best state and never checkpoints NaN; bad input fails with
//! one line.

use candle_core::{DType, Device, Tensor};
use runner::run::checkpoint;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny() -> PathBuf {
    repo().join("experiments/tiny/ptb.toml")
}

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn output_set(dir: &Path) -> [String; 2] {
    [
        "--set".into(),
        format!("experiment.output=\"{}\"", dir.display()),
    ]
}

fn run_dir(out: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn load_ck(path: &Path, hash: &str) -> checkpoint::Checkpoint<serde_json::Value> {
    checkpoint::load(path, hash, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn same_tensors(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| values(v) == values(w)))
}

#[test]
fn tiny_run_is_complete_and_resumes_identically_after_kill() {
    let t = tempfile::tempdir().unwrap();
    let out_a = t.path().join("a");
    let st = runner()
        .arg(tiny())
        .args(output_set(&out_a))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir_a = run_dir(&out_a);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "eval/epoch_0001.csv",
        "eval/epoch_0006.csv",
        "summary.json",
        "checkpoints/latest.safetensors",
        "checkpoints/final.safetensors",
        "run.log",
        "report.html",
    ] {
        assert!(dir_a.join(f).exists(), "missing {f}");
    }
    assert!(
        !dir_a.join("eval/epoch_0000.csv").exists(),
        "PTB does not evaluate at epoch 0"
    );
    let sa = json(&dir_a.join("summary.json"));
    assert_eq!(sa["space"], "ptb");
    assert_eq!(sa["score"], "perplexity");
    assert!(sa["ground_truth"]
        .as_str()
        .unwrap()
        .ends_with("ptb.csv: valid_ppl"));
    assert_eq!(sa["steps"], 48);
    let hist = sa["history"].as_array().unwrap();
    assert_eq!(hist.len(), 6);
    let fe = &sa["final_eval"];
    assert_eq!(fe["num_archs"], 16);
    assert_eq!(fe["num_with_ground_truth"], 16);
    for k in [
        "kendall_tau",
        "spearman",
        "pearson",
        "top_k_overlap",
        "ground_truth_seed_tau",
    ] {
        assert!(fe[k].is_number(), "{k}: {}", fe[k]);
    }
    let (lo, mean, hi) = (
        fe["min_perplexity"].as_f64().unwrap(),
        fe["mean_perplexity"].as_f64().unwrap(),
        fe["max_perplexity"].as_f64().unwrap(),
    );
    // A barely trained model: far worse than the benchmark's ~60, far better than uniform
    // over 10,000 words.
    assert!(
        lo <= mean && mean <= hi && lo > 60.0 && hi < 10_000.0,
        "{lo} {mean} {hi}"
    );
    let details = &sa["space_details"];
    assert_eq!(
        details["asgd_from_epoch"], 5,
        "with seed 0 the mean perplexity stalls after epoch 5 and the run switches to ASGD (the resume below then covers ASGD state): {details}"
    );

    // The eval CSV: every architecture with its perplexity and the benchmark's; the
    // correlations of the summary are recomputed from it (perplexity against valid_ppl).
    let text = std::fs::read_to_string(dir_a.join("eval/epoch_0006.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let h: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        h,
        vec![
            "arch",
            "arch_string",
            "supernet_accuracy",
            "supernet_loss",
            "supernet_perplexity",
            "ground_truth",
            "bench_test_ppl"
        ]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 16);
    let mut ppl = vec![];
    let mut truth = vec![];
    for r in &rows {
        let a: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(a.as_object().unwrap().len(), 16);
        let (l, p): (f64, f64) = (r[3].parse().unwrap(), r[4].parse().unwrap());
        assert!((l.exp() - p).abs() < 1e-9 * p, "perplexity = exp(loss)");
        ppl.push(p);
        truth.push(r[5].parse::<f64>().unwrap());
    }
    let tau = runner::train::metrics::kendall_tau_b(&ppl, &truth);
    assert!((tau - fe["kendall_tau"].as_f64().unwrap()).abs() < 1e-12);
    assert!(truth.iter().all(|v| (57.0..71.0).contains(v)), "{truth:?}");

    // The final checkpoint is the best-perplexity model: the best state held in the latest
    // checkpoint (saved with ASGD's averaged weights loaded), not the last weights.
    let hash = sa["config_hash"].as_str().unwrap();
    let latest = load_ck(&dir_a.join("checkpoints/latest.safetensors"), hash);
    let fin = load_ck(&dir_a.join("checkpoints/final.safetensors"), hash);
    let best_model: BTreeMap<String, Tensor> = latest
        .optim
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("best.model.")
                .map(|n| (n.to_string(), v.clone()))
        })
        .collect();
    assert!(same_tensors(&fin.model, &best_model));
    assert!(
        !same_tensors(&fin.model, &latest.model),
        "final = best (averaged), not last"
    );
    assert_eq!(details["best_epoch"], latest.progress["best_epoch"]);
    assert!(latest.progress["asgd"].as_bool().unwrap());
    assert!(latest.optim.keys().any(|k| k.starts_with("cur.ax.")));

    // The same experiment in another output root, killed with SIGKILL once it trains epoch 6
    // (the checkpoint of epoch 5, after the switch to ASGD, is on disk), then resumed.
    let out_b = t.path().join("b");
    let mut child = runner()
        .arg(tiny())
        .args(output_set(&out_b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let dir = std::fs::read_dir(&out_b)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path());
        let in_epoch_6 = dir.as_deref().is_some_and(|d| {
            metrics(d)
                .iter()
                .any(|v| v["kind"] == "train_step" && v["epoch"] == 6)
        });
        if in_epoch_6 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "epoch 6 never started"
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
    let ck_b = load_ck(&dir_b.join("checkpoints/latest.safetensors"), hash);
    assert_eq!(ck_b.progress["base"]["epoch"], 5);
    assert!(
        ck_b.progress["asgd"].as_bool().unwrap(),
        "the resumed checkpoint holds ASGD state"
    );
    let st = runner()
        .arg(tiny())
        .args(output_set(&out_b))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert!(String::from_utf8_lossy(&st.stderr).contains("resuming from"));
    let sb = json(&dir_b.join("summary.json"));
    for k in [
        "history",
        "final_eval",
        "final_train_loss",
        "final_train_accuracy",
        "steps",
        "space_details",
    ] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    for e in 1..=6 {
        let f = format!("eval/epoch_{e:04}.csv");
        assert_eq!(
            std::fs::read_to_string(dir_a.join(&f)).unwrap(),
            std::fs::read_to_string(dir_b.join(&f)).unwrap(),
            "{f}"
        );
    }
    let fin_b = load_ck(&dir_b.join("checkpoints/final.safetensors"), hash);
    assert!(
        same_tensors(&fin.model, &fin_b.model),
        "final weights differ after resume"
    );
    let latest_b = load_ck(&dir_b.join("checkpoints/latest.safetensors"), hash);
    assert!(same_tensors(&latest.model, &latest_b.model));
    assert!(same_tensors(&latest.optim, &latest_b.optim));
    // Every training step appears exactly once in the resumed metrics log.
    let steps: Vec<u64> = metrics(&dir_b)
        .iter()
        .filter(|v| v["kind"] == "train_step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=48).collect::<Vec<u64>>());

    // A finished run is not retrained.
    let st = runner()
        .arg(tiny())
        .args(output_set(&out_b))
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("already finished"));
}

#[test]
fn absurd_learning_rate_rolls_back_and_never_checkpoints_nan() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("nan");
    let st = runner()
        .arg(tiny())
        .args(output_set(&out))
        .args([
            "--set",
            "train.learning_rate=1e30",
            "--set",
            "train.epochs=2",
            "--set",
            "eval.archs_limit=3",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = run_dir(&out);
    let m = metrics(&dir);
    let rollbacks: Vec<&serde_json::Value> =
        m.iter().filter(|v| v["kind"] == "nan_rollback").collect();
    assert_eq!(rollbacks.len(), 2, "one roll-back per epoch");
    // Epoch 1 rolls back to the initial state (the study's best state before any evaluation).
    assert_eq!(rollbacks[0]["restored_epoch"], 0);
    let s = json(&dir.join("summary.json"));
    assert_eq!(
        s["space_details"]["nan_rollbacks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let hash = s["config_hash"].as_str().unwrap();
    for f in ["latest", "final"] {
        let ck = load_ck(&dir.join(format!("checkpoints/{f}.safetensors")), hash);
        for (k, v) in ck.model.iter().chain(ck.optim.iter()) {
            if v.dtype() == DType::F32 {
                assert!(
                    values(v).iter().all(|x| x.is_finite()),
                    "{f}: {k} holds NaN/inf"
                );
            }
        }
    }
    // Evaluations ran on the restored (finite) weights.
    let fe = &s["final_eval"];
    assert!(fe["mean_perplexity"].as_f64().unwrap() < 1e6, "{fe}");
}

#[test]
fn bad_ptb_inputs_fail_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("train.txt"), "a b c\n").unwrap();
    std::fs::write(data.join("valid.txt"), "a b\n").unwrap();
    let root = |p: &Path| {
        [
            "--set".to_string(),
            format!("data.root=\"{}\"", p.display()),
        ]
    };
    let last_error = |args: &[String], check: bool| -> String {
        let mut c = runner();
        if check {
            c.arg("check");
        }
        let st = c
            .arg(tiny())
            .args(output_set(&t.path().join("o")))
            .args(args)
            .output()
            .unwrap();
        assert!(!st.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&st.stderr).to_string();
        let last = err.lines().last().unwrap_or("").to_string();
        assert!(last.starts_with("error: "), "{err}");
        last
    };
    let e = last_error(&root(&data), false);
    assert!(e.contains("test.txt") && e.contains("not found"), "{e}");
    std::fs::write(data.join("test.txt"), "").unwrap();
    let e = last_error(&root(&data), true);
    assert!(e.contains("test.txt: no tokens"), "{e}");
    std::fs::write(data.join("test.txt"), "a\n").unwrap();
    // Too few tokens for a batch of 16 x 3 rows.
    let e = last_error(&root(&data), false);
    assert!(e.contains("train.txt") && e.contains("at least 3"), "{e}");
    // A benchmark row that does not decode names the file and line.
    let bad = t.path().join("bad.csv");
    std::fs::write(&bad, "architecture,valid_ppl\n\"{\"\"act/0\"\":9}\",60\n").unwrap();
    let e = last_error(
        &["--set".into(), format!("eval.archs=\"{}\"", bad.display())],
        true,
    );
    assert!(e.contains("bad.csv:2"), "{e}");
    // A PTB file given an image dataset fails before any work.
    let e = last_error(&["--set".into(), "data.dataset=\"cifar10\"".into()], true);
    assert!(
        e.contains("space ptb cannot take data.dataset = \"cifar10\""),
        "{e}"
    );
    let e = last_error(&["--set".into(), "space.hidden=16".into()], true);
    assert!(e.contains("space.embedding must equal space.hidden"), "{e}");
}
