//! The runtime behind the `resca` CLI.
//!
//! * [`sim`]: the GPU-semantics simulator that runs the `resca-gpu-kernels` bodies on the CPU,
//!   the host-side launch of every kernel, and the DiT forward / DDIM sampling on kernels alone.

pub mod sim;
