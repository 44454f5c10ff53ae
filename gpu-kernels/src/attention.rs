//! Multi-head self-attention `softmax(q k^T / sqrt(hd)) v` over the fused `qkv` activations
//! (B N, 3D) of `attn.qkv` (q, k, v each split head-major), FlashAttention-2 style: one pass over
//! the keys with an online softmax held in registers, no N x N score matrix stored anywhere.
//!
//! Mapping: block (i, h, b) handles query tile i (32 queries) of head h of sample b with 4 warps;
//! warp w owns the 8 queries `32 i + 8 w .. + 8` for the whole key loop. The block stages its
//! query tile once, transposed (`qt[d][q]`), then walks the keys in tiles of 16, double-buffered
//! in shared memory: while the warps work on tile t, the threads have already copied tile t + 1
//! into the other buffer, so one barrier per tile suffices (a buffer is rewritten only after the
//! barrier that ends the tile which read it). Per tile, a warp
//! * scores: lane `16 g + j` computes the scores of key j against the warp's queries `4 g .. + 4`
//!   (four FMA chains over the head dimension; the key tile is stored transposed, `kt[d][j]`, so
//!   the 16 lanes of a half-warp read 16 consecutive words and both halves the same ones, and the
//!   query words of the two halves sit 4 banks apart: no bank conflict);
//! * takes each query's tile maximum and sum of `exp(s - m_new)` with butterfly shuffles within
//!   the half-warp, trades them with the other half (`shfl.xor 16`), so that every lane holds the
//!   running maximum `m` and sum `l` of all 8 queries, and rescales its accumulators by
//!   `exp(m_old - m_new)`;
//! * accumulates `sum_j p_j v_j`: lane `lane` owns the output features `lane + 32 s` (s < 4, so
//!   head_dim <= 128) of the 8 queries, 32 accumulators, with `p_j` broadcast by `shfl.idx` and
//!   `v_j` read as a row (consecutive lanes, consecutive words).
//!
//! Every multiply-add is one `fma.rn.f32` ([`ThreadCtx::fma`]) and the exponential is the
//! software [`math::exp`], so the GPU and the simulator agree bit for bit.
//!
//! Head dimensions that are not a multiple of 32 (DiT's 72, say) are not padded: the score loop
//! walks exactly `hd` features, and in the `p v` loop the last feature slot is live on `hd % 32`
//! lanes (for 72, slot 2 on lanes 0..8: 9 of every 12 FMA slots do work).
//!
//! At the end each lane divides its accumulators by `l` and writes its features of the query's
//! head slice of the output (B N, D), concatenated heads, as `attn.proj` expects.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// Warps per block.
pub const ATTN_WARPS: u32 = 4;
/// Queries each warp carries through the key loop.
pub const ATTN_QUERIES_PER_WARP: u32 = 8;
/// Queries per block.
pub const ATTN_QUERY_TILE: u32 = ATTN_WARPS * ATTN_QUERIES_PER_WARP;
/// Keys per shared-memory tile (one per lane of a half-warp).
pub const ATTN_KEY_TILE: u32 = WARP_SIZE / 2;
/// Largest supported head dimension (4 features per lane).
pub const ATTN_MAX_HEAD_DIM: u32 = 128;

const QUERIES: usize = ATTN_QUERIES_PER_WARP as usize;
/// Queries a lane scores (those of its half-warp).
const LANE_QUERIES: usize = QUERIES / 2;
/// Output feature slots per lane.
const SLOTS: usize = (ATTN_MAX_HEAD_DIM / WARP_SIZE) as usize;
const HALF: usize = ATTN_KEY_TILE as usize;
const Q_WORDS: usize = (ATTN_QUERY_TILE * ATTN_MAX_HEAD_DIM) as usize;
const TILE_WORDS: usize = (ATTN_KEY_TILE * ATTN_MAX_HEAD_DIM) as usize;
/// Shared memory: the transposed query tile and two buffers of one transposed key tile and one
/// value tile each (49,152 bytes, the static limit).
pub const ATTN_SHARED_BYTES: u32 = ((Q_WORDS + 4 * TILE_WORDS) * 4) as u32;

const _: () = assert!(
    QUERIES == 2 * LANE_QUERIES && LANE_QUERIES == 4,
    "two half-warps of four queries"
);
const _: () = assert!(HALF == 16, "the half-warp butterfly is written out for 16 lanes");
const _: () = assert!(ATTN_SHARED_BYTES <= 48 * 1024, "static shared memory is at most 48 KiB");

/// Runs `$body` once per listed index, written out, so that the arrays it indexes are indexed by
/// constants only and stay in registers on the GPU (LLVM leaves loops around the branchy
/// software `exp` rolled, and a rolled loop indexes its arrays in local memory).
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {{
        $({
            let $i: usize = $n;
            $body
        })*
    }};
}

/// Where buffer `buffer` (0 or 1) of the key tiles starts: the transposed keys `kt[d][j]`, then
/// the values `v[j][d]`.
const fn key_base(buffer: usize) -> usize {
    Q_WORDS + buffer * 2 * TILE_WORDS
}

/// Grid (ceil(N / 32), heads, B) of 128 threads.
pub fn attention_dims(batch: u32, tokens: u32, heads: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(tokens, ATTN_QUERY_TILE), heads, batch),
        block: Dim3::x(ATTN_WARPS * WARP_SIZE),
        shared_bytes: ATTN_SHARED_BYTES,
    }
}

/// Copies keys `kt .. kt + 16` of the head (zeros past the last token) into buffer `buffer`.
#[inline(always)]
fn stage_keys<C: ThreadCtx>(ctx: &C, qkv: Global<'_, f32>, buffer: usize, kt: usize, sizes: &Sizes) {
    let (tid, threads) = (ctx.thread_idx_x() as usize, ctx.block_dim_x() as usize);
    let hd = sizes.hd;
    let base = key_base(buffer);
    // Keys: thread e takes feature e / 16 of key e % 16, so the shared stores are consecutive
    // (the global reads of a half-warp hit 16 rows; the following features come from L1).
    let mut e = tid;
    while e < HALF * hd {
        let (d, j) = (e / HALF, e % HALF);
        let key = kt + j;
        let value = if key < sizes.n {
            ctx.load(qkv, sizes.row(key) + sizes.d_model + sizes.head + d)
        } else {
            0.0
        };
        ctx.shared_store(base + e, value);
        e += threads;
    }
    // Values: row-major, consecutive threads read consecutive features of a row.
    let mut e = tid;
    while e < HALF * hd {
        let (j, d) = (e / hd, e % hd);
        let key = kt + j;
        let value = if key < sizes.n {
            ctx.load(qkv, sizes.row(key) + 2 * sizes.d_model + sizes.head + d)
        } else {
            0.0
        };
        ctx.shared_store(base + TILE_WORDS + e, value);
        e += threads;
    }
}

/// The sizes and offsets of a launch.
struct Sizes {
    n: usize,
    hd: usize,
    d_model: usize,
    head: usize,
    /// First element of sample b's rows.
    sample: usize,
}

impl Sizes {
    /// First element of token `token`'s row of `qkv`.
    #[inline(always)]
    fn row(&self, token: usize) -> usize {
        self.sample + token * 3 * self.d_model
    }
}

/// A butterfly over the 16 lanes of a half-warp (masks 8, 4, 2, 1): every lane of the half ends
/// with `combine` of the half's 16 values. Written out (no loop), so that the loops over the
/// lane's queries around it unroll and their arrays stay in registers.
#[track_caller]
#[inline(always)]
fn half_warp_reduce<C: ThreadCtx>(ctx: &C, value: f32, combine: impl Fn(f32, f32) -> f32) -> f32 {
    let value = combine(value, ctx.shfl_xor_f32(value, 8));
    let value = combine(value, ctx.shfl_xor_f32(value, 4));
    let value = combine(value, ctx.shfl_xor_f32(value, 2));
    combine(value, ctx.shfl_xor_f32(value, 1))
}

/// The 8 queries' values from each lane's 4 (those of its half-warp `half`): queries `4 half ..`
/// are the lane's own, the others come from the lane 16 apart.
#[track_caller]
#[inline(always)]
fn both_halves<C: ThreadCtx>(ctx: &C, own: [f32; LANE_QUERIES], half: usize) -> [f32; QUERIES] {
    let mut all = [0.0f32; QUERIES];
    for r in 0..LANE_QUERIES {
        let other = ctx.shfl_xor_f32(own[r], HALF as u32);
        let (first, second) = if half == 0 { (own[r], other) } else { (other, own[r]) };
        all[r] = first;
        all[LANE_QUERIES + r] = second;
    }
    all
}

/// Attention of every head: `qkv` (B N, 3 H hd) to `out` (B N, H hd). `scale` is
/// `1 / sqrt(head_dim)` (computed by the caller like the reference). Needs head_dim <= 128.
pub fn flash_attention<C: ThreadCtx>(
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
        d_model,
        head: ctx.block_idx_y() as usize * hd,
        sample: b * n * 3 * d_model,
    };
    let q_tile = ATTN_QUERY_TILE as usize;
    let q0 = ctx.block_idx_x() as usize * q_tile;
    let (tid, threads) = (ctx.thread_idx_x() as usize, ctx.block_dim_x() as usize);
    let lane = ctx.lane_id() as usize;
    let (half, key) = (lane / HALF, lane % HALF);
    let first_query = ctx.warp_id() as usize * QUERIES;
    // The lane's 4 queries in the transposed tile: qt[d][first_query + 4 half + r].
    let my_queries = first_query + LANE_QUERIES * half;

    // The query tile, transposed: thread e takes feature e / 32 of query e % 32 (consecutive
    // shared stores; staged once per block).
    let mut e = tid;
    while e < q_tile * hd {
        let (d, qi) = (e / q_tile, e % q_tile);
        let q = q0 + qi;
        let value = if q < n {
            ctx.load(qkv, sizes.row(q) + sizes.head + d)
        } else {
            0.0
        };
        ctx.shared_store(e, value);
        e += threads;
    }
    stage_keys(ctx, qkv, 0, 0, &sizes);

    let mut max = [f32::NEG_INFINITY; QUERIES];
    let mut sum = [0.0f32; QUERIES];
    let mut acc = [[0.0f32; SLOTS]; QUERIES];
    let tiles = n.div_ceil(HALF);
    for t in 0..tiles {
        // Tile t is staged (the previous iteration or the prologue), and every warp is done
        // with tile t - 1, whose buffer the next stage rewrites.
        ctx.sync_threads();
        let kt = t * HALF;
        if t + 1 < tiles {
            stage_keys(ctx, qkv, (t + 1) % 2, kt + HALF, &sizes);
        }
        let base = key_base(t % 2);
        let keys_here = HALF.min(n - kt);

        // Scores of key `key` against the lane's 4 queries.
        let mut dot = [0.0f32; LANE_QUERIES];
        for d in 0..hd {
            let k = ctx.shared_load::<f32>(base + d * HALF + key);
            for (r, dot) in dot.iter_mut().enumerate() {
                *dot = ctx.fma(ctx.shared_load::<f32>(d * q_tile + my_queries + r), k, *dot);
            }
        }
        let live = key < keys_here;
        let mut score = [f32::NEG_INFINITY; LANE_QUERIES];
        let mut tile_max = [f32::NEG_INFINITY; LANE_QUERIES];
        unroll!(r in [0, 1, 2, 3] {
            if live {
                score[r] = dot[r] * scale;
            }
            tile_max[r] = half_warp_reduce(ctx, score[r], f32::max);
        });
        let tile_max = both_halves(ctx, tile_max, half);
        let mut new_max = [0.0f32; QUERIES];
        let mut correction = [0.0f32; QUERIES];
        unroll!(qi in [0, 1, 2, 3, 4, 5, 6, 7] {
            new_max[qi] = max[qi].max(tile_max[qi]);
            correction[qi] = math::exp(max[qi] - new_max[qi]);
        });
        let mut p = [0.0f32; LANE_QUERIES];
        let mut tile_sum = [0.0f32; LANE_QUERIES];
        unroll!(r in [0, 1, 2, 3] {
            let own_max = if half == 0 {
                new_max[r]
            } else {
                new_max[LANE_QUERIES + r]
            };
            if live {
                p[r] = math::exp(score[r] - own_max);
            }
            tile_sum[r] = half_warp_reduce(ctx, p[r], |a, b| a + b);
        });
        let tile_sum = both_halves(ctx, tile_sum, half);
        for qi in 0..QUERIES {
            sum[qi] = ctx.fma(sum[qi], correction[qi], tile_sum[qi]);
            max[qi] = new_max[qi];
            for a in acc[qi].iter_mut() {
                *a *= correction[qi];
            }
        }

        // acc[q][s] += p[q][j] v[j][lane + 32 s] over the tile's keys.
        for j in 0..keys_here {
            let v_row = base + TILE_WORDS + j * hd;
            let mut pj = [0.0f32; QUERIES];
            for r in 0..LANE_QUERIES {
                pj[r] = ctx.shfl_idx_f32(p[r], j as u32);
                pj[LANE_QUERIES + r] = ctx.shfl_idx_f32(p[r], (HALF + j) as u32);
            }
            for s in 0..SLOTS {
                let d = lane + WARP_SIZE as usize * s;
                if d < hd {
                    let v = ctx.shared_load::<f32>(v_row + d);
                    for (acc, &pj) in acc.iter_mut().zip(&pj) {
                        acc[s] = ctx.fma(pj, v, acc[s]);
                    }
                }
            }
        }
    }

    for (qi, (acc, sum)) in acc.iter().zip(&sum).enumerate() {
        let q = q0 + first_query + qi;
        if q >= n {
            continue;
        }
        let inv = 1.0 / sum;
        for (s, a) in acc.iter().enumerate() {
            let d = lane + WARP_SIZE as usize * s;
            if d < hd {
                ctx.store(out, (b * n + q) * d_model + sizes.head + d, a * inv);
            }
        }
    }
}
