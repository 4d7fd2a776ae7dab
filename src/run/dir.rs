//! The results folder of one run: naming, locking, atomic writes.

use super::dist::Dist;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// An open run folder, as one rank of the run sees it: rank 0 (or a single process) holds its
/// lock and writes it; the other ranks of a data-parallel run only read it (the checkpoint to
/// resume from).
pub struct RunDir {
    pub path: PathBuf,
    /// `None` on the ranks that do not write.
    lock: Option<PathBuf>,
    dist: Arc<Dist>,
    /// This open made the folder (it did not exist before): see [`RunDir::discard_if_unstarted`].
    created: bool,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
/// A reader sees the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .context("atomic write needs a parent folder")?;
    let name = path
        .file_name()
        .context("atomic write needs a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    drop(f);
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = fs::File::open(dir) {
        // Persist the rename itself; failure here only weakens durability, not correctness.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether process `pid` is running. A zombie (killed, not yet reaped) counts as gone: it
/// holds no files and will never release the lock itself.
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Checks that `name` is one plain path component (no separators, `..` or leading dot).
pub fn check_name(name: &str) -> Result<()> {
    let mut comps = Path::new(name).components();
    let ok = matches!(
        (comps.next(), comps.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\');
    if !ok {
        bail!("experiment.name {name:?} would place results outside the output root (set experiment.allow_outside_output = true to allow it)");
    }
    Ok(())
}

impl RunDir {
    /// The folder `<root>/<name>-<hash>` (or, with `fresh`, the first of `-r2`, `-r3`, ...
    /// that does not exist yet), created and locked.
    pub fn open(
        root: &Path,
        name: &str,
        hash: &str,
        fresh: bool,
        allow_outside: bool,
    ) -> Result<RunDir> {
        if !allow_outside {
            check_name(name)?;
        }
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create output folder {}", root.display()))?;
        let base = format!("{name}-{hash}");
        let mut path = root.join(&base);
        if fresh {
            let mut k = 2;
            while path.exists() {
                path = root.join(format!("{base}-r{k}"));
                k += 1;
            }
        }
        let created = !path.exists();
        fs::create_dir_all(path.join("eval")).with_context(|| {
            format!(
                "cannot create run folder {} (is the output root writable?)",
                path.display()
            )
        })?;
        fs::create_dir_all(path.join("checkpoints"))
            .with_context(|| format!("cannot create {}", path.join("checkpoints").display()))?;
        let lock = path.join("lock");
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())
                        .with_context(|| format!("cannot write {}", lock.display()))?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&lock)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match holder {
                        Some(pid) if pid != std::process::id() && pid_alive(pid) => {
                            bail!(
                                "run folder {} is in use by process {pid} (lock file {})",
                                path.display(),
                                lock.display()
                            )
                        }
                        // A lock left by a killed process: take it over.
                        _ => fs::remove_file(&lock).with_context(|| {
                            format!("cannot remove stale lock {}", lock.display())
                        })?,
                    }
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot create lock {} (is the output root writable?)",
                            lock.display()
                        )
                    })
                }
            }
        }
        // Holding the lock, every temporary file here is a dead writer's (a process killed
        // between writing and renaming): at a real model's size each one is a checkpoint.
        for sub in ["", "checkpoints", "eval"] {
            remove_stale_temps(&path.join(sub));
        }
        Ok(RunDir {
            path,
            lock: Some(lock),
            dist: Arc::new(Dist::single()),
            created,
        })
    }

    /// Removes the folder again when this process made it and the run never started (it
    /// failed before writing `config.toml`: missing data, a bad `eval.archs` file), so a
    /// failed start leaves no folder that is neither a run nor empty. Best effort; the error
    /// that caused it is what the user needs to see.
    pub fn discard_if_unstarted(&mut self) {
        if !self.created || self.file("config.toml").exists() {
            return;
        }
        if let Some(lock) = self.lock.take() {
            let _ = fs::remove_file(lock);
            let _ = fs::remove_dir_all(&self.path);
        }
    }

    /// The folder rank 0 of `dist` has opened at `path`, for a rank that only reads it.
    pub fn follow(path: PathBuf, dist: Arc<Dist>) -> RunDir {
        RunDir {
            path,
            lock: None,
            dist,
            created: false,
        }
    }

    /// This folder as rank `dist.rank()` of a data-parallel run uses it (rank 0 of it).
    pub fn with_dist(mut self, dist: Arc<Dist>) -> RunDir {
        self.dist = dist;
        self
    }

    /// The rank this process is of the run (a single process: rank 0 of 1).
    pub fn dist(&self) -> &Dist {
        &self.dist
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        if self.lock.is_none() {
            bail!(
                "internal: rank {} tried to write {} (only rank 0 writes the run folder)",
                self.dist.rank(),
                self.file(rel).display()
            );
        }
        write_atomic(&self.file(rel), bytes)
    }
}

/// Deletes `.NAME.tmp-PID` files (see [`write_atomic`]) in `dir`.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") && e.path().is_file() {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Some(lock) = &self.lock {
            let _ = fs::remove_file(lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_locks() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["../x", "/abs", "a/b", ".hidden", "..", ""] {
            assert!(
                RunDir::open(t.path(), bad, "h", false, false).is_err(),
                "{bad}"
            );
        }
        let a = RunDir::open(t.path(), "exp", "abc", false, false).unwrap();
        assert_eq!(a.path, t.path().join("exp-abc"));
        // Our own pid in the lock is not "another process".
        fs::write(a.file("lock"), "1\n").unwrap();
        assert!(pid_alive(1));
        let err = RunDir::open(t.path(), "exp", "abc", false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in use by process 1"), "{err}");
        // A stale lock (no such process) is taken over.
        fs::write(a.file("lock"), "4000000000\n").unwrap();
        let b = RunDir::open(t.path(), "exp", "abc", false, false).unwrap();
        let fresh = RunDir::open(t.path(), "exp", "abc", true, false).unwrap();
        assert_eq!(fresh.path, t.path().join("exp-abc-r2"));
        b.write("x.txt", b"one").unwrap();
        b.write("x.txt", b"two").unwrap();
        assert_eq!(fs::read_to_string(b.file("x.txt")).unwrap(), "two");
        let leftovers: Vec<_> = fs::read_dir(&b.path)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
        drop(a);
    }

    #[test]
    fn stale_temps_go_and_unstarted_folders_are_discarded() {
        let t = tempfile::tempdir().unwrap();
        // A run that started (config.toml written), then was killed mid-rename.
        let a = RunDir::open(t.path(), "exp", "abc", false, false).unwrap();
        a.write("config.toml", b"x").unwrap();
        let dead = a.file("checkpoints/.latest.safetensors.tmp-4000000000");
        fs::write(&dead, b"partial").unwrap();
        let kept = a.file("checkpoints/latest.safetensors");
        fs::write(&kept, b"whole").unwrap();
        drop(a);
        let mut b = RunDir::open(t.path(), "exp", "abc", false, false).unwrap();
        assert!(!dead.exists(), "the dead writer's temporary file stays");
        assert_eq!(fs::read(&kept).unwrap(), b"whole");
        // It existed before this open and has started: never discarded.
        b.discard_if_unstarted();
        assert!(b.file("config.toml").exists());
        drop(b);
        // Made by this open, failed before config.toml: removed.
        let mut c = RunDir::open(t.path(), "exp", "new", false, false).unwrap();
        fs::write(c.file("run.log"), b"error").unwrap();
        c.discard_if_unstarted();
        assert!(!t.path().join("exp-new").exists());
        // A folder that existed (an earlier attempt) is left to the user even if unstarted.
        fs::create_dir_all(t.path().join("exp-old")).unwrap();
        let mut d = RunDir::open(t.path(), "exp", "old", false, false).unwrap();
        d.discard_if_unstarted();
        assert!(t.path().join("exp-old").exists());
    }
}
