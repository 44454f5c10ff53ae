//! Typed errors of the reference crate. Every variant names the offending file, tensor, flag or
//! value, so the CLI can print it as is.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or running it on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {kind}, not a regular file; give the path of a file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: cannot read tensor `{name}`: {reason}")]
    TensorRead {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("{path}: tensor `{name}` has shape {shape:?}: it is 0-dimensional or empty, and values are expected here")]
    EmptyTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path} is not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path} is not a PyTorch checkpoint that can be read: {reason}")]
    NotTorchCheckpoint { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {found}, expected {expected}")]
    WrongDtype {
        path: PathBuf,
        name: String,
        found: String,
        expected: String,
    },
    #[error("{what} contains a non-finite value (NaN or infinity) at flat index {index}")]
    NonFinite { what: String, index: usize },
    /// A run produced NaN or infinity: where it first appeared and what to check.
    #[error("{0}")]
    Diverged(String),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("invalid caching setting: {0}")]
    Cache(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fails with [`Error::NonFinite`] if any value of `values` is NaN or infinite.
pub fn check_finite<'a>(what: &str, values: impl IntoIterator<Item = &'a f32>) -> Result<()> {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: what.to_string(),
            index,
        }),
        None => Ok(()),
    }
}
