//! Shared helpers of the workspace-level tests: where the reference vectors live and how to
//! measure the distance between two tensors.

use std::path::PathBuf;

use ndarray::{ArrayD, ArrayViewD};
use resca_reference::safetensors_file::SafetensorsFile;

pub mod golden;

/// `tests/vectors/tiny`: tensors from the official PyTorch code (a copy of `../shared/vectors`).
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

/// Largest absolute elementwise difference (shapes must match).
pub fn max_abs_diff(a: ArrayViewD<f32>, b: ArrayViewD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Largest absolute difference divided by the largest magnitude of the expected tensor: the
/// measure the vectors' README prescribes for trajectories whose scale grows to ~800.
pub fn max_rel_to_max(actual: ArrayViewD<f32>, expected: ArrayViewD<f32>) -> f32 {
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    max_abs_diff(actual, expected) / scale
}

/// The labels of a vectors file as the model's `usize` labels.
pub fn labels(file: &SafetensorsFile, name: &str) -> Vec<usize> {
    file.read_i64(name).unwrap().iter().map(|&v| v as usize).collect()
}

/// Timesteps of a vectors file as the model's f32 time inputs.
pub fn timesteps(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    file.read_i64(name).unwrap().iter().map(|&v| v as f32).collect()
}
