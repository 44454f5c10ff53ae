//! GPU kernels of the ResCa pipeline, written once in `#![no_std]` Rust and compiled three ways:
//! to PTX with rustc's `nvptx64-nvidia-cuda` target (see `scripts/build-ptx.sh`), through
//! Rust-CUDA's `cuda_builder` (feature `nvvm`), and for the host, where `resca-host`'s simulator
//! runs every thread of a block with real barrier semantics and checks every memory access.
//!
//! Every kernel body is a generic function over a [`ThreadCtx`] (thread and block indices,
//! `sync_threads`, shared memory, warp shuffles: cuda_std's names) that takes its buffers as
//! [`Global`] / [`GlobalMut`] (pointer + length). Every kernel is declared once, in the kernel
//! table ([`table`]: name, parameters, body, shared memory), from which the entry points, the
//! [`Kernel`] enum and the host's launch checks and simulator dispatch are expanded. Under
//! `target_arch = "nvptx64"` the `nvptx` module holds one `#[no_mangle] unsafe extern
//! "ptx-kernel"` entry point per kernel that builds the hardware context and calls the body.
//! Each kernel module exports its launch geometry ([`LaunchDims`]) so that every backend launches
//! it the same way.
//!
//! No allocation, no `std`, no panics on the GPU path: math functions live in [`math`].
//!
//! The kernels, by module (each documents its thread mapping):
//! * DiT forward: [`embed`] (timestep features, adaLN/t-embedder GEMV, label embedding, patch
//!   embedding), [`norm`] (LayerNorm + modulate), [`gemm`] (tiled GEMM with bias, GELU and gated
//!   residual epilogues), [`gemm_tiled`] (the exact FMA GEMM family with the same epilogues:
//!   128 x 128 and 64 x 64 register tiles, split-K for few rows), [`attention`], [`final_layer`] (unpatchify), [`residual`] (gated add);
//! * samplers: [`guidance`] (CFG mix), [`ddim`] (DDIM step), [`flow`] (flow Euler step);
//! * caching: [`taylor`] (Taylor-cache update and prediction, fused with the gated add),
//!   [`tetc`] (row normalisation, similarity, EMA, K-medoids assignment and medoid update,
//!   `center-random` proxies), [`pdds`] (proxy residuals and the implicit IE / IT / BDF2 update
//!   with its confidence), [`gather`] (gather / scatter of token rows), [`clusters`] (cluster
//!   sizes and ranked members), [`clusca`] (L1 K-means, centroid commit, propagation).
//!
//! Kernels that decide a discrete result (labels, medoids, proxies) or that must reproduce the
//! reference bit for bit (Taylor caches, EMA, ClusCa) run the reference's float operations in
//! its order, one sequential loop per thread where the reference sums sequentially; the host
//! drives the iterative algorithms (K-medoids, K-means) and supplies the random numbers.

#![no_std]
// Kernels take each buffer and size as its own parameter, as CUDA entry points do.
#![allow(clippy::too_many_arguments)]
#![cfg_attr(
    all(target_arch = "nvptx64", not(feature = "nvvm")),
    feature(abi_ptx, stdarch_nvptx, asm_experimental_arch)
)]
#![cfg_attr(all(target_arch = "nvptx64", feature = "nvvm"), feature(asm_experimental_arch))]

pub mod attention;
pub mod attention_tc;
pub mod clusca;
pub mod clusters;
pub mod ddim;
pub mod embed;
pub mod final_layer;
pub mod flow;
pub mod gather;
pub mod gemm;
pub mod gemm_tc;
pub mod gemm_tiled;
pub mod global;
pub mod guidance;
pub mod math;
pub mod norm;
pub mod pdds;
#[cfg(not(target_arch = "nvptx64"))]
pub mod ptx;
pub mod reduce;
pub mod residual;
pub mod table;
pub mod taylor;
pub mod tetc;
pub mod thread;

// rustc's own nvptx64 target (scripts/build-ptx.sh). Under Rust-CUDA's cuda_builder the target
// is nvptx64 too; the `nvvm` feature selects the cuda_std entry points instead.
#[cfg(all(target_arch = "nvptx64", not(feature = "nvvm")))]
pub mod nvptx;
#[cfg(feature = "nvvm")]
pub mod nvvm;

pub use global::{Global, GlobalMut};
pub use table::{ArgSource, BoundKernel, BufferElement, DType, KERNELS, Kernel, Param, ParamKind};
pub use thread::{Dim3, LaunchDims, SharedWord, ThreadCtx, WARP_SIZE};
