//! Configuration errors a user can act on: each names the file, the line and column, the key, and what is valid.

use std::fmt;
use std::path::PathBuf;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in: `cluster.toml` or a `profile.toml`.
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value, when it could be located.
    pub line: Option<usize>,
    /// 1-based column of the offending key or value, with `line`.
    pub column: Option<usize>,
    /// The dotted key, e.g. `machines[2].mac`.
    pub key: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// Everything wrong with a configuration, all at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read (missing, unreadable); pass `--config <file>` to name another one.
    #[error(
        "cannot read {path}: {source}; pass --config <file> to name another cluster description"
    )]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The operating system's error (shared, so the error can be cloned).
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
    /// The file was read but is not valid: every problem found, in one list; fix them and run `imgbuild check`.
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 1-based line and column of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}
