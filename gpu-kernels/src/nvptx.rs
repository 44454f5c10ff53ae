//! The GPU side: [`NvptxCtx`] (special registers, `bar.sync`, `shfl.sync`, a per-kernel
//! `.shared` buffer through inline PTX) and one `#[no_mangle] unsafe extern "ptx-kernel"` entry
//! point per kernel of the [kernel table](crate::table), expanded from it. Entry points take only
//! `Copy` parameters and return nothing, as Rust-CUDA's `#[kernel]` requires, and do nothing but
//! build the context and call the kernel body.
//!
//! Safety contract of every entry point: launched with the geometry of the kernel's `*_dims`
//! function, and every buffer valid for the element count it carries and for the indices the
//! kernel body computes from the scalar parameters (the host simulator checks exactly this).

use core::arch::asm;
use core::arch::nvptx;

use crate::global::{Global, GlobalMut};
use crate::thread::{SharedWord, ThreadCtx};

/// The hardware thread. Built only inside an entry point, with that kernel's shared buffer.
pub struct NvptxCtx {
    shared: *mut u32,
}

impl NvptxCtx {
    /// # Safety
    /// `shared` is null (the kernel uses no shared memory) or the generic address of this
    /// kernel's `.shared` buffer.
    #[inline(always)]
    pub unsafe fn new(shared: *mut u32) -> Self {
        Self { shared }
    }
}

/// Declares a `.shared` buffer of `$bytes` bytes named `<$entry>_smem` (once per kernel: the
/// entry point is the only place that expands it) and yields its generic address.
macro_rules! shared_buffer {
    ($entry:ident, $bytes:expr) => {{
        let address: u64;
        // SAFETY: declares a buffer and converts its address; no memory is touched.
        unsafe {
            asm!(
                concat!(".shared .align 16 .b8 ", stringify!($entry), "_smem[{bytes}];"),
                concat!("cvta.shared.u64 {address}, ", stringify!($entry), "_smem;"),
                bytes = const $bytes,
                address = out(reg64) address,
            )
        };
        address as *mut u32
    }};
}

impl ThreadCtx for NvptxCtx {
    #[inline(always)]
    fn thread_idx_x(&self) -> u32 {
        unsafe { nvptx::_thread_idx_x() as u32 }
    }
    #[inline(always)]
    fn thread_idx_y(&self) -> u32 {
        unsafe { nvptx::_thread_idx_y() as u32 }
    }
    #[inline(always)]
    fn thread_idx_z(&self) -> u32 {
        unsafe { nvptx::_thread_idx_z() as u32 }
    }
    #[inline(always)]
    fn block_idx_x(&self) -> u32 {
        unsafe { nvptx::_block_idx_x() as u32 }
    }
    #[inline(always)]
    fn block_idx_y(&self) -> u32 {
        unsafe { nvptx::_block_idx_y() as u32 }
    }
    #[inline(always)]
    fn block_idx_z(&self) -> u32 {
        unsafe { nvptx::_block_idx_z() as u32 }
    }
    #[inline(always)]
    fn block_dim_x(&self) -> u32 {
        unsafe { nvptx::_block_dim_x() as u32 }
    }
    #[inline(always)]
    fn block_dim_y(&self) -> u32 {
        unsafe { nvptx::_block_dim_y() as u32 }
    }
    #[inline(always)]
    fn block_dim_z(&self) -> u32 {
        unsafe { nvptx::_block_dim_z() as u32 }
    }
    #[inline(always)]
    fn grid_dim_x(&self) -> u32 {
        unsafe { nvptx::_grid_dim_x() as u32 }
    }
    #[inline(always)]
    fn grid_dim_y(&self) -> u32 {
        unsafe { nvptx::_grid_dim_y() as u32 }
    }
    #[inline(always)]
    fn grid_dim_z(&self) -> u32 {
        unsafe { nvptx::_grid_dim_z() as u32 }
    }

    #[inline(always)]
    fn sync_threads(&self) {
        unsafe { nvptx::_syncthreads() }
    }

    #[inline(always)]
    fn fma(&self, a: f32, b: f32, c: f32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "fma.rn.f32 {r}, {a}, {b}, {c};",
                r = out(reg32) r,
                a = in(reg32) a.to_bits(),
                b = in(reg32) b.to_bits(),
                c = in(reg32) c.to_bits(),
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.bfly.b32 {r}, {v}, {m}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                m = in(reg32) lane_mask,
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.down.b32 {r}, {v}, {d}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                d = in(reg32) delta,
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.idx.b32 {r}, {v}, {l}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                l = in(reg32) src_lane,
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shared_load<T: SharedWord>(&self, index: usize) -> T {
        T::from_word(unsafe { *self.shared.add(index) })
    }

    #[inline(always)]
    fn shared_load4(&self, index: usize) -> [f32; 4] {
        let (x, y, z, w): (u32, u32, u32, u32);
        // SAFETY: the caller's index is in this kernel's shared buffer and a multiple of 4; the
        // buffer is 16-byte aligned, so the vector load is aligned. The generic address is
        // turned back into a shared-window one so that ptxas emits LDS.128.
        unsafe {
            asm!(
                "{{",
                ".reg .u64 %shared_addr;",
                "cvta.to.shared.u64 %shared_addr, {p};",
                "ld.shared.v4.f32 {{{x}, {y}, {z}, {w}}}, [%shared_addr];",
                "}}",
                p = in(reg64) self.shared.add(index),
                x = out(reg32) x,
                y = out(reg32) y,
                z = out(reg32) z,
                w = out(reg32) w,
                options(readonly, nostack, preserves_flags),
            )
        };
        [
            f32::from_bits(x),
            f32::from_bits(y),
            f32::from_bits(z),
            f32::from_bits(w),
        ]
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

/// A context for kernels without shared memory.
#[inline(always)]
fn no_shared() -> NvptxCtx {
    // SAFETY: such kernels never touch shared memory.
    unsafe { NvptxCtx::new(core::ptr::null_mut()) }
}

/// The context of entry point `$name`: with its `.shared` buffer of `$module::$bytes` bytes, or
/// without shared memory.
macro_rules! entry_ctx {
    ($name:ident) => {
        no_shared()
    };
    ($name:ident, $module:ident :: $bytes:ident) => {{
        let shared = shared_buffer!($name, crate::$module::$bytes);
        // SAFETY: `shared` is this entry point's own `.shared` buffer.
        unsafe { NvptxCtx::new(shared) }
    }};
}

/// One entry point per kernel of the table: build the context, call the body.
macro_rules! nvptx_entry_points {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, shared $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        $(
            $(#[$attr])*
            #[unsafe(no_mangle)]
            pub unsafe extern "ptx-kernel" fn $name($($param: crate::__kernel_param!(type '_; $kind $(<$elem>)?)),*) {
                let ctx = entry_ctx!($name $(, $shared_module::$shared_bytes)?);
                crate::$module::$body $(::<$($generic),*>)? (&ctx, $($param),*);
            }
        )*
    };
}

crate::kernel_table!(nvptx_entry_points);
