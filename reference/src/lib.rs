//! Pure-ndarray CPU reference of DiT and of the ResCa caching methods: the oracle the GPU kernels
//! are checked against, and the engine of CPU runs. See docs/algorithms.md for the exact
//! algorithms.

// Links OpenBLAS, which ndarray's `blas` feature calls for every large matrix product.
extern crate blas_src;

pub mod cache;
pub mod calibration;
pub mod config;
pub mod ddim;
pub mod error;
pub mod flops;
pub mod flow;
pub mod gemm;
pub mod lanes_gemm;
pub mod memory;
pub mod model;
pub mod ops;
pub mod parallel;
pub mod safetensors_file;
pub mod sampler;
pub mod torch_file;
pub mod vae;
pub mod weights;

pub use config::DitConfig;
pub use error::{Error, Result};
pub use model::{Branch, BranchHook, BranchInput, Dit, FullCompute};
pub use sampler::{Sampler, StepHook, StepInfo, Trajectory, sample};
