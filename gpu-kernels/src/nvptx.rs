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
    /// Generic address of the shared buffer (plain loads and stores).
    shared: *mut u32,
    /// The same buffer's address in the shared window (`ldmatrix`, `cp.async`).
    shared_window: u32,
}

impl NvptxCtx {
    /// # Safety
    /// `shared` is null (the kernel uses no shared memory) or the generic address of this
    /// kernel's shared buffer, and `shared_window` that buffer's shared-window address.
    #[inline(always)]
    pub unsafe fn new(shared: *mut u32, shared_window: u32) -> Self {
        Self { shared, shared_window }
    }

    /// The shared-window byte address of shared word `index`.
    #[inline(always)]
    fn window(&self, index: usize) -> u32 {
        self.shared_window + 4 * index as u32
    }
}

/// Declares a `.shared` buffer of `$bytes` bytes named `<$entry>_smem` (once per kernel: the
/// entry point is the only place that expands it) and yields its generic and shared-window
/// addresses.
macro_rules! shared_buffer {
    ($entry:ident, $bytes:expr) => {{
        let (address, window): (u64, u64);
        // SAFETY: declares a buffer and converts its address; no memory is touched.
        unsafe {
            asm!(
                concat!(".shared .align 16 .b8 ", stringify!($entry), "_smem[{bytes}];"),
                concat!("cvta.shared.u64 {address}, ", stringify!($entry), "_smem;"),
                concat!("mov.u64 {window}, ", stringify!($entry), "_smem;"),
                bytes = const $bytes,
                address = out(reg64) address,
                window = out(reg64) window,
            )
        };
        (address as *mut u32, window as u32)
    }};
}

// The dynamic shared memory of the kernels that the table marks `dynamic_shared`: one
// module-scope `.extern .shared` array, sized by each launch (`LaunchDims::shared_bytes`).
core::arch::global_asm!(".extern .shared .align 128 .b8 resca_dynamic_smem[];");

/// The generic and shared-window addresses of the dynamic shared memory.
#[inline(always)]
fn dynamic_shared_buffer() -> (*mut u32, u32) {
    let (address, window): (u64, u64);
    // SAFETY: converts the address of the module's dynamic shared array; no memory is touched.
    unsafe {
        asm!(
            "cvta.shared.u64 {address}, resca_dynamic_smem;",
            "mov.u64 {window}, resca_dynamic_smem;",
            address = out(reg64) address,
            window = out(reg64) window,
        )
    };
    (address as *mut u32, window as u32)
}

/// `ldmatrix.sync.aligned.m8n8.<count>.shared.b16` into `$n` registers.
macro_rules! ldmatrix {
    ($self:ident, $row:ident, $shape:literal, $($r:ident),+) => {{
        $(let $r: u32;)+
        unsafe {
            asm!(
                concat!("ldmatrix.sync.aligned.m8n8.", $shape, ".shared.b16 {{", ldmatrix!(@list $($r),+), "}}, [{p}];"),
                $($r = out(reg32) $r,)+
                p = in(reg32) $self.window($row),
                options(nostack, readonly),
            )
        };
        [$($r),+]
    }};
    (@list $a:ident) => { "{a}" };
    (@list $a:ident, $b:ident) => { "{a}, {b}" };
    (@list $a:ident, $b:ident, $c:ident, $d:ident) => { "{a}, {b}, {c}, {d}" };
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
    fn tf32(&self, x: f32) -> f32 {
        let r: u32;
        unsafe {
            asm!("cvt.rna.tf32.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x.to_bits(), options(pure, nomem, nostack))
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn bf16x2(&self, lo: f32, hi: f32) -> u32 {
        let r: u32;
        // The first source goes to the upper half.
        unsafe {
            asm!(
                "cvt.rn.bf16x2.f32 {r}, {hi}, {lo};",
                r = out(reg32) r,
                hi = in(reg32) hi.to_bits(),
                lo = in(reg32) lo.to_bits(),
                options(pure, nomem, nostack),
            )
        };
        r
    }

    #[inline(always)]
    fn mma_tf32_m16n8k8(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        let d: [u32; 4];
        unsafe {
            let (d0, d1, d2, d3): (u32, u32, u32, u32);
            asm!(
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {{{d0}, {d1}, {d2}, {d3}}}, \
                 {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
                d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                c0 = in(reg32) c[0].to_bits(), c1 = in(reg32) c[1].to_bits(),
                c2 = in(reg32) c[2].to_bits(), c3 = in(reg32) c[3].to_bits(),
                // Not `pure`: a warp collective must stay where the kernel puts it.
                options(nomem, nostack),
            );
            d = [d0, d1, d2, d3];
        }
        d.map(f32::from_bits)
    }

    #[inline(always)]
    fn mma_bf16_m16n8k16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        let d: [u32; 4];
        unsafe {
            let (d0, d1, d2, d3): (u32, u32, u32, u32);
            asm!(
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, \
                 {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
                d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                c0 = in(reg32) c[0].to_bits(), c1 = in(reg32) c[1].to_bits(),
                c2 = in(reg32) c[2].to_bits(), c3 = in(reg32) c[3].to_bits(),
                // Not `pure`: a warp collective must stay where the kernel puts it.
                options(nomem, nostack),
            );
            d = [d0, d1, d2, d3];
        }
        d.map(f32::from_bits)
    }

    #[inline(always)]
    fn ldmatrix_x1(&self, row: usize) -> u32 {
        let [a] = ldmatrix!(self, row, "x1", a);
        a
    }

    #[inline(always)]
    fn ldmatrix_x2(&self, row: usize) -> [u32; 2] {
        ldmatrix!(self, row, "x2", a, b)
    }

    #[inline(always)]
    fn ldmatrix_x4(&self, row: usize) -> [u32; 4] {
        ldmatrix!(self, row, "x4", a, b, c, d)
    }

    #[inline(always)]
    fn ldmatrix_x4_trans(&self, row: usize) -> [u32; 4] {
        ldmatrix!(self, row, "x4.trans", a, b, c, d)
    }

    #[inline(always)]
    fn cp_async<T: SharedWord>(&self, dst: usize, src: Global<'_, T>, index: usize, words: u32, read: bool) {
        let d = self.window(dst);
        let s = unsafe { src.as_ptr().add(index) };
        let bytes = if read { 4 * words } else { 0 };
        unsafe {
            match words {
                1 => {
                    asm!("cp.async.ca.shared.global [{d}], [{s}], 4, {n};", d = in(reg32) d, s = in(reg64) s, n = in(reg32) bytes, options(nostack))
                }
                2 => {
                    asm!("cp.async.ca.shared.global [{d}], [{s}], 8, {n};", d = in(reg32) d, s = in(reg64) s, n = in(reg32) bytes, options(nostack))
                }
                _ => {
                    asm!("cp.async.cg.shared.global [{d}], [{s}], 16, {n};", d = in(reg32) d, s = in(reg64) s, n = in(reg32) bytes, options(nostack))
                }
            }
        }
    }

    #[inline(always)]
    fn cp_async_commit(&self) {
        unsafe { asm!("cp.async.commit_group;", options(nostack)) };
    }

    #[inline(always)]
    fn cp_async_wait(&self, pending: u32) {
        unsafe {
            match pending {
                1 => asm!("cp.async.wait_group 1;", options(nostack)),
                2 => asm!("cp.async.wait_group 2;", options(nostack)),
                3 => asm!("cp.async.wait_group 3;", options(nostack)),
                _ => asm!("cp.async.wait_group 0;", options(nostack)),
            }
        }
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
    unsafe { NvptxCtx::new(core::ptr::null_mut(), 0) }
}

/// The context of entry point `$name`: with its `.shared` buffer of `$module::$bytes` bytes,
/// with the dynamic shared memory, or without shared memory.
macro_rules! entry_ctx {
    ($name:ident) => {
        no_shared()
    };
    ($name:ident, shared $module:ident :: $bytes:ident) => {{
        let (shared, window) = shared_buffer!($name, crate::$module::$bytes);
        // SAFETY: this entry point's own `.shared` buffer.
        unsafe { NvptxCtx::new(shared, window) }
    }};
    ($name:ident, dynamic_shared $module:ident :: $bytes:ident) => {{
        let (shared, window) = dynamic_shared_buffer();
        // SAFETY: the dynamic shared memory, sized by the launch.
        unsafe { NvptxCtx::new(shared, window) }
    }};
}

/// One entry point per kernel of the table: build the context, call the body.
macro_rules! nvptx_entry_points {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, $shared_kind:ident $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        $(
            $(#[$attr])*
            #[unsafe(no_mangle)]
            pub unsafe extern "ptx-kernel" fn $name($($param: crate::__kernel_param!(type '_; $kind $(<$elem>)?)),*) {
                let ctx = entry_ctx!($name $(, $shared_kind $shared_module::$shared_bytes)?);
                crate::$module::$body $(::<$($generic),*>)? (&ctx, $($param),*);
            }
        )*
    };
}

crate::kernel_table!(nvptx_entry_points);
