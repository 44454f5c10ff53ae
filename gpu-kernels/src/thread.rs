//! The thread context every kernel body is written against, with Rust-CUDA `cuda_std`'s names
//! (`thread_idx_x`, `block_idx_x`, `block_dim_x`, `grid_dim_x`, `sync_threads`, ...).
//!
//! Two implementations exist: `nvptx::NvptxCtx` (special registers, `bar.sync`, `shfl.sync` and
//! a `.shared` buffer through inline PTX) and the host simulator's thread in `resca-host`, which
//! bounds-checks every access, detects shared-memory races between barriers and barriers or
//! shuffles not reached by every thread.

use crate::global::{Global, GlobalMut};

/// Threads per warp on every NVIDIA GPU.
pub const WARP_SIZE: u32 = 32;

/// A grid or block extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

impl Dim3 {
    pub const fn new(x: u32, y: u32, z: u32) -> Self {
        Self { x, y, z }
    }

    /// A one-dimensional extent.
    pub const fn x(x: u32) -> Self {
        Self { x, y: 1, z: 1 }
    }

    /// Number of points (threads or blocks).
    pub const fn count(&self) -> u64 {
        self.x as u64 * self.y as u64 * self.z as u64
    }
}

/// Everything a launch needs besides the parameters: grid, block and static shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: Dim3,
    pub block: Dim3,
    /// Bytes of shared memory per block (the size of the kernel's `.shared` declaration).
    pub shared_bytes: u32,
}

/// Ceiling division for grid sizes.
pub const fn div_ceil(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// A 4-byte value that can live in shared memory (shared memory is addressed in 32-bit words).
pub trait SharedWord: Copy {
    fn to_word(self) -> u32;
    fn from_word(word: u32) -> Self;
}

impl SharedWord for f32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self.to_bits()
    }
    #[inline(always)]
    fn from_word(word: u32) -> Self {
        f32::from_bits(word)
    }
}

impl SharedWord for u32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self
    }
    #[inline(always)]
    fn from_word(word: u32) -> Self {
        word
    }
}

impl SharedWord for i32 {
    #[inline(always)]
    fn to_word(self) -> u32 {
        self as u32
    }
    #[inline(always)]
    fn from_word(word: u32) -> Self {
        word as i32
    }
}

/// One GPU thread as a kernel body sees it.
///
/// Barriers and shuffles carry `#[track_caller]` so that the simulator can name the source line
/// of a barrier or shuffle that not every thread reached; on the GPU the location is unused and
/// optimised away.
///
/// Global memory goes through [`ThreadCtx::load`] / [`ThreadCtx::store`], shared memory (one
/// per-block array of 32-bit words, sized by the launch) through [`ThreadCtx::shared_load`] /
/// [`ThreadCtx::shared_store`]: on the GPU these are plain `ld`/`st` instructions, in the
/// simulator they are checked.
pub trait ThreadCtx {
    fn thread_idx_x(&self) -> u32;
    fn thread_idx_y(&self) -> u32;
    fn thread_idx_z(&self) -> u32;
    fn block_idx_x(&self) -> u32;
    fn block_idx_y(&self) -> u32;
    fn block_idx_z(&self) -> u32;
    fn block_dim_x(&self) -> u32;
    fn block_dim_y(&self) -> u32;
    fn block_dim_z(&self) -> u32;
    fn grid_dim_x(&self) -> u32;
    fn grid_dim_y(&self) -> u32;
    fn grid_dim_z(&self) -> u32;

    /// `__syncthreads()`: waits until every thread of the block has reached this barrier; shared
    /// memory written before it is visible to every thread after it.
    #[track_caller]
    fn sync_threads(&self);

    /// `__shfl_xor_sync(0xffffffff, value, lane_mask)`: the value of lane `lane ^ lane_mask`.
    /// Every lane of the warp must execute the same shuffle.
    #[track_caller]
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32;

    /// `__shfl_down_sync(0xffffffff, value, delta)`: the value of lane `lane + delta`, or the
    /// thread's own value where that lane is past 31.
    #[track_caller]
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32;

    /// `__shfl_sync(0xffffffff, value, src_lane)`: the value of lane `src_lane` (a broadcast).
    #[track_caller]
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32;

    /// `fma.rn.f32`: `a * b + c` with one rounding. Exact to model on the CPU (`f32::mul_add`),
    /// so kernels that use it keep the GPU and the simulator bit for bit the same; a kernel
    /// written with `a * b + c` gets a separate multiply and add (PTX never contracts `mul.rn`
    /// and `add.rn`), which is slower and rounds twice.
    fn fma(&self, a: f32, b: f32, c: f32) -> f32;

    /// Reads word `index` of the block's shared memory.
    #[track_caller]
    fn shared_load<T: SharedWord>(&self, index: usize) -> T;

    /// Reads words `index .. index + 4` of the block's shared memory in one 16-byte access
    /// (`ld.shared.v4.f32` on the GPU). `index` must be a multiple of 4: the simulator reports
    /// any other, as the GPU would fault on it, and checks each word like [`ThreadCtx::shared_load`].
    #[track_caller]
    #[inline(always)]
    fn shared_load4(&self, index: usize) -> [f32; 4] {
        [
            self.shared_load(index),
            self.shared_load(index + 1),
            self.shared_load(index + 2),
            self.shared_load(index + 3),
        ]
    }

    /// Writes word `index` of the block's shared memory.
    #[track_caller]
    fn shared_store<T: SharedWord>(&self, index: usize, value: T);

    /// Reads element `index` of a global buffer.
    #[track_caller]
    fn load<T: Copy>(&self, buffer: Global<'_, T>, index: usize) -> T;

    /// Writes element `index` of a global buffer.
    #[track_caller]
    fn store<T: Copy>(&self, buffer: GlobalMut<'_, T>, index: usize, value: T);

    /// Linear index of the thread in its block (x fastest), which fixes its warp and lane.
    #[inline(always)]
    fn thread_rank(&self) -> u32 {
        self.thread_idx_x() + self.block_dim_x() * (self.thread_idx_y() + self.block_dim_y() * self.thread_idx_z())
    }

    /// Threads per block.
    #[inline(always)]
    fn block_size(&self) -> u32 {
        self.block_dim_x() * self.block_dim_y() * self.block_dim_z()
    }

    /// Lane of the thread in its warp (0..32).
    #[inline(always)]
    fn lane_id(&self) -> u32 {
        self.thread_rank() % WARP_SIZE
    }

    /// Warp of the thread in its block.
    #[inline(always)]
    fn warp_id(&self) -> u32 {
        self.thread_rank() / WARP_SIZE
    }

    /// cuda_std's `thread::index_1d()`: `block_idx_x * block_dim_x + thread_idx_x`.
    #[inline(always)]
    fn index_1d(&self) -> u32 {
        self.block_idx_x() * self.block_dim_x() + self.thread_idx_x()
    }
}
