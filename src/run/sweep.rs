//! Sweeps: the points of a `[sweep]` table run as child processes of this same program, each
//! in its normal (locked, resumable) run folder, with one sweep folder indexing them.
//!
//! The sweep folder `<output>/<sweep name>-<hash of the points>/` holds:
//! - `sweep.toml`: the resolved experiment with its `[sweep]` table (running it again expands
//!   to the same points);
//! - `sweep.jsonl`: one JSON object per point, in expansion order: `point` (the point's
//!   config hash, which also names its run folder), `index`, `overrides` (dotted key ->
//!   value), `run` (the run folder, relative to the sweep folder or absolute), `status`
//!   (`pending|running|done|failed`), `error` (when failed), `attempts` (launches by a
//!   sweep), and the metrics of the run's `summary.json` (`null` until done);
//! - `logs/<point>.log`: each launch's stdout and stderr;
//! - `sweep.log`: the sweep's own log;
//! - `sweep.lock`, `sweep-shard-<i>-of-<n>.lock`, `sweep.jsonl.lock`: advisory locks (`flock`,
//!   released by the kernel when their holder dies, so a killed sweep never leaves a stale one).
//!
//! Re-running a sweep skips points whose run folder has a `summary.json`, resumes the others
//! (the run itself resumes from its checkpoint) and retries failed ones. An unsharded sweep
//! holds `sweep.lock` exclusively; a shard holds it shared and its own shard lock exclusively,
//! so shards of one sweep run side by side while a second copy of either is refused. Two
//! processes never train one point at once: the run folder's own lock sees to that.

use crate::config::sweep::{self as spec, Point, SweepSpec};
use crate::config::{self, Resolved};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// `--shard i/n`: the points whose index is `i` modulo `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Shard> {
        let parse = |t: &str| t.trim().parse::<usize>().ok();
        let Some((i, n)) = s
            .split_once('/')
            .and_then(|(i, n)| Some((parse(i)?, parse(n)?)))
        else {
            bail!("--shard {s}: expected I/N with 0 <= I < N (e.g. --shard 0/4)");
        };
        if n == 0 {
            bail!("--shard {s}: the shard count must be at least 1");
        }
        if i >= n {
            bail!(
                "--shard {s}: shard index {i} is out of range (shards of {n} are numbered 0 to {})",
                n - 1
            );
        }
        Ok(Shard { index: i, count: n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    pub fn selects(&self, index: usize) -> bool {
        index % self.count == self.index
    }
}

/// How to run a sweep.
#[derive(Clone, Debug)]
pub struct Options {
    /// Points run at once.
    pub jobs: usize,
    pub shard: Option<Shard>,
    /// With entries, the point run by worker `k` sees `CUDA_VISIBLE_DEVICES=devices[k % len]`.
    pub devices: Vec<String>,
    /// The program a point runs as (`<exe> FILE --set ... --sweep-point ID`).
    pub exe: PathBuf,
}

/// One point of a planned sweep.
#[derive(Clone, Debug)]
pub struct PlanPoint {
    pub point: Point,
    pub resolved: Resolved,
    /// The run folder (`<output>/<name>-<hash>`, as the run will open it).
    pub run_dir: PathBuf,
    /// `run_dir` as the index records it: relative to the sweep folder when they share the
    /// output root, else absolute.
    pub run: String,
}

impl PlanPoint {
    /// The stable id of the point: its configuration hash (which also names its run folder).
    pub fn id(&self) -> &str {
        &self.resolved.hash
    }
}

/// An expanded, validated sweep.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The experiment file as given.
    pub file: PathBuf,
    /// The command line's `--set`, applied to every point before its overrides.
    pub sets: Vec<String>,
    /// The experiment without any point's overrides.
    pub base: Resolved,
    pub spec: SweepSpec,
    pub name: String,
    /// Hash of the points' configuration hashes (order-independent).
    pub hash: String,
    /// `<output>/<name>-<hash>`.
    pub folder: PathBuf,
    pub points: Vec<PlanPoint>,
}

/// Expands and validates the sweep of `file` (with `--set` arguments `sets`); `None` when the
/// file declares no `[sweep]`. Every point is resolved like its run will be (environment
/// included), so a bad key or value fails here, before anything runs.
pub fn plan(file: &Path, sets: &[String]) -> Result<Option<Plan>> {
    plan_with(file, sets, &|s| config::load(file, s))
}

/// [`plan`] with the loader given (tests pass one without the process environment).
pub fn plan_with(
    file: &Path,
    sets: &[String],
    load: &dyn Fn(&[String]) -> Result<Resolved>,
) -> Result<Option<Plan>> {
    let Some(source) = config::sweep_source(file)? else {
        return Ok(None);
    };
    let spec = spec::parse(&source)?;
    let base = load(sets)?;
    let resolved = spec::resolve_points(&spec, sets, load)?;
    for rp in &resolved {
        super::execute::check_conv_engine(&rp.resolved)
            .map_err(|e| spec::blame_override(e, &rp.point))?;
    }
    let name = match &spec.name {
        Some(n) => n.clone(),
        None => format!(
            "sweep-{}",
            file.file_stem()
                .map_or("sweep".into(), |s| s.to_string_lossy())
        ),
    };
    let plain = !name.contains(['/', '\\']) && !name.starts_with('.') && name != "..";
    if !plain {
        bail!(
            "{}: sweep.name {name:?} must be a plain folder name (no '/', '\\', nor a leading '.')",
            spec.at
        );
    }
    let mut hashes: Vec<&str> = resolved.iter().map(|p| p.resolved.hash.as_str()).collect();
    hashes.sort_unstable();
    let digest = Sha256::digest(hashes.join("\n").as_bytes());
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let output = &base.config.experiment.output;
    let folder = output.join(format!("{name}-{hash}"));
    let points = resolved
        .into_iter()
        .map(|rp| {
            let e = &rp.resolved.config.experiment;
            let run_dir = e.output.join(format!("{}-{}", e.name, rp.resolved.hash));
            let run = match run_dir.file_name() {
                Some(leaf) if run_dir.parent() == folder.parent() => {
                    format!("../{}", leaf.to_string_lossy())
                }
                _ => run_dir.display().to_string(),
            };
            PlanPoint {
                point: rp.point,
                resolved: rp.resolved,
                run_dir,
                run,
            }
        })
        .collect();
    Ok(Some(Plan {
        file: file.to_path_buf(),
        sets: sets.to_vec(),
        base,
        spec,
        name,
        hash,
        folder,
        points,
    }))
}

impl Plan {
    /// `sweep.toml`: the resolved experiment and the `[sweep]` table (with its name made
    /// explicit), so that `runner sweep sweep.toml` expands to the same points.
    pub fn sweep_toml(&self) -> String {
        let mut spec = self.spec.clone();
        spec.name = Some(self.name.clone());
        let sets = if self.sets.is_empty() {
            String::new()
        } else {
            format!(" --set {}", self.sets.join(" --set "))
        };
        format!(
            "# Sweep {}: {} points of {}{sets}\n# (resolved: defaults, extends, environment \
             variables and --set applied)\n\n{}\n\n{}",
            self.name,
            self.points.len(),
            self.file.display(),
            self.base.toml.trim_end(),
            spec.to_toml()
        )
    }

    /// Indices of the points `shard` selects (all without one).
    pub fn selected(&self, shard: Option<Shard>) -> Vec<usize> {
        (0..self.points.len())
            .filter(|&i| shard.is_none_or(|s| s.selects(i)))
            .collect()
    }
}

/// A point's state in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Done,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
        }
    }
}

/// The overrides of a point, kept in the sweep's order (a JSON object in the index).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides(pub Vec<(String, serde_json::Value)>);

impl Serialize for Overrides {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Overrides {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Overrides;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of dotted keys to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Overrides, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Overrides(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The metrics an index entry copies from a run's `summary.json` (`null` where the run has
/// none, e.g. no ground truth, or an undefined correlation).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub kendall_tau: Option<f64>,
    pub spearman: Option<f64>,
    pub pearson: Option<f64>,
    pub top_k_overlap: Option<f64>,
    pub mean_accuracy: Option<f64>,
    /// The ground truth's own seed-to-seed Kendall tau on the same architectures.
    pub ground_truth_seed_tau: Option<f64>,
    /// `kendall_tau / ground_truth_seed_tau`.
    pub tau_fraction_of_noise_ceiling: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub final_train_accuracy: Option<f64>,
    pub steps: Option<u64>,
}

impl Metrics {
    /// Reads `summary.json` of a run folder.
    pub fn of_run(run_dir: &Path) -> Result<Metrics> {
        let path = run_dir.join("summary.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let fe = &v["final_eval"];
        Ok(Metrics {
            kendall_tau: fe["kendall_tau"].as_f64(),
            spearman: fe["spearman"].as_f64(),
            pearson: fe["pearson"].as_f64(),
            top_k_overlap: fe["top_k_overlap"].as_f64(),
            mean_accuracy: fe["mean_accuracy"].as_f64(),
            ground_truth_seed_tau: fe["ground_truth_seed_tau"].as_f64(),
            tau_fraction_of_noise_ceiling: v["tau_fraction_of_noise_ceiling"].as_f64(),
            final_train_loss: v["final_train_loss"].as_f64(),
            final_train_accuracy: v["final_train_accuracy"].as_f64(),
            steps: v["steps"].as_u64(),
        })
    }
}

/// One line of `sweep.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub point: String,
    pub index: usize,
    pub overrides: Overrides,
    pub run: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Times a sweep launched this point's run (a resumed run counts again).
    #[serde(default)]
    pub attempts: u32,
    #[serde(flatten)]
    pub metrics: Metrics,
}

impl Entry {
    fn new(p: &PlanPoint) -> Entry {
        let overrides = p
            .point
            .overrides
            .iter()
            .map(|o| {
                let v = serde_json::to_value(&o.value).unwrap_or(serde_json::Value::Null);
                (o.key.clone(), v)
            })
            .collect();
        Entry {
            point: p.id().to_string(),
            index: p.point.index,
            overrides: Overrides(overrides),
            run: p.run.clone(),
            status: Status::Pending,
            error: None,
            attempts: 0,
            metrics: Metrics::default(),
        }
    }

    fn set_done(&mut self, run_dir: &Path) {
        match Metrics::of_run(run_dir) {
            Ok(m) => {
                self.status = Status::Done;
                self.error = None;
                self.metrics = m;
            }
            Err(e) => {
                self.status = Status::Failed;
                self.error = Some(format!("{e:#}"));
            }
        }
    }
}

/// Reads `sweep.jsonl`; a missing file is an empty index.
pub fn read_index(folder: &Path) -> Result<Vec<Entry>> {
    let path = folder.join("sweep.jsonl");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a sweep index entry", path.display(), i + 1))
        })
        .collect()
}

/// Whether another process holds the run folder's lock (a live process id in `lock`).
fn run_locked(run_dir: &Path) -> bool {
    fs::read_to_string(run_dir.join("lock"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

/// The index as the files say now, for points this process does not run: done when the run
/// folder has a summary, else what the index on disk says (running or failed), else pending.
fn observed(p: &PlanPoint, on_disk: Option<&Entry>) -> Entry {
    let mut e = Entry::new(p);
    if let Some(d) = on_disk {
        e.attempts = d.attempts;
        if matches!(d.status, Status::Running | Status::Failed) {
            e.status = d.status;
            e.error = d.error.clone();
        }
    }
    if p.run_dir.join("summary.json").exists() {
        e.set_done(&p.run_dir);
    }
    e
}

/// The list of `--dry-run`: every selected point with its status on disk, without running or
/// writing anything.
pub fn dry_run(plan: &Plan, shard: Option<Shard>) -> Result<Vec<Entry>> {
    let disk = index_by_point(read_index(&plan.folder).unwrap_or_default());
    Ok(plan
        .selected(shard)
        .into_iter()
        .map(|i| {
            let p = &plan.points[i];
            let mut e = observed(p, disk.get(p.id()));
            // `running` in the index may be a killed sweep's; the run folder's lock is not.
            if matches!(e.status, Status::Pending | Status::Running) {
                e.status = if run_locked(&p.run_dir) {
                    Status::Running
                } else {
                    Status::Pending
                };
            }
            e
        })
        .collect())
}

fn index_by_point(entries: Vec<Entry>) -> HashMap<String, Entry> {
    entries.into_iter().map(|e| (e.point.clone(), e)).collect()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Atomic replace with a temporary name unique across processes and threads (shards on other
/// machines may write the same folder).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .context("atomic write needs a parent folder")?;
    let name = path.file_name().context("atomic write needs a file name")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// The sweep folder's locks, held while this process runs points.
struct SweepLock {
    _files: Vec<File>,
}

fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open lock {}", path.display()))
}

fn holder(path: &Path) -> String {
    match fs::read_to_string(path).ok().map(|s| s.trim().to_string()) {
        Some(pid) if !pid.is_empty() => format!("process {pid}"),
        _ => "another process".into(),
    }
}

fn record_pid(f: &mut File, path: &Path) -> Result<()> {
    f.set_len(0)
        .and_then(|_| writeln!(f, "{}", std::process::id()))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn lock_sweep(folder: &Path, shard: Option<Shard>) -> Result<SweepLock> {
    let main = folder.join("sweep.lock");
    let mut main_f = open_lock(&main)?;
    let Some(s) = shard else {
        match main_f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let shards: Vec<String> = fs::read_dir(folder)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("sweep-shard-"))
                    })
                    .filter(|p| {
                        File::open(p).is_ok_and(|f| {
                            matches!(f.try_lock_shared(), Err(TryLockError::WouldBlock))
                        })
                    })
                    .map(|p| holder(&p))
                    .collect();
                let by = if shards.is_empty() {
                    holder(&main)
                } else {
                    format!("shards run by {}", shards.join(", "))
                };
                bail!(
                    "sweep folder {} is in use by another sweep ({by}; lock {}): wait for it to finish",
                    folder.display(),
                    main.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", main.display()))
            }
        }
        record_pid(&mut main_f, &main)?;
        return Ok(SweepLock {
            _files: vec![main_f],
        });
    };
    match main_f.try_lock_shared() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "sweep folder {} is in use by an unsharded sweep ({}; lock {}): wait for it to finish",
            folder.display(),
            holder(&main),
            main.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", main.display()))
        }
    }
    let own = folder.join(format!("sweep-shard-{}-of-{}.lock", s.index, s.count));
    let mut own_f = open_lock(&own)?;
    match own_f.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "shard {s} of sweep folder {} is already running ({}; lock {})",
            folder.display(),
            holder(&own),
            own.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", own.display()))
        }
    }
    record_pid(&mut own_f, &own)?;
    Ok(SweepLock {
        _files: vec![main_f, own_f],
    })
}

/// The index of a running sweep: this process's entries, written whole and atomically after
/// every change, merged with what other shards wrote for the points they run.
struct Index<'a> {
    plan: &'a Plan,
    /// Which points this process runs (its entries win over the file's).
    mine: Vec<bool>,
    entries: Mutex<Vec<Entry>>,
}

impl Index<'_> {
    fn update(&self, i: usize, f: impl FnOnce(&mut Entry)) -> Result<()> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.get_mut(i) {
            f(e);
        }
        self.write(&mut entries)
    }

    fn snapshot(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Read-merge-write under `sweep.jsonl.lock` (other processes: shards); the caller holds
    /// the entries' mutex (other threads of this process).
    fn write(&self, entries: &mut [Entry]) -> Result<()> {
        let lock_path = self.plan.folder.join("sweep.jsonl.lock");
        let lock = open_lock(&lock_path)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        let disk = index_by_point(read_index(&self.plan.folder).unwrap_or_else(|e| {
            tracing::warn!("{e:#}; rewriting the index");
            Vec::new()
        }));
        let mut text = String::new();
        for (i, e) in entries.iter_mut().enumerate() {
            if !self.mine[i] {
                *e = observed(&self.plan.points[i], disk.get(&e.point));
            }
            text.push_str(&serde_json::to_string(e).context("cannot serialise an index entry")?);
            text.push('\n');
        }
        write_atomic(&self.plan.folder.join("sweep.jsonl"), text.as_bytes())
    }
}

/// What a sweep run ended with.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every point of the sweep, in expansion order.
    pub entries: Vec<Entry>,
    /// Indices this process was to run.
    pub selected: Vec<usize>,
}

impl Report {
    /// Selected points that are not done.
    pub fn unfinished(&self) -> Vec<&Entry> {
        self.selected
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .filter(|e| e.status != Status::Done)
            .collect()
    }
}

/// Creates (or reopens) the sweep folder, locks it, and runs the selected points that are not
/// done, `opts.jobs` at a time. A point that fails is recorded with its error and the others
/// go on.
pub fn run(plan: &Plan, opts: &Options) -> Result<Report> {
    if opts.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    fs::create_dir_all(plan.folder.join("logs")).with_context(|| {
        format!(
            "cannot create sweep folder {} (is the output root writable?)",
            plan.folder.display()
        )
    })?;
    let _lock = lock_sweep(&plan.folder, opts.shard)?;
    let toml_path = plan.folder.join("sweep.toml");
    let toml = plan.sweep_toml();
    if fs::read_to_string(&toml_path).ok().as_deref() != Some(toml.as_str()) {
        write_atomic(&toml_path, toml.as_bytes())?;
    }
    let selected = plan.selected(opts.shard);
    let mut mine = vec![false; plan.points.len()];
    for &i in &selected {
        mine[i] = true;
    }
    let disk = index_by_point(read_index(&plan.folder).unwrap_or_default());
    let entries: Vec<Entry> = plan
        .points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut e = observed(p, disk.get(p.id()));
            if mine[i] && e.status != Status::Done {
                // About to be run again by this process.
                e.status = Status::Pending;
                e.error = None;
            }
            e
        })
        .collect();
    let todo: VecDeque<usize> = selected
        .iter()
        .copied()
        .filter(|&i| entries[i].status != Status::Done)
        .collect();
    let index = Index {
        plan,
        mine,
        entries: Mutex::new(entries),
    };
    index.write(&mut index.entries.lock().unwrap_or_else(|e| e.into_inner()))?;
    let skipped = selected.len() - todo.len();
    tracing::info!(
        "sweep {}: {} points{}; {} to run, {} already done",
        plan.folder.display(),
        plan.points.len(),
        opts.shard
            .map(|s| format!(", shard {s} selects {}", selected.len()))
            .unwrap_or_default(),
        todo.len(),
        skipped
    );
    let total = todo.len();
    let queue = Mutex::new(todo);
    let started = AtomicU64::new(0);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for slot in 0..opts.jobs.min(total.max(1)) {
            let (queue, index, started, first_error) = (&queue, &index, &started, &first_error);
            s.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some(i) = next else { break };
                let k = started.fetch_add(1, Ordering::Relaxed) + 1;
                if let Err(e) = run_one(plan, opts, index, i, slot, k, total) {
                    // The index cannot be written: stop taking points, report after the others.
                    queue.lock().unwrap_or_else(|e| e.into_inner()).clear();
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    // Final merge, so other shards' progress is current in what we return.
    index.write(&mut index.entries.lock().unwrap_or_else(|e| e.into_inner()))?;
    let entries = index.snapshot();
    if let Err(e) = super::sweep_report::write(&plan.folder, &entries, &plan.name) {
        tracing::warn!("could not write the sweep report: {e:#}");
    }
    Ok(Report { entries, selected })
}

fn run_one(
    plan: &Plan,
    opts: &Options,
    index: &Index,
    i: usize,
    slot: usize,
    k: u64,
    total: usize,
) -> Result<()> {
    let p = &plan.points[i];
    let label = p.point.label();
    index.update(i, |e| {
        e.status = Status::Running;
        e.error = None;
        e.attempts += 1;
    })?;
    tracing::info!(
        "[{k}/{total}] point {} ({label}): running in {}",
        p.point.index,
        p.run_dir.display()
    );
    let t0 = Instant::now();
    let result = launch(plan, opts, p, slot);
    let secs = t0.elapsed().as_secs_f64();
    index.update(i, |e| match &result {
        Ok(()) => e.set_done(&p.run_dir),
        Err(msg) => {
            e.status = Status::Failed;
            e.error = Some(msg.clone());
        }
    })?;
    let e = index.snapshot().swap_remove(i);
    match e.status {
        Status::Done => tracing::info!(
            "[{k}/{total}] point {} ({label}): done in {secs:.1}s, kendall tau {}",
            p.point.index,
            fmt_opt(e.metrics.kendall_tau)
        ),
        _ => tracing::warn!(
            "[{k}/{total}] point {} ({label}): failed after {secs:.1}s: {}",
            p.point.index,
            e.error.as_deref().unwrap_or("unknown error")
        ),
    }
    Ok(())
}

/// Runs one point as a child process; `Err` holds the reason in one line (the child's last
/// output line, which is its `error: ...` line when it failed cleanly).
fn launch(
    plan: &Plan,
    opts: &Options,
    p: &PlanPoint,
    slot: usize,
) -> std::result::Result<(), String> {
    let log_path = plan.folder.join("logs").join(format!("{}.log", p.id()));
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(&opts.exe);
    cmd.arg(&plan.file);
    for s in plan.sets.iter().chain(&p.point.set_args()) {
        cmd.arg("--set").arg(s);
    }
    cmd.arg("--sweep-point").arg(p.id());
    let _ = writeln!(
        log,
        "== runner sweep {}: point {} ({})",
        plan.folder.display(),
        p.point.index,
        p.point.label()
    );
    let err_log = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .env("NO_COLOR", "1")
        .env("RUNNER_SWEEP_RUN", &p.run_dir);
    if !opts.devices.is_empty() {
        cmd.env(
            "CUDA_VISIBLE_DEVICES",
            &opts.devices[slot % opts.devices.len()],
        );
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start {}: {e}", opts.exe.display()))?;
    if status.success() {
        if p.run_dir.join("summary.json").exists() {
            return Ok(());
        }
        return Err(format!(
            "the run exited successfully but wrote no {}",
            p.run_dir.join("summary.json").display()
        ));
    }
    let last = fs::read_to_string(&log_path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended abnormally".into(),
    };
    Err(if last.is_empty() || last.starts_with("== runner sweep") {
        how
    } else {
        format!("{last} ({how})")
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.4}"))
}

/// The sweep's table: one row per entry.
pub fn table(plan: &Plan, entries: &[Entry], shard: Option<Shard>, with_run: bool) -> String {
    let mut t = format!("sweep      {}\n", plan.folder.display());
    let selected = plan.selected(shard).len();
    t.push_str(&format!(
        "points     {}{}\n\n",
        plan.points.len(),
        shard
            .map(|s| format!("   shard {s}: {selected} selected"))
            .unwrap_or_default()
    ));
    let run_w = entries
        .iter()
        .map(|e| e.run.len())
        .max()
        .unwrap_or(3)
        .max(3);
    let run_head = if with_run {
        format!("  {:<run_w$}", "run")
    } else {
        String::new()
    };
    t.push_str(&format!(
        "{:>5}  {:<10}  {:<7}  {:>8}  {:>8}  {:>8}  {:>11}{run_head}  overrides\n",
        "index", "point", "status", "kendall", "spearman", "mean acc", "tau/ceiling"
    ));
    for e in entries {
        let labels: Vec<String> = e
            .overrides
            .0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let run = if with_run {
            format!("  {:<run_w$}", e.run)
        } else {
            String::new()
        };
        t.push_str(&format!(
            "{:>5}  {:<10}  {:<7}  {:>8}  {:>8}  {:>8}  {:>11}{run}  {}\n",
            e.index,
            e.point,
            e.status.as_str(),
            fmt_opt(e.metrics.kendall_tau),
            fmt_opt(e.metrics.spearman),
            fmt_opt(e.metrics.mean_accuracy),
            fmt_opt(e.metrics.tau_fraction_of_noise_ceiling),
            labels.join(" ")
        ));
        if let Some(err) = &e.error {
            let err = if err.starts_with("error:") {
                err.clone()
            } else {
                format!("error: {err}")
            };
            t.push_str(&format!("{:>5}  {err}\n", ""));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Stands in for `runner FILE --set ... --sweep-point ID`: records its launch next to the
    /// run folder, fails for learning rate 0.3, else writes a summary.
    const FAKE: &str = r#"#!/bin/sh
run="$RUNNER_SWEEP_RUN"
echo "$*" >> "$run.launches"
echo "starting $run"
case "$*" in
  *learning_rate=0.3*) echo "a log line" >&2; echo "error: boom in $(basename "$run")" >&2; exit 3 ;;
esac
mkdir -p "$run"
sleep 0.05
echo '{"final_eval":{"kendall_tau":0.25,"spearman":null,"mean_accuracy":0.5,"ground_truth_seed_tau":0.5},"tau_fraction_of_noise_ceiling":0.5,"final_train_loss":2.5,"steps":6}' > "$run/summary.json"
"#;

    struct Setup {
        _dir: tempfile::TempDir,
        file: PathBuf,
        exe: PathBuf,
    }

    fn setup(sweep: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("fake-runner");
        fs::write(&exe, FAKE).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.path().join("exp.toml");
        fs::write(
            &file,
            format!(
                "[experiment]\nname = \"e\"\noutput = \"out\"\n[space]\nkind = \"nb201\"\n{sweep}"
            ),
        )
        .unwrap();
        Setup {
            _dir: dir,
            file,
            exe,
        }
    }

    fn plan_of(file: &Path) -> Plan {
        plan_with(file, &[], &|s| config::load_from(file, None, s, &[]))
            .unwrap()
            .expect("a sweep")
    }

    fn opts(s: &Setup, jobs: usize, shard: Option<&str>) -> Options {
        Options {
            jobs,
            shard: shard.map(|t| t.parse().unwrap()),
            devices: vec![],
            exe: s.exe.clone(),
        }
    }

    fn launches(p: &PlanPoint) -> Vec<String> {
        let path = PathBuf::from(format!("{}.launches", p.run_dir.display()));
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const GRID: &str =
        "[sweep]\ngrid = { \"train.learning_rate\" = [0.1, 0.2, 0.3] }\nseeds = [0, 1]\n";

    #[test]
    fn runs_points_records_failures_and_skips_finished_ones() {
        let s = setup(GRID);
        let plan = plan_of(&s.file);
        assert_eq!(plan.points.len(), 6);
        assert_eq!(plan.name, "sweep-exp");
        assert!(plan
            .folder
            .starts_with(s.file.parent().unwrap().join("out")));
        let report = run(&plan, &opts(&s, 3, None)).unwrap();
        let status: Vec<&str> = report.entries.iter().map(|e| e.status.as_str()).collect();
        assert_eq!(status, ["done", "done", "done", "done", "failed", "failed"]);
        let failed = &report.entries[4];
        assert_eq!(
            failed.error.as_deref(),
            Some(format!("error: boom in e-{} (exit code 3)", plan.points[4].id()).as_str())
        );
        let done = &report.entries[0];
        assert_eq!(done.metrics.kendall_tau, Some(0.25));
        assert_eq!(done.metrics.spearman, None);
        assert_eq!(done.metrics.tau_fraction_of_noise_ceiling, Some(0.5));
        assert_eq!(done.metrics.steps, Some(6));
        assert_eq!(done.run, format!("../e-{}", plan.points[0].id()));
        assert_eq!(report.unfinished().len(), 2);
        // The file holds exactly what was returned, one line per point in order.
        assert_eq!(read_index(&plan.folder).unwrap(), report.entries);
        // Each child got the file, the point's overrides as --set and its id.
        let args = launches(&plan.points[3]);
        assert_eq!(
            args,
            [format!(
                "{} --set train.learning_rate=0.2 --set experiment.seed=1 --sweep-point {}",
                s.file.display(),
                plan.points[3].id()
            )]
        );
        let log = fs::read_to_string(
            plan.folder
                .join(format!("logs/{}.log", plan.points[3].id())),
        )
        .unwrap();
        assert!(log.contains("starting"), "{log}");

        // Again: finished points are not relaunched, failed ones are retried.
        let again = run(&plan, &opts(&s, 2, None)).unwrap();
        let counts: Vec<usize> = plan.points.iter().map(|p| launches(p).len()).collect();
        assert_eq!(counts, [1, 1, 1, 1, 2, 2]);
        let attempts: Vec<u32> = again.entries.iter().map(|e| e.attempts).collect();
        assert_eq!(attempts, [1, 1, 1, 1, 2, 2]);
        assert_eq!(again.entries[..4], report.entries[..4]);

        // sweep.toml expands to the same sweep folder and points.
        let back = plan_of(&plan.folder.join("sweep.toml"));
        assert_eq!(back.folder, plan.folder);
        let ids = |p: &Plan| {
            p.points
                .iter()
                .map(|q| q.id().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&back), ids(&plan));
    }

    #[test]
    fn concurrent_shards_cover_every_point_once() {
        let s = setup(&GRID.replace("0.3", "0.4"));
        let plan = plan_of(&s.file);
        let (a, b) = std::thread::scope(|sc| {
            let a = sc.spawn(|| run(&plan, &opts(&s, 2, Some("0/2"))));
            let b = sc.spawn(|| run(&plan, &opts(&s, 1, Some("1/2"))));
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        assert_eq!(a.selected, [0, 2, 4]);
        assert_eq!(b.selected, [1, 3, 5]);
        assert!(a.unfinished().is_empty() && b.unfinished().is_empty());
        let counts: Vec<usize> = plan.points.iter().map(|p| launches(p).len()).collect();
        assert_eq!(counts, [1; 6]);
        // Whichever shard wrote last, the index has every point done.
        let index = read_index(&plan.folder).unwrap();
        assert_eq!(index.len(), 6);
        assert!(index.iter().all(|e| e.status == Status::Done), "{index:?}");
        let dry = dry_run(&plan, Some("1/2".parse().unwrap())).unwrap();
        assert_eq!(dry.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 3, 5]);
        assert!(dry.iter().all(|e| e.status == Status::Done));
    }

    #[test]
    fn locks_refuse_a_second_sweep_but_admit_other_shards() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let shard = |t: &str| Some(t.parse::<Shard>().unwrap());
        let whole = lock_sweep(d, None).unwrap();
        let err = lock_sweep(d, None).err().unwrap().to_string();
        let me = std::process::id();
        assert!(
            err.contains(&format!("in use by another sweep (process {me};")),
            "{err}"
        );
        let err = lock_sweep(d, shard("0/2")).err().unwrap().to_string();
        assert!(err.contains("in use by an unsharded sweep"), "{err}");
        drop(whole);
        let s0 = lock_sweep(d, shard("0/2")).unwrap();
        let s1 = lock_sweep(d, shard("1/2")).unwrap();
        let err = lock_sweep(d, shard("1/2")).err().unwrap().to_string();
        assert!(err.contains("shard 1/2 of sweep folder"), "{err}");
        assert!(err.contains("already running"), "{err}");
        let err = lock_sweep(d, None).err().unwrap().to_string();
        assert!(
            err.contains(&format!("shards run by process {me}, process {me};")),
            "{err}"
        );
        drop((s0, s1));
        assert!(lock_sweep(d, None).is_ok());
    }

    #[test]
    fn a_sweep_in_use_is_refused_without_touching_its_index() {
        let s = setup(GRID);
        let plan = plan_of(&s.file);
        fs::create_dir_all(&plan.folder).unwrap();
        fs::write(plan.folder.join("sweep.jsonl"), "sentinel\n").unwrap();
        let held = lock_sweep(&plan.folder, None).unwrap();
        let err = run(&plan, &opts(&s, 1, None)).unwrap_err().to_string();
        assert!(err.contains("is in use by another sweep"), "{err}");
        assert_eq!(
            fs::read_to_string(plan.folder.join("sweep.jsonl")).unwrap(),
            "sentinel\n"
        );
        assert!(plan.points.iter().all(|p| launches(p).is_empty()));
        drop(held);
    }

    #[test]
    fn dry_run_reports_status_from_the_files_and_writes_nothing() {
        let s = setup("[sweep]\nseeds = [0, 1, 2, 3]\n");
        let plan = plan_of(&s.file);
        let status = |plan: &Plan| -> Vec<&'static str> {
            dry_run(plan, None)
                .unwrap()
                .iter()
                .map(|e| e.status.as_str())
                .collect()
        };
        assert_eq!(status(&plan), ["pending"; 4]);
        assert!(!plan.folder.exists());
        // Point 0 finished, point 1 is being run (its run folder is locked by a live process),
        // the index says point 2 runs but nothing holds its folder (a killed sweep), point 3
        // failed.
        let p = &plan.points;
        fs::create_dir_all(&p[0].run_dir).unwrap();
        fs::write(
            p[0].run_dir.join("summary.json"),
            r#"{"final_eval":{"kendall_tau":0.5}}"#,
        )
        .unwrap();
        fs::create_dir_all(&p[1].run_dir).unwrap();
        fs::write(p[1].run_dir.join("lock"), "1\n").unwrap();
        fs::create_dir_all(&plan.folder).unwrap();
        let mut entries: Vec<Entry> = p.iter().map(Entry::new).collect();
        entries[2].status = Status::Running;
        entries[3].status = Status::Failed;
        entries[3].error = Some("error: boom".into());
        let text: String = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect();
        fs::write(plan.folder.join("sweep.jsonl"), text).unwrap();
        let got = dry_run(&plan, None).unwrap();
        assert_eq!(status(&plan), ["done", "running", "pending", "failed"]);
        assert_eq!(got[0].metrics.kendall_tau, Some(0.5));
        assert_eq!(got[3].error.as_deref(), Some("error: boom"));
        let t = table(&plan, &got, None, true);
        assert!(t.contains("    3  "), "{t}");
        assert!(
            t.contains(
                "
       error: boom
"
            ),
            "{t}"
        );
    }

    #[test]
    fn shard_syntax_and_range() {
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
        assert!(Shard { index: 1, count: 4 }.selects(5));
        assert!(!Shard { index: 1, count: 4 }.selects(4));
        let err = |t: &str| t.parse::<Shard>().unwrap_err().to_string();
        assert_eq!(
            err("2/2"),
            "--shard 2/2: shard index 2 is out of range (shards of 2 are numbered 0 to 1)"
        );
        assert_eq!(
            err("0/0"),
            "--shard 0/0: the shard count must be at least 1"
        );
        assert_eq!(
            err("a/2"),
            "--shard a/2: expected I/N with 0 <= I < N (e.g. --shard 0/4)"
        );
        assert_eq!(
            err("3"),
            "--shard 3: expected I/N with 0 <= I < N (e.g. --shard 0/4)"
        );
        assert_eq!(
            err("-1/2"),
            "--shard -1/2: expected I/N with 0 <= I < N (e.g. --shard 0/4)"
        );
    }

    #[test]
    fn index_entries_round_trip_with_overrides_in_sweep_order() {
        let s = setup("[sweep]\ngrid = { \"train.momentum\" = [0.5], \"space.channels\" = [4] }\n");
        let plan = plan_of(&s.file);
        let e = Entry::new(&plan.points[0]);
        let line = serde_json::to_string(&e).unwrap();
        assert!(
            line.contains(r#""overrides":{"train.momentum":0.5,"space.channels":4}"#),
            "{line}"
        );
        assert!(line.contains(r#""status":"pending""#) && line.contains(r#""kendall_tau":null"#));
        assert!(!line.contains("error"));
        let back: Entry = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        let table = table(&plan, &[e], None, true);
        assert!(
            table.contains("train.momentum=0.5 space.channels=4"),
            "{table}"
        );
    }
}
