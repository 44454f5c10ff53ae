//! Tensor-core GEMMs for the fast precision modes: `out = A W^T + b` with the epilogues of
//! [`gemm`](crate::gemm) (bias; bias + GELU-tanh; bias + gated residual), on `mma.sync`:
//! * [`TF32`]: m16n8k8 TF32, each operand rounded to TF32 (`cvt.rna`), f32 accumulation;
//! * [`TF32X3`]: the same instruction three times per product, on each operand split into a
//!   TF32 big part and a TF32 small part (`x = big + small` to 2^-22 relative): `a_small b_big +
//!   a_big b_small + a_big b_big`, which recovers FP32-level accuracy;
//! * [`BF16`]: m16n8k16 BF16, A rounded to BF16 when its fragments are built, W converted once
//!   at upload ([`bf16_weight_words`], [`bf16_pair_k`]), f32 accumulation.
//!
//! Tiling: a block of 256 threads (8 warps, 2 along M x 4 along N) computes a 128 x 128 tile of
//! the output; each warp a 64 x 32 tile as 4 x 4 `mma` tiles of 16 x 8 (64 accumulators per
//! thread). K is walked in steps of 32 through a 3-stage `cp.async` pipeline in dynamic shared
//! memory (108 KiB in the TF32 modes, 84 KiB in BF16: above the 48 KiB of static shared memory):
//! while the tensor cores work on one stage, the copies of the next two are in flight. Rows of
//! a stage are padded (36 words for f32, 20 for packed BF16) so that the 8 rows an `ldmatrix`
//! reads fall in distinct banks.
//!
//! Fragments come from `ldmatrix.x4`: for 32-bit data each 8 x 4 word block is one matrix, and
//! lane l receives word l % 4 of row l / 4, which is exactly the TF32 A (rows g and g + 8, k t
//! and t + 4) and B (n g, k t and t + 4) fragment. BF16 uses the same loads of A (still f32 in
//! shared memory) and packs pairs (k t, k t + 4) and (k 8 + t, k 12 + t) with `cvt.rn.bf16x2`:
//! the instruction sums over k in whatever order both operands agree on, so the BF16 weights are
//! packed at upload in that order ([`bf16_pair_k`]) and their fragments are plain
//! `ldmatrix.x4` rows too.
//!
//! Out-of-range rows, columns and k are zero-filled by `cp.async` (nothing is read), so any M,
//! N, K works: 16-byte copies when K is a multiple of 4 (each row then starts 16-byte aligned),
//! 4-byte copies otherwise.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::thread::{Dim3, LaunchDims, SharedWord, ThreadCtx, div_ceil};

/// Precision mode: TF32 operands.
pub const TF32: u32 = 0;
/// Precision mode: three TF32 products per multiply (FP32-level accuracy).
pub const TF32X3: u32 = 1;
/// Precision mode: BF16 operands.
pub const BF16: u32 = 2;

/// Output rows per block tile.
pub const TC_TILE_M: u32 = 128;
/// Output columns per block tile.
pub const TC_TILE_N: u32 = 128;
/// K per pipeline stage.
pub const TC_TILE_K: u32 = 32;
/// Threads per block (8 warps).
pub const TC_THREADS: u32 = 256;
/// Pipeline stages.
const STAGES: usize = 3;
/// Words per row of an f32 stage: 32 k plus 4 words of padding.
const F32_STRIDE: usize = TC_TILE_K as usize + 4;
/// Words per row of a packed BF16 stage: 16 words (32 k) plus 4 of padding.
const BF16_STRIDE: usize = TC_TILE_K as usize / 2 + 4;
const A_STAGE_WORDS: usize = TC_TILE_M as usize * F32_STRIDE;

/// Words per row of a W stage in `mode`.
const fn w_stride(mode: u32) -> usize {
    if mode == BF16 { BF16_STRIDE } else { F32_STRIDE }
}

/// Dynamic shared memory of a launch in `mode`: 3 stages of A and W.
pub const fn tc_shared_bytes(mode: u32) -> u32 {
    (STAGES * (A_STAGE_WORDS + TC_TILE_N as usize * w_stride(mode)) * 4) as u32
}

/// The most dynamic shared memory of any mode (the kernel table's bound).
pub const TC_MAX_SHARED_BYTES: u32 = tc_shared_bytes(TF32);

/// Grid (ceil(N / 128), ceil(M / 128)) of 256 threads with the mode's dynamic shared memory.
pub fn gemm_tc_dims(m: u32, n: u32, mode: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(n, TC_TILE_N), div_ceil(m, TC_TILE_M), 1),
        block: Dim3::x(TC_THREADS),
        shared_bytes: tc_shared_bytes(mode),
    }
}

/// Words per row of BF16-packed weights for K: K rounded up to 16, two per word.
pub const fn bf16_weight_words(k: u32) -> u32 {
    k.div_ceil(16) * 8
}

/// The two k (low half, high half) that word `j` of a BF16-packed weight row holds: within
/// each group of 16 k, word i < 4 holds (i, i + 4) and word i >= 4 holds (i + 4, i + 8), the
/// order in which the kernel packs A's fragments. A k at or past K is a zero.
pub const fn bf16_pair_k(j: u32) -> (u32, u32) {
    let (group, i) = (j / 8, j % 8);
    let lo = if i < 4 { i } else { i + 4 };
    (16 * group + lo, 16 * group + lo + 4)
}

/// Issues the copies of rows `row_base .. row_base + rows` (of `src_rows`), k `k0 .. k0 + 32`,
/// of the (rows, K) f32 matrix `src` into shared words `dst_base ..` (row stride
/// [`F32_STRIDE`]): 8 chunks of 4 words per row, zero-filled past the matrix.
#[inline(always)]
fn copy_f32_rows<C: ThreadCtx, T: SharedWord>(
    ctx: &C,
    src: Global<'_, T>,
    (src_rows, k): (usize, usize),
    (row_base, rows): (usize, usize),
    k0: usize,
    dst_base: usize,
) {
    let (tid, threads) = (ctx.thread_rank() as usize, TC_THREADS as usize);
    for j in 0..(rows * 8) / threads {
        let chunk = tid + threads * j;
        let (r, c) = (chunk / 8, chunk % 8);
        let (kk, dst) = (k0 + 4 * c, dst_base + r * F32_STRIDE + 4 * c);
        let in_row = row_base + r < src_rows;
        if k.is_multiple_of(4) {
            let read = in_row && kk < k;
            let index = if read { (row_base + r) * k + kk } else { 0 };
            ctx.cp_async(dst, src, index, 4, read);
        } else {
            for e in 0..4 {
                let read = in_row && kk + e < k;
                let index = if read { (row_base + r) * k + kk + e } else { 0 };
                ctx.cp_async(dst + e, src, index, 1, read);
            }
        }
    }
}

/// Issues the copies of K-tile `tile` of A (rows `row0..`, f32) and W (rows `col0..`, f32 or
/// packed BF16) into stage `stage`; out-of-range parts are zero-filled.
#[inline(always)]
fn load_stage<C: ThreadCtx, W: SharedWord, const MODE: u32>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, W>,
    (m, n, k): (usize, usize, usize),
    (row0, col0): (usize, usize),
    tile: usize,
    stage: usize,
) {
    let (tid, threads) = (ctx.thread_rank() as usize, TC_THREADS as usize);
    let k0 = tile * TC_TILE_K as usize;
    let w_base = STAGES * A_STAGE_WORDS + stage * TC_TILE_N as usize * w_stride(MODE);
    copy_f32_rows(ctx, a, (m, k), (row0, TC_TILE_M as usize), k0, stage * A_STAGE_WORDS);
    if MODE == BF16 {
        // Packed BF16 rows of W: 4 chunks of 4 words (32 k) per row; the row length is a
        // multiple of 8 words, so every chunk is in or out as a whole.
        let row_words = bf16_weight_words(k as u32) as usize;
        let word0 = k0 / 2;
        for j in 0..(TC_TILE_N as usize * 4) / threads {
            let chunk = tid + threads * j;
            let (r, c) = (chunk / 4, chunk % 4);
            let read = col0 + r < n && word0 + 4 * c < row_words;
            let index = if read {
                (col0 + r) * row_words + word0 + 4 * c
            } else {
                0
            };
            ctx.cp_async(w_base + r * BF16_STRIDE + 4 * c, w, index, 4, read);
        }
    } else {
        copy_f32_rows(ctx, w, (n, k), (col0, TC_TILE_N as usize), k0, w_base);
    }
}

/// Repeats `$body` with `$i` bound to 0, 1, 2 and 3 (or 0 and 1): written-out copies, not a
/// loop, so that the register arrays of [`gemm_tc_tile`] (accumulators, fragments) are only ever
/// indexed by constants and stay in registers on the GPU. LLVM does not fully unroll loops
/// around `mma.sync` and `ldmatrix` by itself, and a run-time index sends an array to local
/// memory.
macro_rules! unroll {
    ($i:ident in 2 => $body:block) => {{
        {
            let $i: usize = 0;
            $body
        }
        {
            let $i: usize = 1;
            $body
        }
    }};
    ($i:ident in 4 => $body:block) => {{
        unroll!($i in 2 => $body);
        {
            let $i: usize = 2;
            $body
        }
        {
            let $i: usize = 3;
            $body
        }
    }};
}

/// The tensor-core product of the (M, K) matrix `a` and the (N, K) matrix `w` (f32, or packed
/// BF16 in [`BF16`] mode); calls `epilogue(row, col, dot)` for every in-range output element the
/// thread owns (`dot` without the bias). Launch with [`gemm_tc_dims`] and the same mode.
#[inline(always)]
pub(crate) fn gemm_tc_tile<C: ThreadCtx, W: SharedWord, const MODE: u32, E: FnMut(usize, usize, f32)>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, W>,
    m: u32,
    n: u32,
    k: u32,
    mut epilogue: E,
) {
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let row0 = ctx.block_idx_y() as usize * TC_TILE_M as usize;
    let col0 = ctx.block_idx_x() as usize * TC_TILE_N as usize;
    let (warp, lane) = (ctx.warp_id() as usize, ctx.lane_id() as usize);
    let (warp_m, warp_n) = (warp / 4, warp % 4);
    // ldmatrix.x4: lane l gives row l % 8 of matrix l / 8.
    let (quarter, r8) = (lane / 8, lane % 8);
    let tiles = k.div_ceil(TC_TILE_K as usize);
    let sizes = (m, n, k);
    let origin = (row0, col0);
    // acc[mt][nt]: the C fragment of the 16 x 8 tile (mt, nt) of the warp's 64 x 32 tile.
    let mut acc = [[[0.0f32; 4]; 4]; 4];

    for tile in 0..STAGES - 1 {
        if tile < tiles {
            load_stage::<C, W, MODE>(ctx, a, w, sizes, origin, tile, tile);
        }
        ctx.cp_async_commit();
    }
    for tile in 0..tiles {
        // Tile `tile`'s group is done when at most STAGES - 2 younger ones are in flight; the
        // barrier makes every thread's copies visible and ends the reads of the stage reloaded
        // next.
        ctx.cp_async_wait(STAGES as u32 - 2);
        ctx.sync_threads();
        let next = tile + STAGES - 1;
        if next < tiles {
            load_stage::<C, W, MODE>(ctx, a, w, sizes, origin, next, next % STAGES);
        }
        ctx.cp_async_commit();

        let stage = tile % STAGES;
        let a_base = stage * A_STAGE_WORDS + (warp_m * 64 + r8 + 8 * (quarter % 2)) * F32_STRIDE + 4 * (quarter / 2);
        let w_base = STAGES * A_STAGE_WORDS
            + stage * TC_TILE_N as usize * w_stride(MODE)
            + (warp_n * 32 + 8 * (quarter / 2) + r8) * w_stride(MODE)
            + 4 * (quarter % 2);
        if MODE == BF16 {
            unroll!(ks in 2 => {
                let mut af = [[0u32; 4]; 4];
                unroll!(mt in 4 => {
                    let row = a_base + mt * 16 * F32_STRIDE + 16 * ks;
                    let p = ctx.ldmatrix_x4(row);
                    let q = ctx.ldmatrix_x4(row + 8);
                    let f = |x: u32| f32::from_bits(x);
                    af[mt] = [
                        ctx.bf16x2(f(p[0]), f(p[2])),
                        ctx.bf16x2(f(p[1]), f(p[3])),
                        ctx.bf16x2(f(q[0]), f(q[2])),
                        ctx.bf16x2(f(q[1]), f(q[3])),
                    ];
                });
                let mut bf = [[0u32; 2]; 4];
                unroll!(pair in 2 => {
                    let x = ctx.ldmatrix_x4(w_base + pair * 16 * BF16_STRIDE + 8 * ks);
                    bf[2 * pair] = [x[0], x[1]];
                    bf[2 * pair + 1] = [x[2], x[3]];
                });
                unroll!(mt in 4 => {
                    unroll!(nt in 4 => {
                        acc[mt][nt] = ctx.mma_bf16_m16n8k16(af[mt], bf[nt], acc[mt][nt]);
                    });
                });
            });
        } else {
            unroll!(ks in 4 => {
                let mut a_big = [[0u32; 4]; 4];
                let mut a_small = [[0u32; 4]; 4];
                unroll!(mt in 4 => {
                    let x = ctx.ldmatrix_x4(a_base + mt * 16 * F32_STRIDE + 8 * ks);
                    unroll!(i in 4 => {
                        let value = f32::from_bits(x[i]);
                        let big = ctx.tf32(value);
                        a_big[mt][i] = big.to_bits();
                        if MODE == TF32X3 {
                            a_small[mt][i] = ctx.tf32(value - big).to_bits();
                        }
                    });
                });
                let mut b_big = [[0u32; 2]; 4];
                let mut b_small = [[0u32; 2]; 4];
                unroll!(pair in 2 => {
                    let x = ctx.ldmatrix_x4(w_base + pair * 16 * F32_STRIDE + 8 * ks);
                    unroll!(i in 4 => {
                        let value = f32::from_bits(x[i]);
                        let big = ctx.tf32(value);
                        b_big[2 * pair + i / 2][i % 2] = big.to_bits();
                        if MODE == TF32X3 {
                            b_small[2 * pair + i / 2][i % 2] = ctx.tf32(value - big).to_bits();
                        }
                    });
                });
                unroll!(mt in 4 => {
                    unroll!(nt in 4 => {
                        let mut c = acc[mt][nt];
                        if MODE == TF32X3 {
                            // The small products first, so they are not lost against the big one.
                            c = ctx.mma_tf32_m16n8k8(a_small[mt], b_big[nt], c);
                            c = ctx.mma_tf32_m16n8k8(a_big[mt], b_small[nt], c);
                        }
                        acc[mt][nt] = ctx.mma_tf32_m16n8k8(a_big[mt], b_big[nt], c);
                    });
                });
            });
        }
    }
    ctx.cp_async_wait(0);

    let (g, t) = (lane / 4, lane % 4);
    unroll!(mt in 4 => {
        unroll!(nt in 4 => {
            unroll!(i in 4 => {
                let row = row0 + warp_m * 64 + mt * 16 + g + 8 * (i / 2);
                let col = col0 + warp_n * 32 + nt * 8 + 2 * t + i % 2;
                if row < m && col < n {
                    epilogue(row, col, acc[mt][nt][i]);
                }
            });
        });
    });
}

/// `out (M, N) = A W^T + b` on tensor cores in precision `MODE`. Launch with [`gemm_tc_dims`].
// Inlined into its entry point: as a called function it would get the thread context through
// local memory.
#[inline(always)]
pub fn gemm_tc_bias<C: ThreadCtx, const MODE: u32, W: SharedWord>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, W>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    gemm_tc_tile::<C, W, MODE, _>(ctx, a, w, m, n, k, |row, col, dot| {
        ctx.store(out, row * n as usize + col, dot + ctx.load(bias, col));
    });
}

/// `out (M, N) = GELU_tanh(A W^T + b)` on tensor cores. Launch with [`gemm_tc_dims`].
// Inlined into its entry point: as a called function it would get the thread context through
// local memory.
#[inline(always)]
pub fn gemm_tc_bias_gelu<C: ThreadCtx, const MODE: u32, W: SharedWord>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, W>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    gemm_tc_tile::<C, W, MODE, _>(ctx, a, w, m, n, k, |row, col, dot| {
        ctx.store(out, row * n as usize + col, math::gelu_tanh(dot + ctx.load(bias, col)));
    });
}

/// `x (M, N) += gate * (A W^T + b)` on tensor cores, gated as
/// [`gemm_bias_gated_residual`](crate::gemm::gemm_bias_gated_residual). Launch with
/// [`gemm_tc_dims`].
// Inlined into its entry point: as a called function it would get the thread context through
// local memory.
#[inline(always)]
pub fn gemm_tc_bias_gated_residual<C: ThreadCtx, const MODE: u32, W: SharedWord>(
    ctx: &C,
    a: Global<'_, f32>,
    w: Global<'_, W>,
    bias: Global<'_, f32>,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let x_read = x.as_global();
    gemm_tc_tile::<C, W, MODE, _>(ctx, a, w, m, n, k, |row, col, dot| {
        let g = ctx.load(
            gate,
            (row / tokens as usize) * gate_stride as usize + gate_offset as usize + col,
        );
        let i = row * n as usize + col;
        ctx.store(x, i, ctx.load(x_read, i) + g * (dot + ctx.load(bias, col)));
    });
}
