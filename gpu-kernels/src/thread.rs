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

    /// `cvt.rna.tf32.f32`: `x` rounded to TF32 (10 fraction bits; to nearest, ties away from
    /// zero), returned as an f32 whose low 13 bits are zero: a tensor-core TF32 operand.
    fn tf32(&self, x: f32) -> f32;

    /// `cvt.rn.bf16x2.f32`: `lo` and `hi` rounded to BF16 (to nearest, ties to even) and packed,
    /// `lo` in bits 0..16 and `hi` in bits 16..32: a tensor-core BF16 operand pair.
    fn bf16x2(&self, lo: f32, hi: f32) -> u32;

    /// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`: `D = A B + C` for the warp's
    /// 16 x 8 tile, A 16 x 8 (row-major), B 8 x 8 (column-major, i.e. the rows of an (N, K)
    /// weight), C and D in f32. Each lane holds the fragments of the PTX ISA tables, with
    /// `g = lane / 4`, `t = lane % 4`: `a` = A(g, t), A(g+8, t), A(g, t+4), A(g+8, t+4);
    /// `b` = B(t, g), B(t+4, g); `c` and the result = C(g, 2t), C(g, 2t+1), C(g+8, 2t),
    /// C(g+8, 2t+1). A and B elements are f32 bits already rounded to TF32 ([`ThreadCtx::tf32`]).
    /// Every lane of the warp must execute it, with no lane-divergent control flow around it.
    #[track_caller]
    fn mma_tf32_m16n8k8(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];

    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: as the TF32 one with K = 16 and
    /// each A / B register a BF16 pair ([`ThreadCtx::bf16x2`], the lower k in the low half):
    /// `a` = A(g, 2t..2t+2), A(g+8, 2t..2t+2), A(g, 2t+8..2t+10), A(g+8, 2t+8..2t+10);
    /// `b` = B(2t..2t+2, g), B(2t+8..2t+10, g); C and D as for TF32.
    #[track_caller]
    fn mma_bf16_m16n8k16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4];

    /// `ldmatrix.sync.aligned.m8n8.x1.shared.b16`: one 8 x 8 matrix of 16-bit elements (8 rows of
    /// 16 bytes = 4 words). Lanes 0..8 give the shared word index of a row (a multiple of 4);
    /// lane l receives word `l % 4` of row `l / 4`. Every lane of the warp must execute it.
    #[track_caller]
    fn ldmatrix_x1(&self, row: usize) -> u32;

    /// `ldmatrix ... .x2`: two matrices, rows from lanes 0..8 and 8..16.
    #[track_caller]
    fn ldmatrix_x2(&self, row: usize) -> [u32; 2];

    /// `ldmatrix ... .x4`: four matrices, matrix i's rows from lanes 8i..8i+8. With 32-bit
    /// data (4 values per row) lane l receives value `l % 4` of row `l / 4` of each: exactly a
    /// TF32 A or B fragment.
    #[track_caller]
    fn ldmatrix_x4(&self, row: usize) -> [u32; 4];

    /// `ldmatrix ... .x4.trans`: as `ldmatrix_x4`, each matrix transposed: lane l receives the
    /// 16-bit elements (row 2(l % 4), column l / 4) in its low and (row 2(l % 4) + 1, same
    /// column) in its high half.
    #[track_caller]
    fn ldmatrix_x4_trans(&self, row: usize) -> [u32; 4];

    /// `cp.async` of `words` (1, 2 or 4) 32-bit words from `src[index..]` to shared words
    /// `dst..`, both aligned to the copy's size; with `read == false` nothing is read and the
    /// destination is zero-filled (rows or columns past the matrix). The copy is pending until
    /// [`ThreadCtx::cp_async_wait`] retires its group: touching the destination before that is a
    /// race (the simulator reports it every time).
    #[track_caller]
    fn cp_async<T: SharedWord>(&self, dst: usize, src: Global<'_, T>, index: usize, words: u32, read: bool);

    /// `cp.async.commit_group`: the copies issued since the last commit become one group.
    fn cp_async_commit(&self);

    /// `cp.async.wait_group N`: waits until at most `pending` of this thread's committed
    /// groups are still in flight (0 to 3; above 3 the GPU waits for all). Other threads see
    /// the data only after a barrier.
    #[track_caller]
    fn cp_async_wait(&self, pending: u32);

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
