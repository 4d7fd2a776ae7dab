//! The trick experiments: every tiny CPU variant in `experiments/tricks/tiny` runs end to end and
//! records its tricks in `config.toml` and `summary.json`, with the trick's visible effect in the
//! results; a focus-branch run killed mid-way resumes to exactly the uninterrupted result; the
//! study-scale files resolve and build their trick sets against the real ground truth.

use runner::config::{self, Config};
use runner::space::factors::Size;
use runner::space::nb201::{self, Arch, Nb201};
use runner::space::Space;
use runner::tricks::TrickSet;
use std::collections::{BTreeSet, HashMap};
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
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `[tricks]` keys of a TOML file (or of a resolved `config.toml`).
fn trick_keys(path: &Path) -> BTreeSet<String> {
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    t.get("tricks")
        .and_then(|v| v.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// Architectures of an `eval/epoch_NNNN.csv` with their ground truth.
fn evaluated(dir: &Path, epoch: usize) -> Vec<(Arch, f64)> {
    let path = dir.join(format!("eval/epoch_{epoch:04}.csv"));
    let mut rdr = csv::Reader::from_path(&path).unwrap();
    rdr.records()
        .map(|r| {
            let r = r.unwrap();
            let arch = Nb201::decode(&serde_json::from_str(&r[0]).unwrap()).unwrap();
            (arch, r[4].parse().unwrap())
        })
        .collect()
}

fn truth() -> HashMap<Arch, f64> {
    nb201::ground_truth(&repo().join("benchmarks/nb201"), "cifar10-valid")
        .unwrap()
        .scores
}

/// Ground truth of the archset, sorted ascending.
fn sorted_truth(gt: &HashMap<Arch, f64>) -> Vec<f64> {
    let mut v: Vec<f64> = Nb201::new()
        .archset()
        .unwrap()
        .iter()
        .map(|a| gt[a])
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[test]
fn tiny_trick_experiments_run_and_record_their_tricks() {
    let t = tempfile::tempdir().unwrap();
    let tiny = repo().join("experiments/tricks/tiny");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tiny)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && !p.ends_with("base.toml"))
        // The other spaces' tiny trick runs: `archsetless_tiny_trick_experiments_...` below.
        .filter(|p| archsetless_space(p).is_none())
        .collect();
    files.sort();
    let covered: BTreeSet<String> = files.iter().flat_map(|f| trick_keys(f)).collect();
    let all: BTreeSet<String> = runner::tricks::TRICKS
        .iter()
        .map(|i| i.name.to_string())
        .collect();
    assert_eq!(covered, all, "one tiny experiment per trick at least");
    let gt = truth();
    let asc = sorted_truth(&gt);
    for file in &files {
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let out = t.path().join(&stem);
        let st = runner()
            .arg(file)
            .arg(format!("--set=experiment.output={}", out.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let dir = run_dir(&out);
        let want = trick_keys(file);
        assert!(!want.is_empty(), "{stem} turns on no trick");
        // Recorded in the resolved config and in the summary.
        assert_eq!(
            trick_keys(&dir.join("config.toml")),
            want,
            "{stem}: config.toml"
        );
        let cfg_text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        for k in &want {
            assert!(
                cfg_text.contains(&format!("[tricks.{k}]")),
                "{stem}: {cfg_text}"
            );
        }
        let s = json(&dir.join("summary.json"));
        let recorded: BTreeSet<String> = s["tricks"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(recorded, want, "{stem}: summary.json");
        let epochs = s["epochs"].as_u64().unwrap();
        assert_eq!(s["steps"], 3 * epochs, "{stem}: 3 steps per epoch");
        let size = s["train_archset_size"].as_u64();
        let metrics = lines(&dir.join("metrics.jsonl"));
        let steps: Vec<&serde_json::Value> = metrics
            .iter()
            .filter(|v| v["kind"] == "train_step")
            .collect();
        assert_eq!(steps.len() as u64, 3 * epochs);
        // The trick's effect, visible in the results folder.
        match stem.as_str() {
            "multipath" | "multipath_fairnas" => {
                let k = if stem == "multipath" { 3 } else { 5 };
                assert!(steps.iter().all(|v| v["paths"] == k), "{stem}");
                assert_eq!(
                    s["tricks"]["multipath"]["fairnas"],
                    stem == "multipath_fairnas"
                );
            }
            "omniscience" => {
                assert_eq!(size, Some(5043));
                let cut = asc[asc.len() - 5043];
                for e in 0..=2 {
                    assert!(
                        evaluated(&dir, e).iter().all(|(_, g)| *g >= cut),
                        "validation archs from the top third"
                    );
                }
            }
            "train_split" => {
                assert_eq!(size, Some(3056));
                let cut = asc[4 * 3056];
                assert!(
                    evaluated(&dir, 2).iter().all(|(_, g)| *g >= cut),
                    "fold 4 is the best fifth"
                );
            }
            "augmented" => {
                assert_eq!(size, Some(1));
                let ev = evaluated(&dir, 2);
                assert_eq!(ev.len(), 1);
                assert_eq!(
                    ev[0].0.ops,
                    [3, 2, 1, 3, 3, 2],
                    "setup 323132 in node-major order"
                );
                assert!(s["final_train_loss"].as_f64().unwrap().is_finite());
            }
            "cosine_restarts" => {
                for v in &steps {
                    let step = v["step"].as_u64().unwrap() - 1;
                    let lr = v["lr"].as_f64().unwrap();
                    if step % 3 == 0 {
                        assert_eq!(lr, 0.1, "restart at step {step}");
                    } else {
                        assert!(lr < 0.1, "step {step}: {lr}");
                    }
                }
            }
            "focus_branch" => {
                let decisions = lines(&dir.join("focus_branch.jsonl"));
                assert_eq!(
                    decisions
                        .iter()
                        .map(|d| d["epoch"].as_u64().unwrap())
                        .collect::<Vec<_>>(),
                    [1, 2, 3]
                );
                let mut n = 15_284;
                for (i, d) in decisions.iter().enumerate() {
                    assert_eq!(d["archs_before"], n);
                    n = d["archs_after"].as_u64().unwrap();
                    if let (Some(key), Some(choice)) =
                        (d["chosen"]["key"].as_str(), d["chosen"]["choice"].as_u64())
                    {
                        // Every architecture evaluated afterwards takes the fixed choice.
                        let e = ["0_1", "0_2", "0_3", "1_2", "1_3", "2_3"]
                            .iter()
                            .position(|k| *k == key)
                            .unwrap();
                        for later in i + 2..=3 {
                            assert!(
                                evaluated(&dir, later)
                                    .iter()
                                    .all(|(a, _)| a.ops[e] as u64 == choice),
                                "epoch {later}"
                            );
                        }
                    }
                }
                assert_eq!(size, Some(n));
                assert!(
                    decisions.iter().any(|d| d["chosen"].is_object()),
                    "some choice qualified"
                );
            }
            "pruned" => {
                assert_eq!(size, Some(1240));
                for e in 0..=2 {
                    assert!(evaluated(&dir, e)
                        .iter()
                        .all(|(a, _)| [2, 3].contains(&a.ops[0]) && a.ops[3] == 3));
                }
            }
            other => panic!("no check for tiny experiment {other}"),
        }
    }
}

/// The space of a tiny trick experiment named `<space>_<trick>.toml` for the spaces without
/// an archset (DARTS, DARTS-PTB, ProxylessNAS); `None` for the NB201 ones.
fn archsetless_space(p: &Path) -> Option<&'static str> {
    let name = p.file_name()?.to_string_lossy().to_string();
    ["darts", "ptb", "proxyless"]
        .into_iter()
        .find(|k| name.starts_with(&format!("{k}_")))
}

/// (training, full) sizes of an archset-less space under `cfg`'s tricks.
fn space_sizes(kind: &str, cfg: &Config) -> (Size, Size) {
    fn of<S: Space>(space: &S, cfg: &Config) -> (Size, Size) {
        let ts = TrickSet::new(space, cfg, None, None).unwrap();
        (ts.space_size().unwrap(), space.factors().unwrap().size())
    }
    match kind {
        "darts" => of(&runner::space::darts::Darts::new(), cfg),
        "ptb" => of(&runner::space::ptb::Ptb, cfg),
        _ => of(&runner::space::proxyless::Proxyless, cfg),
    }
}

/// The tiny trick runs of DARTS, DARTS-PTB and ProxylessNAS: each records its tricks in
/// `config.toml` and `summary.json` (with the size of the space training sampled from), every
/// evaluated architecture respects `pruned` (read back from the eval CSVs), multipath steps
/// run their paths, and with cosine restarts the (base) learning rate is the initial value at
/// the first step of every period and below it elsewhere (ProxylessNAS: after the warm-up).
#[test]
fn archsetless_tiny_trick_experiments_run_and_respect_their_tricks() {
    let t = tempfile::tempdir().unwrap();
    let tiny = repo().join("experiments/tricks/tiny");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&tiny)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml") && archsetless_space(p).is_some())
        .collect();
    files.sort();
    let kinds: BTreeSet<&str> = files.iter().filter_map(|f| archsetless_space(f)).collect();
    assert_eq!(kinds.len(), 3, "a tiny trick run per space: {files:?}");
    let mut covered = BTreeSet::new();
    for file in &files {
        let kind = archsetless_space(file).unwrap();
        let stem = file.file_stem().unwrap().to_string_lossy().to_string();
        let out = t.path().join(&stem);
        let start = Instant::now();
        let st = runner()
            .arg(file)
            .arg(format!("--set=experiment.output={}", out.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        eprintln!("{stem}: {:.1} s", start.elapsed().as_secs_f64());
        let dir = run_dir(&out);
        let want = trick_keys(file);
        assert!(!want.is_empty(), "{stem} turns on no trick");
        covered.extend(want.iter().cloned());
        assert_eq!(
            trick_keys(&dir.join("config.toml")),
            want,
            "{stem}: config.toml"
        );
        let s = json(&dir.join("summary.json"));
        assert_eq!(s["space"], kind);
        let recorded: BTreeSet<String> = s["tricks"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(recorded, want, "{stem}: summary.json");
        let cfg: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
        let tricks = cfg["tricks"].as_table().unwrap();
        // The space size training sampled from, as the trick set computes it.
        let resolved = config::load(&dir.join("config.toml"), &[]).unwrap();
        let (size, full) = space_sizes(kind, &resolved.config);
        assert_eq!(s["train_space_size"], size.to_string(), "{stem}");
        // Every evaluated architecture takes only allowed values.
        let mut evaluated = 0;
        for e in std::fs::read_dir(dir.join("eval")).unwrap() {
            let mut rdr = csv::Reader::from_path(e.unwrap().path()).unwrap();
            for r in rdr.records() {
                let arch: serde_json::Value = serde_json::from_str(&r.unwrap()[0]).unwrap();
                if let Some(p) = tricks.get("pruned").and_then(|p| p.as_table()) {
                    for (key, vals) in p {
                        let vals: Vec<serde_json::Value> = vals.clone().try_into().unwrap();
                        assert!(
                            vals.contains(&arch[key]),
                            "{stem}: {key} = {} in {arch}",
                            arch[key]
                        );
                    }
                }
                evaluated += 1;
            }
        }
        assert!(evaluated >= 4, "{stem}: {evaluated} evaluated");
        if tricks.contains_key("pruned") {
            assert!(
                size.log10 < full.log10 - 1.0,
                "{stem}: pruned {size} of {full}"
            );
        } else {
            assert_eq!(size, full, "{stem}");
        }
        let steps: Vec<serde_json::Value> = lines(&dir.join("metrics.jsonl"))
            .into_iter()
            .filter(|v| v["kind"] == "train_step")
            .collect();
        assert!(!steps.is_empty());
        if let Some(m) = tricks.get("multipath") {
            let k = m["paths"].as_integer().unwrap();
            assert!(steps.iter().all(|v| v["paths"] == k), "{stem}: {k} paths");
        }
        if let Some(r) = tricks.get("cosine_restarts") {
            let every = r["every"].as_integer().unwrap() as u64;
            let train = cfg["train"].as_table().unwrap();
            let lr0 = train["learning_rate"].as_float().unwrap();
            let warmup = train
                .get("warmup_epochs")
                .and_then(|w| w.as_integer())
                .unwrap_or(0) as u64;
            let mut seen_epoch = 0;
            for v in &steps {
                let epoch = v["epoch"].as_u64().unwrap();
                let mut lr = v["lr"].as_f64().unwrap();
                if kind == "ptb" {
                    // The base rate before the study's seq_len / bptt scaling.
                    lr *= 35.0 / v["seq_len"].as_f64().unwrap();
                }
                let first = epoch != seen_epoch;
                seen_epoch = epoch;
                if epoch <= warmup {
                    continue;
                }
                if first && (epoch - 1 - warmup).is_multiple_of(every) {
                    assert!(
                        (lr - lr0).abs() <= 1e-12 * lr0,
                        "{stem}: restart at epoch {epoch}: {lr}"
                    );
                } else {
                    assert!(
                        lr < lr0 * (1.0 - 1e-9),
                        "{stem}: epoch {epoch} step {}: {lr}",
                        v["step"]
                    );
                }
            }
        }
    }
    for t in ["pruned", "multipath", "cosine_restarts"] {
        assert!(covered.contains(t), "no tiny run of {t} on these spaces");
    }
}

#[test]
fn killed_focus_branch_run_resumes_to_identical_result() {
    let t = tempfile::tempdir().unwrap();
    let file = repo().join("experiments/tricks/tiny/focus_branch.toml");
    let run = |out: &Path| {
        let mut c = runner();
        c.arg(&file)
            .arg(format!("--set=experiment.output={}", out.display()));
        c
    };
    let (out_a, out_b) = (t.path().join("a"), t.path().join("b"));
    let st = run(&out_a)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dir_a = run_dir(&out_a);

    // Kill once a decision and the checkpoint after it exist.
    let mut child = run(&out_b)
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
        if dir.is_some_and(|d| {
            d.join("checkpoints/latest.safetensors").exists()
                && d.join("focus_branch.jsonl").exists()
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dir_b = run_dir(&out_b);
    assert!(!dir_b.join("summary.json").exists(), "killed too late");
    let st = run(&out_b).output().unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (sa, sb) = (
        json(&dir_a.join("summary.json")),
        json(&dir_b.join("summary.json")),
    );
    for k in [
        "history",
        "final_eval",
        "final_train_loss",
        "steps",
        "train_archset_size",
        "tricks",
    ] {
        assert_eq!(sa[k], sb[k], "{k}");
    }
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(
        read(&dir_a, "focus_branch.jsonl"),
        read(&dir_b, "focus_branch.jsonl")
    );
    for e in 0..=3 {
        let f = format!("eval/epoch_{e:04}.csv");
        assert_eq!(read(&dir_a, &f), read(&dir_b, &f), "{f}");
    }
}

/// The study-scale files resolve, turn on what they say, and build their trick sets against
/// the shipped CIFAR-100 ground truth (their data is not shipped, so they are not trained here).
#[test]
fn study_experiments_resolve_and_build_their_tricks() {
    let dir = repo().join("experiments/tricks");
    let bench = repo().join("benchmarks/nb201");
    let gt = nb201::ground_truth(&bench, "cifar100").unwrap();
    let params = nb201::params(&bench, "cifar100").unwrap();
    let space = Nb201::new();
    let none_on_0_1 = space
        .archset()
        .unwrap()
        .iter()
        .filter(|a| a.ops[0] == 0)
        .count();
    let expect: &[(&str, &[&str], Option<usize>)] = &[
        ("multipath", &["multipath"], None),
        ("multipath_fairnas", &["multipath"], None),
        ("omniscience", &["omniscience"], Some(5043)),
        ("omniscience_random", &["omniscience"], Some(5043)),
        ("train_split", &["train_split"], Some(3056)),
        (
            "train_split_structured",
            &["train_split"],
            Some(none_on_0_1),
        ),
        ("train_split_val_acc", &["train_split"], Some(3056)),
        ("augmented", &["augmented"], Some(1)),
        ("augmented_replicate", &["augmented"], Some(1)),
        ("cosine_restarts", &["cosine_restarts"], None),
        ("focus_branch", &["focus_branch"], None),
        ("pruned", &["pruned"], Some(4096)),
    ];
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "toml") || p.ends_with("base.toml") {
            continue;
        }
        // The NB101 trick files (nb101_*.toml) are checked by tests/nb101_tricks.rs.
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nb101_"))
        {
            continue;
        }
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        let (_, names, size) = expect
            .iter()
            .find(|(n, _, _)| *n == stem)
            .unwrap_or_else(|| panic!("unexpected experiment {stem}"));
        let r = config::load(&p, &[]).unwrap_or_else(|e| panic!("{stem}: {e:#}"));
        let cfg: &Config = &r.config;
        assert_eq!(cfg.tricks.active(), *names, "{stem}");
        let ts = TrickSet::new(&space, cfg, Some(&gt), Some(params.clone()))
            .unwrap_or_else(|e| panic!("{stem}: {e:#}"));
        let n = ts.train_archset_size().unwrap();
        match size {
            Some(s) => assert_eq!(n, *s, "{stem}"),
            None => assert_eq!(n, 15_284, "{stem}"),
        }
        seen += 1;
    }
    assert_eq!(seen, expect.len());
    // The defaults the issue names.
    let load = |f: &str| config::load(&dir.join(f), &[]).unwrap().config;
    let m = load("multipath.toml");
    assert_eq!(
        (
            m.tricks.multipath.unwrap().paths,
            m.train.epochs,
            m.eval.num_archs
        ),
        (5, 400, 50)
    );
    let o = load("omniscience.toml");
    assert_eq!(
        (o.tricks.omniscience.unwrap().ratio, o.train.epochs),
        (0.33, 2000)
    );
    assert_eq!(
        load("train_split.toml").tricks.train_split.unwrap().folds,
        5
    );
    let f = load("focus_branch.toml");
    let fb = f.tricks.focus_branch.unwrap();
    assert_eq!((f.train.epochs, fb.every, fb.num_archs), (2000, 500, 150));
}

/// With the NB201 archset in NAS-Bench-201 `arch_index` order (the study's `nb201.pkl` order),
/// the validation subset is exactly the study's `sorted(RandomState(seed).permutation(n)[:100])`
/// (fixture computed by NumPy: tests/fixtures/gen_nb201_study_subset.py).
#[test]
fn nb201_validation_subset_is_the_studys() {
    use runner::space::nb201::Nb201;
    use runner::space::Space;
    let space = Nb201::in_benchmark_order(&repo().join("benchmarks/nb201")).unwrap();
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/fixtures/nb201_study_subset.json")).unwrap(),
    )
    .unwrap();
    let set = space.archset().unwrap();
    assert_eq!(set.len(), f["archset_len"].as_u64().unwrap() as usize);
    assert_eq!(Nb201::arch_string(&set[0]), f["first"].as_str().unwrap());
    assert_eq!(
        Nb201::arch_string(&set[set.len() - 1]),
        f["last"].as_str().unwrap()
    );
    for sub in f["subsets"].as_array().unwrap() {
        let seed = sub["seed"].as_u64().unwrap();
        let mut cfg = runner::config::defaults::for_kind("nb201").unwrap();
        cfg.experiment.seed = seed;
        let ts = runner::tricks::TrickSet::new(&space, &cfg, None, None).unwrap();
        let got: Vec<String> = ts
            .eval_archs(&space, 100)
            .iter()
            .map(Nb201::arch_string)
            .collect();
        let want: Vec<String> = sub["arch_str"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want, "seed {seed}");
    }
}
