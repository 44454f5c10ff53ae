//! The judge of the kernels' mutation testing (`scripts/mutants.sh kernels`): every simulator
//! test of the kernels, each file a module of this one binary, so that a mutant of
//! `gpu-kernels/` costs one test link instead of nine. Not built by a plain `cargo test` (it
//! would run every test twice); `cargo test -p resca-host --test mutants_judge` runs it.

mod support;

#[path = "sim_attention.rs"]
mod sim_attention;
#[path = "sim_attention_tc.rs"]
mod sim_attention_tc;
#[path = "sim_cache_kernels.rs"]
mod sim_cache_kernels;
#[path = "sim_checks.rs"]
mod sim_checks;
#[path = "sim_forward.rs"]
mod sim_forward;
#[path = "sim_gemm.rs"]
mod sim_gemm;
#[path = "sim_kernels.rs"]
mod sim_kernels;
#[path = "sim_largest_shapes.rs"]
mod sim_largest_shapes;
#[path = "sim_methods.rs"]
mod sim_methods;
#[path = "sim_precision.rs"]
mod sim_precision;
#[path = "sim_tensor_cores.rs"]
mod sim_tensor_cores;
