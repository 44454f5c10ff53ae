//! The `resca` runtime: sampling jobs and forward passes on a backend, the device-generic
//! pipeline and its two devices, evaluation and figures. The binary (`src/main.rs`, `src/cli/`)
//! is a thin command-line layer over these modules. From the bottom layer up (each imports only
//! from the layers below it):
//!
//! * [`outputs`], [`limits`]: writing output files safely (destinations checked before a run,
//!   fresh exclusive temporary files, removal on signals) and the bounds on what a command line
//!   may ask for (samples, steps, memory); they import nothing from the layers above;
//! * [`pipeline`]: the device-generic pipeline (DiT forward, guidance, DDIM and flow sampling,
//!   every caching method) as a launch sequence over a [`pipeline::Device`];
//! * [`sim`]: the GPU-semantics simulator that runs the `resca-gpu-kernels` bodies on the CPU,
//!   and [`sim::SimDevice`], the pipeline's device on it;
//! * [`cuda`]: the pipeline's device on a GPU ([`cuda::CudaDevice`], the committed PTX through
//!   the CUDA driver, loaded at run time);
//! * [`inputs`], [`report`], [`job`]: a sampling job's inputs, its statistics, the job and its
//!   result;
//! * [`run`]: jobs on a backend (the reference, or the pipeline on the simulator or a GPU),
//!   through one backend switch;
//! * [`evaluation`]: metrics, the digit classifier, the comparison of every method, the token
//!   trajectories;
//! * [`figures`]: the raster, sample panels and trajectory plots the CLI writes;
//! * [`embedded`]: the default model and its classifier, built into the binary;
//! * [`plan`]: a method's step schedule and FLOPs without running the model.

pub mod cuda;
pub mod embedded;
pub mod evaluation;
pub mod figures;
pub mod inputs;
pub mod job;
pub mod limits;
pub mod outputs;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod run;
pub mod sim;
