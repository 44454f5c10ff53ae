//! The `resca` runtime: model selection, inputs, sampling jobs on a backend, reports and images.
//! The binary (`src/main.rs`) is a thin command-line layer over these modules.
//!
//! * [`pipeline`]: the device-generic pipeline (DiT forward, guidance, DDIM and flow sampling,
//!   every caching method) as a launch sequence over a [`pipeline::Device`];
//! * [`sim`]: the GPU-semantics simulator that runs the `resca-gpu-kernels` bodies on the CPU,
//!   and [`sim::SimDevice`], the pipeline's device on it;
//! * [`cuda`]: the same pipeline on a GPU ([`cuda::CudaDevice`], the committed PTX through the
//!   CUDA driver, loaded at run time).

pub mod canvas;
pub mod classifier;
pub mod compare;
pub mod cuda;
pub mod embedded;
pub mod figures;
pub mod inputs;
pub mod limits;
pub mod method_args;
pub mod metrics;
pub mod model_source;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod recording;
pub mod report;
pub mod run;
pub mod sim;
pub mod trajectories;
pub mod trajectory;
