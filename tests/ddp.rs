//! Data-parallel training through the `runner` binary, with real processes meeting over TCP
//! (CPU ranks: `device.kind = "cpu"`, `device.gpus = 2`) on a tiny NAS-Bench-201 supernet:
//!
//! - the 2-rank run's final weights, logged losses and per-rank architectures equal a
//!   single-process reference written here, which computes both ranks' gradients in turn on one
//!   model (DistributedSampler shards, parallel sampling, every gradient pre-filled with zeros,
//!   mean over ranks, clip, SGD at learning rate x 2);
//! - only rank 0 writes the run folder; its evaluation of the initial weights equals a
//!   one-process run's byte for byte;
//! - the launcher killed with SIGKILL mid-run takes its ranks with it, and a rerun resumes to
//!   the results of the uninterrupted run;
//! - a rank killed mid-run makes the other fail within the timeout naming it, and the last
//!   checkpoint stays valid;
//! - bad input fails with one line and writes no results folder.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use runner::config::{self, Space as SpaceCfg};
use runner::data;
use runner::nn::Store;
use runner::rng;
use runner::run::checkpoint;
use runner::space::nb201::{Nb201, Nb201Net};
use runner::space::Space;
use runner::train::{clip, schedule, sgd};
use runner::tricks::multipath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny NB201 experiment on 2 CPU ranks with parallel sampling; `epochs` and extra TOML lines
/// vary per test.
fn config(dir: &Path, out: &str, epochs: usize, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[experiment]
name = "ddp"
seed = 5
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
batch_size = 16
eval_batch_size = 100

[train]
epochs = {epochs}
max_steps = 4
grad_clip = 5.0
parallel_sampling = true

[eval]
every = 1
num_archs = 5
num_archs_intermediate = 3
bn_recalibration = {{ steps = 2, batch_size = 32 }}
ground_truth = "{gt}"
ground_truth_dataset = "cifar10-valid"
valid_images = 200

[device]
kind = "cpu"
gpus = 2
{extra}
"#,
        out = dir.join(out).display(),
        data = repo().join("data/cifar10-mini-jpg").display(),
        gt = repo().join("benchmarks/nb201").display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn runner() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    // One thread per rank: the CI machine has two cores.
    c.env("RAYON_NUM_THREADS", "1")
        .env("RUNNER_LOG", "info,runner=debug")
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("LOCAL_RANK")
        .env_remove("MASTER_ADDR")
        .env_remove("MASTER_PORT");
    c
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn run_dir(out: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json_lines(p: &Path) -> Vec<serde_json::Value> {
    read(p)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut v = vec![];
    walk(dir, dir, &mut v);
    v.sort();
    v
}

fn model(path: &Path, hash: &str) -> BTreeMap<String, Vec<f32>> {
    let ck: checkpoint::Checkpoint<serde_json::Value> =
        checkpoint::load(path, hash, &Device::Cpu).unwrap();
    ck.model
        .into_iter()
        .map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            != Some("Z")
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `path` exists; fails if `child` ends first.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{} never appeared",
            path.display()
        );
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before {} appeared", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What the single-process reference computes: the parameters after training, the logged
/// (rank-mean) loss of every step, and each rank's architecture of every step.
struct Reference {
    params: BTreeMap<String, Vec<f32>>,
    losses: Vec<f64>,
    archs: [Vec<String>; 2],
}

/// Both ranks' steps computed in turn on one model, as the study's DDP defines them.
fn reference(cfg_path: &Path) -> Reference {
    const WORLD: usize = 2;
    let cfg = config::load(cfg_path, &[]).unwrap().config;
    let SpaceCfg::Nb201(sc) = &cfg.space else {
        panic!("nb201 expected")
    };
    let seed = cfg.experiment.seed;
    let dev = Device::Cpu;
    let d = data::build(&cfg.data).unwrap();
    let space = Nb201::in_benchmark_order(&repo().join("benchmarks/nb201")).unwrap();
    let store = Store::new(&dev);
    let net = Nb201Net::new(
        &store.root(),
        sc,
        d.num_classes,
        &mut rng::stream(seed, "init", &[]),
    )
    .unwrap();
    let vars: Vec<Var> = store.params().into_iter().map(|(_, v)| v).collect();
    let t = &cfg.train;
    let mut opt = sgd::Sgd::new(
        store.params(),
        sgd::SgdConfig {
            lr: t.learning_rate,
            momentum: t.momentum,
            nesterov: t.nesterov,
            weight_decay: t.weight_decay,
            unsampled: t.unsampled,
        },
    );
    // The study pre-fills every gradient with zeros under parallel sampling.
    opt.mark_all_touched();
    let mut sample = rng::stream(seed, "sample", &[]);
    let n = d.train_indices.len();
    let bs = cfg.data.batch_size;
    let per_rank = n.div_ceil(WORLD);
    let steps = (per_rank / bs).min(t.max_steps);
    let total = steps * t.epochs;
    let mut out = Reference {
        params: BTreeMap::new(),
        losses: vec![],
        archs: [vec![], vec![]],
    };
    let mut step = 0u64;
    for epoch in 1..=t.epochs {
        let perm = data::shuffled(n, seed, "train-order", &[epoch as u64]);
        // DistributedSampler: pad with the head to a multiple of WORLD, rank r takes every
        // WORLD-th position from r.
        let mut padded = perm.clone();
        padded.extend_from_slice(&perm[..per_rank * WORLD - n]);
        let mut loaders: Vec<data::BatchIter> = (0..WORLD)
            .map(|r| {
                let order: Vec<usize> = padded
                    .iter()
                    .skip(r)
                    .step_by(WORLD)
                    .map(|&i| d.train_indices[i])
                    .take(steps * bs)
                    .collect();
                let key: Vec<u64> = if r == 0 {
                    vec![epoch as u64]
                } else {
                    vec![epoch as u64, r as u64]
                };
                data::batches(
                    d.train.clone(),
                    order,
                    bs,
                    true,
                    d.train_augment,
                    seed,
                    "train-augment",
                    &key,
                    &dev,
                    2,
                )
            })
            .collect();
        for _ in 0..steps {
            // Parallel sampling: WORLD draws per step, rank r trains draw r.
            let archs: Vec<_> = (0..WORLD).map(|_| space.sample(&mut sample)).collect();
            let mut sum: Vec<f32> = vec![];
            let mut loss = 0f64;
            for (r, arch) in archs.iter().enumerate() {
                let b = loaders[r].next().unwrap().unwrap();
                let (g, outcome) = multipath::accumulate_smoothed(
                    &net,
                    &b.images,
                    &b.labels,
                    std::slice::from_ref(arch),
                    0.0,
                    &vars,
                    |p| {
                        if r == 0 {
                            rng::stream(seed, "train-dropout", &[step])
                        } else {
                            rng::stream(seed, "train-dropout-rank", &[r as u64, step, p as u64])
                        }
                    },
                    0.0,
                )
                .unwrap();
                loss += outcome[0].loss;
                let mut flat = vec![];
                for v in &vars {
                    match g.get(v.as_tensor()) {
                        Some(t) => flat.extend(t.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
                        None => flat.extend(std::iter::repeat_n(0f32, v.elem_count())),
                    }
                }
                if sum.is_empty() {
                    sum = flat;
                } else {
                    sum.iter_mut().zip(&flat).for_each(|(a, x)| *a += *x);
                }
                out.archs[r].push(Nb201::arch_string(arch));
            }
            out.losses.push(loss / WORLD as f64);
            let mut g = GradStore::default();
            let mut at = 0;
            for v in &vars {
                let k = v.elem_count();
                let mean: Vec<f32> = sum[at..at + k].iter().map(|x| x / WORLD as f32).collect();
                g.insert(
                    v.as_tensor(),
                    Tensor::from_vec(mean, v.shape(), &dev).unwrap(),
                );
                at += k;
            }
            clip::clip_grad_norm(&mut g, &vars, t.grad_clip).unwrap();
            opt.set_lr(
                schedule::cosine(t.learning_rate, t.ending_lr, step as usize, total) * WORLD as f64,
            );
            opt.step(&g).unwrap();
            step += 1;
        }
    }
    out.params = store
        .params()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    out
}

/// The architecture each step of a rank's log says it trained.
fn logged_archs(log: &str, rank: usize) -> Vec<String> {
    let tag = format!(": rank {rank} trains ");
    log.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, a)| a.trim().to_string()))
        .collect()
}

#[test]
fn two_cpu_ranks_equal_the_single_process_reference_and_resume_after_a_kill() {
    let t = tempfile::tempdir().unwrap();
    let a = config(t.path(), "a", 5, "");
    let o = runner()
        .args(["launch", "--nproc", "2"])
        .arg(&a)
        .output()
        .unwrap();
    ok(&o);
    let dir_a = run_dir(&t.path().join("a"));
    let hash = config::load(&a, &[]).unwrap().hash;

    // Only rank 0 wrote results; rank 1 left its log and nothing else.
    let got = files(&dir_a);
    let tb: Vec<&String> = got.iter().filter(|f| f.starts_with("tb/")).collect();
    assert_eq!(tb.len(), 1, "{got:?}");
    let mut want: Vec<String> = [
        "checkpoints/final.safetensors",
        "checkpoints/latest.safetensors",
        "config.toml",
        "eval/epoch_0000.csv",
        "eval/epoch_0001.csv",
        "eval/epoch_0002.csv",
        "eval/epoch_0003.csv",
        "eval/epoch_0004.csv",
        "eval/epoch_0005.csv",
        "metrics.jsonl",
        "report.html",
        "run.log",
        "run.rank1.log",
        "summary.json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.push(tb[0].clone());
    want.sort();
    assert_eq!(got, want);
    let summary: serde_json::Value =
        serde_json::from_str(&read(&dir_a.join("summary.json"))).unwrap();
    assert_eq!(summary["steps"], 20);
    assert_eq!(summary["final_eval"]["num_archs"], 5);

    // The single-process reference: the same weights, losses and per-rank architectures.
    let r = reference(&a);
    let weights = model(&dir_a.join("checkpoints/final.safetensors"), &hash);
    for (name, w) in &r.params {
        assert_eq!(weights.get(name), Some(w), "parameter {name}");
    }
    let losses: Vec<f64> = json_lines(&dir_a.join("metrics.jsonl"))
        .iter()
        .filter(|v| v["kind"] == "train_step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses, r.losses);
    assert_eq!(logged_archs(&read(&dir_a.join("run.log")), 0), r.archs[0]);
    assert_eq!(
        logged_archs(&read(&dir_a.join("run.rank1.log")), 1),
        r.archs[1]
    );
    assert_ne!(
        r.archs[0], r.archs[1],
        "parallel sampling: ranks train different archs"
    );
    // The learning rate is the study's x world size.
    let lr0 = json_lines(&dir_a.join("metrics.jsonl"))
        .into_iter()
        .find(|v| v["kind"] == "train_step")
        .unwrap()["lr"]
        .as_f64()
        .unwrap();
    assert_eq!(lr0, 0.2);

    // One process scores the initial weights exactly as the two ranks did (architectures dealt
    // 3 + 2, recalibration batches by position).
    let one = runner()
        .arg(config(t.path(), "one", 1, ""))
        .args([
            "--set",
            "device.gpus=1",
            "--set",
            "eval.num_archs_intermediate=5",
        ])
        .output()
        .unwrap();
    ok(&one);
    let two = runner()
        .arg(config(t.path(), "two", 1, ""))
        .args(["--set", "eval.num_archs_intermediate=5"])
        .output()
        .unwrap();
    ok(&two);
    let csv = |out: &str| read(&run_dir(&t.path().join(out)).join("eval/epoch_0000.csv"));
    assert_eq!(csv("one"), csv("two"));
    assert_eq!(csv("one").lines().count(), 6);

    // `runner FILE` starts the ranks itself; SIGKILL of it after the first checkpoint takes the
    // ranks along, and the rerun resumes to the uninterrupted results.
    let b = config(t.path(), "b", 5, "");
    let mut launcher = runner()
        .arg(&b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out_b = t.path().join("b");
    let start = Instant::now();
    let dir_b = loop {
        if let Ok(mut it) = std::fs::read_dir(&out_b) {
            if let Some(e) = it.next() {
                break e.unwrap().path();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_for(&dir_b.join("checkpoints/latest.safetensors"), &mut launcher);
    let rank0: u32 = read(&dir_b.join("lock")).trim().parse().unwrap();
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    assert!(!dir_b.join("summary.json").exists(), "killed too late");
    let start = Instant::now();
    while pid_alive(rank0) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "rank 0 outlived its launcher"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let again = runner().arg(&b).output().unwrap();
    ok(&again);
    assert!(read(&dir_b.join("run.log")).contains("resuming from"));
    assert_eq!(dir_a.file_name(), dir_b.file_name());
    for f in [
        "summary.json",
        "metrics.jsonl",
        "eval/epoch_0005.csv",
        "eval/epoch_0003.csv",
    ] {
        assert_eq!(read(&dir_a.join(f)), read(&dir_b.join(f)), "{f}");
    }
    assert_eq!(
        model(&dir_b.join("checkpoints/final.safetensors"), &hash),
        model(&dir_a.join("checkpoints/final.safetensors"), &hash)
    );
}

/// Two ranks started by hand, as srun would (environment variables, no launcher).
fn rank(cfg: &Path, r: usize, port: u16, sets: &[&str]) -> Command {
    let mut c = runner();
    c.arg(cfg)
        .env("RANK", r.to_string())
        .env("LOCAL_RANK", r.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string());
    for s in sets {
        c.args(["--set", s]);
    }
    c
}

#[test]
fn a_rank_killed_mid_run_stops_the_others_within_the_timeout() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "k", 200, "timeout_s = 30");
    let hash = config::load(&cfg, &[]).unwrap().hash;
    let port = free_port();
    let mut r0 = rank(&cfg, 0, port, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut r1 = rank(&cfg, 1, port, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = t.path().join("k");
    let start = Instant::now();
    while !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = run_dir(&out);
    wait_for(&dir.join("checkpoints/latest.safetensors"), &mut r0);
    r1.kill().unwrap();
    r1.wait().unwrap();
    let killed = Instant::now();
    let o = r0.wait_with_output().unwrap();
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "rank 0 took {:?}",
        killed.elapsed()
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: ")
            && last.contains("rank 1")
            && last.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    // The last checkpoint is intact (its checksum is verified on load).
    model(&dir.join("checkpoints/latest.safetensors"), &hash);

    // Under the launcher: rank 1 killed, the launcher stops rank 0 and names rank 1.
    let cfg = config(t.path(), "l", 200, "");
    let launcher = runner()
        .args(["launch", "--nproc", "2"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = t.path().join("l");
    let start = Instant::now();
    let pid1 = loop {
        let log = std::fs::read_dir(&out)
            .ok()
            .and_then(|mut d| d.next())
            .map(|e| e.unwrap().path().join("run.rank1.log"));
        let pid = log
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|l| {
                l.split_once("(rank 1 of 2, pid ")
                    .and_then(|(_, rest)| rest.split(')').next()?.parse::<i32>().ok())
            });
        if let Some(p) = pid {
            break p;
        }
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill")
        .args(["-9", &pid1.to_string()])
        .status()
        .unwrap()
        .success());
    let o = launcher.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .starts_with("error: rank 1 of 2 was killed by signal 9"),
        "{err}"
    );
}

/// Stderr of a failed command, which must end with exactly one `error:` line.
fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    errors[0].to_string()
}

#[test]
fn bad_data_parallel_input_fails_with_one_line_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path(), "bad", 1, "timeout_s = 2");
    let out = t.path().join("bad");

    // WORLD_SIZE disagrees with device.gpus.
    let o = runner()
        .arg(&cfg)
        .env("RANK", "0")
        .env("WORLD_SIZE", "3")
        .env("MASTER_PORT", free_port().to_string())
        .output()
        .unwrap();
    let e = one_line_error(&o);
    assert!(
        e.contains("WORLD_SIZE=3") && e.contains("device.gpus = 2"),
        "{e}"
    );
    // So does `runner launch --nproc`.
    let o = runner()
        .args(["launch", "--nproc", "3"])
        .arg(&cfg)
        .output()
        .unwrap();
    let e = one_line_error(&o);
    assert!(e.contains("3 ranks but device.gpus = 2"), "{e}");

    // Nobody at the rendezvous: each side fails within the timeout, naming the address.
    let port = free_port();
    for (r, says) in [
        (1, "rank 1: rank 0 did not accept at"),
        (0, "rank 0: rank(s) [1] did not connect to"),
    ] {
        let start = Instant::now();
        let o = rank(&cfg, r, port, &[]).output().unwrap();
        let e = one_line_error(&o);
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(
            e.contains(says) && e.contains(&format!("127.0.0.1:{port} within 2s")),
            "{e}"
        );
    }

    // More GPUs than the machine has (none here).
    if !cfg!(feature = "cuda") {
        for kind in ["cuda", "auto"] {
            let set = format!("device.kind=\"{kind}\"");
            let o = runner()
                .arg("check")
                .arg(&cfg)
                .args(["--set", &set])
                .output()
                .unwrap();
            let e = one_line_error(&o);
            assert!(
                e.contains("device.gpus = 2 but this machine has 0 CUDA devices")
                    && e.contains("--set device.gpus=1"),
                "{e}"
            );
            let o = runner().arg(&cfg).args(["--set", &set]).output().unwrap();
            assert_eq!(one_line_error(&o), e);
        }
    }
    // DARTS-PTB has no data-parallel loop.
    let o = runner()
        .arg("check")
        .arg(repo().join("experiments/tiny/ptb.toml"))
        .args(["--set", "device.gpus=2", "--set", "device.kind=\"cpu\""])
        .output()
        .unwrap();
    assert!(one_line_error(&o).contains("DARTS-PTB trains on one device"));

    assert!(!out.exists(), "a failed start wrote {}", out.display());

    // `runner check` describes a valid data-parallel experiment.
    let o = runner()
        .arg("check")
        .arg(repo().join("experiments/tiny/nb201_ddp.toml"))
        .output()
        .unwrap();
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains(
        "# data parallel: 2 ranks (CPU processes), learning rate x 2, parallel sampling"
    ));
}
