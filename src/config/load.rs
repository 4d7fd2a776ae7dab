//! Layering, path resolution, validation and error messages.
//!
//! Every layer is kept as its own TOML table together with where it came from, so that any
//! key of the merged configuration can be traced back to the file (and line), environment
//! variable or `--set` argument that set it. figment merges the layers and deserialises the
//! result; its errors are translated into one-line [`ConfigError`]s using that provenance.

// ConfigError is large (place + key + message strings) but it is built once, on the cold path
// of reading a configuration; boxing it would only add noise to every constructor.
#![allow(clippy::result_large_err)]

use super::defaults;
use super::errors::{one_line, ConfigError, Place};
use super::schema::Config;
use super::spans;
use super::suggest;
use super::validate;
use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use sha2::{Digest, Sha256};
use std::path::{Component, Path, PathBuf};

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
    /// The layers it was resolved from, so that checks made after loading (by the run layer)
    /// can name where a value was set, like the loader's own errors do.
    layers: std::sync::Arc<Layers>,
}

impl Resolved {
    /// Where the value of the dotted `key` was set: a file and line, an environment variable,
    /// a `--set` argument or the built-in defaults.
    pub fn origin(&self, key: &str) -> Place {
        self.layers.place_of_dotted(key)
    }

    /// Re-reads a run folder's resolved `config.toml`. It is an experiment file in its own
    /// right (absolute paths, no `extends`); environment variables and `--set` are NOT applied,
    /// so a resumed run sees exactly the configuration it started with.
    pub fn from_toml_file(path: &Path) -> anyhow::Result<Resolved> {
        load_from(path, None, &[], &[])
    }
}

/// Loads `file` with its `extends` chain, `RUNNER_*` environment variables and `--set`
/// overrides (`train.learning_rate=0.05`) on top of the space's built-in defaults.
pub fn load(file: &Path, sets: &[String]) -> anyhow::Result<Resolved> {
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    load_from(file, None, sets, &env)
}

/// Like [`load`] but with the experiment file's text given and the file only named
/// (`virtual_path` places it: relative paths and `extends` resolve against its folder, errors
/// name it). Environment variables are not consulted.
pub fn load_str(text: &str, virtual_path: &Path, sets: &[String]) -> anyhow::Result<Resolved> {
    load_from(virtual_path, Some(text), sets, &[])
}

/// The general form: `text` replaces reading `file` when given, and `env` stands in for the
/// process environment (only `RUNNER_*` names containing `__` are used).
pub fn load_from(
    file: &Path,
    text: Option<&str>,
    sets: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Resolved> {
    let layers = std::sync::Arc::new(Layers::build(file, text, sets, env)?);
    let resolved = layers.resolve()?;
    Ok(resolved)
}

/// The `[sweep]` table an experiment file declares, with the text it was read from (for
/// line numbers and the written order of its keys).
#[derive(Clone, Debug)]
pub struct SweepSource {
    /// The file holding the table, as the user named it or as `extends` reached it.
    pub file: PathBuf,
    pub text: String,
    pub table: toml::Value,
}

/// The `[sweep]` of `file`, or of the nearest file up its `extends` chain that has one; `None`
/// when no file of the chain declares a sweep. Errors are those of reading the chain.
pub fn sweep_source(file: &Path) -> anyhow::Result<Option<SweepSource>> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Io {
        at: Place::file(file, None),
        message: e.to_string(),
    })?;
    sweep_source_str(&text, file)
}

/// Like [`sweep_source`] with the file's text given (`file` only names and places it).
pub fn sweep_source_str(text: &str, file: &Path) -> anyhow::Result<Option<SweepSource>> {
    let mut chain = Vec::new();
    read_chain(
        file.to_path_buf(),
        absolute(file),
        text.to_string(),
        &mut chain,
    )?;
    // `chain` lists the named file first, then the files it extends.
    Ok(chain.into_iter().find_map(|layer| match layer.source {
        Source::File {
            shown,
            text,
            sweep: Some(table),
            ..
        } => Some(SweepSource {
            file: shown,
            text,
            table,
        }),
        _ => None,
    }))
}

/// Where one layer came from.
#[derive(Clone, Debug)]
enum Source {
    Defaults {
        kind: String,
    },
    File {
        /// As the user named it, or as reached through `extends` (for messages).
        shown: PathBuf,
        /// Absolute and normalised (for resolving relative paths).
        abs: PathBuf,
        text: String,
        /// The file's `[sweep]` table, set aside: it describes a sweep over runs, not a run.
        sweep: Option<toml::Value>,
    },
    Env {
        var: String,
    },
    Set {
        arg: String,
    },
}

#[derive(Clone, Debug)]
struct Layer {
    source: Source,
    table: toml::Table,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        match &self.source {
            Source::File { abs, .. } => Metadata::named("TOML file").source(abs.as_path()),
            Source::Defaults { kind } => Metadata::named(format!("built-in defaults ({kind})")),
            Source::Env { var } => Metadata::named(format!("environment variable {var}")),
            Source::Set { arg } => Metadata::named(format!("--set {arg}")),
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = Value::serialize(&self.table)?
            .into_dict()
            .ok_or_else(|| figment::Error::from("a layer is not a table"))?;
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// All layers, lowest first, and the experiment file they hang from.
#[derive(Debug)]
struct Layers {
    layers: Vec<Layer>,
    /// The experiment file as given / absolute.
    shown: PathBuf,
    abs: PathBuf,
    kind: String,
}

impl Layers {
    fn build(
        file: &Path,
        text: Option<&str>,
        sets: &[String],
        env: &[(String, String)],
    ) -> Result<Layers, ConfigError> {
        let abs = absolute(file);
        let text = match text {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(file).map_err(|e| ConfigError::Io {
                at: Place::file(file, None),
                message: e.to_string(),
            })?,
        };
        let mut files = Vec::new();
        read_chain(file.to_path_buf(), abs.clone(), text, &mut files)?;
        files.reverse();
        let mut layers = files;
        layers.extend(env_layers(env)?);
        for arg in sets {
            layers.push(set_layer(arg)?);
        }
        let kind = space_kind(&layers, file)?;
        let defaults = defaults::for_kind(&kind).ok_or_else(|| ConfigError::Invalid {
            at: Place::Defaults { kind: kind.clone() },
            message: format!("space kind {kind:?} is listed but has no built-in defaults"),
        })?;
        let table = toml::Table::try_from(&defaults).map_err(|e| ConfigError::Invalid {
            at: Place::Defaults { kind: kind.clone() },
            message: format!("cannot serialise the defaults: {e}"),
        })?;
        let mut table = table;
        // Space-specific trick defaults, only under the tricks a higher layer turns on.
        for (name, defaults) in defaults::trick_defaults(&kind) {
            if layers
                .iter()
                .any(|l| table_sets(&l.table, &["tricks", name]))
            {
                let tricks = table
                    .entry("tricks")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(t) = tricks {
                    t.insert(name.to_string(), toml::Value::Table(defaults));
                }
            }
        }
        layers.insert(
            0,
            Layer {
                source: Source::Defaults { kind: kind.clone() },
                table,
            },
        );
        Ok(Layers {
            layers,
            shown: file.to_path_buf(),
            abs,
            kind,
        })
    }

    /// The highest layer that sets `path` (or a non-table value on the way to it).
    fn layer_of<S: AsRef<str>>(&self, path: &[S]) -> Option<&Layer> {
        self.layers
            .iter()
            .rev()
            .find(|l| table_sets(&l.table, path))
    }

    /// Where the value at `path` was set, with its line for files.
    fn place_of<S: AsRef<str>>(&self, path: &[S]) -> Place {
        match self.layer_of(path) {
            Some(layer) => place_in(layer, path),
            None => Place::file(&self.shown, None),
        }
    }

    fn place_of_dotted(&self, key: &str) -> Place {
        self.place_of(&key.split('.').collect::<Vec<_>>())
    }

    /// The folder relative paths of the value at `path` resolve against.
    fn base_dir<S: AsRef<str>>(&self, path: &[S]) -> PathBuf {
        let file = match self.layer_of(path).map(|l| &l.source) {
            Some(Source::File { abs, .. }) => abs,
            _ => &self.abs,
        };
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn resolve(self: &std::sync::Arc<Self>) -> Result<Resolved, ConfigError> {
        let mut figment = Figment::new();
        for layer in &self.layers {
            figment = figment.merge(layer.clone());
        }
        if let Some(defaults) = self.layers.first() {
            self.check_tables(&defaults.table, &mut Vec::new())?;
        }
        self.precheck_space(&figment)?;
        let mut config: Config = figment.extract().map_err(|e| self.translate(e))?;
        config.extends = None;
        self.resolve_paths(&mut config)?;
        validate::validate(&mut config, &|key| self.place_of_dotted(key))?;
        let at = Place::file(&self.shown, None);
        let toml = toml::to_string_pretty(&config).map_err(|e| ConfigError::Invalid {
            at: at.clone(),
            message: format!("cannot write the resolved configuration as TOML: {e}"),
        })?;
        let hash = hash_of(&config).map_err(|message| ConfigError::Invalid { at, message })?;
        Ok(Resolved {
            config,
            file: self.abs.clone(),
            toml,
            hash,
            layers: self.clone(),
        })
    }

    /// Every key that is a table in the defaults must be a table in the layer that sets it:
    /// serde would otherwise accept an array for a struct and complain about `train.0`.
    fn check_tables(
        &self,
        defaults: &toml::Table,
        prefix: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        for (key, value) in defaults {
            let toml::Value::Table(sub) = value else {
                continue;
            };
            prefix.push(key.clone());
            let layer = self.layer_of(prefix);
            if let Some((layer, found)) = layer.and_then(|l| Some((l, lookup(&l.table, prefix)?))) {
                if !found.is_table() {
                    return Err(ConfigError::WrongType {
                        at: place_in(layer, prefix),
                        key: prefix.join("."),
                        expected: "a table".into(),
                        found: found_toml(found),
                    });
                }
            }
            self.check_tables(sub, prefix)?;
            prefix.pop();
        }
        Ok(())
    }

    /// `[space]` deserialises through serde's internally tagged enum, which buffers the table
    /// and loses the key path of any error inside it. Extracting the variant's struct on its
    /// own first gives errors that name `space.<key>`.
    fn precheck_space(&self, figment: &Figment) -> Result<(), ConfigError> {
        let mut space = match figment.find_value("space") {
            Ok(Value::Dict(_, d)) => d,
            Ok(other) => {
                return Err(ConfigError::WrongType {
                    at: self.place_of(&["space"]),
                    key: "space".into(),
                    expected: "a table".into(),
                    found: found_value(&other.to_actual()),
                })
            }
            Err(_) => return Ok(()),
        };
        space.remove("kind");
        let inner = Figment::from(figment::providers::Serialized::defaults(space));
        let result = match self.kind.as_str() {
            "nb101" => inner.extract::<super::schema::Nb101Space>().map(|_| ()),
            "nb201" => inner.extract::<super::schema::Nb201Space>().map(|_| ()),
            "darts" => inner.extract::<super::schema::DartsSpace>().map(|_| ()),
            "ptb" => inner.extract::<super::schema::PtbSpace>().map(|_| ()),
            "proxyless" => inner.extract::<super::schema::ProxylessSpace>().map(|_| ()),
            _ => Ok(()),
        };
        result.map_err(|mut e| {
            e.path.insert(0, "space".into());
            self.translate(e)
        })
    }

    fn resolve_paths(&self, config: &mut Config) -> Result<(), ConfigError> {
        // "none" turns off a table a lower layer (`extends`) set, like eval.ground_truth's.
        for p in [&mut config.eval.archs, &mut config.eval.archs_second_seed] {
            if p.as_deref() == Some(Path::new("none")) {
                *p = None;
            }
        }
        // An empty path would silently mean "the experiment file's folder".
        let empty = [
            (
                "experiment.output",
                config.experiment.output.as_os_str().is_empty(),
            ),
            ("data.root", config.data.root.as_os_str().is_empty()),
            (
                "data.split_file",
                config
                    .data
                    .split_file
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty()),
            ),
            (
                "eval.archs",
                config
                    .eval
                    .archs
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty()),
            ),
            (
                "eval.archs_second_seed",
                config
                    .eval
                    .archs_second_seed
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty()),
            ),
        ];
        if let Some((key, _)) = empty.iter().find(|(_, e)| *e) {
            return Err(ConfigError::Invalid {
                at: self.place_of_dotted(key),
                message: format!("{key} must not be empty"),
            });
        }
        let resolve = |key: &[&str], p: &Path| normalize(&self.base_dir(key).join(p));
        config.experiment.output = resolve(&["experiment", "output"], &config.experiment.output);
        config.data.root = resolve(&["data", "root"], &config.data.root);
        if let Some(split_file) = &config.data.split_file {
            config.data.split_file = Some(resolve(&["data", "split_file"], split_file));
        }
        if let Some(p) = config.data.imagenet.as_mut().and_then(|i| i.lists.as_mut()) {
            *p = resolve(&["data", "imagenet", "lists"], p);
        }
        if let Some(p) = &config.eval.archs {
            config.eval.archs = Some(resolve(&["eval", "archs"], p));
        }
        if let Some(p) = &config.eval.archs_second_seed {
            config.eval.archs_second_seed = Some(resolve(&["eval", "archs_second_seed"], p));
        }
        let gt = config.eval.ground_truth.as_str();
        if gt.trim().is_empty() {
            return Err(ConfigError::Invalid {
                at: self.place_of(&["eval", "ground_truth"]),
                message: "eval.ground_truth must be \"auto\", \"none\" or a path (got \"\")".into(),
            });
        }
        if gt != "auto" && gt != "none" {
            let path = resolve(&["eval", "ground_truth"], Path::new(gt));
            config.eval.ground_truth = path
                .to_str()
                .ok_or_else(|| ConfigError::Invalid {
                    at: self.place_of(&["eval", "ground_truth"]),
                    message: format!(
                        "eval.ground_truth resolves to a path that is not UTF-8: {}",
                        path.display()
                    ),
                })?
                .to_string();
        }
        Ok(())
    }

    /// Turns figment's error into one line naming the place that set the offending key.
    fn translate(&self, error: figment::Error) -> ConfigError {
        let path = error.path.clone();
        let key = path.join(".");
        let at = self.place_of(&path);
        match error.kind {
            Kind::UnknownField(name, expected) => {
                let parent = &path[..path.len().saturating_sub(1)];
                let is_table = self
                    .layer_of(&path)
                    .and_then(|l| lookup(&l.table, &path))
                    .is_some_and(toml::Value::is_table);
                if is_table {
                    let prefix: String = parent.iter().map(|p| format!("{p}.")).collect();
                    ConfigError::UnknownSection {
                        at,
                        section: key,
                        hint: suggest::hint(&name, expected.iter().copied(), |c| {
                            format!("[{prefix}{c}]")
                        }),
                    }
                } else {
                    ConfigError::UnknownKey {
                        at,
                        key,
                        hint: suggest::hint(&name, expected.iter().copied(), str::to_string),
                    }
                }
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                ConfigError::WrongType {
                    at,
                    key,
                    expected: expected_type(&expected),
                    found: found_value(&actual),
                }
            }
            Kind::UnknownVariant(value, expected) => ConfigError::UnknownValue {
                at,
                key,
                hint: suggest::hint(&value, expected.iter().copied(), str::to_string),
                value,
                expected: expected.join(", "),
            },
            Kind::MissingField(name) => {
                let full = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
                ConfigError::Invalid {
                    at: Place::file(&self.shown, None),
                    message: format!("{full} is missing"),
                }
            }
            other => ConfigError::Invalid {
                at,
                message: if key.is_empty() {
                    one_line(&other.to_string())
                } else {
                    format!("{key}: {}", one_line(&other.to_string()))
                },
            },
        }
    }
}

/// Where `path` sits in `layer`.
fn place_in<S: AsRef<str>>(layer: &Layer, path: &[S]) -> Place {
    match &layer.source {
        Source::File { shown, text, .. } => Place::file(shown, spans::line_of(text, path)),
        Source::Defaults { kind } => Place::Defaults { kind: kind.clone() },
        Source::Env { var } => Place::Env { var: var.clone() },
        Source::Set { arg } => Place::Set { arg: arg.clone() },
    }
}

/// Reads `shown` (whose text is `text`) and, recursively, the files it extends, pushing the
/// extending file before its base.
fn read_chain(
    shown: PathBuf,
    abs: PathBuf,
    text: String,
    out: &mut Vec<Layer>,
) -> Result<(), ConfigError> {
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, col) = match e.span() {
            Some(span) => {
                let (l, c) = spans::line_col(&text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError::InvalidToml {
            at: Place::File {
                path: shown.clone(),
                line,
                col,
            },
            message: one_line(e.message()),
        }
    })?;
    let extends = table.remove("extends");
    // Kept out of the run's configuration (and so out of its validation and hash).
    let sweep = table.remove("sweep");
    let source = Source::File {
        shown: shown.clone(),
        abs: abs.clone(),
        text,
        sweep,
    };
    let layer = Layer { source, table };
    let at = || place_in(&layer, &["extends"]);
    let base = match &extends {
        None => None,
        Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
        Some(other) => {
            return Err(ConfigError::WrongType {
                at: at(),
                key: "extends".into(),
                expected: "a string (a path relative to this file)".into(),
                found: found_toml(other),
            })
        }
    };
    let base_at = at();
    out.push(layer);
    let Some(base) = base else {
        return Ok(());
    };
    let base_shown = normalize_shown(&shown.parent().unwrap_or(Path::new("")).join(&base));
    let base_abs = normalize(&abs.parent().unwrap_or(Path::new("/")).join(&base));
    let identity = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let base_id = identity(&base_abs);
    if let Some(first) = out.iter().position(|l| match &l.source {
        Source::File { abs, .. } => identity(abs) == base_id,
        _ => false,
    }) {
        let mut chain: Vec<String> = out[first..]
            .iter()
            .filter_map(|l| match &l.source {
                Source::File { shown, .. } => Some(shown.display().to_string()),
                _ => None,
            })
            .collect();
        chain.push(base_shown.display().to_string());
        return Err(ConfigError::Extends {
            at: base_at,
            message: format!("extends cycle: {}", chain.join(" -> ")),
        });
    }
    let base_text = std::fs::read_to_string(&base_abs).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_string(),
            _ => format!("cannot read: {e}"),
        };
        ConfigError::Extends {
            at: base_at.clone(),
            message: format!(
                "extends {:?}: {why} ({})",
                base.display().to_string(),
                base_shown.display()
            ),
        }
    })?;
    read_chain(base_shown, base_abs, base_text, out)
}

/// One layer per `RUNNER_<SECTION>__<KEY>` variable. Variables without `__` belong to other
/// tools (CI runners set `RUNNER_OS`, `RUNNER_TEMP`, ...) and are ignored.
fn env_layers(env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
    let mut vars: Vec<(&String, &str, &String)> = env
        .iter()
        .filter_map(|(k, v)| Some((k, k.strip_prefix("RUNNER_")?, v)))
        .filter(|(_, rest, _)| rest.contains("__"))
        .collect();
    // Sorted so that the merge (and any error) does not depend on the environment's order.
    vars.sort();
    vars.into_iter()
        .map(|(var, rest, value)| {
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            let source = Source::Env { var: var.clone() };
            if path.iter().any(String::is_empty) {
                return Err(ConfigError::Syntax {
                    at: Place::Env { var: var.clone() },
                    message: "empty key between '__' separators".into(),
                });
            }
            reject_extends(&path, || Place::Env { var: var.clone() })?;
            Ok(Layer {
                source,
                table: nested(&path, parse_value(value)),
            })
        })
        .collect()
}

/// The layer of one `--set key.path=value` argument.
fn set_layer(arg: &str) -> Result<Layer, ConfigError> {
    let at = || Place::Set { arg: arg.into() };
    let Some((key, value)) = arg.split_once('=') else {
        return Err(ConfigError::Syntax {
            at: at(),
            message: "expected key=value (e.g. train.epochs=3)".into(),
        });
    };
    let path: Vec<String> = key
        .trim()
        .split('.')
        .map(|s| s.trim().to_string())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Syntax {
            at: at(),
            message: format!("invalid key {:?}", key.trim()),
        });
    }
    reject_extends(&path, at)?;
    Ok(Layer {
        source: Source::Set { arg: arg.into() },
        table: nested(&path, parse_value(value.trim())),
    })
}

/// `extends` is followed only while reading files; from anywhere else it would be ignored.
/// The same holds for `[sweep]`, which only a file can declare.
fn reject_extends(path: &[String], at: impl Fn() -> Place) -> Result<(), ConfigError> {
    if let Some(k) = path.first().filter(|k| *k == "extends" || *k == "sweep") {
        return Err(ConfigError::Syntax {
            at: at(),
            message: format!("{k} can only be given in an experiment file"),
        });
    }
    Ok(())
}

/// A TOML value when `text` is one (`3`, `0.05`, `true`, `"x"`, `[1, 2]`), else the text as
/// a string, so that `data.root=/data/cifar` needs no quotes.
fn parse_value(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

/// `{a = {b = value}}` for path `[a, b]`.
fn nested(path: &[String], value: toml::Value) -> toml::Table {
    let mut value = value;
    for key in path.iter().skip(1).rev() {
        value = toml::Value::Table(toml::Table::from_iter([(key.clone(), value)]));
    }
    match path.first() {
        Some(first) => toml::Table::from_iter([(first.clone(), value)]),
        None => toml::Table::new(),
    }
}

/// The space kind from the highest layer that sets `space.kind`.
fn space_kind(layers: &[Layer], file: &Path) -> Result<String, ConfigError> {
    let Some(layer) = layers
        .iter()
        .rev()
        .find(|l| table_sets(&l.table, &["space", "kind"]))
    else {
        return Err(ConfigError::Invalid {
            at: Place::file(file, None),
            message: format!(
                "space.kind is required (one of: {})",
                defaults::SPACE_KINDS.join(", ")
            ),
        });
    };
    if let Some(space) = lookup(&layer.table, &["space"]).filter(|v| !v.is_table()) {
        return Err(ConfigError::WrongType {
            at: place_in(layer, &["space"]),
            key: "space".into(),
            expected: "a table".into(),
            found: found_toml(space),
        });
    }
    let at = place_in(layer, &["space", "kind"]);
    match lookup(&layer.table, &["space", "kind"]) {
        Some(toml::Value::String(kind)) if defaults::SPACE_KINDS.contains(&kind.as_str()) => {
            Ok(kind.clone())
        }
        Some(toml::Value::String(kind)) => Err(ConfigError::UnknownValue {
            at,
            key: "space.kind".into(),
            value: kind.clone(),
            expected: defaults::SPACE_KINDS.join(", "),
            hint: suggest::hint(kind, defaults::SPACE_KINDS.iter().copied(), str::to_string),
        }),
        other => Err(ConfigError::WrongType {
            at,
            key: "space.kind".into(),
            expected: "a string".into(),
            found: other.map_or_else(|| "nothing".into(), found_toml),
        }),
    }
}

fn lookup<'a, S: AsRef<str>>(table: &'a toml::Table, path: &[S]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first.as_ref())?;
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        toml::Value::Table(t) => lookup(t, rest),
        _ => None,
    }
}

/// Whether `table` sets `path`: the key itself, or a non-table value on the way to it (which
/// replaces everything below).
fn table_sets<S: AsRef<str>>(table: &toml::Table, path: &[S]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match table.get(first.as_ref()) {
        None => false,
        Some(_) if rest.is_empty() => true,
        Some(toml::Value::Table(t)) => table_sets(t, rest),
        Some(_) => true,
    }
}

/// serde's "expected" phrase in words a config author knows.
fn expected_type(expected: &str) -> String {
    let e = expected.trim_start_matches('`').trim_end_matches('`');
    let words = match e {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "an unsigned integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "a boolean",
        "a string" | "path string" => "a string",
        "a sequence" => "an array",
        _ if e.starts_with("struct ") || e.starts_with("a map") => "a table",
        // serde names the Rust type (`enum ConvEngineCfg`); the user writes a quoted name.
        _ if e.starts_with("enum ") => "a string (one of the key's names)",
        _ => return e.to_string(),
    };
    words.into()
}

fn found_value(actual: &Actual) -> String {
    match actual {
        Actual::Bool(b) => format!("boolean {b}"),
        Actual::Unsigned(v) => format!("integer {v}"),
        Actual::Signed(v) => format!("integer {v}"),
        Actual::Float(v) => format!("float {v}"),
        Actual::Str(s) => format!("string {s:?}"),
        Actual::Seq => "an array".into(),
        Actual::Map => "a table".into(),
        other => other.to_string(),
    }
}

fn found_toml(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("datetime {d}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

/// First 10 hex digits of SHA-256 over the resolved TOML without the keys that never change
/// results (where results go, how many CPU threads compute them, how long ranks wait for each
/// other).
fn hash_of(config: &Config) -> Result<String, String> {
    let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
    if let Some(toml::Value::Table(e)) = table.get_mut("experiment") {
        e.remove("output");
    }
    if let Some(toml::Value::Table(d)) = table.get_mut("device") {
        d.remove("threads");
        d.remove("timeout_s");
    }
    let text = toml::to_string_pretty(&sorted(table)).map_err(|e| e.to_string())?;
    let digest = Sha256::digest(text.as_bytes());
    Ok(digest.iter().take(5).map(|b| format!("{b:02x}")).collect())
}

/// `table` with keys in sorted order at every level, so that the hash does not depend on
/// whether toml's map type keeps insertion order (its `preserve_order` feature).
fn sorted(table: toml::Table) -> toml::Table {
    let mut entries: Vec<(String, toml::Value)> = table.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::Table(t) => toml::Value::Table(sorted(t)),
                other => other,
            };
            (k, v)
        })
        .collect()
}

/// `path` made absolute against the current directory and normalised.
fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return normalize(path);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    normalize(&cwd.join(path))
}

/// Lexical normalisation: drops `.`, folds `..` into its parent (never above the root).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

/// Like [`normalize`] but for paths shown to the user, which may stay relative.
fn normalize_shown(path: &Path) -> PathBuf {
    let p = normalize(path);
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Space;
    use std::fs;
    use std::sync::Mutex;

    /// Serialises the tests that read the real process environment.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    const MINIMAL: &str = "[space]\nkind = \"nb201\"\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, text).unwrap();
        path
    }

    fn sets(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The one-line message of a failed load of `text` named `x.toml`.
    fn err_of(text: &str) -> String {
        match load_str(text, Path::new("x.toml"), &[]) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn nb201(c: &Config) -> &crate::config::Nb201Space {
        match &c.space {
            Space::Nb201(s) => s,
            other => panic!("expected an nb201 space, got {}", other.kind()),
        }
    }

    #[test]
    fn layer_precedence_default_base_file_env_set() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            "[space]\nkind = \"nb201\"\n[train]\nepochs = 10\nweight_decay = 1e-3\n\
             momentum = 0.8\nlearning_rate = 0.2\n",
        );
        let file = write(
            dir.path(),
            "x.toml",
            "extends = \"base.toml\"\n[train]\nweight_decay = 2e-3\nmomentum = 0.7\n\
             learning_rate = 0.3\n",
        );
        let vars = env(&[
            ("RUNNER_TRAIN__MOMENTUM", "0.6"),
            ("RUNNER_TRAIN__LEARNING_RATE", "0.4"),
            // CI variables without `__` are not runner's and must not be read as keys.
            ("RUNNER_TEMP", "/tmp"),
            ("RUNNER_OS", "Linux"),
            ("OTHER__THING", "1"),
        ]);
        let r = load_from(&file, None, &sets(&["train.learning_rate=0.5"]), &vars).unwrap();
        let t = &r.config.train;
        assert_eq!(r.config.data.batch_size, 256, "default");
        assert_eq!(t.epochs, 10, "base");
        assert_eq!(t.weight_decay, 2e-3, "file");
        assert_eq!(t.momentum, 0.6, "env");
        assert_eq!(t.learning_rate, 0.5, "--set");
        assert_eq!(r.config.extends, None);
        assert_eq!(r.file, file);
    }

    #[test]
    fn space_table_merges_with_the_defaults() {
        let r = load_str(
            "[space]\nkind = \"nb201\"\nchannels = 8\n",
            Path::new("x.toml"),
            &[],
        )
        .unwrap();
        let s = nb201(&r.config);
        assert_eq!((s.channels, s.cells_per_stage, s.bn_momentum), (8, 5, 0.1));
        // A --set inside the space table merges too.
        let r = load_str(
            MINIMAL,
            Path::new("x.toml"),
            &sets(&["space.cells_per_stage=2"]),
        )
        .unwrap();
        let s = nb201(&r.config);
        assert_eq!((s.channels, s.cells_per_stage), (16, 2));
    }

    #[test]
    fn set_values_are_toml_or_plain_strings() {
        // The file's array is replaced, not extended, by the --set one.
        let r = load_str(
            "[space]\nkind = \"nb201\"\n[data]\ntrain = [\"x.bin\"]\n",
            Path::new("/exp/x.toml"),
            &sets(&[
                "train.epochs=3",
                "data.root=\"/d/x y\"",
                "eval.ground_truth=gt/nb201.csv",
                "train.nesterov = false",
                "data.split=custom",
                "data.train=[\"a.bin\", \"b.bin\"]",
                "data.valid=['c.bin']",
            ]),
        )
        .unwrap();
        let c = &r.config;
        assert_eq!(c.train.epochs, 3);
        assert!(!c.train.nesterov);
        assert_eq!(c.data.root, PathBuf::from("/d/x y"));
        assert_eq!(c.eval.ground_truth, "/exp/gt/nb201.csv");
        assert_eq!(c.data.train, vec![PathBuf::from("a.bin"), "b.bin".into()]);
        assert_eq!(c.data.valid, vec![PathBuf::from("c.bin")]);
    }

    #[test]
    fn env_variables_from_the_process() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "x.toml", MINIMAL);
        let var = "RUNNER_EVAL__VALID_IMAGES";
        std::env::set_var(var, "123");
        let with = load(&file, &[]);
        std::env::set_var("RUNNER_EVAL__VALID_IMAGE", "1");
        let typo = load(&file, &[]);
        std::env::remove_var("RUNNER_EVAL__VALID_IMAGE");
        std::env::remove_var(var);
        let without = load(&file, &[]).unwrap();
        assert_eq!(with.unwrap().config.eval.valid_images, 123);
        assert_eq!(without.config.eval.valid_images, 0);
        assert_eq!(
            typo.map(|_| ()).map_err(|e| e.to_string()),
            Err(
                "environment variable RUNNER_EVAL__VALID_IMAGE: unknown key \
                 'eval.valid_image' (did you mean 'valid_images'?)"
                    .into()
            )
        );
    }

    #[test]
    fn paths_resolve_against_the_file_that_set_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = normalize(&fs::canonicalize(dir.path()).unwrap());
        write(
            &root,
            "bases/base.toml",
            "[space]\nkind = \"nb201\"\n[data]\nroot = \"../data/cifar\"\n\
             split_file = \"splits/s.txt\"\n[eval]\nground_truth = \"gt.csv\"\n",
        );
        let file = write(
            &root,
            "exp/sub/x.toml",
            "extends = \"../../bases/base.toml\"\n[experiment]\noutput = \"../out\"\n\
             [data]\nsplit = \"custom\"\ntrain = [\"a/train\"]\nvalid = [\"../v\"]\n",
        );
        let r = load_from(&file, None, &[], &[]).unwrap();
        let c = &r.config;
        assert_eq!(c.data.root, root.join("data/cifar"));
        assert_eq!(c.data.split_file, Some(root.join("bases/splits/s.txt")));
        assert_eq!(
            c.eval.ground_truth,
            root.join("bases/gt.csv").to_str().unwrap()
        );
        assert_eq!(c.experiment.output, root.join("exp/out"));
        // Custom split entries stay relative to data.root.
        assert_eq!(c.data.train, vec![PathBuf::from("a/train")]);
        assert_eq!(c.data.valid, vec![PathBuf::from("../v")]);

        // Defaults, environment and --set resolve against the experiment file's folder.
        let vars = env(&[("RUNNER_DATA__ROOT", "d/../e")]);
        let r = load_from(&file, None, &sets(&["eval.ground_truth=../g.csv"]), &vars).unwrap();
        assert_eq!(r.config.data.root, root.join("exp/sub/e"));
        assert_eq!(
            r.config.eval.ground_truth,
            root.join("exp/g.csv").to_str().unwrap()
        );
        let r = load_from(&root.join("bases/base.toml"), None, &[], &[]).unwrap();
        assert_eq!(r.config.experiment.output, root.join("bases/results"));
        // Absolute paths and the special ground-truth words stay as they are.
        let r = load_from(
            &file,
            None,
            &sets(&["experiment.output=/abs/./o/../p", "eval.ground_truth=none"]),
            &[],
        )
        .unwrap();
        assert_eq!(r.config.experiment.output, PathBuf::from("/abs/p"));
        assert_eq!(r.config.eval.ground_truth, "none");
    }

    #[test]
    fn relative_experiment_file_resolves_against_the_current_directory() {
        let r = load_str(MINIMAL, Path::new("experiments/x.toml"), &[]).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(r.file, cwd.join("experiments/x.toml"));
        assert_eq!(r.config.experiment.output, cwd.join("experiments/results"));
        assert_eq!(r.config.data.root, cwd.join("experiments/data/cifar10"));
    }

    #[test]
    fn extends_cycles_and_missing_bases() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = write(
            d,
            "a.toml",
            "extends = \"b.toml\"\n[space]\nkind = \"nb201\"\n",
        );
        write(d, "b.toml", "# base\nextends = \"./a.toml\"\n");
        let err = load_from(&a, None, &[], &[]).unwrap_err().to_string();
        let show = |n: &str| d.join(n).display().to_string();
        assert_eq!(
            err,
            format!(
                "{}:2: extends cycle: {} -> {} -> {}",
                show("b.toml"),
                show("a.toml"),
                show("b.toml"),
                show("a.toml")
            )
        );
        let own = write(d, "self.toml", "extends = \"self.toml\"\n");
        let err = load_from(&own, None, &[], &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{0}:1: extends cycle: {0} -> {0}", show("self.toml"))
        );
        let err = err_of("# x\n\nextends = \"bases/nope.toml\"\n[space]\nkind = \"nb201\"\n");
        assert_eq!(
            err,
            "x.toml:3: extends \"bases/nope.toml\": file not found (bases/nope.toml)"
        );
        let err = err_of("extends = 3\n");
        assert_eq!(
            err,
            "x.toml:1: extends: expected a string (a path relative to this file), \
             found integer 3"
        );
    }

    #[test]
    fn invalid_toml_names_line_and_column() {
        let err = err_of("[space]\nkind = \"nb201\"\n[train]\nepochs = = 3\n");
        assert!(err.starts_with("x.toml:4:"), "{err}");
        assert!(err.contains(": invalid TOML: "), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[train]\n    epochs = 3 4\n"),
            "x.toml:4:16: invalid TOML: expected newline, `#`"
        );
    }

    #[test]
    fn unknown_keys_and_sections_suggest_the_right_name() {
        let text = "[space]\nkind = \"nb201\"\n\n[train]\nepochs = 3\n\nlerning_rate = 0.1\n";
        assert_eq!(
            err_of(text),
            "x.toml:7: unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[trian]\nepochs = 3\n"),
            "x.toml:3: unknown section '[trian]' (did you mean '[train]'?)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[eval.bn_recalibraton]\nsteps = 3\n"),
            "x.toml:3: unknown section '[eval.bn_recalibraton]' \
             (did you mean '[eval.bn_recalibration]'?)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\nchanels = 3\n"),
            "x.toml:3: unknown key 'space.chanels' (did you mean 'channels'?)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[data]\nqwxz = 1\n"),
            "x.toml:4: unknown key 'data.qwxz'"
        );
        assert_eq!(
            err_of("train.epochs = 2\nspace.kind = \"nb201\"\ntrain.lerning_rate = 1\n"),
            "x.toml:3: unknown key 'train.lerning_rate' (did you mean 'learning_rate'?)"
        );
        assert_eq!(
            err_of("space = { kind = \"nb201\", chanels = 3 }\n"),
            "x.toml:1: unknown key 'space.chanels' (did you mean 'channels'?)"
        );
    }

    #[test]
    fn unknown_keys_name_the_layer_that_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "base.toml",
            "[space]\nkind = \"nb201\"\n[eval]\nevery = 5\nnum_arch = 3\n",
        );
        let x = write(d, "x.toml", "extends = \"base.toml\"\n");
        let err = load_from(&x, None, &[], &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:5: unknown key 'eval.num_arch' (did you mean 'num_archs'?)",
                d.join("base.toml").display()
            )
        );
        let err = load_str(
            MINIMAL,
            Path::new("x.toml"),
            &sets(&["train.lerning_rate=3"]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "--set train.lerning_rate=3: unknown key 'train.lerning_rate' \
             (did you mean 'learning_rate'?)"
        );
        let vars = env(&[("RUNNER_TRIAN__EPOCHS", "3")]);
        let err = load_from(Path::new("x.toml"), Some(MINIMAL), &[], &vars)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable RUNNER_TRIAN__EPOCHS: unknown section '[trian]' \
             (did you mean '[train]'?)"
        );
    }

    #[test]
    fn wrong_types_name_key_expectation_and_value() {
        let text = "[space]\nkind = \"nb201\"\n\n\n\n\n\n[train]\nepochs = \"ten\"\n";
        assert_eq!(
            err_of(text),
            "x.toml:9: train.epochs: expected an unsigned integer, found string \"ten\""
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[train]\nepochs = -3\n"),
            "x.toml:4: train.epochs: expected an unsigned integer, found integer -3"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[train]\nlearning_rate = \"fast\"\n"),
            "x.toml:4: train.learning_rate: expected a number, found string \"fast\""
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[data]\naugment = 1\n"),
            "x.toml:4: data.augment: expected a boolean, found integer 1"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\nchannels = 1.5\n"),
            "x.toml:3: space.channels: expected an unsigned integer, found float 1.5"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[data]\ntrain = \"a.bin\"\n"),
            "x.toml:4: data.train: expected an array, found string \"a.bin\""
        );
        assert_eq!(
            err_of("train = 3\n[space]\nkind = \"nb201\"\n"),
            "x.toml:1: train: expected a table, found integer 3"
        );
        assert_eq!(
            err_of("[space]\nkind = 201\n"),
            "x.toml:2: space.kind: expected a string, found integer 201"
        );
        // A choice-valued key says what to write, not the Rust type behind it.
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[device]\nconv_engine = 1\n"),
            "x.toml:4: device.conv_engine: expected a string (one of the key's names), found \
             integer 1"
        );
    }

    #[test]
    fn unknown_values_suggest_the_right_one() {
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[train]\noptimizer = \"adam\"\n"),
            "x.toml:4: train.optimizer: unknown value 'adam' (expected one of: sgd)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[data]\ndataset = \"cifar-100\"\n"),
            "x.toml:4: data.dataset: unknown value 'cifar-100' (expected one of: \
             cifar10, cifar100, imagenet16-120, ptb, imagenet) (did you mean 'cifar100'?)"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb210\"\n"),
            "x.toml:2: space.kind: unknown value 'nb210' (expected one of: nb101, nb201, \
             darts, ptb, proxyless) (did you mean 'nb201'?)"
        );
        assert_eq!(
            err_of("[train]\nepochs = 3\n"),
            "x.toml: space.kind is required (one of: nb101, nb201, darts, ptb, proxyless)"
        );
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["space.kind=nb2001"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--set space.kind=nb2001: space.kind: unknown value 'nb2001' \
             (expected one of: nb101, nb201, darts, ptb, proxyless) (did you mean 'nb201'?)"
        );
    }

    #[test]
    fn validation_names_the_file_and_line_that_set_the_value() {
        let text = "[space]\nkind = \"nb201\"\n[train]\nepochs = 3\nlearning_rate = -0.1\n";
        assert_eq!(
            err_of(text),
            "x.toml:5: train.learning_rate must be > 0 (got -0.1)"
        );
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["train.momentum=1"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--set train.momentum=1: train.momentum must be in [0, 1) (got 1)"
        );
        // The message is a ConfigError underneath, for callers that want to match on it.
        let err = load_str(text, Path::new("x.toml"), &[]).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ConfigError>(),
            Some(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn misplaced_values() {
        assert_eq!(
            err_of("space = \"nb201\"\n"),
            "x.toml:1: space: expected a table, found string \"nb201\""
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[eval]\nground_truth = \"\"\n"),
            "x.toml:4: eval.ground_truth must be \"auto\", \"none\" or a path (got \"\")"
        );
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["extends=b.toml"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--set extends=b.toml: extends can only be given in an experiment file"
        );
        assert_eq!(
            err_of("[space]\nkind = \"nb201\"\n[eval]\nbn_recalibration = [1, 2]\n"),
            "x.toml:4: eval.bn_recalibration: expected a table, found an array"
        );
        assert_eq!(
            err_of("experiment = []\n[space]\nkind = \"nb201\"\n"),
            "x.toml:1: experiment: expected a table, found an array"
        );
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["data.root="]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--set data.root=: data.root must not be empty");
        let vars = env(&[("RUNNER_EXTENDS__X", "b.toml")]);
        let err = load_from(Path::new("x.toml"), Some(MINIMAL), &[], &vars)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "environment variable RUNNER_EXTENDS__X: extends can only be given in an \
             experiment file"
        );
    }

    #[test]
    fn set_syntax_errors() {
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["train.epochs"]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--set train.epochs: expected key=value (e.g. train.epochs=3)"
        );
        let err = load_str(MINIMAL, Path::new("x.toml"), &sets(&["train..epochs=3"]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--set train..epochs=3: invalid key \"train..epochs\"");
    }

    #[test]
    fn intermediate_count_is_capped_in_the_resolved_config() {
        let r = load_str(
            "[space]\nkind = \"nb201\"\n[eval]\nnum_archs = 20\n",
            Path::new("x.toml"),
            &[],
        )
        .unwrap();
        assert_eq!(r.config.eval.num_archs_intermediate, 20);
        assert!(r.toml.contains("num_archs_intermediate = 20"), "{}", r.toml);
    }

    #[test]
    fn resolved_toml_round_trips() {
        let r = load_str(
            "[space]\nkind = \"nb201\"\n[data]\nsplit_file = \"s.txt\"\n[train]\nweight_decay = 3e-4\n",
            Path::new("/exp/x.toml"),
            &[],
        )
        .unwrap();
        let back: Config = toml::from_str(&r.toml).unwrap();
        assert_eq!(back, r.config);
        assert!(!r.toml.contains("extends"));
    }

    #[test]
    fn hash_ignores_output_and_threads_but_not_results() {
        let hash = |set: &[&str]| {
            load_str(MINIMAL, Path::new("/exp/x.toml"), &sets(set))
                .unwrap()
                .hash
        };
        let base = hash(&[]);
        assert_eq!(base.len(), 10);
        assert!(base.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hash(&["experiment.output=/elsewhere"]), base);
        assert_eq!(hash(&["device.threads=3"]), base);
        assert_eq!(hash(&["device.timeout_s=5"]), base);
        // Configs from before device.conv_engine existed keep their folders: `auto` is left out.
        assert_eq!(hash(&["device.conv_engine=auto"]), base);
        assert_ne!(hash(&["device.conv_engine=rust"]), base);
        // Setting a value to its default changes nothing.
        assert_eq!(hash(&["train.learning_rate=0.1"]), base);
        assert_ne!(hash(&["train.learning_rate=0.05"]), base);
        assert_ne!(hash(&["experiment.seed=1"]), base);
        assert_ne!(hash(&["space.channels=8"]), base);
    }

    #[test]
    fn run_folder_config_reloads_to_the_same_hash() {
        let _guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "base.toml", "[space]\nkind = \"nb201\"\nchannels = 8\n");
        let x = write(
            d,
            "x.toml",
            "extends = \"base.toml\"\n[data]\nroot = \"../data\"\n[eval]\nnum_archs = 10\n\
             ground_truth = \"gt.csv\"\n",
        );
        let first = load_from(&x, None, &sets(&["train.epochs=3"]), &[]).unwrap();
        let saved = write(d, "run/config.toml", &first.toml);
        let again = Resolved::from_toml_file(&saved).unwrap();
        assert_eq!(again.config, first.config);
        assert_eq!(again.hash, first.hash);
        assert_eq!(again.toml, first.toml);
        let via_load = load(&saved, &[]).unwrap();
        assert_eq!(via_load.hash, first.hash);
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../a")), PathBuf::from("/a"));
        assert_eq!(normalize(Path::new("a/../../b")), PathBuf::from("../b"));
        assert_eq!(normalize(Path::new("./a/")), PathBuf::from("a"));
    }
}
