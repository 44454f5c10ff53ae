//! `x W^T + b` for products of a few token rows (a cached method's sparse-step tokens: ResCa's
//! proxies, ClusCa's picks), with the rows of `x` in the SIMD lanes: a register tile holds up
//! to 32 rows (four AVX2 registers of 8 lanes) by 3 outputs, and each step of the depth loads
//! that input of those rows and broadcasts one weight per output.
//!
//! [`crate::gemm`]'s kernel does the opposite (one value of `x` broadcast, 16 weights loaded),
//! which suits its products of 1-6 rows, but at 32 rows its pass of `x` (32 rows x 256 inputs =
//! 32 KiB) fills L1 and is read again for every panel of 16 outputs, while each panel's weights
//! arrive from L3 or memory. Here the weights stream once, in order, each used for all the rows
//! at once, and the only reuse is of `x` (figures at [`LanePackedWeights`]).
//!
//! The sums are exactly those of [`crate::gemm`]: an output starts at its bias and gets one sum
//! per depth block of [`DEPTH`] inputs, each accumulated from zero in input order (fused
//! multiply-adds with AVX2, multiply then add in the portable kernel). So both kernels give the
//! same bits, and a row's outputs do not depend on the rows beside it (tested).
//!
//! Layout: [`crate::gemm`]'s ([`SliceLayout`]) with slices of [`GROUP`] outputs instead of
//! panels of 16, the groups zero-padded to a multiple of [`QUAD`].

use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use crate::gemm::{DEPTH, Kernel, SliceLayout};
use crate::ops::row_chunks;

/// Outputs per weight group: the outputs of a 32-row tile (3 x 4 accumulators, 3 broadcast
/// weights and one register of `x`: the 16 AVX2 registers).
pub const GROUP: usize = 3;

/// Groups are padded to a multiple of this: the tile of 8 rows takes 4 groups at a time.
const QUAD: usize = 4;

/// Rows per SIMD register.
const LANES: usize = 8;

/// Rows per chunk of `x`: four registers of [`LANES`].
const CHUNK_ROWS: usize = 4 * LANES;

/// Weights ahead of the one in use that the kernel asks the memory for: 64 steps of the depth
/// (12 cache lines), ~400 cycles of the sweep, about a memory access.
const PREFETCH_AHEAD: usize = 64 * GROUP;

/// The weights of an `nn.Linear` (out, in), packed in groups of [`GROUP`] outputs for
/// products of a few rows (see the module doc).
///
/// Measured on a 2-core AMD EPYC Zen 3, ResCa-IE with one full step then 48 sparse ones on
/// DiT-B/2 (2 x 16 proxies through fc1 and fc2 of 12 blocks per sparse step, both cores),
/// three alternated pairs of runs: the proxies' MLP took 34-35 ms a sparse step against 43-45
/// ms with [`crate::gemm::PackedWeights`], and the sparse step 49-50 ms against 60-62 ms.
/// (In C, the two loop nests alone on one core, weights from L3: 70-93 against 52-63 GFLOP/s.)
#[derive(Clone, Debug, PartialEq)]
pub struct LanePackedWeights {
    outputs: usize,
    inputs: usize,
    /// Groups in the layout: `outputs / GROUP` rounded up to a multiple of [`QUAD`].
    groups: usize,
    values: Vec<f32>,
}

impl LanePackedWeights {
    /// Packs a weight matrix of shape (out, in).
    pub fn pack(weight: ArrayView2<f32>) -> Self {
        let (outputs, inputs) = weight.dim();
        let mut packed = Self {
            outputs,
            inputs,
            groups: outputs.div_ceil(GROUP).div_ceil(QUAD) * QUAD,
            values: Vec::new(),
        };
        packed.values = packed.layout().pack(weight);
        packed
    }

    /// The layout of `values`: groups of [`GROUP`] outputs.
    fn layout(&self) -> SliceLayout {
        SliceLayout {
            inputs: self.inputs,
            width: GROUP,
            slices: self.groups,
        }
    }

    /// The weight matrix (out, in) again.
    pub fn unpack(&self) -> Array2<f32> {
        self.layout().unpack(&self.values, self.outputs)
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// `x W^T + b` for token rows `x` (rows, in). Products large enough are split over the
    /// cores by output groups, so each core streams only its share of the weights.
    pub fn linear(&self, x: ArrayView2<f32>, bias: ArrayView1<f32>) -> Array2<f32> {
        self.linear_lanes(&LaneRows::pack(x), bias).unpack()
    }

    /// [`Self::linear`] from and to the lanes layout: the outputs come out as the next layer's
    /// inputs, so that a chain of products (an MLP) transposes its rows only at either end.
    pub fn linear_lanes(&self, x: &LaneRows, bias: ArrayView1<f32>) -> LaneRows {
        assert_eq!(
            x.inputs, self.inputs,
            "x has {} columns, the weights {} inputs",
            x.inputs, self.inputs
        );
        assert_eq!(bias.len(), self.outputs, "one bias per output");
        // Each chunk's outputs: every group's, padding included (`values[o * lanes + lane]`).
        let padded_outputs = self.groups * GROUP;
        let mut y = LaneRows::zeros(x, self.outputs, padded_outputs);
        let kernel = Kernel::detect();
        let quads = self.groups / QUAD;
        let cores = row_chunks(quads, x.rows * self.inputs * self.outputs);
        let quads_per_core = quads.div_ceil(cores.max(1)).max(1);
        for (chunk, chunk_y) in x.chunks.iter().zip(y.chunk_values_mut(padded_outputs)) {
            let part_len = quads_per_core * QUAD * GROUP * chunk.lanes;
            let work = |(core, part): (usize, &mut [f32])| {
                let first = core * quads_per_core * QUAD;
                let groups = first..(first + quads_per_core * QUAD).min(self.groups);
                self.multiply(kernel, x, chunk, bias, part, groups);
            };
            if cores <= 1 {
                work((0, chunk_y));
            } else {
                chunk_y.par_chunks_mut(part_len).enumerate().for_each(work);
            }
        }
        y
    }

    /// `chunk`'s rows of `x W^T + b` for the outputs of `groups`, into `sums`
    /// (`sums[o * lanes + lane]`, output `o` counted from `groups.start * GROUP`).
    fn multiply(
        &self,
        kernel: Kernel,
        x: &LaneRows,
        chunk: &LaneChunk,
        bias: ArrayView1<f32>,
        sums: &mut [f32],
        groups: Range<usize>,
    ) {
        let lanes = chunk.lanes;
        let first_output = groups.start * GROUP;
        // The sums start from the biases (zero for padding outputs).
        for (o, lanes_of_o) in sums.chunks_mut(lanes).enumerate() {
            lanes_of_o.fill(bias.get(first_output + o).copied().unwrap_or(0.0));
        }
        let tile_groups = kernel.lane_tile_groups(lanes / LANES);
        for depth_start in (0..self.inputs).step_by(DEPTH) {
            let depth = DEPTH.min(self.inputs - depth_start);
            let block_x = x.block(chunk, depth_start, depth);
            let group_len = depth * GROUP;
            for group in groups.clone().step_by(tile_groups) {
                let start = self.layout().slice_start(depth_start, group);
                let weights = &self.values[start..][..tile_groups * group_len];
                let tile_sums = &mut sums[(group - groups.start) * GROUP * lanes..][..tile_groups * GROUP * lanes];
                kernel.run_lanes(block_x, weights, group_len, tile_sums);
            }
        }
    }
}

/// One chunk of at most [`CHUNK_ROWS`] rows of `x`, padded to a multiple of [`LANES`].
struct LaneChunk {
    rows: Range<usize>,
    /// Rows with padding: 8, 16, 24 or 32.
    lanes: usize,
    /// Where its values start in [`LaneRows::values`].
    start: usize,
}

/// Token rows in the kernel's layout: chunks of [`CHUNK_ROWS`] rows, each stored input-major
/// (`chunk[k * lanes + r]`), so that one input of the chunk's rows is one to four registers.
/// Padding rows (and, after a product, padding outputs) hold values that are never read back.
pub struct LaneRows {
    rows: usize,
    inputs: usize,
    chunks: Vec<LaneChunk>,
    values: Vec<f32>,
}

impl LaneRows {
    /// The rows of `x` (rows, inputs), padding rows zero.
    pub fn pack(x: ArrayView2<f32>) -> Self {
        let (rows, inputs) = x.dim();
        let mut packed = Self::with_rows(rows, inputs, inputs);
        for chunk in &packed.chunks {
            let values = &mut packed.values[chunk.start..][..chunk.lanes * inputs];
            for (lane, row) in x
                .slice(ndarray::s![chunk.rows.clone(), ..])
                .rows()
                .into_iter()
                .enumerate()
            {
                for (k, &value) in row.iter().enumerate() {
                    values[k * chunk.lanes + lane] = value;
                }
            }
        }
        packed
    }

    /// Zeros for the rows of `like`, `inputs` wide, each chunk holding `stored >= inputs` values
    /// per row.
    fn zeros(like: &LaneRows, inputs: usize, stored: usize) -> Self {
        Self::with_rows(like.rows, inputs, stored)
    }

    fn with_rows(rows: usize, inputs: usize, stored: usize) -> Self {
        let mut chunks = Vec::new();
        let mut start = 0;
        for first in (0..rows).step_by(CHUNK_ROWS) {
            let chunk_rows = first..(first + CHUNK_ROWS).min(rows);
            let lanes = chunk_rows.len().div_ceil(LANES) * LANES;
            chunks.push(LaneChunk {
                rows: chunk_rows,
                lanes,
                start,
            });
            start += lanes * stored;
        }
        Self {
            rows,
            inputs,
            chunks,
            values: vec![0.0f32; start],
        }
    }

    /// The rows again (rows, inputs).
    pub fn unpack(&self) -> Array2<f32> {
        let mut x = Array2::<f32>::zeros((self.rows, self.inputs));
        for chunk in &self.chunks {
            let values = &self.values[chunk.start..];
            for (lane, mut row) in x
                .slice_mut(ndarray::s![chunk.rows.clone(), ..])
                .rows_mut()
                .into_iter()
                .enumerate()
            {
                for (k, value) in row.iter_mut().enumerate() {
                    *value = values[k * chunk.lanes + lane];
                }
            }
        }
        x
    }

    /// Every stored value, padding included, for element-wise functions (an activation).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }

    /// Each chunk's values, `stored` per row.
    fn chunk_values_mut(&mut self, stored: usize) -> impl Iterator<Item = &mut [f32]> {
        let mut rest = self.values.as_mut_slice();
        self.chunks.iter().map(move |chunk| {
            let (values, tail) = std::mem::take(&mut rest).split_at_mut(chunk.lanes * stored);
            rest = tail;
            values
        })
    }

    /// `depth` inputs from `depth_start` of `chunk`'s rows.
    fn block(&self, chunk: &LaneChunk, depth_start: usize, depth: usize) -> &[f32] {
        debug_assert!(depth_start + depth <= self.inputs);
        &self.values[chunk.start + depth_start * chunk.lanes..][..depth * chunk.lanes]
    }
}

impl Kernel {
    /// Groups per tile for `vectors` registers of rows: 12 accumulators in all.
    fn lane_tile_groups(self, vectors: usize) -> usize {
        match vectors {
            1 => 4,
            2 => 2,
            _ => 1,
        }
    }

    /// `sums[o * lanes + r] += sum_k x[k * lanes + r] * w[g * group_len + k * GROUP + j]` for
    /// the tile's outputs `o = g * GROUP + j`, over the depth `group_len / GROUP`, with
    /// `lanes = x.len() / depth`, each sum accumulated from zero first.
    fn run_lanes(self, x: &[f32], w: &[f32], group_len: usize, sums: &mut [f32]) {
        let depth = group_len / GROUP;
        let lanes = x.len() / depth.max(1);
        let groups = self.lane_tile_groups(lanes / LANES);
        assert!(
            group_len == depth * GROUP
                && x.len() == depth * lanes
                && lanes.is_multiple_of(LANES)
                && (LANES..=CHUNK_ROWS).contains(&lanes)
                && w.len() == groups * group_len
                && sums.len() == groups * GROUP * lanes,
            "a tile of {lanes} rows by {groups} groups over a depth of {depth}"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected (AVX-512 CPUs run this AVX2 kernel too); the
            // sizes were checked above.
            Kernel::Avx2Fma | Kernel::Avx512 => unsafe {
                match lanes / LANES {
                    4 => avx2::tile::<4, 1>(x, w, group_len, sums),
                    3 => avx2::tile::<3, 1>(x, w, group_len, sums),
                    2 => avx2::tile::<2, 2>(x, w, group_len, sums),
                    _ => avx2::tile::<1, 4>(x, w, group_len, sums),
                }
            },
            Kernel::Portable => {
                let mut acc = vec![0.0f32; sums.len()];
                for g in 0..groups {
                    let weights = &w[g * group_len..][..group_len];
                    for k in 0..depth {
                        for j in 0..GROUP {
                            let weight = weights[k * GROUP + j];
                            let out = &mut acc[(g * GROUP + j) * lanes..][..lanes];
                            for (a, &value) in out.iter_mut().zip(&x[k * lanes..][..lanes]) {
                                *a += value * weight;
                            }
                        }
                    }
                }
                for (s, a) in sums.iter_mut().zip(acc) {
                    *s += a;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{GROUP, LANES, PREFETCH_AHEAD};
    use std::arch::x86_64::*;

    /// A tile of `VECTORS` registers of rows by `GROUPS` groups of outputs, accumulated in
    /// registers over the depth, then added to `sums`.
    ///
    /// # Safety
    /// AVX2 and FMA present; `x` holds depth x `VECTORS * LANES` values, `w` `GROUPS` slices of
    /// `group_len` (depth x GROUP), `sums` `GROUPS * GROUP * VECTORS * LANES` (the caller checks).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const VECTORS: usize, const GROUPS: usize>(
        x: &[f32],
        w: &[f32],
        group_len: usize,
        sums: &mut [f32],
    ) {
        let depth = group_len / GROUP;
        let lanes = VECTORS * LANES;
        let mut acc = [[[_mm256_setzero_ps(); VECTORS]; GROUP]; GROUPS];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for k in 0..depth {
            // SAFETY: k < depth: its inputs of the rows, and its weights of each group, are in
            // bounds; prefetches past the end are hints that never fault.
            unsafe {
                let xk = xp.add(k * lanes);
                if VECTORS == 4 {
                    // The three weights first, then one register of rows at a time: 12
                    // accumulators + 3 weights + 1 row register.
                    let wk = wp.add(k * GROUP);
                    _mm_prefetch::<_MM_HINT_T0>(wk.wrapping_add(PREFETCH_AHEAD) as *const i8);
                    let b: [__m256; GROUP] = std::array::from_fn(|j| _mm256_broadcast_ss(&*wk.add(j)));
                    for v in 0..VECTORS {
                        let rows = _mm256_loadu_ps(xk.add(v * LANES));
                        for (acc_j, &weight) in acc[0].iter_mut().zip(&b) {
                            acc_j[v] = _mm256_fmadd_ps(rows, weight, acc_j[v]);
                        }
                    }
                } else {
                    // The row registers first, then one weight at a time.
                    let rows: [__m256; VECTORS] = std::array::from_fn(|v| _mm256_loadu_ps(xk.add(v * LANES)));
                    for (g, acc_g) in acc.iter_mut().enumerate() {
                        let wk = wp.add(g * group_len + k * GROUP);
                        _mm_prefetch::<_MM_HINT_T0>(wk.wrapping_add(PREFETCH_AHEAD) as *const i8);
                        for (j, acc_j) in acc_g.iter_mut().enumerate() {
                            let b = _mm256_broadcast_ss(&*wk.add(j));
                            for (a, &row) in acc_j.iter_mut().zip(&rows) {
                                *a = _mm256_fmadd_ps(row, b, *a);
                            }
                        }
                    }
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            for (j, acc_j) in acc_g.iter().enumerate() {
                let out = &mut sums[(g * GROUP + j) * lanes..][..lanes];
                for (v, &a) in acc_j.iter().enumerate() {
                    // SAFETY: v * LANES + 8 <= lanes = out.len().
                    unsafe {
                        let p = out.as_mut_ptr().add(v * LANES);
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), a));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::PackedWeights;
    use proptest::prelude::*;

    fn matrix(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 131 + j * 17 + seed * 7) % 97) as f32 / 48.0 - 1.0
        })
    }

    #[test]
    fn packing_is_a_permutation_that_unpacks_to_the_weights() {
        for (outputs, inputs) in [(37, 300), (12, 256), (1, 1), (3072, 20)] {
            let w = matrix(outputs, inputs, 1);
            let packed = LanePackedWeights::pack(w.view());
            assert_eq!(packed.groups % QUAD, 0);
            assert_eq!(packed.unpack(), w, "{outputs} x {inputs}");
            // Every stored value is a weight or zero padding, and each weight is stored once.
            let nonzero = |values: &mut dyn Iterator<Item = f32>| {
                let mut v: Vec<f32> = values.filter(|&v| v != 0.0).collect();
                v.sort_by(f32::total_cmp);
                v
            };
            assert_eq!(
                nonzero(&mut packed.values.iter().copied()),
                nonzero(&mut w.iter().copied())
            );
        }
    }

    /// The same bits as [`crate::gemm`]'s kernel, which sums the same products in the same
    /// order, on shapes that exercise each edge: every register count (8-32 rows), more than
    /// one chunk of rows, depths crossing a block, outputs not a multiple of a group or a panel.
    #[test]
    fn gives_the_same_bits_as_the_panel_kernel() {
        for &(rows, inputs, outputs) in &[
            (1, 3, 1),
            (5, 17, 16),
            (9, 256, 32),
            (16, 257, 33),
            (24, 600, 50),
            (32, 768, 96),
            (33, 300, 20),
            (64, 513, 7),
        ] {
            let (x, w) = (matrix(rows, inputs, 2), matrix(outputs, inputs, 3));
            let b = ndarray::Array1::from_shape_fn(outputs, |j| j as f32 * 0.01 - 0.2);
            let lanes = LanePackedWeights::pack(w.view()).linear(x.view(), b.view());
            let panels = PackedWeights::pack(w.view()).linear(x.view(), b.view());
            assert_eq!(lanes, panels, "{rows} x {inputs} x {outputs}");
        }
    }

    /// The portable kernel on its own, against the exact product (the AVX2 one is checked
    /// bit for bit above).
    #[test]
    fn portable_kernel_matches_the_exact_product() {
        let (rows, inputs, outputs) = (20, 300, 14);
        let (x, w) = (matrix(rows, inputs, 4), matrix(outputs, inputs, 5));
        let packed = LanePackedWeights::pack(w.view());
        let lane_rows = LaneRows::pack(x.view());
        let bias = ndarray::Array1::zeros(outputs);
        let chunk = &lane_rows.chunks[0];
        let mut sums = vec![0.0f32; packed.groups * GROUP * chunk.lanes];
        packed.multiply(
            Kernel::Portable,
            &lane_rows,
            chunk,
            bias.view(),
            &mut sums,
            0..packed.groups,
        );
        let y = Array2::from_shape_fn((rows, outputs), |(r, o)| sums[o * chunk.lanes + r]);
        let exact = x.mapv(f64::from).dot(&w.t().mapv(f64::from));
        // Relative to sum |x w| <= 300 per entry: measured 1.5e-7.
        let error = y
            .iter()
            .zip(&exact)
            .map(|(&a, &e)| (a as f64 - e).abs())
            .fold(0.0, f64::max);
        assert!(error < 300.0 * 2e-6, "error {error:e}");
    }

    #[test]
    fn rows_unpack_to_themselves_across_chunks() {
        for rows in [1, 8, 31, 32, 33, 70] {
            let x = matrix(rows, 45, rows);
            let packed = LaneRows::pack(x.view());
            assert_eq!(packed.chunks.len(), rows.div_ceil(CHUNK_ROWS));
            assert_eq!(packed.unpack(), x, "{rows} rows");
        }
    }

    /// Two products chained in the lanes layout, with an element-wise function between them
    /// (an MLP), give the bits of the two products made one at a time.
    #[test]
    fn a_chain_in_the_lanes_layout_equals_the_products_one_at_a_time() {
        for rows in [3, 32, 50] {
            let x = matrix(rows, 300, 6);
            let (w1, w2) = (matrix(40, 300, 7), matrix(11, 40, 8));
            let (b1, b2) = (
                ndarray::Array1::from_shape_fn(40, |j| j as f32 * 0.02),
                ndarray::Array1::from_shape_fn(11, |j| 0.1 - j as f32 * 0.03),
            );
            let (fc1, fc2) = (LanePackedWeights::pack(w1.view()), LanePackedWeights::pack(w2.view()));
            let mut hidden = fc1.linear_lanes(&LaneRows::pack(x.view()), b1.view());
            hidden.values_mut().iter_mut().for_each(|v| *v = v.tanh());
            let chained = fc2.linear_lanes(&hidden, b2.view()).unpack();
            let one_at_a_time = fc2.linear(fc1.linear(x.view(), b1.view()).mapv(f32::tanh).view(), b2.view());
            assert_eq!(chained, one_at_a_time, "{rows} rows");
        }
    }

    proptest! {
        #![proptest_config(resca_tests::proptest_config(48))]
        /// Any shape, split over the cores or not: the panel kernel's bits, and a row's outputs
        /// do not depend on the rows beside it.
        #[test]
        fn equals_the_panel_kernel_and_rows_are_independent(rows in 1usize..70, inputs in 1usize..600, outputs in 1usize..70, seed in 0usize..50) {
            let (x, w) = (matrix(rows, inputs, seed), matrix(outputs, inputs, seed + 1));
            let b = ndarray::Array1::from_shape_fn(outputs, |j| (j + seed) as f32 * 0.1);
            let packed = LanePackedWeights::pack(w.view());
            let all = packed.linear(x.view(), b.view());
            prop_assert_eq!(&all, &PackedWeights::pack(w.view()).linear(x.view(), b.view()));
            let last = packed.linear(x.slice(ndarray::s![rows - 1.., ..]), b.view());
            prop_assert_eq!(last.row(0), all.row(rows - 1));
        }
    }
}
