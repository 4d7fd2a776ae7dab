//! The command line: parses arguments and calls `run`; prints nothing else.

use crate::collective::tcp;
use crate::config;
use crate::run::{
    diff, dir::RunDir, dist::Dist, execute, launch, records::Summary, report, show, sweep,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "Reproducible weight-sharing NAS: train a supernet, score architectures against ground truth"
)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `runner bench`'s options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// nb101, nb201, darts, ptb, proxyless, or all (comma-separated list allowed).
    #[arg(long, value_delimiter = ',', default_value = "nb201")]
    space: Vec<String>,
    /// study, reduced, tiny, or both (= study,reduced); comma-separated list allowed.
    #[arg(long, value_delimiter = ',', default_value = "study")]
    shape: Vec<String>,
    /// Threads of each side (candle/rayon and torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds; each runs runner and PyTorch once, alternating who goes first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed runs of each phase per round.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Untimed runs of each phase per round before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Skip the PyTorch comparison.
    #[arg(long)]
    no_pytorch: bool,
    /// Skip the check that both sides compute the same losses.
    #[arg(long)]
    no_check: bool,
    /// Run only that check (no timing).
    #[arg(long, conflicts_with_all = ["no_check", "no_pytorch"])]
    check_only: bool,
    /// The Python that imports torch (default: $RUNNER_BENCH_PYTHON, python3, /usr/bin/python3).
    #[arg(long)]
    python: Option<String>,
    /// Print the results as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON results to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where both sides compute: `cpu`, or `cuda` (CUDA device 0; needs a build with the
    /// `cuda` feature, and a PyTorch with CUDA for the comparison).
    #[arg(long, value_enum, default_value_t = crate::run::bench::BenchDevice::Cpu)]
    device: crate::run::bench::BenchDevice,
    /// runner's CPU convolution kernels (`device.conv_engine`): auto, onednn or rust.
    #[arg(long, value_enum, ignore_case = true, default_value_t = crate::config::schema::ConvEngineCfg::Auto)]
    conv_engine: crate::config::schema::ConvEngineCfg,
    /// NB201 only: channels of the first stage.
    #[arg(long)]
    channels: Option<usize>,
    /// NB201 only: cells per stage.
    #[arg(long)]
    cells: Option<usize>,
    /// NB201 only: training batch.
    #[arg(long)]
    batch: Option<usize>,
    /// NB201 only: BN recalibration batches.
    #[arg(long)]
    recal_steps: Option<usize>,
    /// NB201 only: BN recalibration batch size.
    #[arg(long)]
    recal_batch: Option<usize>,
    /// NB201 only: validation images (whole batches).
    #[arg(long)]
    valid_images: Option<usize>,
    /// NB201 only: validation batch size.
    #[arg(long)]
    eval_batch: Option<usize>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Experiment file (TOML).
    #[arg(required = true)]
    pub file: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.epochs=3` (repeatable; highest precedence).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Start over in a new results folder instead of resuming.
    #[arg(long)]
    pub fresh: bool,
    /// Set by `runner sweep` when it runs one point: run FILE as a single run (ignoring its
    /// `[sweep]`) and check that it resolves to this configuration hash.
    #[arg(long, hide = true, value_name = "HASH")]
    pub sweep_point: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Resolve and validate an experiment (config, data, ground truth) and print the resolved
    /// TOML, without training.
    Check {
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Run every point of FILE's `[sweep]` (grid x zip x seeds) as its own resumable run,
    /// indexed in one sweep folder; finished points are skipped, interrupted ones resumed.
    Sweep {
        file: PathBuf,
        /// List the points (id, overrides, run folder, status) without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Points run at once (each a separate process).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Run only the points whose index is I modulo N (0-based), e.g. a Slurm array task.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// GPUs to spread the points over (`--devices 0,1`): worker k sees only
        /// `CUDA_VISIBLE_DEVICES=<k-th entry>`; `--jobs` defaults to their number.
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        devices: Vec<String>,
        /// Override a config key for every point (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Run FILE data-parallel as `--nproc` rank processes on this machine (torchrun-like: each
    /// gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); `runner FILE` does the same
    /// on one machine when `device.gpus` > 1. The world size (nproc x nnodes) must equal
    /// `device.gpus`.
    Launch {
        file: PathBuf,
        /// Rank processes on this machine (default: device.gpus / --nnodes).
        #[arg(long, value_name = "N")]
        nproc: Option<usize>,
        /// Machines taking part, each running `runner launch` with its own --node-rank.
        #[arg(long, value_name = "N", default_value_t = 1)]
        nnodes: usize,
        /// This machine's index (0 hosts rank 0).
        #[arg(long, value_name = "I", default_value_t = 0)]
        node_rank: usize,
        /// Address rank 0 listens on (default: $MASTER_ADDR, else 127.0.0.1).
        #[arg(long, value_name = "HOST")]
        master_addr: Option<String>,
        /// Port rank 0 listens on (default: $MASTER_PORT, else a free port; required with
        /// --nnodes > 1).
        #[arg(long, value_name = "PORT")]
        master_port: Option<u16>,
        /// Override a config key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Start over in a new results folder instead of resuming.
        #[arg(long)]
        fresh: bool,
    },
    /// Time one supernet training step and one architecture evaluation per search space on
    /// the CPU (or CUDA device 0 with `--device cuda`), side by side with the PyTorch twins
    /// (benchmarks/pytorch/) when PyTorch is installed.
    Bench(BenchArgs),
    /// One side of a `runner bench` row (started by `runner bench`; prints one JSON line).
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        spec: String,
        /// Run the loss check instead: write the initial weights and inputs here.
        #[arg(long)]
        check_out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = crate::run::bench::BenchDevice::Cpu)]
        device: crate::run::bench::BenchDevice,
        #[arg(long, value_enum, ignore_case = true, default_value_t = crate::config::schema::ConvEngineCfg::Auto)]
        conv_engine: crate::config::schema::ConvEngineCfg,
    },
    /// Check a device against the native CPU kernels: every space's supernet on a fixed batch
    /// (logits, loss, gradients, BN buffers, eval logits). `--device cuda` on a GPU build and
    /// machine; `--device portable` checks, on the CPU, the candle-op path that CUDA runs.
    Selftest {
        /// `cuda` (device `--index`) or `portable`.
        #[arg(long, default_value = "cuda")]
        device: String,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Largest relative error accepted (norm of the difference over the norm of the CPU's
        /// values). Typical agreement is 1e-5; a gradient that sums over a ReLU/ReLU6 kink can
        /// reach 1e-2 when a value within rounding of the kink lands on the other side.
        #[arg(long, default_value_t = 2e-2)]
        tolerance: f64,
    },
    /// Compare run folders (or sweep folders, point by point): the params that differ and the
    /// metrics in DVC's layout `Path Metric Old New Change`; each folder against the first.
    Diff {
        /// Two or more run folders, or two or more sweep folders.
        #[arg(required = true, num_args = 2..)]
        folders: Vec<PathBuf>,
        /// Also list unchanged params and metrics.
        #[arg(long)]
        all: bool,
        /// Significant digits of metric values.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=17))]
        precision: u16,
        #[arg(long, group = "format")]
        json: bool,
        /// Markdown tables.
        #[arg(long, group = "format")]
        md: bool,
        /// One CSV table (`Path[,Point],Kind,Name,Old,New,Change`).
        #[arg(long, group = "format")]
        csv: bool,
    },
    /// Print a run folder's summary (evaluations over epochs) or a sweep folder's points.
    Show {
        dir: PathBuf,
        /// Sort rows by this metric (a run: `kendall_tau`, `epoch`, ...; a sweep:
        /// `kendall_tau`, `final_train_loss`, ...).
        #[arg(long, value_name = "METRIC")]
        sort: Option<String>,
        /// `asc` or `desc` (missing values always last).
        #[arg(long, default_value = "asc", requires = "sort")]
        sort_order: String,
        #[arg(long)]
        json: bool,
    },
    /// (Re)write `report.html` of a run folder.
    Report { dir: PathBuf },
}

/// Where log lines go besides stderr once the run folder is known.
static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut g) = LOG_FILE.lock() {
            if let Some(f) = g.as_mut() {
                f.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Ok(mut g) = LOG_FILE.lock() {
            if let Some(f) = g.as_mut() {
                f.flush()?;
            }
        }
        Ok(())
    }
}

fn init_logging() {
    use tracing_subscriber::{filter::LevelFilter, fmt, prelude::*, EnvFilter};
    let filter = EnvFilter::try_from_env("RUNNER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    // The ranks > 0 of a data-parallel run print only warnings and errors (their whole log is
    // in their run.rank<r>.log), so the terminal shows rank 0's progress.
    let other_rank = std::env::var_os("WORLD_SIZE").is_some()
        && std::env::var("RANK")
            .ok()
            .and_then(|r| r.trim().parse::<usize>().ok())
            .is_some_and(|r| r > 0);
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .with_filter(if other_rank {
            LevelFilter::WARN
        } else {
            LevelFilter::TRACE
        });
    let file = fmt::layer()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
}

/// The final table on stdout.
pub fn summary_table(s: &Summary, folder: &std::path::Path) -> String {
    crate::run::show::summary_text(s, folder)
}

/// `runner sweep`: plan, then list (`--dry-run`) or run the points; fails unless every
/// selected point is done.
fn sweep(
    file: &std::path::Path,
    sets: &[String],
    dry_run: bool,
    jobs: Option<usize>,
    shard: Option<&str>,
    devices: Vec<String>,
) -> Result<()> {
    let shard = shard.map(str::parse::<sweep::Shard>).transpose()?;
    let jobs = jobs.unwrap_or(devices.len().max(1));
    if jobs == 0 {
        anyhow::bail!("--jobs must be at least 1");
    }
    let plan = sweep::plan(file, sets)?.with_context(|| {
        format!(
            "{}: no [sweep] table (declare sweep.grid, sweep.zip or sweep.seeds)",
            file.display()
        )
    })?;
    if dry_run {
        let entries = sweep::dry_run(&plan, shard)?;
        print!("{}", sweep::table(&plan, &entries, shard, true));
        return Ok(());
    }
    std::fs::create_dir_all(&plan.folder)
        .with_context(|| format!("cannot create sweep folder {}", plan.folder.display()))?;
    let log_path = plan.folder.join("sweep.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    if let Ok(mut g) = LOG_FILE.lock() {
        *g = Some(f);
    }
    let exe = std::env::current_exe()
        .context("cannot find this program's path to run the sweep's points")?;
    let report = sweep::run(
        &plan,
        &sweep::Options {
            jobs,
            shard,
            devices,
            exe,
        },
    )?;
    let shown: Vec<sweep::Entry> = report
        .selected
        .iter()
        .filter_map(|&i| report.entries.get(i).cloned())
        .collect();
    print!("{}", sweep::table(&plan, &shown, shard, false));
    let unfinished = report.unfinished();
    if let Some(first) = unfinished.first() {
        anyhow::bail!(
            "{} of {} sweep points did not finish (first: point {} {}: {}); see {}",
            unfinished.len(),
            report.selected.len(),
            first.index,
            first.point,
            first.error.as_deref().unwrap_or(first.status.as_str()),
            plan.folder.join("sweep.jsonl").display()
        );
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let file = args.file.context("an experiment file is required")?;
    if args.sweep_point.is_none() && config::sweep_source(&file)?.is_some() {
        if args.fresh {
            anyhow::bail!(
                "--fresh does not apply to a sweep ({} has a [sweep] table)",
                file.display()
            );
        }
        return sweep(&file, &args.sets, false, None, None, vec![]);
    }
    let resolved = config::load(&file, &args.sets)?;
    if let Some(id) = &args.sweep_point {
        if *id != resolved.hash {
            anyhow::bail!("sweep point {id}: {} resolves to configuration {} in this process (did the experiment files or RUNNER_* variables change while the sweep ran?)", file.display(), resolved.hash);
        }
    }
    let cfg = &resolved.config;
    // Before the launcher starts ranks, and in every rank (each runs this same path).
    execute::apply_conv_engine(&resolved)?;
    let timeout = Duration::from_secs(cfg.device.timeout_s);
    // Started as one rank of a data-parallel run (by `runner launch`, torchrun or srun); a
    // one-device run in a world of one (`WORLD_SIZE=1`) needs no rendezvous.
    let one = std::env::var("WORLD_SIZE").is_ok_and(|w| w.trim() == "1");
    if cfg.device.gpus > 1 || !one {
        if let Some(rv) = tcp::Rendezvous::from_env(timeout)? {
            return run_rank(&file, args.fresh, &resolved, rv);
        }
    }
    if cfg.device.gpus > 1 {
        // Data parallel on this machine: start the ranks (each one runs this same command).
        execute::check_devices(cfg, cfg.device.gpus)?;
        let mut rank_args = rank_args(&file, &args.sets, args.fresh);
        if let Some(id) = &args.sweep_point {
            rank_args.extend(["--sweep-point".into(), id.into()]);
        }
        let port = match env_port()? {
            Some(p) => p,
            None => launch::free_port()?,
        };
        return launch::launch(&launch::Plan {
            nproc: cfg.device.gpus,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            threads: launch::threads_per_rank(cfg.device.gpus, cfg.device.threads),
            exe: this_program()?,
            args: rank_args,
        });
    }
    set_cpu_threads(cfg.device.threads);
    let mut dir = RunDir::open(
        &cfg.experiment.output,
        &cfg.experiment.name,
        &resolved.hash,
        args.fresh,
        cfg.experiment.allow_outside_output,
    )?;
    log_to(&dir.file("run.log"))?;
    tracing::info!(
        "runner {} -> {}",
        env!("CARGO_PKG_VERSION"),
        dir.path.display()
    );
    tracing::info!("CPU threads: {}", candle_core::utils::get_num_threads());
    tracing::info!("CPU convolution: {}", crate::nn::onednn::describe());
    let outcome = execute::execute(&resolved, &dir).inspect_err(|_| dir.discard_if_unstarted())?;
    if outcome.already_finished {
        tracing::info!("this run already finished; nothing to do (use --fresh to run it again in a new folder)");
    }
    print!("{}", summary_table(&outcome.summary, &dir.path));
    Ok(())
}

/// Sends the log to `path` (appending) besides stderr.
fn log_to(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if let Ok(mut g) = LOG_FILE.lock() {
        *g = Some(f);
    }
    Ok(())
}

/// `device.threads` for a one-process run (a launcher passes each rank its share through
/// `RAYON_NUM_THREADS` instead): candle's kernels and rayon's pool both read that variable,
/// so it is set before either starts; an explicit `RAYON_NUM_THREADS` wins, as for ranks.
fn set_cpu_threads(threads: usize) {
    if threads == 0 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // Nothing has started rayon's global pool yet (configuration loading is sequential) and
    // no other thread reads the environment at this point.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .is_err()
    {
        tracing::warn!("device.threads = {threads}: the thread pool had already started");
    }
}

/// `--conv-engine` of `runner bench` and its workers.
fn set_conv_engine(e: crate::config::schema::ConvEngineCfg) -> Result<()> {
    execute::set_conv_engine(e).map_err(|_| {
        anyhow::anyhow!(
            "--conv-engine onednn: this runner was built without oneDNN (apt-get install \
             libdnnl-dev, then cargo build --release --features onednn)"
        )
    })
}

fn this_program() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find this program's path to start the ranks")
}

/// The command line of every rank: the experiment and its options.
fn rank_args(file: &Path, sets: &[String], fresh: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![file.as_os_str().to_owned()];
    for s in sets {
        a.push("--set".into());
        a.push(s.into());
    }
    if fresh {
        a.push("--fresh".into());
    }
    a
}

/// `MASTER_PORT` of the environment, if set.
fn env_port() -> Result<Option<u16>> {
    match std::env::var("MASTER_PORT") {
        Ok(p) if !p.trim().is_empty() => p
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("environment variable MASTER_PORT={p:?} is not a port")),
        _ => Ok(None),
    }
}

/// This process's local rank: `LOCAL_RANK` (torchrun, `runner launch`), else `SLURM_LOCALID`
/// (srun), else its global rank (one machine).
fn local_rank(rank: usize) -> Result<usize> {
    for k in ["LOCAL_RANK", "SLURM_LOCALID"] {
        if let Ok(v) = std::env::var(k) {
            if !v.trim().is_empty() {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("environment variable {k}={v:?} is not a number"));
            }
        }
    }
    Ok(rank)
}

/// One rank of a data-parallel run: meet the others over TCP (nothing is written before they
/// have all arrived), then rank 0 opens the run folder and everyone runs the experiment.
fn run_rank(
    file: &Path,
    fresh: bool,
    resolved: &config::Resolved,
    rv: tcp::Rendezvous,
) -> Result<()> {
    let cfg = &resolved.config;
    if rv.world != cfg.device.gpus {
        bail!(
            "WORLD_SIZE={} (from the environment) but device.gpus = {} for {}: start one rank per device, WORLD_SIZE = device.gpus (`runner launch --nproc {} FILE`, or --set device.gpus={})",
            rv.world,
            cfg.device.gpus,
            file.display(),
            cfg.device.gpus,
            rv.world
        );
    }
    let local = local_rank(rv.rank)?;
    let device = execute::rank_device(cfg, local)?;
    tracing::info!(
        "rank {} of {} (pid {}, local rank {local}, {:?}): meeting the other ranks at {}",
        rv.rank,
        rv.world,
        std::process::id(),
        device,
        rv.addr
    );
    let comm = tcp::connect(&rv)?;
    let dist = Arc::new(Dist::new(
        Box::new(comm),
        local,
        device,
        &rv.addr,
        rv.timeout,
    )?);
    dist.agree("the configuration hash", &resolved.hash)?;
    let what = "to open the run folder";
    let mut dir = if dist.is_root() {
        match RunDir::open(
            &cfg.experiment.output,
            &cfg.experiment.name,
            &resolved.hash,
            fresh,
            cfg.experiment.allow_outside_output,
        ) {
            Ok(d) => {
                dist.root_outcome(what, Some(Ok(d.path.to_string_lossy().into_owned())))?;
                d.with_dist(dist.clone())
            }
            Err(e) => {
                let _ = dist.root_outcome(what, Some(Err(anyhow::anyhow!("{e:#}"))));
                return Err(e);
            }
        }
    } else {
        let path = dist.root_outcome(what, None)?;
        RunDir::follow(PathBuf::from(path), dist.clone())
    };
    let log = match dist.rank() {
        0 => "run.log".to_string(),
        r => format!("run.rank{r}.log"),
    };
    log_to(&dir.file(&log))?;
    tracing::info!(
        "runner {} -> {} (rank {} of {}, pid {})",
        env!("CARGO_PKG_VERSION"),
        dir.path.display(),
        dist.rank(),
        dist.world(),
        std::process::id()
    );
    tracing::info!("CPU threads: {}", candle_core::utils::get_num_threads());
    tracing::info!("CPU convolution: {}", crate::nn::onednn::describe());
    let outcome = execute::execute(resolved, &dir).inspect_err(|_| dir.discard_if_unstarted())?;
    if dist.is_root() {
        if outcome.already_finished {
            tracing::info!("this run already finished; nothing to do (use --fresh to run it again in a new folder)");
        }
        print!("{}", summary_table(&outcome.summary, &dir.path));
    }
    Ok(())
}

/// `runner bench`: builds the rows, runs them, prints the table (or JSON).
fn bench(a: BenchArgs) -> Result<()> {
    use crate::run::bench;
    a.device.require()?;
    // Fails here, before any row, when the build lacks the engine asked for.
    set_conv_engine(a.conv_engine)?;
    let (pytorch, reason) = if a.no_pytorch {
        (None, Some("--no-pytorch".to_string()))
    } else {
        match bench::find_pytorch(a.python.as_deref(), a.device) {
            Ok(p) => (Some(p), None),
            Err(why) => {
                eprintln!("bench: PyTorch not found: {why}");
                (None, Some(why))
            }
        }
    };
    let opts = bench::Options {
        spaces: bench::expand_spaces(&a.space)?,
        shapes: bench::expand_shapes(&a.shape)?,
        overrides: bench::spec::Nb201Overrides {
            channels: a.channels,
            cells: a.cells,
            batch: a.batch,
            recal_steps: a.recal_steps,
            recal_batch: a.recal_batch,
            valid_images: a.valid_images,
            eval_batch: a.eval_batch,
        },
        timing: bench::spec::Timing {
            threads: a.threads,
            warmup: a.warmup,
            repeats: a.repeats,
        },
        rounds: a.rounds,
        pytorch,
        no_pytorch_reason: reason,
        check: !a.no_check,
        check_only: a.check_only,
        exe: std::env::current_exe().context("locating the runner binary")?,
        device: a.device,
        conv_engine: a.conv_engine,
    };
    let report = bench::run(&opts)?;
    let json = report.json();
    if let Some(out) = &a.out {
        crate::run::dir::write_atomic(out, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("{}", report.table());
    }
    let problems = report.problems();
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\nerror: "));
    }
    Ok(())
}

/// `runner launch`: the ranks of this machine.
#[allow(clippy::too_many_arguments)]
fn launch_command(
    file: &Path,
    sets: &[String],
    fresh: bool,
    nproc: Option<usize>,
    nnodes: usize,
    node_rank: usize,
    master_addr: Option<String>,
    master_port: Option<u16>,
) -> Result<()> {
    if config::sweep_source(file)?.is_some() {
        bail!(
            "runner launch runs one experiment, and {} has a [sweep] table (run the sweep with `runner sweep`; points with device.gpus > 1 start their ranks themselves)",
            file.display()
        );
    }
    let resolved = config::load(file, sets)?;
    let cfg = &resolved.config;
    if nnodes == 0 {
        bail!("runner launch: --nnodes must be >= 1");
    }
    let nproc = match nproc {
        Some(n) => n,
        None if cfg.device.gpus % nnodes == 0 => cfg.device.gpus / nnodes,
        None => bail!(
            "runner launch: device.gpus = {} does not split over --nnodes {nnodes}; give --nproc",
            cfg.device.gpus
        ),
    };
    if nproc == 0 {
        bail!("runner launch: --nproc must be >= 1");
    }
    if nproc * nnodes != cfg.device.gpus {
        bail!(
            "runner launch: --nproc {nproc} x --nnodes {nnodes} = {} ranks but device.gpus = {} for {}: the world size must equal device.gpus (--set device.gpus={} or --nproc {})",
            nproc * nnodes,
            cfg.device.gpus,
            file.display(),
            nproc * nnodes,
            cfg.device.gpus / nnodes
        );
    }
    execute::check_devices(cfg, nproc)?;
    execute::check_conv_engine(&resolved)?;
    let master_addr = master_addr
        .or_else(|| {
            std::env::var("MASTER_ADDR")
                .ok()
                .filter(|a| !a.trim().is_empty())
        })
        .unwrap_or_else(|| "127.0.0.1".into());
    let master_port = match (master_port, env_port()?) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) if nnodes > 1 => {
            bail!("runner launch: --master-port (or MASTER_PORT) is required with --nnodes > 1")
        }
        (None, None) => launch::free_port()?,
    };
    launch::launch(&launch::Plan {
        nproc,
        nnodes,
        node_rank,
        master_addr,
        master_port,
        threads: launch::threads_per_rank(nproc, cfg.device.threads),
        exe: this_program()?,
        args: rank_args(file, sets, fresh),
    })
}

/// `runner bench-worker`: one side of one row, one JSON line on stdout.
fn bench_worker(
    spec: &str,
    check_out: Option<PathBuf>,
    device: crate::run::bench::BenchDevice,
    conv_engine: crate::config::schema::ConvEngineCfg,
) -> Result<()> {
    use crate::run::bench::{spec::Spec, worker};
    set_conv_engine(conv_engine)?;
    let spec: Spec = serde_json::from_str(spec).context("bench-worker --spec")?;
    let dev = device.open()?;
    let line = match check_out {
        Some(npz) => serde_json::to_string(&worker::check(&spec, &npz, &dev)?)?,
        None => serde_json::to_string(&worker::run(&spec, &dev)?)?,
    };
    println!("{line}");
    Ok(())
}

/// `diff`, `show` and `report`: read results folders, print to stdout.
pub fn results_command(command: Command) -> Result<()> {
    match command {
        Command::Diff {
            folders,
            all,
            precision,
            json,
            md,
            csv,
        } => {
            let format = if json {
                diff::Format::Json
            } else if md {
                diff::Format::Markdown
            } else if csv {
                diff::Format::Csv
            } else {
                diff::Format::Table
            };
            let inputs: Vec<diff::Input> = folders.into_iter().map(diff::Input::new).collect();
            print!(
                "{}",
                diff::diff(&inputs, all)?.render(format, precision as usize)?
            );
        }
        Command::Show {
            dir,
            sort,
            sort_order,
            json,
        } => {
            let opts = show::ShowOptions {
                sort,
                order: show::parse_order(&sort_order)?,
                json,
            };
            print!("{}", show::show(&dir, &dir.display().to_string(), &opts)?);
        }
        Command::Report { dir } => {
            report::write_report(&dir)?;
            println!("{}", dir.join("report.html").display());
        }
        other => anyhow::bail!("not a results command: {other:?}"),
    }
    Ok(())
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Check { file, sets }) => (|| -> Result<()> {
            let resolved = config::load(&file, &sets)?;
            let report = execute::check(&resolved)?;
            print!("{}", resolved.toml);
            println!("\n# hash: {}", resolved.hash);
            for line in report.lines() {
                println!("# {line}");
            }
            Ok(())
        })(),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::BenchWorker {
            spec,
            check_out,
            device,
            conv_engine,
        }) => bench_worker(&spec, check_out, device, conv_engine),
        Some(Command::Selftest {
            device,
            index,
            tolerance,
        }) => selftest(&device, index, tolerance),
        Some(command @ (Command::Diff { .. } | Command::Show { .. } | Command::Report { .. })) => {
            results_command(command)
        }
        Some(Command::Sweep {
            file,
            dry_run,
            jobs,
            shard,
            devices,
            sets,
        }) => sweep(&file, &sets, dry_run, jobs, shard.as_deref(), devices),
        Some(Command::Launch {
            file,
            nproc,
            nnodes,
            node_rank,
            master_addr,
            master_port,
            sets,
            fresh,
        }) => launch_command(
            &file,
            &sets,
            fresh,
            nproc,
            nnodes,
            node_rank,
            master_addr,
            master_port,
        ),
        None => run(cli.run),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            // A failed rank's exit code passes through its launcher.
            e.downcast_ref::<launch::Failed>().map_or(1, |f| f.code)
        }
    }
}

/// `runner selftest`: exit 0 when every space agrees within `tolerance`, or when no CUDA device
/// exists (said on stdout: the check was skipped, not passed).
fn selftest(device: &str, index: usize, tolerance: f64) -> Result<()> {
    use crate::run::selftest::{self, Target};
    let (target, what) = match device {
        "portable" => (Target::Portable, "portable ops on the CPU".to_string()),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                println!("selftest skipped: this runner was built without the `cuda` feature (scripts/build-cuda.sh builds one)");
                return Ok(());
            }
            if let Err(e) = candle_core::Device::new_cuda(index) {
                let msg = format!("{e}");
                println!(
                    "selftest skipped: no usable CUDA device {index}: {}",
                    msg.lines().next().unwrap_or_default()
                );
                return Ok(());
            }
            (Target::Cuda(index), format!("CUDA device {index}"))
        }
        other => anyhow::bail!("selftest --device {other:?}: expected cuda or portable"),
    };
    let checks = selftest::run(&target)?;
    let (text, ok) = selftest::report(&checks, &what, tolerance);
    print!("{text}");
    if !ok {
        anyhow::bail!("selftest: {what} differs from the CPU kernels by more than {tolerance:e}");
    }
    Ok(())
}

/// The error chain on one line. candle's errors carry a backtrace after their message (on
/// the lines after the first); it is logged at debug level, not shown.
fn one_line(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let mut lines = full.lines();
    let first = lines.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = lines.collect();
    if !rest.is_empty() {
        tracing::debug!("error details:\n{}", rest.join("\n"));
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line_without_backtraces() {
        let inner = candle_core::Error::Msg("no such device".into()).bt();
        let e = anyhow::Error::from(inner).context("cannot open CUDA device 0");
        let line = one_line(&e);
        assert!(
            line.starts_with("cannot open CUDA device 0: no such device"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn results_commands_parse_and_fail_on_bad_folders() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/diff/run_a");
        let cli = Cli::try_parse_from([
            "runner",
            "diff",
            fixture,
            fixture,
            "--md",
            "--precision",
            "3",
        ])
        .unwrap();
        match &cli.command {
            Some(Command::Diff {
                folders,
                md: true,
                json: false,
                precision: 3,
                ..
            }) => assert_eq!(folders.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(results_command(cli.command.unwrap()).is_ok());
        // One format at a time; at least two folders; a precision of at least one digit.
        assert!(Cli::try_parse_from(["runner", "diff", "a", "b", "--md", "--csv"]).is_err());
        assert!(Cli::try_parse_from(["runner", "diff", "a"]).is_err());
        assert!(Cli::try_parse_from(["runner", "diff", "a", "b", "--precision", "0"]).is_err());
        assert!(Cli::try_parse_from(["runner", "show", "a", "--sort-order", "desc"]).is_err());

        let t = tempfile::tempdir().unwrap();
        let cli = Cli::try_parse_from([
            "runner".as_ref(),
            "diff".as_ref(),
            fixture.as_ref(),
            t.path().as_os_str(),
        ])
        .unwrap();
        let err = format!("{:#}", results_command(cli.command.unwrap()).unwrap_err());
        assert!(
            !err.contains('\n')
                && err.contains(&t.path().display().to_string())
                && err.contains("neither a run folder"),
            "{err}"
        );
        let cli = Cli::try_parse_from(["runner".as_ref(), "show".as_ref(), t.path().as_os_str()])
            .unwrap();
        assert!(results_command(cli.command.unwrap()).is_err());
        let cli = Cli::try_parse_from([
            "runner",
            "show",
            fixture,
            "--sort",
            "kendall_tau",
            "--sort-order",
            "sideways",
        ])
        .unwrap();
        assert!(
            format!("{:#}", results_command(cli.command.unwrap()).unwrap_err())
                .contains("'asc' or 'desc'")
        );
    }
}
