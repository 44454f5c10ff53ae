//! The `resca` runtime: model selection, inputs, sampling jobs on a backend, reports and images.
//! The binary (`src/main.rs`) is a thin command-line layer over these modules.
//!
//! * [`sim`]: the GPU-semantics simulator that runs the `resca-gpu-kernels` bodies on the CPU,
//!   the host-side launch of every kernel, and the DiT forward / DDIM sampling on kernels alone.

pub mod canvas;
pub mod classifier;
pub mod compare;
pub mod embedded;
pub mod figures;
pub mod inputs;
pub mod method_args;
pub mod metrics;
pub mod model_source;
pub mod plan;
pub mod report;
pub mod run;
pub mod sim;
pub mod trajectory;
pub mod recording;
