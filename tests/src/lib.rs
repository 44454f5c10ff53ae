//! Shared helpers of the workspace-level tests: where the reference vectors live, how to
//! measure the distance between two tensors ([`compare`]) and the property tests' fixed seed
//! ([`proptest_seed`]), the last two shared by every crate's tests.

pub mod compare;
pub mod proptest_seed;

pub use compare::{Tensor, max_abs_diff, max_abs_diff_matching_non_finite, max_rel_to_max};
pub use proptest_seed::{PROPTEST_SEED, proptest_config};

use std::path::PathBuf;

use ndarray::ArrayD;
use resca_reference::safetensors_file::SafetensorsFile;

pub mod golden;

/// `tests/vectors/tiny`: tensors from the official PyTorch code (see `tests/vectors/README.md`).
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors").join("tiny")
}

/// Opens one file of the reference vectors.
pub fn vectors(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(vectors_dir().join(name)).unwrap_or_else(|e| panic!("reference vectors: {e}"))
}

/// Reads an f32 tensor of a vectors file.
pub fn tensor(file: &SafetensorsFile, name: &str) -> ArrayD<f32> {
    file.read_f32(name).unwrap_or_else(|e| panic!("{e}"))
}

/// The labels of a vectors file as the model's `usize` labels.
pub fn labels(file: &SafetensorsFile, name: &str) -> Vec<usize> {
    file.read_i64(name).unwrap().iter().map(|&v| v as usize).collect()
}

/// Timesteps of a vectors file as the model's f32 time inputs.
pub fn timesteps(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.read_i64(name).unwrap().iter().map(|&v| v as f32).collect()
}
