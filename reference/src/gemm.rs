//! `y += x W^T` with the weights `W` of an `nn.Linear` packed once, at load time, into the layout
//! the multiply kernel reads.
//!
//! BLAS packs the weight matrix on every call: a full extra pass over weights that never fit in
//! cache, paid on each of a sampling run's thousands of products. Packing them once instead (the
//! pre-packed weights of inference engines) leaves only the product. The kernel is the usual
//! register-blocked outer product (BLIS, Goto): a tile of `MR` rows by [`PANEL`] outputs is held
//! in registers while the depth is swept, each step broadcasting one value of every row of `x`
//! and loading [`PANEL`] consecutive weights.
//!
//! Layout ([`SliceLayout`]): the outputs are cut into panels of [`PANEL`] (the last one
//! zero-padded) and the depth (inputs) into blocks of [`DEPTH`]. Depth block after depth block,
//! every panel's slice of that block is stored depth-major (`slice[k * PANEL + j]`), so a pass over
//! one depth block reads the weights as one sequential stream. The packing is a permutation plus padding: the values and
//! the memory (weights held once) are those of `W`.

use std::mem::MaybeUninit;
use std::ops::Range;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::ops::row_chunks;

/// Outputs per weight panel: two AVX2 registers of f32, or one AVX-512 register.
pub const PANEL: usize = 16;

/// Rows of `x` per register tile of the AVX2 (and portable) kernel: 6 rows x 2 registers = 12
/// accumulators, plus two weight registers and one broadcast, of the 16 AVX2 registers.
const TILE_ROWS: usize = 6;

/// Rows of `x` per register tile of the AVX-512 kernel: 12 accumulators of one register each
/// and the weight register, of 32; each row's value is broadcast from memory by its FMA. On an
/// AMD EPYC Zen 4 (2 cores, 1 MiB L2 per core), 512 x 4608 x 1152 (XL/2's fc1 at batch 2), tiles
/// of 12 and 16 rows ran at the same speed, 8 rows ~5% slower (`gemm` probe, alternated rounds).
const WIDE_TILE_ROWS: usize = 12;

/// Panels the AVX-512 kernel sweeps per row tile, the tile staying in L1 while the group's
/// weights (8 x 16 KiB) stay in L2: on an AMD EPYC Zen 4, groups of 8 gave 203-215 GFLOP/s for
/// XL/2's fc1 at batch 2, 4 gave 202, 16 199-209 and 32 196, one panel per sweep of every tile 190
/// (alternated rounds, the same products).
const WIDE_PANEL_GROUP: usize = 8;

/// Depth of a block of the packed layout, and the most swept per pass: one panel slice (`DEPTH`
/// x [`PANEL`] f32 = 16 KiB) stays in L1 while every row tile passes over it.
pub(crate) const DEPTH: usize = 256;

/// The packed rows of `x` of one pass (rows x pass depth) are at most this many values for the
/// AVX2 kernel (256 KiB, half of an AMD EPYC Zen 3 core's 512 KiB L2)...
const PACKED_X_VALUES: usize = 64 * 1024;

/// ... and for the AVX-512 kernel (512 KiB, half of an AMD EPYC Zen 4 core's 1 MiB L2: full-depth
/// passes at 512 rows, XL/2's fc1 at batch 2 199 against 186 GFLOP/s with half this).
const WIDE_PACKED_X_VALUES: usize = 128 * 1024;

/// Products of at most this many rows sweep full-depth passes with every kernel, so every row's
/// outputs get the same bits whatever the number of rows: each sums its own inputs in order,
/// `DEPTH` at a time. (More rows make shallower passes, which group the partial sums
/// differently.)
pub const SAME_BITS_ROWS: usize = PACKED_X_VALUES / DEPTH;

/// The shallowest pass: below it, reloading the output tile every pass costs more than the
/// weights streamed again for another block of rows.
const MIN_PASS_DEPTH: usize = 64;

/// The weights of an `nn.Linear` (out, in), packed in panels of [`PANEL`] outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeights {
    outputs: usize,
    inputs: usize,
    values: Vec<f32>,
}

/// The layout both few-rows kernels read (this module's and [`crate::lanes_gemm`]'s): the outputs
/// cut into `slices` slices of `width` (outputs past the last one zero), the inputs into blocks of
/// [`DEPTH`]; depth block after depth block, every slice of that block stored depth-major
/// (`slice[k * width + j]`), so a pass over one depth block reads the weights as one stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SliceLayout {
    pub(crate) inputs: usize,
    pub(crate) width: usize,
    pub(crate) slices: usize,
}

impl SliceLayout {
    /// `weight` (out, in) in this layout.
    pub(crate) fn pack(self, weight: ArrayView2<f32>) -> Vec<f32> {
        let (outputs, inputs) = weight.dim();
        assert_eq!(inputs, self.inputs, "the layout's inputs");
        let width = self.width;
        let mut values = vec![0.0f32; self.slices * width * inputs];
        // Fill the blocks on all cores, each slice from its (up to) `width` weight rows read in
        // order; padding lanes stay zero. (Scattering the weights one value at a time took ~5 ns
        // a value: 0.3 s for DiT-B/2's fc1 and fc2, in a ResCa run's first sparse step.)
        let fill_block = |(block, block_values): (usize, &mut [f32])| {
            let depth_start = block * DEPTH;
            let block_depth = DEPTH.min(inputs - depth_start);
            for (slice_index, slice) in block_values.chunks_mut(block_depth * width).enumerate() {
                for lane in 0..width.min(outputs.saturating_sub(slice_index * width)) {
                    let row = weight.slice(ndarray::s![
                        slice_index * width + lane,
                        depth_start..depth_start + block_depth
                    ]);
                    for (k, &value) in row.iter().enumerate() {
                        slice[k * width + lane] = value;
                    }
                }
            }
        };
        let block_len = (DEPTH * self.slices * width).max(1);
        if row_chunks(inputs.div_ceil(DEPTH), outputs * inputs * 4) == 1 {
            values.chunks_mut(block_len).enumerate().for_each(fill_block);
        } else {
            values.par_chunks_mut(block_len).enumerate().for_each(fill_block);
        }
        values
    }

    /// Where `slice` of the depth block starting at `depth_start` begins: after the full blocks
    /// before it, and the slices before it in its block.
    pub(crate) fn slice_start(self, depth_start: usize, slice: usize) -> usize {
        let block_depth = DEPTH.min(self.inputs - depth_start);
        (depth_start * self.slices + slice * block_depth) * self.width
    }

    /// The weight matrix (`outputs`, in) packed in `values`.
    pub(crate) fn unpack(self, values: &[f32], outputs: usize) -> Array2<f32> {
        Array2::from_shape_fn((outputs, self.inputs), |(j, k)| values[self.index(j, k)])
    }

    /// Where `W[j][k]` is stored.
    fn index(self, j: usize, k: usize) -> usize {
        let depth_start = k / DEPTH * DEPTH;
        self.slice_start(depth_start, j / self.width) + (k - depth_start) * self.width + j % self.width
    }
}

impl PackedWeights {
    /// Packs a weight matrix of shape (out, in).
    pub fn pack(weight: ArrayView2<f32>) -> Self {
        let (outputs, inputs) = weight.dim();
        let mut packed = Self {
            outputs,
            inputs,
            values: Vec::new(),
        };
        packed.values = packed.layout().pack(weight);
        packed
    }

    /// The layout of `values`: panels of [`PANEL`] outputs.
    fn layout(&self) -> SliceLayout {
        SliceLayout {
            inputs: self.inputs,
            width: PANEL,
            slices: self.panel_count(),
        }
    }

    /// The weight matrix (out, in) again, e.g. to save it or upload it to a GPU.
    pub fn unpack(&self) -> Array2<f32> {
        self.layout().unpack(&self.values, self.outputs)
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Number of panels of [`PANEL`] outputs (the last may be padded).
    pub fn panel_count(&self) -> usize {
        self.outputs.div_ceil(PANEL)
    }

    /// `x W^T + b` for token rows `x` (rows, in): the kernel's first pass over the depth stores
    /// its sums plus the bias, later passes add theirs. `x` is packed once; large products are
    /// then split over the cores by output panels, so each core streams only its share of the
    /// weights (measured on a 2-core AMD EPYC Zen 3, DiT-XL/2 forward batch 2 with BLAS: 3.71 s
    /// split by features, 4.07 s split by rows).
    pub fn linear(&self, x: ArrayView2<f32>, bias: ArrayView1<f32>) -> Array2<f32> {
        assert_eq!(
            x.ncols(),
            self.inputs,
            "x has {} columns, the weights {} inputs",
            x.ncols(),
            self.inputs
        );
        assert_eq!(bias.len(), self.outputs, "one bias per output");
        let rows = x.nrows();
        let kernel = Kernel::detect();
        let x = PackedRows::pack(x, kernel);
        let bias = bias.as_standard_layout();
        let bias = bias.as_slice().expect("standard layout");
        let panels = self.panel_count();
        let chunks = row_chunks(panels, rows * self.inputs * self.outputs);
        // At least one panel per chunk, so that no outputs (no panels) still make a valid split.
        let per_chunk = panels.div_ceil(chunks).max(1);
        // Each core writes its share of the outputs, bias included: the kernel's first pass
        // stores its sums plus the bias, so no pass writes the bias rows beforehand (1.4% of
        // XL/2's forward at batch 2 on a 2-core AMD EPYC Zen 4).
        let mut y = Array2::<f32>::uninit((rows, self.outputs));
        let chunk_product = |(chunk, part): (usize, ArrayViewMut2<MaybeUninit<f32>>)| {
            let first = chunk * per_chunk;
            let columns = first * PANEL..first * PANEL + part.ncols();
            self.multiply_into(kernel, &x, part, first..(first + per_chunk).min(panels), &bias[columns]);
        };
        let parts = y.axis_chunks_iter_mut(Axis(1), per_chunk * PANEL);
        if chunks == 1 {
            parts.enumerate().for_each(chunk_product);
        } else {
            parts.into_par_iter().enumerate().for_each(chunk_product);
        }
        // SAFETY: the chunks cover every column of y, and `multiply_into` writes all of each.
        unsafe { y.assume_init() }
    }

    /// `y = x W^T + bias` restricted to the outputs of `panels`, where `y` (which may be
    /// uninitialised) holds exactly those outputs' columns (its column 0 is output
    /// `panels.start * PANEL`) and `bias` their biases.
    fn multiply_into(
        &self,
        kernel: Kernel,
        x: &PackedRows,
        mut y: ArrayViewMut2<MaybeUninit<f32>>,
        panels: Range<usize>,
        bias: &[f32],
    ) {
        let (rows, inputs) = (x.rows, x.inputs);
        let first_output = panels.start * PANEL;
        let last_output = (panels.end * PANEL).min(self.outputs).max(first_output);
        assert_eq!(
            y.dim(),
            (rows, last_output - first_output),
            "y must hold the panels' outputs"
        );
        assert_eq!(bias.len(), y.ncols(), "one bias per output of y");
        if rows == 0 || panels.is_empty() {
            return;
        }
        if inputs == 0 {
            // No pass over the depth to store the bias: the product is the bias alone.
            ArrayView1::from(bias)
                .broadcast(y.raw_dim())
                .expect("one bias per output of y")
                .assign_to(&mut y);
            return;
        }
        assert!(
            y.strides()[1] == 1 && y.strides()[0] >= 0,
            "y must have contiguous rows"
        );
        let y_stride = y.strides()[0] as usize;
        let y_ptr = y.as_mut_ptr().cast::<f32>();
        let (tile_rows, group) = (kernel.tile_rows(), kernel.panel_group());
        assert_eq!(x.tile_rows, tile_rows, "x packed for this kernel's tiles");
        for row_start in (0..rows).step_by(x.row_block) {
            let row_end = (row_start + x.row_block).min(rows);
            for depth_start in (0..inputs).step_by(x.pass_depth) {
                let depth = x.pass_depth.min(inputs - depth_start);
                let pass_x = x.pass(row_start..row_end, depth_start, depth);
                // The pass lies inside one block of the layout: its rows of each panel's slice.
                let block_start = depth_start / DEPTH * DEPTH;
                let tiles = row_tiles(row_start..row_end, tile_rows).count();
                let pass_weights = |panel: usize| {
                    let slice = self.layout().slice_start(block_start, panel) + (depth_start - block_start) * PANEL;
                    &self.values[slice..][..depth * PANEL]
                };
                // Groups of panels, each row tile sweeping every panel of its group in turn
                // (one panel per group for the AVX2 kernel: see `Kernel::panel_group`).
                for group_start in panels.clone().step_by(group) {
                    let group_panels = group_start..(group_start + group).min(panels.end);
                    for (t, tile) in row_tiles(row_start..row_end, tile_rows).enumerate() {
                        let (tile_start, tile_rows) = (tile.start, tile.len());
                        let tile_x = &pass_x[(tile_start - row_start) * depth..][..tile_rows * depth];
                        for panel in group_panels.clone() {
                            let weights = pass_weights(panel);
                            // One panel per group: the next panel's weights of this pass, fetched
                            // into L2 a share per tile while this panel's tiles run from L1, so
                            // the first tile of the next panel does not wait for them (a ResCa
                            // step's proxies' MLP, 12 DiT-B/2 blocks: median 39.0 -> 37.4 ms on
                            // both cores, 52.1 -> 48.7 ms on one; measured alternately, 30
                            // rounds). A single tile streams the weights once anyway, and its
                            // own prefetch ahead covers them (XL/2's 28 adaLN at 1-2 rows ran
                            // 5-25% slower at the median with both).
                            // (Computed only then: its divisions cost ~1% of the AVX-512
                            // kernel's many short calls.)
                            let prefetch = if group == 1 && panel + 1 < panels.end && tiles > 1 {
                                let next = pass_weights(panel + 1);
                                let next_lines = next.len() / PANEL;
                                let lines_per_tile = next_lines.div_ceil(tiles);
                                let first_line = (t * lines_per_tile).min(next_lines);
                                let last_line = ((t + 1) * lines_per_tile).min(next_lines);
                                &next[first_line * PANEL..last_line * PANEL]
                            } else {
                                &[]
                            };
                            let column = panel * PANEL - first_output;
                            let columns = PANEL.min(last_output - panel * PANEL);
                            let out = TileOutput {
                                // The tile (tile_rows rows of `columns` values from row
                                // tile_start, column `column`) lies inside y, whose rows are
                                // y_stride apart.
                                ptr: y_ptr.wrapping_add(tile_start * y_stride + column),
                                stride: y_stride,
                                columns,
                                // The first pass stores over y's (uninitialised) values.
                                bias: (depth_start == 0).then(|| &bias[column..column + columns]),
                            };
                            // SAFETY: `out` describes a tile inside y.
                            unsafe { kernel.run(tile_x, tile_rows, weights, prefetch, out) };
                        }
                    }
                }
            }
        }
    }
}

/// `rows` cut into as few register tiles as `tile_rows` allows, of as even sizes as possible: 32
/// rows in tiles of 6 make 6, 6, 5, 5, 5, 5, not 6 x 5 and a 2-row tile whose 4 accumulators
/// cannot hide the FMA latency (it took a quarter of a ResCa run's kernel time).
fn row_tiles(rows: Range<usize>, tile_rows: usize) -> impl Iterator<Item = Range<usize>> {
    let count = rows.len().div_ceil(tile_rows);
    let (base, longer) = (rows.len() / count.max(1), rows.len() % count.max(1));
    (0..count).map(move |t| {
        let start = rows.start + t * base + t.min(longer);
        start..start + base + usize::from(t < longer)
    })
}

/// The rows of `x`, reordered for the kernel: in blocks of `row_block` rows, each block in passes
/// of `pass_depth` inputs, each pass in tiles of `tile_rows` rows stored depth-major
/// (`tile[k * tile_rows + r]`, the order the kernel broadcasts them in). Block `[r0, r1)` takes
/// values `r0 * inputs..r1 * inputs`, its pass at depth `d` the `(r1 - r0) * depth` values from
/// `r0 * inputs + (r1 - r0) * d`, and its tiles are [`row_tiles`].
struct PackedRows {
    rows: usize,
    tile_rows: usize,
    inputs: usize,
    row_block: usize,
    pass_depth: usize,
    values: Vec<f32>,
}

impl PackedRows {
    fn pack(x: ArrayView2<f32>, kernel: Kernel) -> Self {
        let (rows, inputs) = x.dim();
        let (tile_rows, max_values) = (kernel.tile_rows(), kernel.packed_x_values());
        // All rows in one block, so the weights stream from memory once, with passes as shallow
        // as needed (a divisor of DEPTH) to keep one pass of rows in L2; past MIN_PASS_DEPTH,
        // blocks of rows instead.
        let mut pass_depth = DEPTH;
        while pass_depth > MIN_PASS_DEPTH && rows * pass_depth > max_values {
            pass_depth /= 2;
        }
        let row_block = rows.min((max_values / pass_depth).max(tile_rows)).max(1);
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        // The passes are disjoint, consecutive runs of `values` that together cover it: cut them
        // out, then fill them on all cores when there are enough of them. (Not zeroed first: that
        // pass over the whole of `values` cost 0.8% of XL/2's forward at batch 2.)
        let mut values = Vec::<f32>::with_capacity(rows * inputs);
        let mut passes = Vec::new();
        let mut rest = &mut values.spare_capacity_mut()[..rows * inputs];
        for row_start in (0..rows).step_by(row_block) {
            let row_end = (row_start + row_block).min(rows);
            for depth_start in (0..inputs).step_by(pass_depth) {
                let depths = depth_start..(depth_start + pass_depth).min(inputs);
                let (pass, tail) = std::mem::take(&mut rest).split_at_mut((row_end - row_start) * depths.len());
                rest = tail;
                passes.push((row_start..row_end, depths, pass));
            }
        }
        let pack_pass = |(rows, depths, pass): (Range<usize>, Range<usize>, &mut [MaybeUninit<f32>])| {
            let depth = depths.len();
            for tile in row_tiles(rows.clone(), tile_rows) {
                let (tile_start, tile_rows) = (tile.start, tile.len());
                let tile = &mut pass[(tile_start - rows.start) * depth..][..tile_rows * depth];
                let first = tile_start * inputs + depths.start;
                #[cfg(target_arch = "x86_64")]
                // (The gather's offsets are 32-bit: rows too far apart take the copy below.)
                if kernel.is_avx512() && i32::try_from((tile_rows - 1) * inputs).is_ok() {
                    // SAFETY: AVX-512F present (the kernel's); the tile's rows from `first` lie
                    // inside x for the pass's depth.
                    unsafe { avx512::gather_tile(x, first, inputs, tile_rows, tile) };
                    continue;
                }
                for (k, step) in tile.chunks_exact_mut(tile_rows).enumerate() {
                    for (r, slot) in step.iter_mut().enumerate() {
                        *slot = MaybeUninit::new(x[first + r * inputs + k]);
                    }
                }
            }
        };
        // Copying a value costs about what 16 multiply-adds do.
        if row_chunks(passes.len(), rows * inputs * 16) == 1 {
            passes.into_iter().for_each(pack_pass);
        } else {
            passes.into_par_iter().for_each(pack_pass);
        }
        // SAFETY: the passes cover all `rows * inputs` values, and each tile of each pass was
        // written whole (every row over the pass's depths).
        unsafe { values.set_len(rows * inputs) };
        Self {
            rows,
            tile_rows,
            inputs,
            row_block,
            pass_depth,
            values,
        }
    }

    /// The packed pass of `depth` inputs from `depth_start` of the block of `rows`.
    fn pass(&self, rows: Range<usize>, depth_start: usize, depth: usize) -> &[f32] {
        &self.values[rows.start * self.inputs + rows.len() * depth_start..][..rows.len() * depth]
    }
}

/// Where a register tile's sums go: `columns` (at most [`PANEL`]) values in each of the tile's
/// rows, the rows `stride` apart from `ptr`. Without `bias` they are added to the values there;
/// with it (the first pass over the depth, `ptr` uninitialised) they are stored plus the bias
/// (one per column), the same bits as adding them to the bias rows.
#[derive(Clone, Copy)]
struct TileOutput<'a> {
    ptr: *mut f32,
    stride: usize,
    columns: usize,
    bias: Option<&'a [f32]>,
}

/// The multiply kernel this CPU runs (also [`crate::lanes_gemm`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512F (with AVX2 and FMA, which [`crate::lanes_gemm`] runs): this module's tiles in
    /// 32 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            if std::is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    fn is_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512 {
            return true;
        }
        false
    }

    /// Whether this kernel multiplies many rows faster than BLAS, so that token layers keep
    /// their weights packed for it ([`crate::weights::Linear`]). On a 2-core AMD EPYC Zen 4 the
    /// AVX-512 kernel ran XL/2's products at 256 and 512 rows 2-12% faster than OpenBLAS 0.3.21
    /// (its Cooperlake kernel); on a 2-core AMD EPYC Zen 3 the AVX2 kernel ran them 5-15% slower.
    pub(crate) fn beats_blas_on_many_rows(self) -> bool {
        self.is_avx512()
    }

    /// Rows per register tile.
    fn tile_rows(self) -> usize {
        if self.is_avx512() { WIDE_TILE_ROWS } else { TILE_ROWS }
    }

    /// The most values of `x` one pass packs (see [`WIDE_PACKED_X_VALUES`]).
    fn packed_x_values(self) -> usize {
        if self.is_avx512() {
            WIDE_PACKED_X_VALUES
        } else {
            PACKED_X_VALUES
        }
    }

    /// Panels each row tile sweeps in turn before the next tile (see [`WIDE_PANEL_GROUP`]).
    fn panel_group(self) -> usize {
        if self.is_avx512() { WIDE_PANEL_GROUP } else { 1 }
    }

    /// `out[r][j] (+)= sum_k x[k * rows + r] * w[k * PANEL + j]` for `r < rows`, `j < columns`
    /// of `out`, over the depth `w.len() / PANEL`, `x` holding depth x rows values: added to `out`,
    /// or with `out.bias`, plus the bias, stored. `prefetch` holds weights a later tile reads, to
    /// fetch into L2 meanwhile (a hint: the AVX2 kernel uses it).
    ///
    /// # Safety
    /// `out.ptr` must be valid for `rows` rows of `out.columns` values, `out.stride` apart
    /// (initialised unless `out.bias` is given).
    unsafe fn run(self, x: &[f32], rows: usize, w: &[f32], prefetch: &[f32], out: TileOutput) {
        let depth = w.len() / PANEL;
        let tile_rows = self.tile_rows();
        assert!(
            w.len() == depth * PANEL
                && x.len() == depth * rows
                && rows <= tile_rows
                && out.columns <= PANEL
                && out.bias.is_none_or(|bias| bias.len() == out.columns),
            "a tile of at most {tile_rows} rows by {PANEL} outputs"
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                match rows {
                    12 => avx512::tile::<12>(x, w, prefetch, out),
                    11 => avx512::tile::<11>(x, w, prefetch, out),
                    10 => avx512::tile::<10>(x, w, prefetch, out),
                    9 => avx512::tile::<9>(x, w, prefetch, out),
                    8 => avx512::tile::<8>(x, w, prefetch, out),
                    7 => avx512::tile::<7>(x, w, prefetch, out),
                    6 => avx512::tile::<6>(x, w, prefetch, out),
                    5 => avx512::tile::<5>(x, w, prefetch, out),
                    4 => avx512::tile::<4>(x, w, prefetch, out),
                    3 => avx512::tile::<3>(x, w, prefetch, out),
                    2 => avx512::tile::<2>(x, w, prefetch, out),
                    _ => avx512::tile::<1>(x, w, prefetch, out),
                }
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => unsafe {
                match rows {
                    6 => avx2::tile::<6>(x, w, prefetch, out),
                    5 => avx2::tile::<5>(x, w, prefetch, out),
                    4 => avx2::tile::<4>(x, w, prefetch, out),
                    3 => avx2::tile::<3>(x, w, prefetch, out),
                    2 => avx2::tile::<2>(x, w, prefetch, out),
                    _ => avx2::tile::<1>(x, w, prefetch, out),
                }
            },
            Kernel::Portable => {
                let _ = prefetch;
                let mut acc = [[0.0f32; PANEL]; TILE_ROWS];
                for k in 0..depth {
                    let weights = &w[k * PANEL..][..PANEL];
                    for (r, acc_row) in acc.iter_mut().enumerate().take(rows) {
                        let value = x[k * rows + r];
                        for (a, &b) in acc_row.iter_mut().zip(weights) {
                            *a += value * b;
                        }
                    }
                }
                for (r, acc_row) in acc.iter().enumerate().take(rows) {
                    for (j, &a) in acc_row.iter().enumerate().take(out.columns) {
                        // SAFETY: r < rows, j < columns (the caller's contract).
                        unsafe {
                            let value = out.ptr.add(r * out.stride + j);
                            *value = match out.bias {
                                Some(bias) => bias[j] + a,
                                None => *value + a,
                            };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{PANEL, TileOutput};
    use std::arch::x86_64::*;

    /// One tile of `ROWS` rows by [`PANEL`] outputs, accumulated in registers over the depth
    /// `w.len() / PANEL`, fetching the lines of `prefetch` into L2 along the way.
    ///
    /// # Safety
    /// AVX2 and FMA present; `x` holds depth x ROWS values; `out` is valid for ROWS rows (see
    /// [`TileOutput`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const ROWS: usize>(x: &[f32], w: &[f32], prefetch: &[f32], out: TileOutput) {
        // The tile of `out` is only touched after the sweep: fetch it now, while the sweep runs.
        for r in 0..ROWS {
            let row = out.ptr.wrapping_add(r * out.stride) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(60));
        }
        let depth = w.len() / PANEL;
        assert!(x.len() >= depth * ROWS, "x holds the tile's rows over the depth");
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        let (mut xp, mut wp) = (x.as_ptr(), w.as_ptr());
        // `prefetch`: lines of the next panel's weights for L2, one every `every` steps, so they
        // are spread over the sweep.
        let lines = prefetch.len() / PANEL;
        let every = depth.checked_div(lines).map_or(usize::MAX, |steps| steps.max(1));
        let (mut pf, mut pf_left, mut countdown) = (prefetch.as_ptr(), lines, every);
        for _ in 0..depth {
            countdown -= 1;
            if countdown == 0 {
                countdown = every;
                if pf_left > 0 {
                    _mm_prefetch::<_MM_HINT_T1>(pf as *const i8);
                    pf = pf.wrapping_add(PANEL);
                    pf_left -= 1;
                }
            }
            // SAFETY: depth steps of ROWS values of x and PANEL of w (the caller's contract).
            unsafe {
                // One weight line (64 B) per step: ask for the line 16 steps ahead, so a panel
                // streaming from memory arrives before the sweep reaches it.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(16 * PANEL) as *const i8);
                let w0 = _mm256_loadu_ps(wp);
                let w1 = _mm256_loadu_ps(wp.add(8));
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    let value = _mm256_broadcast_ss(&*xp.add(r));
                    acc_row[0] = _mm256_fmadd_ps(value, w0, acc_row[0]);
                    acc_row[1] = _mm256_fmadd_ps(value, w1, acc_row[1]);
                }
                xp = xp.add(ROWS);
                wp = wp.add(PANEL);
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            // SAFETY: row r < ROWS of out; full-width stores only when all PANEL columns exist.
            unsafe {
                let row = out.ptr.add(r * out.stride);
                if out.columns == PANEL {
                    let start = out.bias.map_or(row as *const f32, <[f32]>::as_ptr);
                    _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(start), acc_row[0]));
                    _mm256_storeu_ps(row.add(8), _mm256_add_ps(_mm256_loadu_ps(start.add(8)), acc_row[1]));
                } else {
                    let mut values = [0.0f32; PANEL];
                    _mm256_storeu_ps(values.as_mut_ptr(), acc_row[0]);
                    _mm256_storeu_ps(values.as_mut_ptr().add(8), acc_row[1]);
                    for (j, &v) in values.iter().enumerate().take(out.columns) {
                        let start = match out.bias {
                            Some(bias) => bias[j],
                            None => *row.add(j),
                        };
                        *row.add(j) = start + v;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PANEL, TileOutput, WIDE_TILE_ROWS};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Packs one row tile of x (`rows` rows, `inputs` apart, from `first`): `tile` (depth x rows,
    /// depth-major) gets `x[first + r * inputs + k]` at `tile[k * rows + r]`. One gather and one
    /// masked store per step of the depth, where the scalar copy took ~4 cycles a value (2% of
    /// XL/2's forward at batch 2).
    ///
    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather_tile(
        x: &[f32],
        first: usize,
        inputs: usize,
        rows: usize,
        tile: &mut [MaybeUninit<f32>],
    ) {
        let depth = tile.len() / rows.max(1);
        assert!(
            (1..=WIDE_TILE_ROWS).contains(&rows)
                && tile.len() == depth * rows
                && (depth == 0 || first + (rows - 1) * inputs + depth <= x.len())
                && i32::try_from((rows - 1) * inputs).is_ok(),
            "a tile of at most {WIDE_TILE_ROWS} rows of x"
        );
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(inputs as i32));
        let mask: __mmask16 = (1u16 << rows) - 1;
        let (mut source, mut target) = (x.as_ptr().wrapping_add(first), tile.as_mut_ptr().cast::<f32>());
        for _ in 0..depth {
            // SAFETY: the rows' values at this depth lie inside x, and the step's `rows` slots
            // inside the tile (the assertion above).
            unsafe {
                let step = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, source);
                _mm512_mask_storeu_ps(target, mask, step);
                source = source.add(1);
                target = target.add(rows);
            }
        }
    }

    /// One tile of `ROWS` rows by [`PANEL`] outputs (one register per row), accumulated over the
    /// depth `w.len() / PANEL`: per step one weight load and `ROWS` FMAs, each broadcasting its
    /// row's value from memory. Each row's sum is the same chain of FMAs as the AVX2 kernel's.
    ///
    /// # Safety
    /// AVX-512F present; `x` holds depth x ROWS values; `out` is valid for ROWS rows (see
    /// [`TileOutput`]).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile<const ROWS: usize>(x: &[f32], w: &[f32], prefetch: &[f32], out: TileOutput) {
        // The tile of `out` is only touched after the sweep: fetch it now, while the sweep runs.
        for r in 0..ROWS {
            _mm_prefetch::<_MM_HINT_T0>(out.ptr.wrapping_add(r * out.stride) as *const i8);
        }
        // No prefetch of the next group's weights (`prefetch` is empty for this kernel): issued
        // a few lines per tile it made the products 2% slower (XL/2's fc1 at batch 1 and 2, fc2,
        // qkv; 30 alternated rounds each): the hardware prefetcher already streams them.
        debug_assert!(prefetch.is_empty());
        let depth = w.len() / PANEL;
        assert!(x.len() >= depth * ROWS, "x holds the tile's rows over the depth");
        let mut acc = [_mm512_setzero_ps(); ROWS];
        let (mut xp, mut wp) = (x.as_ptr(), w.as_ptr());
        for _ in 0..depth {
            // SAFETY: depth steps of ROWS values of x and PANEL of w (the caller's contract).
            unsafe {
                // One weight line (64 B) per step: ask for the line 8 steps ahead, for the first
                // tile of a group, whose weights stream from memory.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(8 * PANEL) as *const i8);
                let weights = _mm512_loadu_ps(wp);
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    *acc_row = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(r)), weights, *acc_row);
                }
                xp = xp.add(ROWS);
                wp = wp.add(PANEL);
            }
        }
        // Only the tile's `columns` lanes exist in `out`: the others are masked off.
        let mask: __mmask16 = if out.columns >= PANEL {
            !0
        } else {
            (1u16 << out.columns) - 1
        };
        for (r, acc_row) in acc.iter().enumerate() {
            // SAFETY: row r < ROWS of out, lanes below `columns` only; the bias holds `columns`
            // values (the caller's contract).
            unsafe {
                let row = out.ptr.add(r * out.stride);
                let start = match out.bias {
                    Some(bias) => _mm512_maskz_loadu_ps(mask, bias.as_ptr()),
                    None => _mm512_maskz_loadu_ps(mask, row),
                };
                _mm512_mask_storeu_ps(row, mask, _mm512_add_ps(start, *acc_row));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;
    use proptest::prelude::*;

    /// `x W^T + b` in f64, one dot product at a time, with the scale of each entry's rounding
    /// error: `|b| + sum |x w|`.
    fn reference_product(x: &Array2<f32>, w: &Array2<f32>, b: &ndarray::Array1<f32>) -> Array2<(f64, f64)> {
        Array2::from_shape_fn((x.nrows(), w.nrows()), |(i, j)| {
            let terms = x.row(i).into_iter().zip(w.row(j)).map(|(&a, &c)| a as f64 * c as f64);
            let exact = b[j] as f64 + terms.clone().sum::<f64>();
            let scale = (b[j] as f64).abs() + terms.map(f64::abs).sum::<f64>();
            (exact, scale.max(1e-30))
        })
    }

    fn matrix(rows: usize, cols: usize, seed: usize) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 131 + j * 17 + seed * 7) % 97) as f32 / 48.0 - 1.0
        })
    }

    /// `x W^T + b` by `kernel`, into an output first filled with NaN: the kernel's first pass
    /// must store over it (it is uninitialised in [`PackedWeights::linear`]), never read it.
    fn kernel_product(packed: &PackedWeights, kernel: Kernel, x: &Array2<f32>, b: &Array1<f32>) -> Array2<f32> {
        let mut y = Array2::from_elem((x.nrows(), packed.outputs()), f32::NAN);
        // SAFETY: the view covers exactly y's elements, and f32 and MaybeUninit<f32> share a layout.
        let uninit = unsafe { ArrayViewMut2::from_shape_ptr(y.dim(), y.as_mut_ptr().cast::<MaybeUninit<f32>>()) };
        let bias = b.as_slice().expect("contiguous bias");
        packed.multiply_into(
            kernel,
            &PackedRows::pack(x.view(), kernel),
            uninit,
            0..packed.panel_count(),
            bias,
        );
        y
    }

    /// Largest |ours - exact| over the output, each relative to its entry's `|b| + sum |x w|`.
    fn relative_error(ours: &Array2<f32>, exact: &Array2<(f64, f64)>) -> f64 {
        ours.iter()
            .zip(exact)
            .fold(0.0f64, |m, (&a, &(e, scale))| m.max((a as f64 - e).abs() / scale))
    }

    #[test]
    fn row_tiles_cover_the_rows_in_even_tiles() {
        let sizes = |rows: Range<usize>| row_tiles(rows, TILE_ROWS).map(|t| t.len()).collect::<Vec<_>>();
        assert_eq!(sizes(0..32), [6, 6, 5, 5, 5, 5]);
        assert_eq!(sizes(10..12), [2]);
        assert_eq!(sizes(0..0), Vec::<usize>::new());
        for n in 1..100 {
            let tiles: Vec<_> = row_tiles(7..7 + n, TILE_ROWS).collect();
            assert_eq!(tiles[0].start, 7);
            assert!(tiles.windows(2).all(|p| p[0].end == p[1].start));
            assert_eq!(tiles.last().unwrap().end, 7 + n);
            assert!(tiles.iter().all(|t| (1..=TILE_ROWS).contains(&t.len())));
            assert_eq!(tiles.len(), n.div_ceil(TILE_ROWS));
        }
    }

    #[test]
    fn packing_is_a_permutation_that_unpacks_to_the_weights() {
        let w = matrix(37, 300, 1);
        let packed = PackedWeights::pack(w.view());
        assert_eq!(packed.panel_count(), 3);
        assert_eq!(packed.unpack(), w);
        // Padding lanes of the last panel are zero, so they add nothing.
        let padding: f32 = (0..300)
            .map(|k| packed.values[packed.layout().index(47, k)].abs())
            .sum();
        assert_eq!(padding, 0.0);
    }

    /// The portable kernel and each SIMD kernel this CPU runs (a SKIP line for each it cannot).
    fn kernels_of_this_cpu() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2Fma);
                if std::is_x86_feature_detected!("avx512f") {
                    kernels.push(Kernel::Avx512);
                } else {
                    println!("SKIP the AVX-512 kernel: this CPU lacks AVX-512F");
                }
            } else {
                println!("SKIP the AVX2+FMA and AVX-512 kernels: this CPU lacks AVX2 or FMA");
            }
        }
        kernels
    }

    /// Every kernel this CPU has, on shapes that exercise each edge: rows not a multiple of the
    /// tile, depths crossing a block of the layout, passes shallower than a block (300 rows) and
    /// blocks of rows (1100 rows), outputs not a multiple of a panel. Error relative to each entry's `|b| + sum |x w|`: measured at most 8.6e-7 (f32
    /// accumulation of up to 600 terms; f32 epsilon is 6e-8).
    #[test]
    fn every_kernel_matches_the_exact_product_on_awkward_shapes() {
        let kernels = kernels_of_this_cpu();
        for &(rows, inputs, outputs) in &[
            (3, 0, 5),
            (1, 3, 1),
            (5, 17, 16),
            (6, 256, 32),
            (13, 257, 33),
            (300, 600, 50),
            (1100, 300, 20),
            (25, 513, 200),
            (2200, 70, 20),
        ] {
            let (x, w) = (matrix(rows, inputs, 2), matrix(outputs, inputs, 3));
            let b = Array1::from_shape_fn(outputs, |j| j as f32 * 0.01);
            let exact = reference_product(&x, &w, &b);
            let packed = PackedWeights::pack(w.view());
            for &kernel in &kernels {
                let y = kernel_product(&packed, kernel, &x, &b);
                let error = relative_error(&y, &exact);
                assert!(error < 2e-6, "{rows}x{inputs}x{outputs}: relative error {error:e}");
            }
            let error = relative_error(&packed.linear(x.view(), b.view()), &exact);
            assert!(
                error < 2e-6,
                "linear {rows}x{inputs}x{outputs}: relative error {error:e}"
            );
        }
    }

    /// The AVX2 and AVX-512 kernels sum each output with the same chain of FMAs, in input order
    /// within a pass, so up to [`SAME_BITS_ROWS`] rows (full-depth passes for both) they agree
    /// bit for bit: which one a CPU runs changes no result there.
    #[test]
    fn the_simd_kernels_agree_bit_for_bit() {
        let kernels = kernels_of_this_cpu();
        if kernels.len() < 3 {
            println!("SKIP comparing the AVX2 and AVX-512 kernels: this CPU does not run both");
            return;
        }
        for &(rows, inputs, outputs) in &[(1, 40, 16), (13, 257, 33), (200, 600, 50), (SAME_BITS_ROWS, 1152, 200)] {
            let (x, w) = (matrix(rows, inputs, 6), matrix(outputs, inputs, 7));
            let packed = PackedWeights::pack(w.view());
            let products: Vec<Array2<f32>> = kernels[1..]
                .iter()
                .map(|&kernel| kernel_product(&packed, kernel, &x, &Array1::zeros(outputs)))
                .collect();
            assert_eq!(products[0], products[1], "{rows}x{inputs}x{outputs}");
        }
    }

    /// Up to [`SAME_BITS_ROWS`] rows, each row's product is summed alone, in input order,
    /// whatever the rows beside it and the tile it falls in: `Dit::conditioning_steps` relies on
    /// this to compute many steps' adaLN in one product with the same bits as one step at a time.
    #[test]
    fn a_row_gives_the_same_bits_whatever_rows_share_its_product() {
        let (x, w) = (matrix(SAME_BITS_ROWS, 700, 4), matrix(40, 700, 5));
        let b = ndarray::Array1::from_shape_fn(40, |j| j as f32 * 0.03);
        let packed = PackedWeights::pack(w.view());
        let all = packed.linear(x.view(), b.view());
        for rows in [0..1, 0..2, 5..12, 100..164, 0..SAME_BITS_ROWS] {
            let part = packed.linear(x.slice(ndarray::s![rows.clone(), ..]), b.view());
            assert_eq!(part, all.slice(ndarray::s![rows.clone(), ..]), "rows {rows:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The split over the cores (by panels) adds up to the whole product, for any shape.
        #[test]
        fn linear_equals_the_exact_product(rows in 0usize..40, inputs in 1usize..300, outputs in 1usize..70, seed in 0usize..50) {
            let (x, w) = (matrix(rows, inputs, seed), matrix(outputs, inputs, seed + 1));
            let b = ndarray::Array1::from_shape_fn(outputs, |j| (j + seed) as f32 * 0.1);
            let ours = PackedWeights::pack(w.view()).linear(x.view(), b.view());
            prop_assert_eq!(ours.dim(), (rows, outputs));
            if rows > 0 {
                let error = relative_error(&ours, &reference_product(&x, &w, &b));
                prop_assert!(error < 2e-6, "relative error {:e}", error);
            }
        }
    }
}
