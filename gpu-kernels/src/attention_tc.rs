//! Multi-head self-attention on tensor cores for the fast precision modes: the computation of
//! [`flash_attention`](crate::attention::flash_attention) (FlashAttention-2 style, online
//! softmax in registers, no N x N matrix stored) with both products on `mma.sync`, in the modes
//! of [`gemm_tc`](crate::gemm_tc): [`TF32`] and [`TF32X3`] (m16n8k8) and [`BF16`] (m16n8k16),
//! f32 accumulation.
//!
//! Mapping: block (i, h, b) handles query tile i (64 queries) of head h of sample b with 4
//! warps; warp w owns the 16 queries `64 i + 16 w .. + 16`, one `mma` row tile, for the whole
//! key loop. The block stages its query tile once, then walks the keys in tiles of 32 through
//! two shared-memory buffers filled by `cp.async`: while the warps work on tile t, the copies of
//! tile t + 1 are in flight, and one wait and one barrier per tile suffice. All of it in dynamic
//! shared memory (rows padded, see below): 63 KiB for DiT's head dimension 72, 99 KiB for 128.
//!
//! Per key tile, a warp
//! * scores `S (16 x 32) = Q K^T` as four n8 tiles, the reduction over the head dimension
//!   padded with zeros to a multiple of 16 (72 to 80: the zeros are staged, never read from
//!   global memory). TF32 steps k by 8 and stops at the last step holding a feature (72: nine
//!   steps); BF16 steps by 16 (80: five). Fragments come from `ldmatrix.x4` as in the GEMMs: Q
//!   and K rows are the A and B operands' rows;
//! * scales, masks keys past the last token to `-inf`, and takes each row's tile maximum and
//!   sum with two `shfl.xor` (the four lanes `4 g ..` that hold a row), rescales the running sum
//!   and the accumulators by `exp(m_old - m_new)`; `p = exp(s - m_new)` with the software
//!   [`math::exp`], rounded to the operand precision before it is summed, so that the
//!   normalisation divides by the sum of exactly the weights the tensor cores multiplied;
//! * accumulates `O (16 x hd) += P V` with P straight from the score registers: in BF16 the
//!   C fragments of two adjacent n8 score tiles are the A fragment of one k16 step (a lane holds
//!   keys 2t, 2t + 1 and 2t + 8, 2t + 9 of its rows); in TF32 the A fragment wants keys t and
//!   t + 4 where the lane holds 2t and 2t + 1, so each k8 step reduces over its eight keys in
//!   the order (0, 2, 4, 6, 1, 3, 5, 7), and the V fragment is read in the same order (the sum
//!   over keys does not depend on how they are numbered). The output features are n8 tiles: nine
//!   for DiT's 72, up to sixteen (head dimension 128), 64 accumulators per lane; the V fragments
//!   are two plain shared loads per tile (rows 2t and 2t + 1, or 2t + 8 and 2t + 9).
//!
//! Shared rows (queries, keys, values) are `round_up(hd, 16) + 4` words: a multiple of 4 (the
//! 16-byte rows of `ldmatrix` and `cp.async`) and 4 more than a multiple of 16, so the 8 rows of
//! an `ldmatrix` and the V reads of a fragment (rows 2t, column g) fall in distinct banks.
//! Copies are 16 bytes when the head dimension is a multiple of 4 (every row then starts 16-byte
//! aligned), 4 bytes otherwise; keys and queries past the last token are zero-filled.
//!
//! At the end each lane divides its accumulators by the row's sum and writes its features of
//! the query's head slice of the output (B N, D), concatenated heads, as `attn.proj` expects.

use crate::gemm_tc::{BF16, TF32, TF32X3};
use crate::global::{Global, GlobalMut};
use crate::math;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// Warps per block.
pub const ATTN_TC_WARPS: u32 = 4;
/// Queries per block (16 per warp: one `mma` row tile).
pub const ATTN_TC_QUERY_TILE: u32 = 16 * ATTN_TC_WARPS;
/// Keys per shared-memory tile (four n8 score tiles).
pub const ATTN_TC_KEY_TILE: u32 = 32;
/// Largest supported head dimension (sixteen n8 output tiles).
pub const ATTN_TC_MAX_HEAD_DIM: u32 = 128;
/// Output feature tiles (n8) of the largest head dimension.
const FEATURE_TILES: usize = (ATTN_TC_MAX_HEAD_DIM / 8) as usize;
const THREADS: usize = (ATTN_TC_WARPS * WARP_SIZE) as usize;
const QUERY_ROWS: usize = ATTN_TC_QUERY_TILE as usize;
const KEY_ROWS: usize = ATTN_TC_KEY_TILE as usize;

/// Words per shared row for head dimension `hd`: padded to 16 for the BF16 k16 steps, plus 4 so
/// that rows 8 apart (`ldmatrix`) and 2 apart (the V fragments) start in different banks.
const fn row_words(hd: usize) -> usize {
    hd.div_ceil(16) * 16 + 4
}

/// Dynamic shared memory of a launch for head dimension `head_dim`: the query tile and two
/// buffers of a key and a value tile.
pub const fn attention_tc_shared_bytes(head_dim: u32) -> u32 {
    ((QUERY_ROWS + 4 * KEY_ROWS) * row_words(head_dim as usize) * 4) as u32
}

/// The most dynamic shared memory of any launch (the kernel table's bound): 101,376 bytes.
pub const ATTN_TC_MAX_SHARED_BYTES: u32 = attention_tc_shared_bytes(ATTN_TC_MAX_HEAD_DIM);

/// Grid (ceil(N / 64), heads, B) of 128 threads with the head dimension's dynamic shared memory.
pub fn attention_tc_dims(batch: u32, tokens: u32, heads: u32, head_dim: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(tokens, ATTN_TC_QUERY_TILE), heads, batch),
        block: Dim3::x(THREADS as u32),
        shared_bytes: attention_tc_shared_bytes(head_dim),
    }
}

/// Runs `$body` once per listed index, written out, so that the register arrays it indexes
/// (scores, accumulators, fragments) are indexed by constants only and stay in registers on the
/// GPU: LLVM does not fully unroll loops around `mma.sync` or the branchy software `exp`, and a
/// run-time index sends an array to local memory.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {{
        $({
            let $i: usize = $n;
            $body
        })*
    }};
}

/// The sizes and offsets of a launch.
struct Sizes {
    n: usize,
    hd: usize,
    /// Words per shared row ([`row_words`]).
    row: usize,
    d_model: usize,
    /// First feature of the head in a q, k or v slice.
    head: usize,
    /// First element of the sample's rows.
    sample: usize,
}

/// Issues the copies of features `0 .. row_words - 4` of tokens `first .. first + rows` from
/// the q, k or v slice starting at feature `part` of a `qkv` row into shared rows `dst ..`:
/// zeros past the last token and past the head dimension.
#[inline(always)]
fn copy_rows<C: ThreadCtx>(
    ctx: &C,
    qkv: Global<'_, f32>,
    sizes: &Sizes,
    part: usize,
    first: usize,
    rows: usize,
    dst: usize,
) {
    let tid = ctx.thread_rank() as usize;
    let chunks = (sizes.row - 4) / 4;
    let mut e = tid;
    while e < rows * chunks {
        let (r, c) = (e / chunks, e % chunks);
        let (token, d) = (first + r, 4 * c);
        let src = sizes.sample + token * 3 * sizes.d_model + part + sizes.head + d;
        let to = dst + r * sizes.row + d;
        if sizes.hd.is_multiple_of(4) {
            let read = token < sizes.n && d < sizes.hd;
            ctx.cp_async(to, qkv, if read { src } else { 0 }, 4, read);
        } else {
            for i in 0..4 {
                let read = token < sizes.n && d + i < sizes.hd;
                ctx.cp_async(to + i, qkv, if read { src + i } else { 0 }, 1, read);
            }
        }
        e += THREADS;
    }
}

/// Where buffer `buffer` (0 or 1) of the key tiles starts; its value tile follows
/// `KEY_ROWS` rows later.
#[inline(always)]
fn key_base(buffer: usize, row: usize) -> usize {
    (QUERY_ROWS + 2 * KEY_ROWS * buffer) * row
}

/// Issues the copies of key tile `tile` (keys and values) into buffer `tile % 2`.
#[inline(always)]
fn copy_key_tile<C: ThreadCtx>(ctx: &C, qkv: Global<'_, f32>, sizes: &Sizes, tile: usize) {
    let base = key_base(tile % 2, sizes.row);
    let first = tile * KEY_ROWS;
    copy_rows(ctx, qkv, sizes, sizes.d_model, first, KEY_ROWS, base);
    copy_rows(
        ctx,
        qkv,
        sizes,
        2 * sizes.d_model,
        first,
        KEY_ROWS,
        base + KEY_ROWS * sizes.row,
    );
}

/// A TF32 operand and, in 3xTF32, the TF32 rounding of what it leaves out (`x = big + small`).
#[inline(always)]
fn split<C: ThreadCtx, const MODE: u32>(ctx: &C, x: f32) -> (u32, u32) {
    let big = ctx.tf32(x);
    let small = if MODE == TF32X3 { ctx.tf32(x - big).to_bits() } else { 0 };
    (big.to_bits(), small)
}

/// `d = a b + c` in `MODE` (TF32 or 3xTF32) from split operands; 3xTF32 adds the small
/// products first, so they are not lost against the big one.
#[track_caller]
#[inline(always)]
fn mma_tf32<C: ThreadCtx, const MODE: u32>(
    ctx: &C,
    a: ([u32; 4], [u32; 4]),
    b: ([u32; 2], [u32; 2]),
    c: [f32; 4],
) -> [f32; 4] {
    let mut c = c;
    if MODE == TF32X3 {
        c = ctx.mma_tf32_m16n8k8(a.1, b.0, c);
        c = ctx.mma_tf32_m16n8k8(a.0, b.1, c);
    }
    ctx.mma_tf32_m16n8k8(a.0, b.0, c)
}

/// `x` rounded to BF16 (to nearest even), as an f32.
#[inline(always)]
fn bf16_round<C: ThreadCtx>(ctx: &C, x: f32) -> f32 {
    f32::from_bits(ctx.bf16x2(x, 0.0) << 16)
}

/// Attention of every head on tensor cores in precision `MODE` ([`TF32`], [`TF32X3`] or
/// [`BF16`]): `qkv` (B N, 3 H hd) to `out` (B N, H hd). `scale` is `1 / sqrt(head_dim)`.
/// Needs head_dim <= 128; launch with [`attention_tc_dims`].
// Inlined into its entry point: as a called function it would get the thread context through
// local memory.
#[inline(always)]
pub fn flash_attention_tc<C: ThreadCtx, const MODE: u32>(
    ctx: &C,
    qkv: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
) {
    let (n, hd) = (tokens as usize, head_dim as usize);
    let d_model = heads as usize * hd;
    let b = ctx.block_idx_z() as usize;
    let sizes = Sizes {
        n,
        hd,
        row: row_words(hd),
        d_model,
        head: ctx.block_idx_y() as usize * hd,
        sample: b * n * 3 * d_model,
    };
    let row = sizes.row;
    let q0 = ctx.block_idx_x() as usize * QUERY_ROWS;
    let (warp, lane) = (ctx.warp_id() as usize, ctx.lane_id() as usize);
    let (g, t) = (lane / 4, lane % 4);
    // ldmatrix.x4: lane l gives row l % 8 of matrix l / 8.
    let (quarter, r8) = (lane / 8, lane % 8);
    // The warp's A fragments of Q: matrices (rows 0..8, 8..16) x (k 0..4, 4..8).
    let q_frag = (16 * warp + r8 + 8 * (quarter % 2)) * row + 4 * (quarter / 2);
    // Output feature tiles holding a feature.
    let feature_tiles = hd.div_ceil(8);

    copy_rows(ctx, qkv, &sizes, 0, q0, QUERY_ROWS, 0);
    copy_key_tile(ctx, qkv, &sizes, 0);
    ctx.cp_async_commit();

    // Rows g and g + 8 of the warp's 16: running maximum and sum.
    let mut max = [f32::NEG_INFINITY; 2];
    let mut sum = [0.0f32; 2];
    // acc[f]: the C fragment of output features 8 f .. 8 f + 8.
    let mut acc = [[0.0f32; 4]; FEATURE_TILES];
    let tiles = n.div_ceil(KEY_ROWS);
    for tile in 0..tiles {
        // Tile `tile` has landed for this thread; the barrier shows every thread's copies and
        // ends the reads of tile - 1, whose buffer the next copies overwrite.
        ctx.cp_async_wait(0);
        ctx.sync_threads();
        if tile + 1 < tiles {
            copy_key_tile(ctx, qkv, &sizes, tile + 1);
        }
        ctx.cp_async_commit();
        let kt = tile * KEY_ROWS;
        let keys = key_base(tile % 2, row);
        let values = keys + KEY_ROWS * row;

        // s[j]: the C fragment of keys kt + 8 j .. + 8.
        let mut s = [[0.0f32; 4]; 4];
        if MODE == BF16 {
            for ks in 0..hd.div_ceil(16) {
                // k pairs (t, t + 4) and (8 + t, 12 + t) of the step, as in the BF16 GEMM.
                let p = ctx.ldmatrix_x4(q_frag + 16 * ks);
                let q = ctx.ldmatrix_x4(q_frag + 16 * ks + 8);
                let f = f32::from_bits;
                let a = [
                    ctx.bf16x2(f(p[0]), f(p[2])),
                    ctx.bf16x2(f(p[1]), f(p[3])),
                    ctx.bf16x2(f(q[0]), f(q[2])),
                    ctx.bf16x2(f(q[1]), f(q[3])),
                ];
                unroll!(j in [0, 1, 2, 3] {
                    // Matrices: keys 8 j .. + 8, k 0..4, 4..8, 8..12, 12..16 of the step.
                    let x = ctx.ldmatrix_x4(keys + (8 * j + r8) * row + 16 * ks + 4 * quarter);
                    let bf = [ctx.bf16x2(f(x[0]), f(x[1])), ctx.bf16x2(f(x[2]), f(x[3]))];
                    s[j] = ctx.mma_bf16_m16n8k16(a, bf, s[j]);
                });
            }
        } else {
            for ks in 0..hd.div_ceil(8) {
                let x = ctx.ldmatrix_x4(q_frag + 8 * ks);
                let mut a = ([0u32; 4], [0u32; 4]);
                unroll!(i in [0, 1, 2, 3] {
                    (a.0[i], a.1[i]) = split::<C, MODE>(ctx, f32::from_bits(x[i]));
                });
                unroll!(pair in [0, 1] {
                    // Matrices: keys 16 pair + (0..8, 8..16) x k (0..4, 4..8) of the step.
                    let x = ctx.ldmatrix_x4(keys + (16 * pair + 8 * (quarter / 2) + r8) * row + 8 * ks + 4 * (quarter % 2));
                    unroll!(half in [0, 1] {
                        let (b0, s0) = split::<C, MODE>(ctx, f32::from_bits(x[2 * half]));
                        let (b1, s1) = split::<C, MODE>(ctx, f32::from_bits(x[2 * half + 1]));
                        let j = 2 * pair + half;
                        s[j] = mma_tf32::<C, MODE>(ctx, a, ([b0, b1], [s0, s1]), s[j]);
                    });
                });
            }
        }

        // Scores of the lane's cells: s[j][i] is row g + 8 (i / 2), key kt + 8 j + 2 t + i % 2.
        let mut tile_max = [f32::NEG_INFINITY; 2];
        unroll!(j in [0, 1, 2, 3] {
            unroll!(i in [0, 1, 2, 3] {
                let live = kt + 8 * j + 2 * t + i % 2 < n;
                s[j][i] = if live { s[j][i] * scale } else { f32::NEG_INFINITY };
                tile_max[i / 2] = tile_max[i / 2].max(s[j][i]);
            });
        });
        let mut correction = [0.0f32; 2];
        unroll!(r in [0, 1] {
            let m = tile_max[r].max(ctx.shfl_xor_f32(tile_max[r], 1));
            let m = m.max(ctx.shfl_xor_f32(m, 2));
            let new_max = max[r].max(m);
            correction[r] = math::exp(max[r] - new_max);
            max[r] = new_max;
        });
        let mut tile_sum = [0.0f32; 2];
        unroll!(j in [0, 1, 2, 3] {
            unroll!(i in [0, 1, 2, 3] {
                let live = kt + 8 * j + 2 * t + i % 2 < n;
                let p = if live { math::exp(s[j][i] - max[i / 2]) } else { 0.0 };
                // The weight the tensor cores will multiply (3xTF32 multiplies p itself).
                s[j][i] = match MODE {
                    TF32 => ctx.tf32(p),
                    BF16 => bf16_round(ctx, p),
                    _ => p,
                };
                tile_sum[i / 2] += s[j][i];
            });
        });
        unroll!(r in [0, 1] {
            let l = tile_sum[r] + ctx.shfl_xor_f32(tile_sum[r], 1);
            let l = l + ctx.shfl_xor_f32(l, 2);
            sum[r] = ctx.fma(sum[r], correction[r], l);
        });
        unroll!(f in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            unroll!(i in [0, 1, 2, 3] {
                acc[f][i] *= correction[i / 2];
            });
        });

        // O += P V. The lane's V words: column 8 f + g, rows `first` and `second` of the tile.
        let v = |f: usize, key: usize| ctx.shared_load::<f32>(values + key * row + 8 * f + g);
        if MODE == BF16 {
            unroll!(kk in [0, 1] {
                if kt + 16 * kk < n {
                    let (lo, hi) = (s[2 * kk], s[2 * kk + 1]);
                    let a = [
                        ctx.bf16x2(lo[0], lo[1]),
                        ctx.bf16x2(lo[2], lo[3]),
                        ctx.bf16x2(hi[0], hi[1]),
                        ctx.bf16x2(hi[2], hi[3]),
                    ];
                    let key = 16 * kk + 2 * t;
                    unroll!(f in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                        if f < feature_tiles {
                            let bf = [
                                ctx.bf16x2(v(f, key), v(f, key + 1)),
                                ctx.bf16x2(v(f, key + 8), v(f, key + 9)),
                            ];
                            acc[f] = ctx.mma_bf16_m16n8k16(a, bf, acc[f]);
                        }
                    });
                }
            });
        } else {
            unroll!(j in [0, 1, 2, 3] {
                if kt + 8 * j < n {
                    // k t is key 2 t, k t + 4 is key 2 t + 1 (see the module docs).
                    let mut a = ([0u32; 4], [0u32; 4]);
                    unroll!(i in [0, 1, 2, 3] {
                        (a.0[i], a.1[i]) = split::<C, MODE>(ctx, s[j][[0, 2, 1, 3][i]]);
                    });
                    let key = 8 * j + 2 * t;
                    unroll!(f in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                        if f < feature_tiles {
                            let (b0, s0) = split::<C, MODE>(ctx, v(f, key));
                            let (b1, s1) = split::<C, MODE>(ctx, v(f, key + 1));
                            acc[f] = mma_tf32::<C, MODE>(ctx, a, ([b0, b1], [s0, s1]), acc[f]);
                        }
                    });
                }
            });
        }
    }
    ctx.cp_async_wait(0);

    let b_row = b * n;
    unroll!(r in [0, 1] {
        let q = q0 + 16 * warp + g + 8 * r;
        if q < n {
            unroll!(f in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
                unroll!(c in [0, 1] {
                    let d = 8 * f + 2 * t + c;
                    if d < hd {
                        ctx.store(out, (b_row + q) * d_model + sizes.head + d, acc[f][2 * r + c] / sum[r]);
                    }
                });
            });
        }
    });
}
