//! Rust-CUDA entry points (feature `nvvm`): the same kernel bodies behind cuda_std-style
//! `#[kernel] pub unsafe fn` entry points with a [`ThreadCtx`] over cuda_std's thread, shared
//! memory and warp APIs, for `rustc_codegen_nvvm` / `cuda_builder` (see docs/gpu.md, "Rust-CUDA
//! (cuda_builder)"). Like the `nvptx` module's, the entry points are expanded from the
//! [kernel table](crate::table): same names, same parameters (those of `ptx/manifest.json`), so
//! the host launches either PTX the same way.
//!
//! What is verified here: with `--features nvvm` this module type-checks on the host against
//! crates.io `cuda_std` 0.2.2, whose GPU-only functions (`#[gpu_only]`) compile to
//! `unimplemented!` bodies off the GPU. What is not: NVVM code generation (the Rust-CUDA toolchain,
//! LLVM 7 with `rustc-dev`, was not available to build), so no PTX from this path has been
//! produced or run.
//!
//! Differences from the `nvptx` module that a user of this path should know: rustc_codegen_nvvm
//! contracts multiplies and adds into FMAs by default, so results differ from the simulator's in
//! the last bits (compare with tolerances), and shared memory comes from `shared_array!`.
//!
//! Safety contract of every entry point (as in the `nvptx` module): launched with the geometry of
//! the kernel's `*_dims` function, and every buffer valid for the element count it carries and
//! for the indices the kernel body computes from the scalar parameters.

// The contract above is the `# Safety` section of every entry point.
#![allow(clippy::missing_safety_doc)]

use cuda_std::{gpu_only, kernel, shared_array, thread};

use crate::global::{Global, GlobalMut};
use crate::thread::{SharedWord, ThreadCtx};

/// The hardware thread through cuda_std. Built only inside an entry point, with that kernel's
/// `shared_array!` buffer (or null for kernels without shared memory).
pub struct NvvmCtx {
    shared: *mut u32,
}

impl NvvmCtx {
    #[inline(always)]
    fn new(shared: *mut u32) -> Self {
        Self { shared }
    }
}

/// `shfl.sync.<mode>.b32` over the full warp (cuda_std 0.2.2 has no shuffle functions).
macro_rules! shuffle {
    ($name:ident, $mode:literal) => {
        #[gpu_only]
        #[inline(always)]
        fn $name(value: u32, operand: u32) -> u32 {
            let r: u32;
            unsafe {
                core::arch::asm!(
                    concat!("shfl.sync.", $mode, ".b32 {r}, {v}, {o}, 0x1f, 0xffffffff;"),
                    r = out(reg32) r,
                    v = in(reg32) value,
                    o = in(reg32) operand,
                )
            };
            r
        }
    };
}

/// `fma.rn.f32` (cuda_std 0.2.2's float functions go through libdevice, not named here).
#[gpu_only]
#[inline(always)]
fn fma_rn(a: f32, b: f32, c: f32) -> f32 {
    let r: u32;
    unsafe {
        core::arch::asm!(
            "fma.rn.f32 {r}, {a}, {b}, {c};",
            r = out(reg32) r,
            a = in(reg32) a.to_bits(),
            b = in(reg32) b.to_bits(),
            c = in(reg32) c.to_bits(),
        )
    };
    f32::from_bits(r)
}

shuffle!(shfl_bfly, "bfly");
shuffle!(shfl_down, "down");
shuffle!(shfl_idx, "idx");

impl ThreadCtx for NvvmCtx {
    #[inline(always)]
    fn thread_idx_x(&self) -> u32 {
        thread::thread_idx_x()
    }
    #[inline(always)]
    fn thread_idx_y(&self) -> u32 {
        thread::thread_idx_y()
    }
    #[inline(always)]
    fn thread_idx_z(&self) -> u32 {
        thread::thread_idx_z()
    }
    #[inline(always)]
    fn block_idx_x(&self) -> u32 {
        thread::block_idx_x()
    }
    #[inline(always)]
    fn block_idx_y(&self) -> u32 {
        thread::block_idx_y()
    }
    #[inline(always)]
    fn block_idx_z(&self) -> u32 {
        thread::block_idx_z()
    }
    #[inline(always)]
    fn block_dim_x(&self) -> u32 {
        thread::block_dim_x()
    }
    #[inline(always)]
    fn block_dim_y(&self) -> u32 {
        thread::block_dim_y()
    }
    #[inline(always)]
    fn block_dim_z(&self) -> u32 {
        thread::block_dim_z()
    }
    #[inline(always)]
    fn grid_dim_x(&self) -> u32 {
        thread::grid_dim_x()
    }
    #[inline(always)]
    fn grid_dim_y(&self) -> u32 {
        thread::grid_dim_y()
    }
    #[inline(always)]
    fn grid_dim_z(&self) -> u32 {
        thread::grid_dim_z()
    }

    #[inline(always)]
    fn sync_threads(&self) {
        thread::sync_threads()
    }

    #[inline(always)]
    fn fma(&self, a: f32, b: f32, c: f32) -> f32 {
        fma_rn(a, b, c)
    }

    #[inline(always)]
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        f32::from_bits(shfl_bfly(value.to_bits(), lane_mask))
    }

    #[inline(always)]
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        f32::from_bits(shfl_down(value.to_bits(), delta))
    }

    #[inline(always)]
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        f32::from_bits(shfl_idx(value.to_bits(), src_lane))
    }

    #[inline(always)]
    fn shared_load<T: SharedWord>(&self, index: usize) -> T {
        T::from_word(unsafe { *self.shared.add(index) })
    }

    #[inline(always)]
    fn shared_store<T: SharedWord>(&self, index: usize, value: T) {
        unsafe { *self.shared.add(index) = value.to_word() }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, buffer: Global<'_, T>, index: usize) -> T {
        unsafe { *buffer.as_ptr().add(index) }
    }

    #[inline(always)]
    fn store<T: Copy>(&self, buffer: GlobalMut<'_, T>, index: usize, value: T) {
        unsafe { *buffer.as_mut_ptr().add(index) = value }
    }
}

/// The context of an entry point: with its `shared_array!` buffer of `$module::$bytes` bytes, or
/// without shared memory.
macro_rules! entry_ctx {
    () => {
        NvvmCtx::new(core::ptr::null_mut())
    };
    ($module:ident :: $bytes:ident) => {
        NvvmCtx::new(shared_array![u32; crate::$module::$bytes as usize / 4])
    };
}

/// One `#[kernel]` entry point per kernel of the table, with the `nvptx` module's names and
/// parameters.
macro_rules! nvvm_entry_points {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, shared $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        $(
            $(#[$attr])*
            #[kernel]
            pub unsafe fn $name($($param: crate::__kernel_param!(type '_; $kind $(<$elem>)?)),*) {
                let ctx = entry_ctx!($($shared_module::$shared_bytes)?);
                crate::$module::$body $(::<$($generic),*>)? (&ctx, $($param),*);
            }
        )*

        /// The entry points of this module, in the order of [`KERNELS`](crate::KERNELS).
        pub const ENTRY_POINTS: &[&str] = &[$(stringify!($name)),*];
    };
}

crate::kernel_table!(nvvm_entry_points);
