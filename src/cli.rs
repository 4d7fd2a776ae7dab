//! The command line: parses arguments and calls `run`; prints nothing else.

use crate::config;
use crate::run::{diff, dir::RunDir, execute, records::Summary, report, show, sweep};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

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
    /// Time one supernet training step and one architecture evaluation per search space on
    /// the CPU, side by side with the PyTorch twins (benchmarks/pytorch/) when PyTorch is
    /// installed.
    Bench(BenchArgs),
    /// One side of a `runner bench` row (started by `runner bench`; prints one JSON line).
    #[command(hide = true)]
    BenchWorker {
        #[arg(long)]
        spec: String,
        /// Run the loss check instead: write the initial weights and inputs here.
        #[arg(long)]
        check_out: Option<PathBuf>,
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
    use tracing_subscriber::{fmt, prelude::*, EnvFilter};
    let filter = EnvFilter::try_from_env("RUNNER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
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
    let dir = RunDir::open(
        &cfg.experiment.output,
        &cfg.experiment.name,
        &resolved.hash,
        args.fresh,
        cfg.experiment.allow_outside_output,
    )?;
    let log_path = dir.file("run.log");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    if let Ok(mut g) = LOG_FILE.lock() {
        *g = Some(f);
    }
    tracing::info!(
        "runner {} -> {}",
        env!("CARGO_PKG_VERSION"),
        dir.path.display()
    );
    let outcome = execute::execute(&resolved, &dir)?;
    if outcome.already_finished {
        tracing::info!("this run already finished; nothing to do (use --fresh to run it again in a new folder)");
    }
    print!("{}", summary_table(&outcome.summary, &dir.path));
    Ok(())
}

/// `runner bench`: builds the rows, runs them, prints the table (or JSON).
fn bench(a: BenchArgs) -> Result<()> {
    use crate::run::bench;
    let (pytorch, reason) = if a.no_pytorch {
        (None, Some("--no-pytorch".to_string()))
    } else {
        match bench::find_pytorch(a.python.as_deref()) {
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

/// `runner bench-worker`: one side of one row, one JSON line on stdout.
fn bench_worker(spec: &str, check_out: Option<PathBuf>) -> Result<()> {
    use crate::run::bench::{spec::Spec, worker};
    let spec: Spec = serde_json::from_str(spec).context("bench-worker --spec")?;
    let line = match check_out {
        Some(npz) => serde_json::to_string(&worker::check(&spec, &npz)?)?,
        None => serde_json::to_string(&worker::run(&spec)?)?,
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
        Some(Command::BenchWorker { spec, check_out }) => bench_worker(&spec, check_out),
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
        None => run(cli.run),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
