//! Configuration errors: each one line naming where the offending value came from.

use std::fmt;
use std::path::PathBuf;

/// Where a value (or a problem) came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// A TOML file, as the user named it (or as an `extends` chain reached it), with the line
    /// (and column) when known.
    File {
        path: PathBuf,
        line: Option<usize>,
        col: Option<usize>,
    },
    /// An environment variable `RUNNER_<SECTION>__<KEY>`.
    Env { var: String },
    /// A `--set key=value` argument, verbatim.
    Set { arg: String },
    /// The space's built-in defaults.
    Defaults { kind: String },
}

impl Place {
    pub fn file(path: impl Into<PathBuf>, line: Option<usize>) -> Place {
        Place::File {
            path: path.into(),
            line,
            col: None,
        }
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File { path, line, col } => {
                write!(f, "{}", path.display())?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                    if let Some(col) = col {
                        write!(f, ":{col}")?;
                    }
                }
                Ok(())
            }
            Place::Env { var } => write!(f, "environment variable {var}"),
            Place::Set { arg } => write!(f, "--set {arg}"),
            Place::Defaults { kind } => write!(f, "built-in defaults ({kind})"),
        }
    }
}

/// A configuration error. Its `Display` is a single line:
/// `<place>: <what is wrong with which dotted key>[ (did you mean '...'?)]`.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{at}: invalid TOML: {message}")]
    InvalidToml { at: Place, message: String },

    #[error("{at}: cannot read: {message}")]
    Io { at: Place, message: String },

    #[error("{at}: unknown key '{key}'{hint}")]
    UnknownKey {
        at: Place,
        key: String,
        /// ` (did you mean 'x'?)` or empty.
        hint: String,
    },

    #[error("{at}: unknown section '[{section}]'{hint}")]
    UnknownSection {
        at: Place,
        section: String,
        hint: String,
    },

    #[error("{at}: {key}: expected {expected}, found {found}")]
    WrongType {
        at: Place,
        key: String,
        expected: String,
        found: String,
    },

    #[error("{at}: {key}: unknown value '{value}' (expected one of: {expected}){hint}")]
    UnknownValue {
        at: Place,
        key: String,
        value: String,
        expected: String,
        hint: String,
    },

    /// `extends` chain problems (missing base, cycle, wrong type).
    #[error("{at}: {message}")]
    Extends { at: Place, message: String },

    /// A value that parses but is out of range or inconsistent.
    #[error("{at}: {message}")]
    Invalid { at: Place, message: String },

    /// Problems with the command line or environment syntax itself.
    #[error("{at}: {message}")]
    Syntax { at: Place, message: String },
}

/// `toml`'s error message condensed to one line.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_render_as_prefixes() {
        let p = Place::File {
            path: "experiments/x.toml".into(),
            line: Some(12),
            col: Some(5),
        };
        assert_eq!(p.to_string(), "experiments/x.toml:12:5");
        assert_eq!(Place::file("x.toml", Some(3)).to_string(), "x.toml:3");
        assert_eq!(Place::file("x.toml", None).to_string(), "x.toml");
        let env = Place::Env {
            var: "RUNNER_TRAIN__EPOCHS".into(),
        };
        assert_eq!(env.to_string(), "environment variable RUNNER_TRAIN__EPOCHS");
        let set = Place::Set {
            arg: "train.epochs=3".into(),
        };
        assert_eq!(set.to_string(), "--set train.epochs=3");
    }

    #[test]
    fn messages_are_condensed_to_one_line() {
        assert_eq!(
            one_line("invalid string\n  expected `\"`\n\n"),
            "invalid string; expected `\"`"
        );
    }
}
