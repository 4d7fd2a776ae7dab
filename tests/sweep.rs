//! End-to-end sweeps of the `runner` binary over tiny NAS-Bench-201 runs: a 2x2 sweep killed
//! with SIGKILL (sweep and points alike) and re-run must end with every point trained exactly
//! once and the numbers of an uninterrupted sweep; shards cover the grid once; a failing point
//! is recorded while the others finish; bad sweep files fail with one line.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped CIFAR-10 JPEGs (a run takes seconds: long enough to be killed mid-way).
fn shipped_data() -> String {
    format!(
        "root = \"{}\"\ntrain = [\"train\"]\nvalid = [\"test\"]\nbatch_size = 32\n",
        repo().join("data/cifar10-mini-jpg").display()
    )
}

/// 16 CIFAR-10 images from the fixtures (a run takes well under a second).
fn fixture_data() -> String {
    format!(
        "root = \"{}\"\ntrain = [\"cifar10_16.bin\"]\nvalid = [\"cifar10_16.bin\"]\nbatch_size = 8\n",
        repo().join("tests/fixtures").display()
    )
}

/// A tiny experiment (4 channels, 1 cell, 2 epochs of 3 steps, 4 archs) with `sweep` appended.
fn tiny(dir: &Path, out: &str, data: &str, sweep: &str) -> PathBuf {
    let text = format!(
        r#"[experiment]
name = "tiny"
seed = 3
output = "{out}"

[space]
kind = "nb201"
channels = 4
cells_per_stage = 1

[data]
dataset = "cifar10"
split = "custom"
eval_batch_size = 100
{data}
[train]
epochs = 2
max_steps = 3

[eval]
every = 1
num_archs = 4
num_archs_intermediate = 4
bn_recalibration = {{ steps = 1, batch_size = 8 }}
ground_truth = "{gt}"
ground_truth_dataset = "cifar10-valid"
valid_images = 100

{sweep}"#,
        gt = repo().join("benchmarks/nb201").display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

const GRID_2X2: &str =
    "[sweep]\ngrid = { \"train.learning_rate\" = [0.1, 0.05] }\nseeds = [0, 1]\n";

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.env("RAYON_NUM_THREADS", "2");
    c
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = runner();
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_line(o: &Output) -> String {
    stderr(o).lines().last().unwrap_or("").to_string()
}

/// The one sweep folder under `out`.
fn sweep_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("sweep.toml").exists())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

fn index(sweep: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sweep.join("sweep.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn summary(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// Steps of the `train_step` lines of a run's metrics log, in order.
fn train_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train_step")
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

fn run_dir_of(sweep: &Path, entry: &serde_json::Value) -> PathBuf {
    sweep.join(entry["run"].as_str().unwrap())
}

fn wait_for(what: &str, child: &mut std::process::Child, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "timed out waiting for {what}"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the sweep ended ({status}) before {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn killed_sweep_resumes_each_point_once_to_the_uninterrupted_result() {
    let t = tempfile::tempdir().unwrap();
    let a = tiny(t.path(), "a", &shipped_data(), GRID_2X2);
    let b = tiny(t.path(), "b", &shipped_data(), GRID_2X2);

    let o = run(&[&"sweep", &a]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sweep_a = sweep_dir(&t.path().join("a"));
    let ia = index(&sweep_a);
    assert_eq!(ia.len(), 4);
    for (i, e) in ia.iter().enumerate() {
        assert_eq!(e["index"], i);
        assert_eq!(e["status"], "done", "{e}");
        assert_eq!(e["attempts"], 1);
        assert!(
            e["kendall_tau"].is_number() && e["mean_accuracy"].is_number(),
            "{e}"
        );
        assert!(e.get("tau_fraction_of_noise_ceiling").is_some(), "{e}");
        let run = run_dir_of(&sweep_a, e);
        assert_eq!(
            run.file_name().unwrap().to_string_lossy(),
            format!("tiny-{}", e["point"].as_str().unwrap())
        );
        assert_eq!(e["kendall_tau"], summary(&run)["final_eval"]["kendall_tau"]);
    }
    // Overrides keep the sweep's order (the raw line; serde_json's map would sort them).
    let lines = std::fs::read_to_string(sweep_a.join("sweep.jsonl")).unwrap();
    let overrides: Vec<&str> = lines
        .lines()
        .map(|l| {
            let start = l.find("\"overrides\":").unwrap();
            let end = l[start..].find('}').unwrap();
            &l[start + 12..start + end + 1]
        })
        .collect();
    assert_eq!(
        overrides,
        [
            r#"{"train.learning_rate":0.1,"experiment.seed":0}"#,
            r#"{"train.learning_rate":0.1,"experiment.seed":1}"#,
            r#"{"train.learning_rate":0.05,"experiment.seed":0}"#,
            r#"{"train.learning_rate":0.05,"experiment.seed":1}"#,
        ]
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("train.learning_rate=0.05 experiment.seed=1"),
        "{stdout}"
    );

    // The same sweep in another output root, in its own process group, SIGKILLed (sweep and
    // point together) while point 1 is between its first checkpoint and its summary.
    let out_b = t.path().join("b");
    let mut child = runner()
        .args(["sweep".as_ref(), b.as_os_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id();
    let run_b = |i: usize| out_b.join(format!("tiny-{}", ia[i]["point"].as_str().unwrap()));
    wait_for("the sweep index", &mut child, || {
        std::fs::read_dir(&out_b)
            .is_ok_and(|d| d.flatten().any(|e| e.path().join("sweep.jsonl").exists()))
    });
    // Meanwhile a second sweep on the same folder is refused and changes nothing.
    let before = std::fs::read_to_string(sweep_dir(&out_b).join("sweep.toml")).unwrap();
    let o = run(&[&"sweep", &b]);
    assert!(!o.status.success());
    let last = last_line(&o);
    assert!(
        last.starts_with("error: sweep folder ")
            && last.contains("is in use by another sweep (process "),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(sweep_dir(&out_b).join("sweep.toml")).unwrap(),
        before
    );
    wait_for("point 1's first checkpoint", &mut child, || {
        run_b(1).join("checkpoints/latest.safetensors").exists()
    });
    let kill = Command::new("kill")
        .args(["-9", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait().unwrap();
    // The killed point's process is not our child: wait until it has been reaped, since the
    // run folder's lock counts a process that still has a /proc entry (a zombie) as alive.
    let holder = std::fs::read_to_string(run_b(1).join("lock")).unwrap_or_default();
    let start = Instant::now();
    while Path::new(&format!("/proc/{}", holder.trim())).exists() && !holder.trim().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "process {holder} never went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(run_b(0).join("summary.json").exists());
    assert!(!run_b(1).join("summary.json").exists(), "killed too late");
    assert!(!run_b(2).exists());
    let sweep_b = sweep_dir(&out_b);
    let statuses: Vec<String> = index(&sweep_b)
        .iter()
        .map(|e| e["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["done", "running", "pending", "pending"]);

    // Re-run: finishes, resuming point 1 from its checkpoint and running 2 and 3 once.
    let o = run(&[&"sweep", &b]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 to run, 1 already done"),
        "{}",
        stderr(&o)
    );
    let ib = index(&sweep_b);
    let attempts: Vec<u64> = ib.iter().map(|e| e["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 1, 1]);
    let strip = |mut e: serde_json::Value| {
        e.as_object_mut().unwrap().remove("attempts");
        e
    };
    for (ea, eb) in ia.iter().zip(&ib) {
        assert_eq!(strip(ea.clone()), strip(eb.clone()));
    }
    for (i, e) in ib.iter().enumerate() {
        let run = run_dir_of(&sweep_b, e);
        // Every training step exactly once, resumed or not.
        assert_eq!(
            train_steps(&run),
            (1..=6).collect::<Vec<u64>>(),
            "point {i}"
        );
        let (sa, sb) = (summary(&run_dir_of(&sweep_a, &ia[i])), summary(&run));
        for key in [
            "history",
            "final_eval",
            "final_train_loss",
            "final_train_accuracy",
            "steps",
        ] {
            assert_eq!(sa[key], sb[key], "point {i}: {key}");
        }
        let log = std::fs::read_to_string(
            sweep_b.join(format!("logs/{}.log", e["point"].as_str().unwrap())),
        )
        .unwrap();
        assert_eq!(
            log.matches("== runner sweep").count(),
            if i == 1 { 2 } else { 1 },
            "{log}"
        );
        let run_log = std::fs::read_to_string(run.join("run.log")).unwrap();
        assert_eq!(
            run_log.contains("resuming from"),
            i == 1,
            "point {i}: {run_log}"
        );
    }

    // A third time: nothing runs; plain `runner FILE` on a sweep file is the same command.
    let modified = |i: usize| {
        std::fs::metadata(run_b(i).join("summary.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = (0..4).map(modified).collect();
    let o = run(&[&b]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 to run, 4 already done"),
        "{}",
        stderr(&o)
    );
    assert_eq!((0..4).map(modified).collect::<Vec<_>>(), before);
}

#[test]
fn shards_cover_the_grid_exactly_once() {
    let t = tempfile::tempdir().unwrap();
    let f = tiny(t.path(), "s", &fixture_data(), GRID_2X2);
    let out = t.path().join("s");

    // Dry runs list each shard's points and write nothing.
    let listed = |shard: &str| -> Vec<String> {
        let o = run(&[&"sweep", &f, &"--dry-run", &"--shard", &shard]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .skip_while(|l| !l.trim_start().starts_with("index"))
            .skip(1)
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (l0, l1) = (listed("0/2"), listed("1/2"));
    assert_eq!(l0.len(), 2);
    assert_eq!(l1.len(), 2);
    assert!(
        l0[0].starts_with("0 ")
            && l0[1].starts_with("2 ")
            && l1[0].starts_with("1 ")
            && l1[1].starts_with("3 "),
        "{l0:?} {l1:?}"
    );
    assert!(
        l0.iter().chain(&l1).all(|l| l.ends_with(" pending")),
        "{l0:?} {l1:?}"
    );
    assert!(!out.exists(), "a dry run must not write");

    // Both shards at once, as two array tasks would.
    let spawn = |shard: &str| {
        runner()
            .args([
                "sweep".as_ref(),
                f.as_os_str(),
                "--shard".as_ref(),
                shard.as_ref(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (s0, s1) = (spawn("0/2"), spawn("1/2"));
    let (o0, o1) = (
        s0.wait_with_output().unwrap(),
        s1.wait_with_output().unwrap(),
    );
    assert!(o0.status.success(), "{}", stderr(&o0));
    assert!(o1.status.success(), "{}", stderr(&o1));
    let sweep = sweep_dir(&out);
    let idx = index(&sweep);
    assert_eq!(idx.len(), 4);
    assert!(
        idx.iter()
            .all(|e| e["status"] == "done" && e["attempts"] == 1),
        "{idx:?}"
    );
    for e in &idx {
        // 16 images in batches of 8: 2 steps per epoch.
        assert_eq!(train_steps(&run_dir_of(&sweep, e)), [1, 2, 3, 4]);
    }
    let runs = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tiny-"))
        .count();
    assert_eq!(runs, 4);
    for (o, mine, other) in [(&o0, [0, 2], [1, 3]), (&o1, [1, 3], [0, 2])] {
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        for i in mine {
            assert!(text.contains(idx[i]["point"].as_str().unwrap()), "{text}");
        }
        for i in other {
            assert!(!text.contains(idx[i]["point"].as_str().unwrap()), "{text}");
        }
    }
    assert_eq!(
        listed("1/2")
            .iter()
            .filter(|l| l.ends_with(" done"))
            .count(),
        2
    );

    // The recorded sweep.toml expands to the same sweep.
    let o = run(&[&"sweep", &sweep.join("sweep.toml"), &"--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with(&format!("sweep      {}\n", sweep.display())),
        "{text}"
    );
    assert_eq!(text.matches(" done ").count(), 4, "{text}");

    for bad in ["2/2", "0/0", "x"] {
        let o = run(&[&"sweep", &f, &"--shard", &bad]);
        assert!(!o.status.success());
        assert!(
            last_line(&o).starts_with(&format!("error: --shard {bad}: ")),
            "{}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
}

#[test]
fn a_failing_point_is_recorded_and_the_others_finish() {
    let t = tempfile::tempdir().unwrap();
    let good = repo().join("tests/fixtures");
    let sweep = format!(
        "[sweep]\ngrid = {{ \"data.root\" = [\"{}\", \"/no-such-folder\"] }}\nseeds = [0, 1]\n",
        good.display()
    );
    let f = tiny(t.path(), "f", &fixture_data(), &sweep);
    let o = run(&[&"sweep", &f, &"--jobs", &"2"]);
    assert!(!o.status.success(), "a failed point must fail the sweep");
    let last = last_line(&o);
    assert!(
        last.starts_with("error: 2 of 4 sweep points did not finish (first: point 2 "),
        "{last}"
    );
    let sweep = sweep_dir(&t.path().join("f"));
    let idx = index(&sweep);
    let statuses: Vec<&str> = idx.iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["done", "done", "failed", "failed"]);
    for e in &idx[2..] {
        let err = e["error"].as_str().unwrap();
        assert!(
            err.starts_with("error: ")
                && err.contains("no-such-folder")
                && err.ends_with("(exit code 1)"),
            "{err}"
        );
        assert!(e["kendall_tau"].is_null());
    }
    assert!(idx[0].get("error").is_none());
    assert!(idx[0]["kendall_tau"].is_number());
}

#[test]
fn bad_sweeps_fail_with_one_line_naming_file_and_key() {
    let t = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "unknown key",
            "[sweep]\ngrid = { \"train.lerning_rate\" = [0.1, 0.05] }\n",
            ":34: sweep.grid: unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)".into(),
        ),
        (
            "wrong type",
            "[sweep]\ngrid = { \"train.epochs\" = [2, \"three\"] }\n",
            ":34: sweep.grid: train.epochs: expected an unsigned integer, found string \"three\"".into(),
        ),
        ("empty grid", "[sweep]\ngrid = {}\n", ":34: sweep.grid is empty".into()),
        ("empty list", "[sweep]\ngrid = { \"train.epochs\" = [] }\n", ":34: sweep.grid \"train.epochs\" is an empty list".into()),
        (
            "unequal zip",
            "[sweep]\nzip = { \"train.epochs\" = [1, 2], \"eval.every\" = [1] }\n",
            ":34: sweep.zip lists must have equal lengths: \"train.epochs\" has 2, \"eval.every\" has 1".into(),
        ),
        (
            "duplicate points",
            "[sweep]\nseeds = [4, 4]\n",
            ":34: duplicate sweep points: 0 (experiment.seed=4) and 1 (experiment.seed=4) resolve to the same configuration".into(),
        ),
        ("unknown sweep key", "[sweep]\nseed = [1]\n", ":34: unknown key 'sweep.seed' (did you mean 'seeds'?)".into()),
    ];
    for (what, sweep, want) in cases {
        let f = tiny(t.path(), "bad", &fixture_data(), sweep);
        let o = run(&[&"sweep", &f, &"--dry-run"]);
        assert!(!o.status.success(), "{what}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
        let expected = format!("error: {}{want}", f.display());
        assert!(
            last_line(&o).starts_with(&expected),
            "{what}:\n got {err}\nwant {expected}"
        );
        // The plain form validates the same way, before writing anything.
        let o = run(&[&f]);
        assert!(
            !o.status.success() && last_line(&o).starts_with(&expected),
            "{what}: {}",
            stderr(&o)
        );
        assert!(
            !t.path().join("bad").exists(),
            "{what}: nothing may be written"
        );
    }
    let f = tiny(t.path(), "bad", &fixture_data(), GRID_2X2);
    let o = run(&[&"sweep", &f, &"--set", &"experiment.seed=5"]);
    assert_eq!(
        last_line(&o),
        format!("error: --set experiment.seed=5: \"experiment.seed\" is swept by sweep.seeds ({}:35); drop the --set or the sweep key", f.display())
    );
    let plain = tiny(t.path(), "plain", &fixture_data(), "");
    let o = run(&[&"sweep", &plain]);
    assert_eq!(
        last_line(&o),
        format!(
            "error: {}: no [sweep] table (declare sweep.grid, sweep.zip or sweep.seeds)",
            plain.display()
        )
    );
    let o = run(&[&f, &"--fresh"]);
    assert!(
        last_line(&o).contains("--fresh does not apply to a sweep"),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("bad").exists() && !t.path().join("plain").exists());
}

#[test]
fn the_example_sweep_lists_its_points() {
    let f = repo().join("experiments/sweeps/nb201_lr_seeds.toml");
    let o = run(&[&"sweep", &f, &"--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let results = repo().join("results");
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("sweep      {}/nb201_lr_seeds-", results.display())),
        "{text}"
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("../quickstart-"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, want) in rows.iter().zip([
        "train.learning_rate=0.1 experiment.seed=0",
        "train.learning_rate=0.1 experiment.seed=1",
        "train.learning_rate=0.05 experiment.seed=0",
        "train.learning_rate=0.05 experiment.seed=1",
    ]) {
        assert!(row.ends_with(want), "{row}");
    }
    // The quickstart's own run is the sweep's (lr 0.1, seed 0) point.
    let o = run(&[&"check", &repo().join("experiments/quickstart.toml")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hash = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("# hash: ").map(str::to_string))
        .unwrap();
    assert!(
        rows[0].contains(&format!("../quickstart-{hash}")),
        "{}",
        rows[0]
    );
}

/// `runner show` and `runner diff` read the sweep folder this command writes, whose `run`
/// entries point at run folders next to it (`../tiny-<hash>`).
#[test]
fn show_and_diff_read_a_real_sweep_folder() {
    let t = tempfile::tempdir().unwrap();
    let seeds = "[sweep]\nseeds = [0, 1]\n";
    let a = tiny(t.path(), "da", &fixture_data(), seeds);
    let b = tiny(t.path(), "db", &fixture_data(), seeds);
    let o = run(&[&"sweep", &a]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[&"sweep", &b, &"--set", &"train.learning_rate=0.05"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (sa, sb) = (
        sweep_dir(&t.path().join("da")),
        sweep_dir(&t.path().join("db")),
    );
    let o = run(&[&"show", &sa]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for e in index(&sa) {
        assert!(text.contains(e["point"].as_str().unwrap()), "{text}");
    }
    let o = run(&[&"diff", &sa, &sb]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("train.learning_rate"), "{text}");
}
