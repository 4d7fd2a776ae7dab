//! Layering, path resolution, validation and error messages.
//! TODO(helper config)

use super::schema::Config;
use std::path::{Path, PathBuf};

/// A configuration after layering, path resolution and validation.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub config: Config,
    /// The experiment file it came from.
    pub file: PathBuf,
    /// The resolved configuration as TOML (what `config.toml` in the run folder holds).
    pub toml: String,
    /// Short hash of the resolved configuration (names the run folder).
    pub hash: String,
}

/// Loads `file` with its `extends` chain, `RUNNER_*` environment variables and `--set`
/// overrides (`train.learning_rate=0.05`) on top of the space's built-in defaults.
pub fn load(file: &Path, sets: &[String]) -> anyhow::Result<Resolved> {
    let _ = (file, sets);
    todo!("config helper")
}
