//! Which exact FMA GEMM computes a linear layer of a given shape ([`choose_gemm`]), and the
//! launches of that choice ([`linear`]). Both backends go through here (the pipeline's
//! [`DeviceLinear`](super::model::DeviceLinear)), so the simulator runs exactly the kernels the
//! GPU runs.
//!
//! The rule, for an (M, N) output with K-long dot products:
//! 1. 128 x 128 tiles (8 x 8 outputs per thread: the most work per shared-memory load) when they
//!    give at least [`GEMM_WAVE_BLOCKS`] blocks, one per streaming multiprocessor of an H100;
//! 2. otherwise, for few rows (M <= [`SPLITK_MAX_ROWS`], a sparse step's proxies) whose 64 x 64
//!    grid leaves multiprocessors idle, split-K: K cut into up to [`SPLITK_MAX_SPLITS`] ranges of
//!    at least [`SPLITK_MIN_K`] so that the grid approaches one wave, partial products into the
//!    model's workspace, then one reduction that sums them in split order and applies the
//!    epilogue;
//! 3. otherwise 64 x 64 tiles (4 x 4 per thread, four times the blocks of 128 x 128).
//!
//! Every choice is exact (GPU and simulator agree bit for bit); the split-K result differs from
//! the unsplit one in rounding only, and the choice depends on the shape alone, so a run is
//! deterministic.

use resca_gpu_kernels::gemm_tiled::{TILED_K, splitk_ranges, tile_side};

use super::device::{Device, DeviceError, Slice};
use super::launch::{self, Epilogue, GemmTile};

/// Blocks that occupy every multiprocessor of an H100 SXM (132 SMs) once.
pub const GEMM_WAVE_BLOCKS: usize = 132;
/// Split-K is considered for at most this many rows.
pub const SPLITK_MAX_ROWS: usize = 128;
/// At most this many K ranges.
pub const SPLITK_MAX_SPLITS: usize = 8;
/// Each K range is at least this long (16 shared-memory tiles), so that the partial products'
/// traffic stays small next to the arithmetic.
pub const SPLITK_MIN_K: usize = 16 * TILED_K as usize;

/// How one (M, N, K) product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPlan {
    /// One tiled kernel with the epilogue fused.
    Tiled(GemmTile),
    /// `splits` partial products over `k_per_split` k each, then the reduction with the epilogue.
    SplitK { splits: usize, k_per_split: usize },
}

/// Values of the split-K workspace a model with layers of at most `max_n` outputs needs:
/// [`choose_gemm`] never plans more partial products than this holds.
pub fn splitk_workspace_len(max_n: usize) -> usize {
    SPLITK_MAX_SPLITS * SPLITK_MAX_ROWS * max_n
}

fn blocks(m: usize, n: usize, tile: GemmTile) -> usize {
    let side = tile_side(tile.micro()) as usize;
    m.div_ceil(side) * n.div_ceil(side)
}

/// The GEMM for an (M, N) output over K (see the [module](self) for the rule); `workspace_len`
/// bounds the split-K partial products (`splits M N` values).
pub fn choose_gemm(m: usize, n: usize, k: usize, workspace_len: usize) -> GemmPlan {
    if blocks(m, n, GemmTile::Tile128) >= GEMM_WAVE_BLOCKS {
        return GemmPlan::Tiled(GemmTile::Tile128);
    }
    let blocks64 = blocks(m, n, GemmTile::Tile64);
    if m <= SPLITK_MAX_ROWS && blocks64 < GEMM_WAVE_BLOCKS && m * n > 0 {
        let wanted = GEMM_WAVE_BLOCKS.div_ceil(blocks64);
        let splits = wanted
            .min(k / SPLITK_MIN_K)
            .min(SPLITK_MAX_SPLITS)
            .min(workspace_len / (m * n));
        if splits >= 2 {
            let (k_per_split, splits) = splitk_ranges(k as u32, splits as u32);
            if splits >= 2 {
                return GemmPlan::SplitK {
                    splits: splits as usize,
                    k_per_split: k_per_split as usize,
                };
            }
        }
    }
    GemmPlan::Tiled(GemmTile::Tile64)
}

/// What a GEMM does with `A W^T + b`.
#[derive(Clone, Copy, Debug)]
pub enum GemmOutput {
    /// `out = epilogue(A W^T + b)`.
    Store { out: Slice<f32>, epilogue: Epilogue },
    /// `x += gate * (A W^T + b)`, row r gated by `gate[(r / tokens) gate_stride + gate_offset ..]`.
    GatedResidual {
        x: Slice<f32>,
        gate: Slice<f32>,
        tokens: usize,
        gate_stride: usize,
        gate_offset: usize,
    },
}

/// `A (M, K) W^T (W: N x K) + b` into `output`, on the kernels [`choose_gemm`] picks;
/// `workspace` holds the split-K partial products (it may be empty: no split then).
#[allow(clippy::too_many_arguments)] // the GEMM's operands and sizes
pub fn linear<D: Device>(
    dev: &mut D,
    a: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
    output: GemmOutput,
    workspace: Slice<f32>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<(), DeviceError> {
    match (choose_gemm(m, n, k, workspace.len), output) {
        (GemmPlan::Tiled(tile), GemmOutput::Store { out, epilogue }) => {
            launch::gemm_tiled(dev, tile, a, w, bias, out, m, n, k, epilogue)
        }
        (
            GemmPlan::Tiled(tile),
            GemmOutput::GatedResidual {
                x,
                gate,
                tokens,
                gate_stride,
                gate_offset,
            },
        ) => launch::gemm_tiled_gated_residual(
            dev,
            tile,
            a,
            w,
            bias,
            x,
            gate,
            m,
            n,
            k,
            tokens,
            gate_stride,
            gate_offset,
        ),
        (GemmPlan::SplitK { splits, k_per_split }, output) => {
            launch::gemm_splitk_partial(dev, a, w, workspace, m, n, k, k_per_split)?;
            match output {
                GemmOutput::Store { out, epilogue } => {
                    launch::gemm_splitk_reduce(dev, workspace, bias, out, m, n, splits, epilogue)
                }
                GemmOutput::GatedResidual {
                    x,
                    gate,
                    tokens,
                    gate_stride,
                    gate_offset,
                } => launch::gemm_splitk_gated_residual(
                    dev,
                    workspace,
                    bias,
                    x,
                    gate,
                    m,
                    n,
                    splits,
                    tokens,
                    gate_stride,
                    gate_offset,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XL_WORKSPACE: usize = SPLITK_MAX_SPLITS * SPLITK_MAX_ROWS * 4608;

    #[test]
    fn dit_xl_shapes_get_the_planned_kernels() {
        // Batch 2 x 256 tokens: fc1 (N 4608) fills a wave with 128 tiles; proj (N 1152) does not.
        assert_eq!(
            choose_gemm(512, 4608, 1152, XL_WORKSPACE),
            GemmPlan::Tiled(GemmTile::Tile128)
        );
        assert_eq!(
            choose_gemm(512, 1152, 1152, XL_WORKSPACE),
            GemmPlan::Tiled(GemmTile::Tile64)
        );
        assert_eq!(
            choose_gemm(1024, 3456, 1152, XL_WORKSPACE),
            GemmPlan::Tiled(GemmTile::Tile128)
        );
        // A sparse step's 64 proxy rows: fc2 (K 4608) on 18 blocks becomes 8 splits of 576.
        assert_eq!(
            choose_gemm(64, 1152, 4608, XL_WORKSPACE),
            GemmPlan::SplitK {
                splits: 8,
                k_per_split: 576
            }
        );
        // qkv (54 blocks of 64): 3 splits of 384.
        assert_eq!(
            choose_gemm(64, 3456, 1152, XL_WORKSPACE),
            GemmPlan::SplitK {
                splits: 3,
                k_per_split: 384
            }
        );
    }

    #[test]
    fn split_k_needs_few_rows_a_long_k_and_room_in_the_workspace() {
        assert_eq!(
            choose_gemm(129, 64, 4096, usize::MAX),
            GemmPlan::Tiled(GemmTile::Tile64)
        );
        assert_eq!(choose_gemm(64, 64, 255, usize::MAX), GemmPlan::Tiled(GemmTile::Tile64));
        assert_eq!(
            choose_gemm(64, 64, 256, usize::MAX),
            GemmPlan::SplitK {
                splits: 2,
                k_per_split: 128
            }
        );
        // Room for 2 partial products of 64 x 64 only.
        assert_eq!(
            choose_gemm(64, 64, 4096, 2 * 64 * 64),
            GemmPlan::SplitK {
                splits: 2,
                k_per_split: 2048
            }
        );
        assert_eq!(choose_gemm(64, 64, 4096, 0), GemmPlan::Tiled(GemmTile::Tile64));
        // Never more values than the workspace of the widest layer holds.
        for (m, n, k) in [(1, 4608, 1152), (128, 4608, 1152), (128, 1152, 4608), (17, 3456, 1152)] {
            if let GemmPlan::SplitK { splits, k_per_split } = choose_gemm(m, n, k, splitk_workspace_len(4608)) {
                assert!(splits * m * n <= splitk_workspace_len(4608));
                assert!(splits <= SPLITK_MAX_SPLITS && k_per_split >= SPLITK_MIN_K);
                assert!((splits - 1) * k_per_split < k, "no empty range");
            }
        }
    }
}
