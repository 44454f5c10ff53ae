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

use cuda_std::{gpu_only, kernel, shared, shared_array, thread};

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

    /// The shared-window byte address of shared word `index`.
    #[inline(always)]
    fn window(&self, index: usize) -> u32 {
        shared_window(self.shared) + 4 * index as u32
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

/// `cvt.rna.tf32.f32`.
#[gpu_only]
#[inline(always)]
fn cvt_tf32(x: u32) -> u32 {
    let r: u32;
    unsafe { core::arch::asm!("cvt.rna.tf32.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x) };
    r
}

/// `cvt.rn.bf16x2.f32` (the first source goes to the upper half).
#[gpu_only]
#[inline(always)]
fn cvt_bf16x2(lo: u32, hi: u32) -> u32 {
    let r: u32;
    unsafe {
        core::arch::asm!("cvt.rn.bf16x2.f32 {r}, {hi}, {lo};", r = out(reg32) r, hi = in(reg32) hi, lo = in(reg32) lo)
    };
    r
}

/// `mma.sync.aligned.<shape>.row.col.f32.<type>.<type>.f32`.
macro_rules! mma {
    ($name:ident, $shape_types:literal) => {
        #[gpu_only]
        #[inline(always)]
        fn $name(a: [u32; 4], b: [u32; 2], c: [u32; 4]) -> [u32; 4] {
            let (d0, d1, d2, d3): (u32, u32, u32, u32);
            unsafe {
                core::arch::asm!(
                    concat!("mma.sync.aligned.", $shape_types, " {{{d0}, {d1}, {d2}, {d3}}}, ",
                        "{{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};"),
                    d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
                    a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                    b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                    c0 = in(reg32) c[0], c1 = in(reg32) c[1], c2 = in(reg32) c[2], c3 = in(reg32) c[3],
                )
            };
            [d0, d1, d2, d3]
        }
    };
}

mma!(mma_tf32, "m16n8k8.row.col.f32.tf32.tf32.f32");
mma!(mma_bf16, "m16n8k16.row.col.f32.bf16.bf16.f32");

/// The shared-window address of a generic pointer into shared memory.
#[gpu_only]
#[inline(always)]
fn shared_window(p: *mut u32) -> u32 {
    let r: u64;
    unsafe { core::arch::asm!("cvta.to.shared.u64 {r}, {p};", r = out(reg64) r, p = in(reg64) p) };
    r as u32
}

/// `ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16` (x1 and x2 take the first registers of x4
/// with the same row addresses: the unused lanes' addresses are then read too, so they are
/// given separate instructions).
macro_rules! ldmatrix {
    ($name:ident, $shape:literal, $n:literal, $($r:ident),+) => {
        #[gpu_only]
        #[inline(always)]
        fn $name(address: u32) -> [u32; $n] {
            $(let $r: u32;)+
            unsafe {
                core::arch::asm!(
                    concat!("ldmatrix.sync.aligned.m8n8.", $shape, ".shared.b16 {{", ldmatrix!(@list $($r),+), "}}, [{p}];"),
                    $($r = out(reg32) $r,)+
                    p = in(reg32) address,
                )
            };
            [$($r),+]
        }
    };
    (@list $a:ident) => { "{a}" };
    (@list $a:ident, $b:ident) => { "{a}, {b}" };
    (@list $a:ident, $b:ident, $c:ident, $d:ident) => { "{a}, {b}, {c}, {d}" };
}

ldmatrix!(ldmatrix_x1_b16, "x1", 1, a);
ldmatrix!(ldmatrix_x2_b16, "x2", 2, a, b);
ldmatrix!(ldmatrix_x4_b16, "x4", 4, a, b, c, d);
ldmatrix!(ldmatrix_x4_trans_b16, "x4.trans", 4, a, b, c, d);

/// `cp.async` of 4, 8 or 16 bytes (`src_bytes` of them read, the rest zero-filled).
#[gpu_only]
#[inline(always)]
fn cp_async_bytes(dst: u32, src: u64, words: u32, src_bytes: u32) {
    unsafe {
        match words {
            1 => {
                core::arch::asm!("cp.async.ca.shared.global [{d}], [{s}], 4, {n};", d = in(reg32) dst, s = in(reg64) src, n = in(reg32) src_bytes)
            }
            2 => {
                core::arch::asm!("cp.async.ca.shared.global [{d}], [{s}], 8, {n};", d = in(reg32) dst, s = in(reg64) src, n = in(reg32) src_bytes)
            }
            _ => {
                core::arch::asm!("cp.async.cg.shared.global [{d}], [{s}], 16, {n};", d = in(reg32) dst, s = in(reg64) src, n = in(reg32) src_bytes)
            }
        }
    }
}

#[gpu_only]
#[inline(always)]
fn cp_async_commit_group() {
    unsafe { core::arch::asm!("cp.async.commit_group;") };
}

#[gpu_only]
#[inline(always)]
fn cp_async_wait_group(pending: u32) {
    unsafe {
        match pending {
            1 => core::arch::asm!("cp.async.wait_group 1;"),
            2 => core::arch::asm!("cp.async.wait_group 2;"),
            3 => core::arch::asm!("cp.async.wait_group 3;"),
            _ => core::arch::asm!("cp.async.wait_group 0;"),
        }
    }
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
    fn tf32(&self, x: f32) -> f32 {
        f32::from_bits(cvt_tf32(x.to_bits()))
    }

    #[inline(always)]
    fn bf16x2(&self, lo: f32, hi: f32) -> u32 {
        cvt_bf16x2(lo.to_bits(), hi.to_bits())
    }

    #[inline(always)]
    fn mma_tf32_m16n8k8(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        mma_tf32(a, b, c.map(f32::to_bits)).map(f32::from_bits)
    }

    #[inline(always)]
    fn mma_bf16_m16n8k16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        mma_bf16(a, b, c.map(f32::to_bits)).map(f32::from_bits)
    }

    #[inline(always)]
    fn ldmatrix_x1(&self, row: usize) -> u32 {
        ldmatrix_x1_b16(self.window(row))[0]
    }

    #[inline(always)]
    fn ldmatrix_x2(&self, row: usize) -> [u32; 2] {
        ldmatrix_x2_b16(self.window(row))
    }

    #[inline(always)]
    fn ldmatrix_x4(&self, row: usize) -> [u32; 4] {
        ldmatrix_x4_b16(self.window(row))
    }

    #[inline(always)]
    fn ldmatrix_x4_trans(&self, row: usize) -> [u32; 4] {
        ldmatrix_x4_trans_b16(self.window(row))
    }

    #[inline(always)]
    fn cp_async<T: SharedWord>(&self, dst: usize, src: Global<'_, T>, index: usize, words: u32, read: bool) {
        let s = unsafe { src.as_ptr().add(index) } as u64;
        cp_async_bytes(self.window(dst), s, words, if read { 4 * words } else { 0 })
    }

    #[inline(always)]
    fn cp_async_commit(&self) {
        cp_async_commit_group()
    }

    #[inline(always)]
    fn cp_async_wait(&self, pending: u32) {
        cp_async_wait_group(pending)
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

/// The context of an entry point: with its `shared_array!` buffer of `$module::$bytes` bytes,
/// with the dynamic shared memory, or without shared memory.
macro_rules! entry_ctx {
    () => {
        NvvmCtx::new(core::ptr::null_mut())
    };
    (shared $module:ident :: $bytes:ident) => {
        NvvmCtx::new(shared_array![u32; crate::$module::$bytes as usize / 4])
    };
    (dynamic_shared $module:ident :: $bytes:ident) => {
        NvvmCtx::new(shared::dynamic_shared_mem::<u32>())
    };
}

/// One `#[kernel]` entry point per kernel of the table, with the `nvptx` module's names and
/// parameters.
macro_rules! nvvm_entry_points {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, $shared_kind:ident $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        $(
            $(#[$attr])*
            #[kernel]
            pub unsafe fn $name($($param: crate::__kernel_param!(type '_; $kind $(<$elem>)?)),*) {
                let ctx = entry_ctx!($($shared_kind $shared_module::$shared_bytes)?);
                crate::$module::$body $(::<$($generic),*>)? (&ctx, $($param),*);
            }
        )*

        /// The entry points of this module, in the order of [`KERNELS`](crate::KERNELS).
        pub const ENTRY_POINTS: &[&str] = &[$(stringify!($name)),*];
    };
}

crate::kernel_table!(nvvm_entry_points);
