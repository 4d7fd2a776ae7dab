//! End-to-end runs of the `runner` binary on the tiny experiment of each search space
//! (`experiments/tiny/<space>.toml`, the shipped CIFAR-10 subset): the run finishes and leaves a
//! complete results folder.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
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

#[test]
fn nb101_tiny_run_writes_complete_results() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let st = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env("RAYON_NUM_THREADS", "2")
        .arg(repo().join("experiments/tiny/nb101.toml"))
        .arg("--set")
        .arg(format!("experiment.output={}", out.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(st.status.success(), "{stderr}");
    let dir = run_dir(&out);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "eval/epoch_0000.csv",
        "eval/epoch_0001.csv",
        "eval/epoch_0002.csv",
        "eval/epoch_0003.csv",
        "summary.json",
        "checkpoints/latest.safetensors",
        "checkpoints/final.safetensors",
        "run.log",
        "report.html",
    ] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["space"], "nb101");
    assert_eq!(s["steps"], 90);
    assert_eq!(s["history"].as_array().unwrap().len(), 4);
    let fe = &s["final_eval"];
    assert_eq!(fe["num_archs"], 20);
    let acc = fe["mean_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(s["ground_truth"]
        .as_str()
        .unwrap()
        .contains("2 of 30 NAS-Bench-101 cells in space 3"));
    // The shipped CSV covers 3 of 95,985 archset entries: with none among the 20 evaluated,
    // the run says so instead of reporting correlations.
    if fe["num_with_ground_truth"].as_u64().unwrap() < 2 {
        assert!(fe["kendall_tau"].is_null());
        let why = s["correlations_unavailable"].as_str().unwrap();
        assert!(why.contains("of the 20 evaluated architectures"), "{why}");
        assert!(stderr.contains("correlations are unavailable"), "{stderr}");
    }
    // The final evaluation CSV holds 20 architectures in the NB101 encoding.
    let csv = std::fs::read_to_string(dir.join("eval/epoch_0003.csv")).unwrap();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let mut n = 0;
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let arch: serde_json::Value = serde_json::from_str(&rec[0]).unwrap();
        for t in 1..=6 {
            assert_eq!(arch[format!("input{t}")].as_array().unwrap().len(), t);
        }
        assert_eq!(arch["op5"].as_array().unwrap().len(), 3);
        n += 1;
    }
    assert_eq!(n, 20);
    // A second call finds the run finished and trains nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env("RAYON_NUM_THREADS", "2")
        .arg(repo().join("experiments/tiny/nb101.toml"))
        .arg("--set")
        .arg(format!("experiment.output={}", out.display()))
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(run_dir(&out), dir);
}

#[test]
fn nb101_bad_ground_truth_fails_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("cells.csv");
    std::fs::write(
        &bad,
        "hash,adjacency_rowmajor,ops,trainable_parameters,val_acc_run0,val_acc_run1,val_acc_run2\n\
         h,0100000001000000010000000100000001000000010000000,input|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,0.9,0.9\n\
         h,0100000001000000010000000100000001000000010000000,input|conv3x3-bn-relu|conv3x3-bn-relu|sepconv|conv3x3-bn-relu|conv3x3-bn-relu|output,100,0.9,0.9,0.9\n",
    )
    .unwrap();
    for (gt, want) in [
        (
            bad.clone(),
            "cells.csv:3: cell does not decode: unknown op \"sepconv\"".to_string(),
        ),
        (
            repo().join("tests/fixtures/nb101_bad_root.pkl"),
            "not the study's nb1shot1c.pkl: the top level is a dict".to_string(),
        ),
    ] {
        let st = Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("check")
            .arg(repo().join("experiments/tiny/nb101.toml"))
            .arg("--set")
            .arg(format!("eval.ground_truth={}", gt.display()))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success());
        assert!(stderr.contains(&want), "{stderr}");
    }
}

/// A killed NB101 run resumes from its checkpoint to exactly the numbers of an uninterrupted one.
#[test]
fn nb101_killed_run_resumes_to_identical_result() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let cmd = |out: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
        c.env("RAYON_NUM_THREADS", "2")
            .arg(repo().join("experiments/tiny/nb101.toml"));
        for s in [
            format!("experiment.output={}", out.display()),
            "space.channels=8".into(),
            "train.max_steps=6".into(),
            "eval.num_archs=6".into(),
            "eval.num_archs_intermediate=2".into(),
            "eval.valid_images=100".into(),
            "eval.bn_recalibration.steps=1".into(),
        ] {
            c.arg("--set").arg(s);
        }
        c
    };
    let (out_a, out_b) = (t.path().join("a"), t.path().join("b"));
    let st = cmd(&out_a).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let mut child = cmd(&out_b)
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
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (dir_a, dir_b) = (run_dir(&out_a), run_dir(&out_b));
    assert!(!dir_b.join("summary.json").exists(), "killed too late");
    let st = cmd(&out_b).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let sa: serde_json::Value = serde_json::from_str(&read(&dir_a, "summary.json")).unwrap();
    let sb: serde_json::Value = serde_json::from_str(&read(&dir_b, "summary.json")).unwrap();
    for k in ["history", "final_eval", "final_train_loss", "steps"] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    assert_eq!(
        read(&dir_a, "eval/epoch_0003.csv"),
        read(&dir_b, "eval/epoch_0003.csv")
    );
}
