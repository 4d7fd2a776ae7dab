//! Starting the rank processes of a data-parallel run on this machine, as `torchrun` does: one
//! process of this same program per local rank, with `RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` in its environment; the ranks meet over TCP
//! ([`crate::collective::tcp`]). The launcher waits for all of them; when one fails it stops the
//! others and fails with one line naming that rank (exit code of the rank). A rank dies with its
//! launcher (Linux parent-death signal), so killing the launcher never leaves ranks behind.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The rank processes to start on this machine.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Ranks on this machine.
    pub nproc: usize,
    pub nnodes: usize,
    /// This machine's index among `nnodes` (its ranks are `node_rank * nproc ..`).
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// CPU threads per rank (`RAYON_NUM_THREADS`); `None` leaves the environment's.
    pub threads: Option<usize>,
    /// This program.
    pub exe: PathBuf,
    /// The arguments of every rank (the experiment file and its options).
    pub args: Vec<OsString>,
}

/// A launcher's failure: one line, and the exit code to leave with (the failed rank's).
#[derive(Debug)]
pub struct Failed {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// A port nobody listens on now (the usual way launchers pick one; another program could take
/// it before rank 0 binds it, which then fails with a clear message).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free TCP port for the ranks to meet on")?;
    Ok(l.local_addr()?.port())
}

/// CPU threads per rank when `nproc` ranks share this machine: the cores split evenly (at
/// least one each), unless `RAYON_NUM_THREADS` is set (kept) or `device.threads` says.
pub fn threads_per_rank(nproc: usize, device_threads: usize) -> Option<usize> {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    if device_threads > 0 {
        return Some(device_threads);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / nproc.max(1)).max(1))
}

struct Rank {
    rank: usize,
    child: Child,
    last_line: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn describe(status: ExitStatus) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (c, format!("exited with code {c}")),
        (None, Some(s)) => (128 + s, format!("was killed by signal {s}")),
        _ => (1, "ended abnormally".into()),
    }
}

/// Starts the ranks of `plan`, waits for them, and fails as the first failing rank did.
pub fn launch(plan: &Plan) -> Result<()> {
    let world = plan.nproc * plan.nnodes;
    if plan.nproc == 0 || plan.node_rank >= plan.nnodes {
        bail!(
            "runner launch: --nproc must be >= 1 and --node-rank below --nnodes (got {} and {} of {})",
            plan.nproc,
            plan.node_rank,
            plan.nnodes
        );
    }
    tracing::info!(
        "launching ranks {}..{} of {world} (group at {}:{}){}",
        plan.node_rank * plan.nproc,
        (plan.node_rank + 1) * plan.nproc - 1,
        plan.master_addr,
        plan.master_port,
        plan.threads
            .map(|t| format!(", {t} CPU threads each"))
            .unwrap_or_default()
    );
    let mut ranks: Vec<Rank> = Vec::with_capacity(plan.nproc);
    for local in 0..plan.nproc {
        let rank = plan.node_rank * plan.nproc + local;
        let mut cmd = Command::new(&plan.exe);
        cmd.args(&plan.args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_WORLD_SIZE", plan.nproc.to_string())
            .env("MASTER_ADDR", &plan.master_addr)
            .env("MASTER_PORT", plan.master_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped());
        if let Some(t) = plan.threads {
            cmd.env("RAYON_NUM_THREADS", t.to_string());
        }
        die_with_parent(&mut cmd);
        let spawned = cmd
            .spawn()
            .with_context(|| format!("cannot start rank {rank} ({})", plan.exe.display()));
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                stop(&mut ranks);
                return Err(e);
            }
        };
        let last_line = Arc::new(Mutex::new(String::new()));
        let reader = child.stderr.take().map(|err| {
            let last = last_line.clone();
            std::thread::spawn(move || forward(err, rank, &last))
        });
        ranks.push(Rank {
            rank,
            child,
            last_line,
            reader,
        });
    }
    let mut done = vec![false; ranks.len()];
    loop {
        // Failures seen in one round: a rank killed by a signal is the likelier cause of the
        // others' errors (they lost their connection to it), so it is named first.
        let mut failed: Vec<(usize, ExitStatus)> = vec![];
        for (k, r) in ranks.iter_mut().enumerate() {
            if done[k] {
                continue;
            }
            if let Some(st) = r.child.try_wait()? {
                done[k] = true;
                if !st.success() {
                    failed.push((k, st));
                }
            }
        }
        if !failed.is_empty() {
            use std::os::unix::process::ExitStatusExt;
            failed.sort_by_key(|(k, st)| (st.signal().is_none(), *k));
            let (k, st) = failed[0];
            stop(&mut ranks);
            let (code, how) = describe(st);
            let r = &ranks[k];
            let last = r.last_line.lock().map(|l| l.clone()).unwrap_or_default();
            let said = if last.is_empty() {
                String::new()
            } else {
                format!(" ({last})")
            };
            return Err(Failed {
                code,
                message: format!(
                    "rank {} of {world} {how}{said}; the other ranks on this machine were stopped",
                    r.rank
                ),
            }
            .into());
        }
        if done.iter().all(|&d| d) {
            for r in &mut ranks {
                if let Some(h) = r.reader.take() {
                    let _ = h.join();
                }
            }
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every rank still running and waits for it, and (briefly: a process the rank started
/// may hold its stderr open) for the rest of its output.
fn stop(ranks: &mut [Rank]) {
    for r in ranks.iter_mut() {
        if let Ok(None) = r.child.try_wait() {
            let _ = r.child.kill();
        }
        let _ = r.child.wait();
    }
    let until = std::time::Instant::now() + Duration::from_secs(2);
    for r in ranks.iter_mut() {
        if let Some(h) = r.reader.take() {
            while !h.is_finished() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Copies a rank's stderr to ours (lines of ranks > 0 prefixed with their rank) and keeps its
/// last line, which is its error when it fails.
fn forward(err: impl std::io::Read, rank: usize, last: &Mutex<String>) {
    let mut out = std::io::stderr();
    for line in BufReader::new(err).lines() {
        let Ok(line) = line else { break };
        let _ = if rank == 0 {
            writeln!(out, "{line}")
        } else {
            writeln!(out, "[rank {rank}] {line}")
        };
        if !line.trim().is_empty() {
            if let Ok(mut l) = last.lock() {
                *l = line.trim().trim_start_matches("error: ").to_string();
            }
        }
    }
}

/// The child gets SIGKILL when the launcher dies (Linux), so a killed launcher leaves no ranks.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and
        // exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher may have died before the signal was armed.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the launcher has exited"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(script: &str, nproc: usize) -> Plan {
        Plan {
            nproc,
            nnodes: 1,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            threads: Some(1),
            exe: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    #[test]
    fn ranks_get_the_torchrun_environment_and_failures_name_the_rank() {
        let t = tempfile::tempdir().unwrap();
        let script = format!(
            "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT $RAYON_NUM_THREADS > {}/env.$RANK",
            t.path().display()
        );
        launch(&plan(&script, 2)).unwrap();
        for r in 0..2 {
            let env = std::fs::read_to_string(t.path().join(format!("env.{r}"))).unwrap();
            assert_eq!(env.trim(), format!("{r} {r} 2 2 127.0.0.1 1 1"));
        }
        // Rank 1 fails at once; rank 0 would run for a minute: it is stopped, and the error
        // names rank 1 with its last line and leaves with its code.
        let start = std::time::Instant::now();
        let e = launch(&plan(
            "if [ $RANK = 1 ]; then echo 'error: rank 1: no data' >&2; exit 3; fi; exec sleep 60",
            2,
        ))
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(20));
        let f = e.downcast_ref::<Failed>().unwrap();
        assert_eq!(f.code, 3);
        assert_eq!(
            f.message,
            "rank 1 of 2 exited with code 3 (rank 1: no data); the other ranks on this machine were stopped"
        );
        // A rank killed by a signal.
        let e = launch(&plan(
            "if [ $RANK = 0 ]; then kill -9 $$; fi; exec sleep 60",
            2,
        ))
        .unwrap_err();
        let f = e.downcast_ref::<Failed>().unwrap();
        assert_eq!(f.code, 137);
        assert!(
            f.message.starts_with("rank 0 of 2 was killed by signal 9"),
            "{}",
            f.message
        );
    }
}
