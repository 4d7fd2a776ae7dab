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
    /// Time one NB201 training step and one architecture evaluation on the CPU, side by side
    /// with the PyTorch twin (benchmarks/pytorch/nb201_bench.py) when PyTorch is installed.
    Bench {
        #[arg(long, default_value_t = 16)]
        channels: usize,
        /// Cells per stage.
        #[arg(long, default_value_t = 5)]
        cells: usize,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        #[arg(long, default_value_t = 25)]
        recal_steps: usize,
        #[arg(long, default_value_t = 256)]
        recal_batch: usize,
        #[arg(long, default_value_t = 1000)]
        valid_images: usize,
        #[arg(long, default_value_t = 250)]
        eval_batch: usize,
        /// Timed repetitions per round (after one warm-up).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Rounds, alternating runner and PyTorch.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip the PyTorch comparison.
        #[arg(long)]
        no_pytorch: bool,
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
        Some(Command::Bench {
            channels,
            cells,
            batch,
            recal_steps,
            recal_batch,
            valid_images,
            eval_batch,
            repeats,
            rounds,
            no_pytorch,
        }) => (|| -> Result<()> {
            let threads = candle_core::utils::get_num_threads();
            let python = std::env::var("RUNNER_BENCH_PYTHON").unwrap_or_else(|_| {
                if crate::run::bench::has_torch("python3") {
                    "python3".into()
                } else {
                    "/usr/bin/python3".into()
                }
            });
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benchmarks/pytorch/nb201_bench.py");
            let pytorch_script =
                (!no_pytorch && script.exists() && crate::run::bench::has_torch(&python))
                    .then_some(script);
            let args = crate::run::bench::BenchArgs {
                channels,
                cells,
                batch,
                recal_steps,
                recal_batch,
                valid_images,
                eval_batch,
                repeats,
                rounds,
                threads,
                pytorch_script,
                python,
            };
            print!("{}", crate::run::bench::bench(&args)?);
            Ok(())
        })(),
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
        None => run(cli.run),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            1
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
