//! `libresca`: the C interface of resca, for C, C++ and Python hosts (header
//! `capi/include/resca.h`, generated from this crate; docs/linking.md says how to link it).
//!
//! * GPU ([`gpu`]): the committed PTX kernels loaded into a CUDA context the host owns, and any
//!   kernel of the table launched on the host's stream with the host's device pointers and
//!   sizes, the launch geometry computed by the same launch functions the Rust backends use
//!   (`resca_gpu_open`, `resca_gpu_launch`, `resca_gpu_close`).
//! * Kernels without a GPU ([`kernels`]): the same launches on the CPU simulator over host memory
//!   (`resca_sim_launch`), and the geometry alone (`resca_launch_dims`).
//! * CPU reference ([`cpu`]): a DiT from a safetensors file or the embedded default model, its
//!   forward pass and sampling (full compute, ResCa and the other caching methods).
//!
//! Conventions of every entry point:
//! * it returns a [`RescaStatus`] (`RESCA_STATUS_OK` = 0) and, on failure, leaves a message for
//!   the calling thread (`resca_last_error`); nothing panics across the boundary: every entry
//!   that can fail runs under `catch_unwind` (a bug is `RESCA_STATUS_INTERNAL`), the others
//!   (versions, names, defaults) cannot panic;
//! * null pointers, lengths that do not match the sizes and unknown names are refused with a
//!   message; lengths are in elements;
//! * ownership is stated per function: handles (`RescaModel`, `RescaGpu`) belong to the host
//!   from the call that makes them until it releases them; every other pointer stays the
//!   host's and is not kept after the call.
//!
//! Versions: `RESCA_API_VERSION` (the header's) must equal `resca_api_version()` (the
//! library's); it changes whenever a declaration of the header changes incompatibly.

pub mod cpu;
pub mod error;
pub mod gpu;
pub mod kernels;
pub mod reference;

use std::ffi::c_char;

pub use error::RescaStatus;

/// The interface version of this header; compare it with `resca_api_version()` at startup.
pub const RESCA_API_VERSION: u32 = 1;

/// The interface version of the library (equal to the header's `RESCA_API_VERSION` when both
/// come from the same build).
#[unsafe(no_mangle)]
pub extern "C" fn resca_api_version() -> u32 {
    RESCA_API_VERSION
}

/// The library's version, `"0.1.0"` (the workspace's), a static string (never free it).
#[unsafe(no_mangle)]
pub extern "C" fn resca_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The number of kernels in the table (`resca_kernel_name` for each).
#[unsafe(no_mangle)]
pub extern "C" fn resca_kernel_count() -> usize {
    resca_host::pipeline::Kernel::ALL.len()
}

/// The PTX entry name of kernel `index` (0 .. `resca_kernel_count()`), a static string, or null
/// past the end.
#[unsafe(no_mangle)]
pub extern "C" fn resca_kernel_name(index: usize) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<std::ffi::CString>> = std::sync::OnceLock::new();
    std::panic::catch_unwind(|| {
        let names = NAMES.get_or_init(|| {
            resca_host::pipeline::Kernel::ALL
                .iter()
                .map(|k| std::ffi::CString::new(k.name()).expect("kernel names have no NUL"))
                .collect()
        });
        names.get(index).map_or(std::ptr::null(), |n| n.as_ptr())
    })
    .unwrap_or(std::ptr::null())
}
