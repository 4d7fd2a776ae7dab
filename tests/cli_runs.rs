//! End-to-end runs of the `runner` binary on the shipped CIFAR-10 subset: a tiny NAS-Bench-201
//! supernet, killed with SIGKILL mid-run and resumed, must end with exactly the numbers of an
//! uninterrupted run; a finished run is not retrained; bad input fails with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tiny_config(dir: &Path, out: &str) -> PathBuf {
    let text = format!(
        r#"
[experiment]
name = "tiny"
seed = 3
output = "{out}"

[space]
kind = "nb201"
channels = 4
cells_per_stage = 1

[data]
dataset = "cifar10"
root = "{data}"
split = "custom"
train = ["train"]
valid = ["test"]
batch_size = 32
eval_batch_size = 100

[train]
epochs = 3
max_steps = 6
grad_clip = 5.0

[eval]
every = 1
num_archs = 6
num_archs_intermediate = 4
bn_recalibration = {{ steps = 2, batch_size = 32 }}
ground_truth = "{gt}"
ground_truth_dataset = "cifar10-valid"
valid_images = 200
"#,
        data = repo().join("data/cifar10-mini-jpg").display(),
        gt = repo().join("benchmarks/nb201").display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("RAYON_NUM_THREADS", "2");
    c
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

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn killed_run_resumes_to_identical_result() {
    let t = tempfile::tempdir().unwrap();
    let a = tiny_config(t.path(), "a");
    let b = tiny_config(t.path(), "b");

    let st = runner()
        .arg(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir_a = run_dir(&t.path().join("a"));
    let sa = summary(&dir_a);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "eval/epoch_0000.csv",
        "eval/epoch_0003.csv",
        "checkpoints/latest.safetensors",
        "checkpoints/final.safetensors",
        "run.log",
        "report.html",
    ] {
        assert!(dir_a.join(f).exists(), "missing {f}");
    }
    let fe = &sa["final_eval"];
    assert_eq!(fe["num_archs"], 6);
    assert_eq!(fe["num_with_ground_truth"], 6);
    assert!(
        fe["kendall_tau"].is_number() && fe["spearman"].is_number() && fe["pearson"].is_number()
    );
    assert_eq!(sa["history"].as_array().unwrap().len(), 4); // epochs 0..=3

    // Same experiment in another output root: kill -9 once the first checkpoint exists.
    let mut child = runner()
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out_b = t.path().join("b");
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
    let dir_b = run_dir(&out_b);
    assert!(!dir_b.join("summary.json").exists(), "killed too late");
    let st = runner().arg(&b).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let sb = summary(&dir_b);
    assert_eq!(sa["history"], sb["history"]);
    assert_eq!(sa["final_eval"], sb["final_eval"]);
    assert_eq!(sa["final_train_loss"], sb["final_train_loss"]);
    assert_eq!(sa["steps"], sb["steps"]);
    assert_eq!(
        dir_a.file_name(),
        dir_b.file_name(),
        "output root must not change the config hash"
    );
    let csv_a = std::fs::read_to_string(dir_a.join("eval/epoch_0003.csv")).unwrap();
    let csv_b = std::fs::read_to_string(dir_b.join("eval/epoch_0003.csv")).unwrap();
    assert_eq!(csv_a, csv_b);
    // Every training step appears exactly once in the resumed metrics log.
    let steps: Vec<u64> = std::fs::read_to_string(dir_b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train_step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=18).collect::<Vec<u64>>());

    // The resumed run wrote a second TensorBoard events file.
    assert_eq!(std::fs::read_dir(dir_b.join("tb")).unwrap().count(), 2);

    // A finished run is not retrained.
    let before = std::fs::metadata(dir_b.join("checkpoints/final.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    let st = runner().arg(&b).output().unwrap();
    assert!(st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("already finished"));
    let after = std::fs::metadata(dir_b.join("checkpoints/final.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(tiny_config(t.path(), "c")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "misspelt key",
            good.replace("max_steps = 6", "max_steps = 6\nlerning_rate = 0.1"),
            "learning_rate",
        ),
        (
            "missing data",
            good.replace("cifar10-mini-jpg", "no-such-folder"),
            "no-such-folder",
        ),
        (
            "escaping name",
            good.replace("name = \"tiny\"", "name = \"../evil\""),
            "allow_outside_output",
        ),
        (
            "malformed toml",
            good.replace("[train]", "[train"),
            "invalid TOML",
        ),
    ];
    for (what, text, needle) in cases {
        let p = t.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let st = runner().arg(&p).output().unwrap();
        assert!(!st.status.success(), "{what}: should fail");
        let err = String::from_utf8_lossy(&st.stderr);
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && last.contains(needle),
            "{what}: {err}"
        );
        assert!(!t.path().join("c").join("..").join("evil").exists());
    }
}

#[test]
fn corrupt_checkpoint_is_refused_and_kept() {
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config(t.path(), "d");
    let quick = [
        "--set",
        "train.epochs=1",
        "--set",
        "train.max_steps=2",
        "--set",
        "eval.at_start=false",
        "--set",
        "eval.num_archs=2",
    ];
    let st = runner().arg(&cfg).args(quick).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = run_dir(&t.path().join("d"));
    std::fs::remove_file(dir.join("summary.json")).unwrap();
    let ck = dir.join("checkpoints/latest.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&ck, &bytes).unwrap();
    let st = runner().arg(&cfg).args(quick).output().unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.lines().last().unwrap().contains("corrupt"), "{err}");
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        bytes,
        "the corrupt checkpoint must be left as it was"
    );

    // An output root that cannot be created (a path below a regular file).
    let blocker = t.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let st = runner()
        .arg(&cfg)
        .args(quick)
        .args([
            "--set",
            &format!("experiment.output=\"{}\"", blocker.join("out").display()),
        ])
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("cannot create output folder"),
        "{err}"
    );
}

/// `eval.archs`: every evaluation scores exactly the table's architectures (file order), its
/// score column is the ground truth, and its other columns ride along as `bench_*`.
#[test]
fn eval_archs_table_is_evaluated_exactly() {
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config(t.path(), "e");
    let archs = [
        r#"{"0_1":3,"0_2":3,"0_3":3,"1_2":3,"1_3":3,"2_3":3}"#,
        r#"{"0_1":1,"0_2":2,"0_3":0,"1_2":4,"1_3":3,"2_3":1}"#,
        r#"{"0_1":2,"0_2":1,"0_3":4,"1_2":0,"1_3":1,"2_3":2}"#,
        r#"{"0_1":4,"0_2":4,"0_3":1,"1_2":3,"1_3":2,"2_3":3}"#,
    ];
    let mut csv = String::from("architecture,accuracy,flops\n");
    for (i, a) in archs.iter().enumerate() {
        csv.push_str(&format!(
            "\"{}\",{},{}\n",
            a.replace('"', "\"\""),
            90.0 + i as f64,
            100 + i
        ));
    }
    let table = t.path().join("table.csv");
    std::fs::write(&table, csv).unwrap();
    let st = runner()
        .arg(&cfg)
        .arg("--set")
        .arg(format!("eval.archs=\"{}\"", table.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir = run_dir(&t.path().join("e"));
    for epoch in ["0000", "0001", "0003"] {
        let text = std::fs::read_to_string(dir.join(format!("eval/epoch_{epoch}.csv"))).unwrap();
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let h: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(h.last().map(String::as_str), Some("bench_flops"), "{h:?}");
        let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        assert_eq!(
            rows.len(),
            4,
            "epoch {epoch}: all table rows, every evaluation"
        );
        for (i, r) in rows.iter().enumerate() {
            let a: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
            let want: serde_json::Value = serde_json::from_str(archs[i]).unwrap();
            assert_eq!(a, want);
            assert_eq!(r[4].parse::<f64>().unwrap(), 90.0 + i as f64);
            assert_eq!(&r[5], (100 + i).to_string().as_str());
        }
    }
    let s = summary(&dir);
    assert_eq!(s["final_eval"]["num_archs"], 4);
    assert_eq!(s["final_eval"]["num_with_ground_truth"], 4);
    assert!(s["ground_truth"]
        .as_str()
        .unwrap()
        .ends_with("table.csv: accuracy"));

    // A row that does not decode fails before training, naming the file and line.
    std::fs::write(&table, "architecture,accuracy\n\"{\"\"0_1\"\":7}\",1\n").unwrap();
    let st = runner()
        .arg(&cfg)
        .arg("--set")
        .arg(format!("eval.archs=\"{}\"", table.display()))
        .arg("--set")
        .arg("experiment.seed=4")
        .output()
        .unwrap();
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("table.csv:2"), "{err}");
}

/// `device.threads` sets a one-process run's thread count, `RAYON_NUM_THREADS` overrides it,
/// and run.log says which count was used.
#[test]
fn device_threads_sets_the_cpu_thread_count() {
    let t = tempfile::tempdir().unwrap();
    for (env, want) in [(None, "CPU threads: 1"), (Some("2"), "CPU threads: 2")] {
        let out = format!("threads{}", env.unwrap_or("0"));
        let cfg = tiny_config(t.path(), &out);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
        match env {
            Some(n) => cmd.env("RAYON_NUM_THREADS", n),
            None => cmd.env_remove("RAYON_NUM_THREADS"),
        };
        let st = cmd
            .arg(&cfg)
            .args(["--set", "device.threads=1", "--set", "train.max_steps=1"])
            .args(["--set", "train.epochs=1", "--set", "eval.num_archs=2"])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let log = std::fs::read_to_string(run_dir(&t.path().join(&out)).join("run.log")).unwrap();
        assert!(log.contains(want), "{env:?}: {log}");
    }
}

/// `device.conv_engine` picks the convolution kernels and run.log names them; asking for oneDNN
/// in a build without it fails with one line before any results folder is made.
#[test]
fn conv_engine_is_logged_and_onednn_needs_its_feature() {
    let t = tempfile::tempdir().unwrap();
    let run = |out: &str, engine: &str| {
        let cfg = tiny_config(t.path(), out);
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg(&cfg)
            .args(["--set", &format!("device.conv_engine={engine}")])
            .args(["--set", "train.max_steps=1", "--set", "train.epochs=1"])
            .args(["--set", "eval.num_archs=2"])
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap()
    };
    let st = run("rust", "rust");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let log = std::fs::read_to_string(run_dir(&t.path().join("rust")).join("run.log")).unwrap();
    assert!(
        log.contains("CPU convolution: runner's own kernels"),
        "{log}"
    );

    let st = run("onednn", "onednn");
    if cfg!(feature = "onednn") && runner::nn::onednn::available() {
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        let log =
            std::fs::read_to_string(run_dir(&t.path().join("onednn")).join("run.log")).unwrap();
        assert!(log.contains("CPU convolution: oneDNN 2."), "{log}");
    } else {
        assert!(!st.status.success());
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(err.contains("built without oneDNN"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !t.path().join("onednn").exists(),
            "a results folder was made"
        );
    }

    let st = run("bad", "mkl");
    assert!(!st.status.success());
    let err = String::from_utf8_lossy(&st.stderr);
    assert!(err.contains("conv_engine"), "{err}");
}

/// `runner check` refuses `device.conv_engine = "onednn"` in a build without oneDNN, and so
/// does a data-parallel launch (before any rank starts) and a sweep's plan (before any point).
#[test]
fn conv_engine_onednn_is_refused_everywhere_without_the_feature() {
    if runner::nn::onednn::available() {
        eprintln!("skipped: this build has oneDNN");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config(t.path(), "out");
    let runner = || Command::new(env!("CARGO_BIN_EXE_runner"));
    let engine = ["--set", "device.conv_engine=onednn"];
    let check = runner()
        .arg("check")
        .arg(&cfg)
        .args(engine)
        .output()
        .unwrap();
    let ranks = runner()
        .arg(&cfg)
        .args(engine)
        .args(["--set", "device.gpus=2", "--set", "device.kind=cpu"])
        .output()
        .unwrap();
    let sweep_file = t.path().join("sweep.toml");
    std::fs::write(
        &sweep_file,
        format!(
            "extends = {:?}\n[sweep]\ngrid = {{ \"device.conv_engine\" = [\"rust\", \"onednn\"] }}\n",
            cfg.file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let sweep = runner()
        .args(["sweep", "--dry-run"])
        .arg(&sweep_file)
        .output()
        .unwrap();
    let launch = runner()
        .args(["launch", "--nproc", "2"])
        .arg(&cfg)
        .args(engine)
        .args(["--set", "device.gpus=2", "--set", "device.kind=cpu"])
        .output()
        .unwrap();
    // Each error names where the value was set: the --set, or the sweep key's line.
    let set_at = "--set device.conv_engine=onednn: device.conv_engine = \"onednn\", but";
    let sweep_at = "sweep.toml:3: sweep.grid: device.conv_engine = \"onednn\", but";
    for (what, st, at) in [
        ("check", check, set_at),
        ("ranks", ranks, set_at),
        ("launch", launch, set_at),
        ("sweep", sweep, sweep_at),
    ] {
        let err = String::from_utf8_lossy(&st.stderr);
        assert!(!st.status.success(), "{what}: {err}");
        assert!(err.contains("built without oneDNN"), "{what}: {err}");
        assert!(err.contains(at), "{what}: {err}");
        // Refused before any rank starts: one line, nothing launched.
        assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    }
    assert!(!t.path().join("out").exists(), "a results folder was made");
}

/// A run that cannot start (its data is missing) fails in one line and leaves no folder behind;
/// a started run's folder is never removed by a later failed attempt.
#[test]
fn a_run_that_cannot_start_leaves_no_folder() {
    let t = tempfile::tempdir().unwrap();
    let cfg = tiny_config(t.path(), "out");
    let missing = t.path().join("no-such-data");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg(&cfg)
        .args([
            "--set",
            &format!("data.root={:?}", missing.display().to_string()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no-such-data"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    let root = t.path().join("out");
    let left: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
