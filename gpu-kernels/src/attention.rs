//! Multi-head self-attention `softmax(q k^T / sqrt(hd)) v` over the fused `qkv` activations
//! (B N, 3D) of `attn.qkv` (q, k, v each split head-major), one pass over the keys with an online
//! softmax (flash-attention style): no N x N score matrix is ever stored.
//!
//! Mapping: block (i, h, b) handles query tile i (16 queries) of head h of sample b with 4 warps;
//! warp w owns queries `16 i + 4 w .. + 4`. The block stages the query tile in shared memory,
//! then walks the keys in tiles of 32: all 128 threads copy the tile's k and v rows of head h
//! into shared memory (consecutive threads, consecutive features: coalesced; rows padded to an
//! odd stride so that lane j reading row j hits bank `j * stride + d`, all distinct), then for
//! each of its queries a warp
//! * scores key `kt + lane` on lane `lane` (a dot product over the head dimension, the query row
//!   read as a shared-memory broadcast),
//! * takes the tile maximum and the sum of `exp(s - m_new)` with shuffle reductions and rescales
//!   its running sum `l` and accumulator by `exp(m_old - m_new)`,
//! * accumulates `sum_j p_j v_j`, lane `lane` owning output features `lane + 32 i` (i < 4, so
//!   head_dim <= 128), with `p_j` broadcast from lane j by `shfl.idx`.
//!
//! At the end each lane divides its accumulator by `l` and writes its features of the query's
//! head slice of the output (B N, D), concatenated heads, as `attn.proj` expects.

use crate::global::{Global, GlobalMut};
use crate::math;
use crate::reduce::{warp_max, warp_sum};
use crate::thread::{Dim3, LaunchDims, ThreadCtx, WARP_SIZE, div_ceil};

/// Warps per block.
pub const ATTN_WARPS: u32 = 4;
/// Queries each warp carries through the key loop.
pub const ATTN_QUERIES_PER_WARP: u32 = 4;
/// Queries per block.
pub const ATTN_QUERY_TILE: u32 = ATTN_WARPS * ATTN_QUERIES_PER_WARP;
/// Keys per shared-memory tile (one per lane).
pub const ATTN_KEY_TILE: u32 = WARP_SIZE;
/// Largest supported head dimension (4 features per lane).
pub const ATTN_MAX_HEAD_DIM: u32 = 128;
const DIMS_PER_LANE: usize = (ATTN_MAX_HEAD_DIM / WARP_SIZE) as usize;
const Q_WORDS: usize = (ATTN_QUERY_TILE * ATTN_MAX_HEAD_DIM) as usize;
const KV_WORDS: usize = (ATTN_KEY_TILE * (ATTN_MAX_HEAD_DIM + 1)) as usize;
/// Shared memory: the query tile and one key and one value tile (41,216 bytes).
pub const ATTN_SHARED_BYTES: u32 = ((Q_WORDS + 2 * KV_WORDS) * 4) as u32;

const _: () = assert!(ATTN_QUERIES_PER_WARP == 4, "the kernel names its four query states");

/// Where the staged key/value tile lives in shared memory.
struct KeyTile {
    k_base: usize,
    v_base: usize,
    stride: usize,
    hd: usize,
    scale: f32,
}

/// One query's online-softmax state, held by a warp: the running maximum and sum (the same on
/// every lane) and the lane's output features `lane + 32 i`.
#[derive(Clone, Copy)]
struct QueryState {
    max: f32,
    sum: f32,
    acc: [f32; DIMS_PER_LANE],
}

impl QueryState {
    fn new() -> Self {
        Self {
            max: f32::NEG_INFINITY,
            sum: 0.0,
            acc: [0.0; DIMS_PER_LANE],
        }
    }

    /// Folds the staged key tile (`keys_here` keys) into the state of the query whose row starts
    /// at shared word `q_row`.
    #[inline(always)]
    fn attend<C: ThreadCtx>(&mut self, ctx: &C, tile: &KeyTile, q_row: usize, keys_here: usize, lane: usize) {
        let score = if lane < keys_here {
            let mut dot = 0.0f32;
            for d in 0..tile.hd {
                dot += ctx.shared_load::<f32>(q_row + d) * ctx.shared_load::<f32>(tile.k_base + lane * tile.stride + d);
            }
            dot * tile.scale
        } else {
            f32::NEG_INFINITY
        };
        let new_max = self.max.max(warp_max(ctx, score));
        let p = if lane < keys_here {
            math::exp(score - new_max)
        } else {
            0.0
        };
        let correction = math::exp(self.max - new_max);
        self.sum = self.sum * correction + warp_sum(ctx, p);
        for a in self.acc.iter_mut() {
            *a *= correction;
        }
        for kj in 0..keys_here {
            let pj = ctx.shfl_idx_f32(p, kj as u32);
            for (i, a) in self.acc.iter_mut().enumerate() {
                let d = lane + WARP_SIZE as usize * i;
                if d < tile.hd {
                    *a += pj * ctx.shared_load::<f32>(tile.v_base + kj * tile.stride + d);
                }
            }
        }
        self.max = new_max;
    }
}

/// Grid (ceil(N / 16), heads, B) of 128 threads.
pub fn attention_dims(batch: u32, tokens: u32, heads: u32) -> LaunchDims {
    LaunchDims {
        grid: Dim3::new(div_ceil(tokens, ATTN_QUERY_TILE), heads, batch),
        block: Dim3::x(ATTN_WARPS * WARP_SIZE),
        shared_bytes: ATTN_SHARED_BYTES,
    }
}

/// Attention of every head: `qkv` (B N, 3 H hd) to `out` (B N, H hd). `scale` is
/// `1 / sqrt(head_dim)` (computed by the caller like the reference). Needs head_dim <= 128.
pub fn attention<C: ThreadCtx>(
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
    let row_stride = 3 * d_model;
    let stride = hd | 1;
    let (k_base, v_base) = (Q_WORDS, Q_WORDS + KV_WORDS);
    let q_tile = ATTN_QUERY_TILE as usize;
    let key_tile = ATTN_KEY_TILE as usize;
    let q0 = ctx.block_idx_x() as usize * q_tile;
    let head = ctx.block_idx_y() as usize * hd;
    let b = ctx.block_idx_z() as usize;
    let tid = ctx.thread_idx_x() as usize;
    let threads = ctx.block_dim_x() as usize;
    let lane = ctx.lane_id() as usize;
    let first_query = ctx.warp_id() as usize * ATTN_QUERIES_PER_WARP as usize;
    let row = |token: usize| (b * n + token) * row_stride;

    let mut e = tid;
    while e < q_tile * hd {
        let (qi, d) = (e / hd, e % hd);
        let q = q0 + qi;
        let v = if q < n { ctx.load(qkv, row(q) + head + d) } else { 0.0 };
        ctx.shared_store(e, v);
        e += threads;
    }

    // Four named states (not an indexed array) so that they stay in registers on the GPU.
    let mut states = [QueryState::new(); 4];
    let tile = KeyTile {
        k_base,
        v_base,
        stride,
        hd,
        scale,
    };

    let mut kt = 0;
    while kt < n {
        // The query tile is staged (first pass) and the previous key tile consumed (later ones).
        ctx.sync_threads();
        let mut e = tid;
        while e < key_tile * hd {
            let (kj, d) = (e / hd, e % hd);
            let key = kt + kj;
            let (kv, vv) = if key < n {
                let base = row(key) + head + d;
                (ctx.load(qkv, base + d_model), ctx.load(qkv, base + 2 * d_model))
            } else {
                (0.0, 0.0)
            };
            ctx.shared_store(k_base + kj * stride + d, kv);
            ctx.shared_store(v_base + kj * stride + d, vv);
            e += threads;
        }
        ctx.sync_threads();

        let keys_here = key_tile.min(n - kt);
        let [s0, s1, s2, s3] = &mut states;
        s0.attend(ctx, &tile, first_query * hd, keys_here, lane);
        s1.attend(ctx, &tile, (first_query + 1) * hd, keys_here, lane);
        s2.attend(ctx, &tile, (first_query + 2) * hd, keys_here, lane);
        s3.attend(ctx, &tile, (first_query + 3) * hd, keys_here, lane);
        kt += key_tile;
    }

    for (j, state) in states.iter().enumerate() {
        let q = q0 + first_query + j;
        if q >= n {
            continue;
        }
        let inv = 1.0 / state.sum;
        for (i, a) in state.acc.iter().enumerate() {
            let d = lane + WARP_SIZE as usize * i;
            if d < hd {
                ctx.store(out, (b * n + q) * d_model + head + d, *a * inv);
            }
        }
    }
}
