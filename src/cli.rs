//! The command line: parses arguments and calls `run`; prints nothing else.

use crate::config;
use crate::run::{dir::RunDir, execute, records::Summary};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Parser, Debug)]
#[command(name = "runner", version, about = "Reproducible weight-sharing NAS: train a supernet, score architectures against ground truth")]
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
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let file = fmt::layer().with_writer(|| LogWriter).with_ansi(false).with_target(false);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init();
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into())
}

/// The final table on stdout.
pub fn summary_table(s: &Summary, folder: &std::path::Path) -> String {
    let mut t = String::new();
    t.push_str(&format!("run        {}\n", folder.display()));
    t.push_str(&format!("space      {}   epochs {}   steps {}   unsampled params: {}\n", s.space, s.epochs, s.steps, s.unsampled));
    if let Some(gt) = &s.ground_truth {
        t.push_str(&format!("truth      {gt}\n"));
    }
    if let Some(tricks) = s.tricks.as_object().filter(|o| !o.is_empty()) {
        let names: Vec<&str> = tricks.keys().map(String::as_str).collect();
        let size = s.train_archset_size.map(|n| format!("   training archset {n}")).unwrap_or_default();
        t.push_str(&format!("tricks     {}{size}\n", names.join(", ")));
    }
    t.push_str(&format!("train      loss {}   accuracy {}\n", fmt_opt(s.final_train_loss), fmt_opt(s.final_train_accuracy)));
    t.push_str("\n epoch  archs  mean acc  kendall  spearman  pearson  top-k\n");
    for e in &s.history {
        t.push_str(&format!(
            "{:>6} {:>6} {:>9.4} {:>8} {:>9} {:>8} {:>6}\n",
            e.epoch,
            e.num_archs,
            e.mean_accuracy,
            fmt_opt(e.kendall_tau),
            fmt_opt(e.spearman),
            fmt_opt(e.pearson),
            fmt_opt(e.top_k_overlap)
        ));
    }
    if let Some(f) = s.tau_fraction_of_noise_ceiling {
        t.push_str(&format!("\nkendall tau = {:.1}% of the ground truth's seed-to-seed tau\n", f * 100.0));
    }
    t
}

fn run(args: RunArgs) -> Result<()> {
    let file = args.file.context("an experiment file is required")?;
    let resolved = config::load(&file, &args.sets)?;
    let cfg = &resolved.config;
    let dir = RunDir::open(&cfg.experiment.output, &cfg.experiment.name, &resolved.hash, args.fresh, cfg.experiment.allow_outside_output)?;
    let log_path = dir.file("run.log");
    let f = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).with_context(|| format!("cannot open {}", log_path.display()))?;
    if let Ok(mut g) = LOG_FILE.lock() {
        *g = Some(f);
    }
    tracing::info!("runner {} -> {}", env!("CARGO_PKG_VERSION"), dir.path.display());
    let outcome = execute::execute(&resolved, &dir)?;
    if outcome.already_finished {
        tracing::info!("this run already finished; nothing to do (use --fresh to run it again in a new folder)");
    }
    print!("{}", summary_table(&outcome.summary, &dir.path));
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
        Some(Command::Bench { channels, cells, batch, recal_steps, recal_batch, valid_images, eval_batch, repeats, rounds, no_pytorch }) => (|| -> Result<()> {
            let threads = candle_core::utils::get_num_threads();
            let python = std::env::var("RUNNER_BENCH_PYTHON").unwrap_or_else(|_| {
                if crate::run::bench::has_torch("python3") { "python3".into() } else { "/usr/bin/python3".into() }
            });
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benchmarks/pytorch/nb201_bench.py");
            let pytorch_script = (!no_pytorch && script.exists() && crate::run::bench::has_torch(&python)).then_some(script);
            let args = crate::run::bench::BenchArgs { channels, cells, batch, recal_steps, recal_batch, valid_images, eval_batch, repeats, rounds, threads, pytorch_script, python };
            print!("{}", crate::run::bench::bench(&args)?);
            Ok(())
        })(),
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
