//! `y += x W^T` with the weights `W` of an `nn.Linear` packed once, at load time, into the layout
//! the multiply kernel reads.
//!
//! BLAS packs the weight matrix on every call: a full extra pass over weights that never fit in
//! cache, paid on each of a sampling run's thousands of products. Packing them once instead (the
//! pre-packed weights of inference engines) leaves only the product. The kernel is the usual
//! register-blocked outer product (BLIS, Goto): a tile of rows by one or more panels of [`PANEL`]
//! outputs is held in registers while the depth is swept, each step broadcasting one value of
//! every row of `x` and loading [`PANEL`] consecutive weights of each panel.
//!
//! Layout ([`SliceLayout`]): the outputs are cut into panels of [`PANEL`] (the last one
//! zero-padded) and the depth (inputs) into blocks of [`DEPTH`]. Depth block after depth block,
//! every panel's slice of that block is stored depth-major (`slice[k * PANEL + j]`), so a pass
//! over one depth block reads the weights as one sequential stream. The packing is a permutation
//! plus padding: the values and the memory (weights held once) are those of `W`.
//!
//! The kernel comes in variants ([`PanelVariant`]): register tiles of different shapes, cache
//! blocking and prefetching for different cores. All of them sum each output the same way (the
//! bias plus one sum per pass over the depth, each a chain of fused multiply-adds from zero in
//! input order, with passes whose depth depends on the row count alone), so they give the same
//! bits, and which one runs is a matter of speed only ([`crate::calibration`] picks it per layer
//! shape by measurement).

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use crate::ops::row_chunks;

/// Outputs per weight panel: two AVX2 registers of f32, or one AVX-512 register.
pub const PANEL: usize = 16;

/// Depth of a block of the packed layout, and the most swept per pass: one panel slice (`DEPTH`
/// x [`PANEL`] f32 = 16 KiB) stays in L1 while every row tile passes over it.
pub(crate) const DEPTH: usize = 256;

/// The packed rows of `x` of one pass (rows x pass depth) are at most this many values (512
/// KiB, half of an AMD EPYC Zen 4 core's 1 MiB L2: full-depth passes up to 512 rows; XL/2's fc1
/// at batch 2 ran at 199 against 186 GFLOP/s with half this). This fixes the depth of the passes,
/// hence the order of the sums, for every variant: a variant for a smaller L2 splits the rows
/// into blocks instead (see [`PanelVariant`]), which does not change the sums.
const SUMMED_X_VALUES: usize = 128 * 1024;

/// Products of at most this many rows sweep full-depth passes with every kernel, so every row's
/// outputs get the same bits whatever the number of rows: each sums its own inputs in order,
/// `DEPTH` at a time. (More rows make shallower passes, which group the partial sums
/// differently, the same way for every variant.)
pub const SAME_BITS_ROWS: usize = SUMMED_X_VALUES / DEPTH;

/// The shallowest pass: below it, reloading the output tile every pass costs more than the
/// weights streamed again for another block of rows.
const MIN_PASS_DEPTH: usize = 64;

/// The depth of each pass for a product of `rows` rows, the same for every variant: full blocks
/// while the pass of `x` stays within [`SUMMED_X_VALUES`], then halved down to
/// [`MIN_PASS_DEPTH`] (past that, the rows are split into blocks).
fn pass_depth(rows: usize) -> usize {
    let mut depth = DEPTH;
    while depth > MIN_PASS_DEPTH && rows * depth > SUMMED_X_VALUES {
        depth /= 2;
    }
    depth
}

/// One variant of the panel kernel: its register tile (`tile_rows` rows by `tile_panels` panels
/// of [`PANEL`] outputs), its cache blocking and its prefetching. Every variant gives the same
/// bits (see the module doc); [`PanelVariant::all`] lists them, [`crate::calibration`] times them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PanelVariant {
    name: &'static str,
    kernel: Kernel,
    /// Rows of `x` per register tile.
    tile_rows: usize,
    /// Panels per register tile: `tile_rows x tile_panels` accumulator registers (AVX-512).
    tile_panels: usize,
    /// Panels each row tile sweeps in turn before the next tile: the tile of `x` stays in L1
    /// while the group's weights (`panel_group` x 16 KiB per pass) stay in L2. 1: each panel's
    /// slice stays in L1 while every row tile passes over it.
    panel_group: usize,
    /// The most values of `x` one block of rows packs per pass: rows beyond it go to another
    /// block (the weights are then streamed once per block).
    packed_x_values: usize,
    /// Steps of the depth ahead of the one in use at which each panel's weights are prefetched
    /// into L1 (one 64-byte line per panel and step).
    prefetch_ahead: usize,
    /// Whether each tile of a group fetches a share of the next group's weights into L2 during
    /// its sweep, so that the next group's first tile does not wait for memory.
    prefetch_next_group: bool,
}

/// The variant an Intel CPU with AVX-512 takes where no calibration decides
/// ([`PanelVariant::built_in`]).
const INTEL_BUILT_IN: &str = "avx512-14x32";

/// The variants of this build, the first of each instruction set its built-in choice (but on an
/// Intel CPU with AVX-512: [`INTEL_BUILT_IN`]).
#[cfg(target_arch = "x86_64")]
const VARIANTS: &[PanelVariant] = &[
    // Tuned on an AMD EPYC Zen 4 (AVX-512 executed on 256-bit units, 1 MiB L2, 32 KiB L1d):
    // 12 accumulators, each FMA broadcasting its row's value from memory. With its operands in
    // L1 or L2 it runs at 117.2 GFLOP/s on one Zen 4 core, the measured FMA peak. On that CPU,
    // 512 x 4608 x 1152 (XL/2's fc1 at batch 2): 16 rows as fast as 12, 8 rows ~5% slower, 12
    // rows by two panels 2-5% slower; groups of 8 panels 203-215 GFLOP/s, 4 202, 16 199-209, 32
    // 196, one panel per sweep 190; the next group's weights into L2 2% slower (alternated
    // rounds, the same products).
    PanelVariant {
        name: "avx512-12x16",
        kernel: Kernel::Avx512,
        tile_rows: 12,
        tile_panels: 1,
        panel_group: 8,
        packed_x_values: SUMMED_X_VALUES,
        prefetch_ahead: 8,
        prefetch_next_group: false,
    },
    // Shaped for cores with two full-width FMA units and two 512-bit loads per cycle (Intel
    // Xeon, 48 KiB L1d, 2 MiB L2): 24 accumulators (BLIS's Skylake-X tile, 32 x 12, turned
    // around), 14 loads per 24 FMAs where the 12 x 16 tile has 13 per 12; groups of 16 panels
    // (256 KiB of weights per pass in L2), the weights prefetched twice as far ahead (a step
    // takes half the cycles), the next group fetched into L2 along the way.
    PanelVariant {
        name: "avx512-12x32",
        kernel: Kernel::Avx512,
        tile_rows: 12,
        tile_panels: 2,
        panel_group: 16,
        packed_x_values: 2 * SUMMED_X_VALUES,
        prefetch_ahead: 16,
        prefetch_next_group: true,
    },
    // The same with 28 accumulators (of 32 registers, two for the weights): 16 loads per 28 FMAs.
    PanelVariant {
        name: "avx512-14x32",
        kernel: Kernel::Avx512,
        tile_rows: 14,
        tile_panels: 2,
        panel_group: 16,
        packed_x_values: 2 * SUMMED_X_VALUES,
        prefetch_ahead: 16,
        prefetch_next_group: true,
    },
    // 6 rows by 4 panels (24 accumulators): the fewest loads per FMA (10 per 24), a 6 KiB tile
    // of `x`, 64 KiB of weights per tile sweep read from L2.
    PanelVariant {
        name: "avx512-6x64",
        kernel: Kernel::Avx512,
        tile_rows: 6,
        tile_panels: 4,
        panel_group: 16,
        packed_x_values: 2 * SUMMED_X_VALUES,
        prefetch_ahead: 16,
        prefetch_next_group: true,
    },
    // AVX2: 6 rows x 16 outputs (12 accumulators of the 16 registers, two weight registers and
    // one broadcast). Each panel's slice stays in L1 while every row tile passes over it, and
    // each tile fetches a share of the next panel into L2 (a ResCa step's proxies' MLP, 12
    // DiT-B/2 blocks: median 39.0 -> 37.4 ms on both cores of an AMD EPYC Zen 3, 52.1 -> 48.7
    // ms on one; 30 alternated rounds). Packed rows of `x` up to 256 KiB per block (half of a Zen
    // 3 core's 512 KiB L2); the weights 16 steps ahead. Also a candidate on AVX-512 CPUs, whose
    // 256-bit instructions may run at a higher clock.
    PanelVariant {
        name: "avx2-6x16",
        kernel: Kernel::Avx2Fma,
        tile_rows: 6,
        tile_panels: 1,
        panel_group: 1,
        packed_x_values: SUMMED_X_VALUES / 2,
        prefetch_ahead: 16,
        prefetch_next_group: true,
    },
    PORTABLE,
];

#[cfg(not(target_arch = "x86_64"))]
const VARIANTS: &[PanelVariant] = &[PORTABLE];

/// Without AVX2 and FMA: the same sums, each a multiply then an add (so not the fused kernels'
/// bits).
const PORTABLE: PanelVariant = PanelVariant {
    name: "portable",
    kernel: Kernel::Portable,
    tile_rows: 6,
    tile_panels: 1,
    panel_group: 1,
    packed_x_values: SUMMED_X_VALUES / 2,
    prefetch_ahead: 0,
    prefetch_next_group: false,
};

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

    /// `x W^T + b` for token rows `x` (rows, in), by the variant of the kernel
    /// [`crate::calibration`] picks for this shape on this CPU (all give the same bits).
    pub fn linear(&self, x: ArrayView2<f32>, bias: ArrayView1<f32>) -> Array2<f32> {
        let variant = crate::calibration::global().panel_variant(self, x.nrows());
        self.linear_with(variant, x, bias)
    }

    /// [`Self::linear`] by a given variant of the kernel, which must run on this CPU
    /// ([`PanelVariant::runs_here`]). The kernel's first pass over the depth stores its sums
    /// plus the bias, later passes add theirs. `x` is packed once; large products are then split
    /// over the cores by output panels, so each core streams only its share of the weights
    /// (measured on a 2-core AMD EPYC Zen 3, DiT-XL/2 forward batch 2 with BLAS: 3.71 s split by
    /// features, 4.07 s split by rows).
    pub fn linear_with(&self, variant: PanelVariant, x: ArrayView2<f32>, bias: ArrayView1<f32>) -> Array2<f32> {
        self.linear_panels(variant, x, bias, 0..self.panel_count())
    }

    /// The columns of `x W^T + b` of the outputs of `panels` only (the rows of `x` by those
    /// outputs): a slice of a layer, for timing a variant on part of it.
    pub(crate) fn linear_panels(
        &self,
        variant: PanelVariant,
        x: ArrayView2<f32>,
        bias: ArrayView1<f32>,
        panels: Range<usize>,
    ) -> Array2<f32> {
        assert_eq!(
            x.ncols(),
            self.inputs,
            "x has {} columns, the weights {} inputs",
            x.ncols(),
            self.inputs
        );
        assert_eq!(bias.len(), self.outputs, "one bias per output");
        assert!(panels.end <= self.panel_count(), "panels of the weights");
        assert!(variant.runs_here(), "{} does not run on this CPU", variant.name);
        let rows = x.nrows();
        let x = PackedRows::pack(x, variant);
        let first_output = panels.start * PANEL;
        let last_output = (panels.end * PANEL).min(self.outputs).max(first_output);
        let bias = bias.as_standard_layout();
        let bias = &bias.as_slice().expect("standard layout")[first_output..last_output];
        let chunks = row_chunks(panels.len(), rows * self.inputs * (last_output - first_output));
        // At least one panel per chunk, so that no outputs (no panels) still make a valid split.
        let per_chunk = panels.len().div_ceil(chunks).max(1);
        // Each core writes its share of the outputs, bias included: the kernel's first pass
        // stores its sums plus the bias, so no pass writes the bias rows beforehand (1.4% of
        // XL/2's forward at batch 2 on a 2-core AMD EPYC Zen 4).
        let mut y = Array2::<f32>::uninit((rows, last_output - first_output));
        let chunk_product = |(chunk, part): (usize, ArrayViewMut2<MaybeUninit<f32>>)| {
            let first = panels.start + chunk * per_chunk;
            let columns = (first - panels.start) * PANEL..(first - panels.start) * PANEL + part.ncols();
            self.multiply_into(
                variant,
                &x,
                part,
                first..(first + per_chunk).min(panels.end),
                &bias[columns],
            );
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
        variant: PanelVariant,
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
        let (tile_rows, tile_panels, group) = (variant.tile_rows, variant.tile_panels, variant.panel_group);
        assert_eq!(x.tile_rows, tile_rows, "x packed for this variant's tiles");
        let layout = self.layout();
        for row_start in (0..rows).step_by(x.row_block) {
            let row_end = (row_start + x.row_block).min(rows);
            let tiles = row_tiles(row_start..row_end, tile_rows).count();
            for depth_start in (0..inputs).step_by(x.pass_depth) {
                let depth = x.pass_depth.min(inputs - depth_start);
                let pass_x = x.pass(row_start..row_end, depth_start, depth);
                // The pass lies inside one block of the layout: `depth` steps of each panel's
                // slice from `pass_start(panel)`, the next panel's `panel_stride` values later.
                let block_start = depth_start / DEPTH * DEPTH;
                let panel_stride = DEPTH.min(inputs - block_start) * PANEL;
                let pass_start =
                    |panel: usize| layout.slice_start(block_start, panel) + (depth_start - block_start) * PANEL;
                for group_start in panels.clone().step_by(group) {
                    let group_panels = group_start..(group_start + group).min(panels.end);
                    let next_group = NextGroup {
                        panels: group_panels.end..(group_panels.end + group).min(panels.end),
                        tiles,
                        depth,
                        tile_panels,
                        panel_stride,
                    };
                    for (t, tile) in row_tiles(row_start..row_end, tile_rows).enumerate() {
                        let (tile_start, tile_rows) = (tile.start, tile.len());
                        let tile_x = &pass_x[(tile_start - row_start) * depth..][..tile_rows * depth];
                        // (Computed only for the variants that use it, once per tile: divisions
                        // per call cost ~1% of the 12 x 16 kernel's many short calls.)
                        let next_lines = if variant.prefetch_next_group {
                            next_group.lines(t)
                        } else {
                            0..0
                        };
                        for (c, first) in group_panels.clone().step_by(tile_panels).enumerate() {
                            let count = tile_panels.min(group_panels.end - first);
                            let start = pass_start(first);
                            let weights = &self.values[start..start + (count - 1) * panel_stride + depth * PANEL];
                            let next = next_group.share(&self.values, pass_start, next_lines.clone(), c);
                            let column = first * PANEL - first_output;
                            let columns = (count * PANEL).min(last_output - first * PANEL);
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
                            unsafe { variant.run(tile_x, tile_rows, weights, count, panel_stride, next, out) };
                        }
                    }
                }
            }
        }
    }
}

/// The weights of the group of panels after the one a pass is sweeping, which the pass's tiles
/// fetch into L2 while they run, so that the next group's first tile does not wait for memory:
/// row tile `t` of `tiles` fetches its share of the lines of each of those panels' pass
/// ([`Self::lines`]), and its call for tile column `c` those of the next group's tile column `c`
/// ([`Self::share`]). A single tile fetches none: it streams the weights once anyway, and its own
/// prefetch ahead covers them (XL/2's 28 adaLN at 1-2 rows ran 5-25% slower at the median with
/// both).
struct NextGroup {
    panels: Range<usize>,
    tiles: usize,
    depth: usize,
    tile_panels: usize,
    panel_stride: usize,
}

impl NextGroup {
    /// The lines (steps of the depth) row tile `t` fetches of each panel.
    fn lines(&self, t: usize) -> Range<usize> {
        if self.tiles < 2 || self.panels.is_empty() {
            return 0..0;
        }
        t * self.depth / self.tiles..(t + 1) * self.depth / self.tiles
    }

    /// What the call for tile column `c` fetches: `lines` of the next group's panels of tile
    /// column `c` (none if it has no such column), the pass of panel `p` from `pass_start(p)`.
    fn share(&self, values: &[f32], pass_start: impl Fn(usize) -> usize, lines: Range<usize>, c: usize) -> NextWeights {
        let first = self.panels.start + c * self.tile_panels;
        if lines.is_empty() || first >= self.panels.end {
            return NextWeights::NONE;
        }
        NextWeights {
            start: values.as_ptr().wrapping_add(pass_start(first) + lines.start * PANEL),
            lines: lines.len(),
            panels: self.tile_panels.min(self.panels.end - first),
            panel_stride: self.panel_stride,
        }
    }
}

/// Weights for a kernel call to fetch into L2 while it runs: `lines` lines of [`PANEL`] values
/// from `start` in each of `panels` panels, `panel_stride` values apart. (A hint: prefetches
/// never fault.)
#[derive(Clone, Copy)]
struct NextWeights {
    start: *const f32,
    lines: usize,
    panels: usize,
    panel_stride: usize,
}

impl NextWeights {
    const NONE: NextWeights = NextWeights {
        start: std::ptr::null(),
        lines: 0,
        panels: 0,
        panel_stride: 0,
    };
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
    fn pack(x: ArrayView2<f32>, variant: PanelVariant) -> Self {
        let (rows, inputs) = x.dim();
        let tile_rows = variant.tile_rows;
        // Passes of the depth every variant uses for this many rows (it fixes the order of the
        // sums), in blocks of as many rows as the variant keeps in L2: one block for products of
        // up to 512 rows, so that the weights stream from memory once.
        let pass_depth = pass_depth(rows);
        let row_block = rows.min((variant.packed_x_values / pass_depth).max(tile_rows)).max(1);
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
                if variant.kernel == Kernel::Avx512 && i32::try_from((tile_rows - 1) * inputs).is_ok() {
                    // SAFETY: AVX-512F present (the variant runs here); the tile's rows from
                    // `first` lie inside x for the pass's depth.
                    unsafe { avx512::pack_tile(x, first, inputs, tile_rows, tile) };
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

/// Where a register tile's sums go: `columns` (at most the tile's panels x [`PANEL`]) values in
/// each of the tile's rows, the rows `stride` apart from `ptr`. Without `bias` they are added to
/// the values there; with it (the first pass over the depth, `ptr` uninitialised) they are stored
/// plus the bias (one per column), the same bits as adding them to the bias rows.
#[derive(Clone, Copy)]
struct TileOutput<'a> {
    ptr: *mut f32,
    stride: usize,
    columns: usize,
    bias: Option<&'a [f32]>,
}

/// The instruction set a kernel is written for (also [`crate::lanes_gemm`]'s dispatch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512F (with AVX2 and FMA, which [`crate::lanes_gemm`] runs): tiles in 32 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    Portable,
}

impl Kernel {
    /// The widest instruction set this CPU runs.
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

    /// Whether this is AVX-512 on an Intel CPU (vendor `GenuineIntel`): cores with two 512-bit
    /// FMA units, for which the wide tiles are shaped.
    fn is_intel_avx512(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512 {
            // SAFETY: leaf 0 of CPUID exists on every x86-64 CPU.
            #[allow(unused_unsafe)]
            let vendor = unsafe { std::arch::x86_64::__cpuid(0) };
            // "GenuineIntel" in EBX, EDX, ECX.
            return (vendor.ebx, vendor.edx, vendor.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
        }
        false
    }

    /// Whether this CPU runs this instruction set.
    fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Kernel::detect() == Kernel::Avx512,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma => Kernel::detect() != Kernel::Portable,
            Kernel::Portable => true,
        }
    }

    /// The built-in rule for token layers (products of many rows), where no calibration
    /// decides: the panel kernel where this CPU has AVX-512, BLAS otherwise. On a 2-core AMD
    /// EPYC Zen 4 the AVX-512 kernel ran XL/2's products at 256 and 512 rows 2-12% faster than
    /// OpenBLAS 0.3.21 (its Cooperlake kernel); on a 2-core AMD EPYC Zen 3 the AVX2 kernel ran
    /// them 5-15% slower.
    pub(crate) fn beats_blas_on_many_rows(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernel::Avx512 {
            return true;
        }
        false
    }
}

impl PanelVariant {
    /// Every variant of this build, whether or not it runs on this CPU.
    pub fn all() -> &'static [PanelVariant] {
        VARIANTS
    }

    /// The variant named `name` (as [`Self::name`] gives it).
    pub fn by_name(name: &str) -> Option<PanelVariant> {
        VARIANTS.iter().copied().find(|variant| variant.name == name)
    }

    /// Its name: the instruction set, then rows x outputs of its register tile.
    pub fn name(self) -> &'static str {
        self.name
    }

    /// Whether this CPU has the instructions it needs.
    pub fn runs_here(self) -> bool {
        self.kernel.runs_here()
    }

    /// The variants this CPU runs that give the same bits: every fused multiply-add variant
    /// where the CPU has FMA, else the portable one alone. A calibration chooses among them.
    pub fn candidates() -> Vec<PanelVariant> {
        let fused = Kernel::detect() != Kernel::Portable;
        VARIANTS
            .iter()
            .copied()
            .filter(|variant| variant.runs_here() && (variant.kernel != Kernel::Portable) == fused)
            .collect()
    }

    /// The variant used where no calibration decides, and which a calibration keeps unless
    /// another is clearly faster: on an Intel CPU with AVX-512 the 14 x 32 tile; otherwise the
    /// first of the widest instruction set this CPU runs (the 12 x 16 AVX-512 tile, else the 6 x
    /// 16 AVX2 tile, else portable code). On a 2-core Intel Xeon (family 6 model 167) the 14 x
    /// 32 tile ran XL/2's and B/2's products at 32 to 512 rows 15-47% faster than the 12 x 16
    /// tile, and within 2% of the fastest variant on each (one core, CPU time, alternated).
    pub fn built_in() -> PanelVariant {
        static BUILT_IN: OnceLock<PanelVariant> = OnceLock::new();
        *BUILT_IN.get_or_init(|| {
            let kernel = Kernel::detect();
            if kernel.is_intel_avx512() {
                return PanelVariant::by_name(INTEL_BUILT_IN).expect("the Intel variant exists");
            }
            VARIANTS
                .iter()
                .copied()
                .find(|variant| variant.kernel == kernel)
                .expect("a variant of every instruction set")
        })
    }

    /// Rows of `x` per register tile.
    pub fn tile_rows(self) -> usize {
        self.tile_rows
    }

    /// Outputs per register tile.
    pub fn tile_outputs(self) -> usize {
        self.tile_panels * PANEL
    }

    /// `out[r][j] (+)= sum_k x[k * rows + r] * w[(j / PANEL) * panel_stride + k * PANEL + j %
    /// PANEL]` for `r < rows`, `j < out.columns`, over the depth `x.len() / rows`: a tile of
    /// `rows` rows by `panels` panels, whose weights start `panel_stride` values apart in `w`.
    /// Added to `out`, or with `out.bias`, plus the bias, stored. `next` are weights a later
    /// tile reads, to fetch into L2 meanwhile.
    ///
    /// # Safety
    /// The variant runs on this CPU; `out.ptr` must be valid for `rows` rows of `out.columns`
    /// values, `out.stride` apart (initialised unless `out.bias` is given).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run(
        self,
        x: &[f32],
        rows: usize,
        w: &[f32],
        panels: usize,
        panel_stride: usize,
        next: NextWeights,
        out: TileOutput,
    ) {
        let depth = x.len() / rows.max(1);
        assert!(
            (1..=self.tile_rows).contains(&rows)
                && (1..=self.tile_panels).contains(&panels)
                && x.len() == depth * rows
                && depth * PANEL <= panel_stride
                && w.len() == (panels - 1) * panel_stride + depth * PANEL
                && out.columns <= panels * PANEL
                && out.columns > (panels - 1) * PANEL
                && out.bias.is_none_or(|bias| bias.len() == out.columns),
            "a tile of at most {} rows by {} outputs",
            self.tile_rows,
            self.tile_outputs()
        );
        let ahead = self.prefetch_ahead;
        // `next` and `out` go to the kernels by reference. Passed by value, each call copied
        // them with 16-byte loads of fields just written by 8-byte stores: on an Intel Xeon such
        // a load cannot take its value from the stores and waits for the store buffer to drain,
        // behind the previous tile's output stores (~200 cycles a call, 4% of XL/2's forward).
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F present (the caller's contract), the sizes checked above.
            Kernel::Avx512 => unsafe {
                match panels {
                    1 => avx512::tall_tile::<1>(rows, x, w, panel_stride, ahead, &next, &out),
                    2 => avx512::tall_tile::<2>(rows, x, w, panel_stride, ahead, &next, &out),
                    3 => avx512::wide_tile::<3>(rows, x, w, panel_stride, ahead, &next, &out),
                    _ => avx512::wide_tile::<4>(rows, x, w, panel_stride, ahead, &next, &out),
                }
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA present (the caller's contract), one panel (every AVX2
            // variant's), the sizes checked above.
            Kernel::Avx2Fma => unsafe {
                match rows {
                    6 => avx2::tile::<6>(x, w, ahead, &next, &out),
                    5 => avx2::tile::<5>(x, w, ahead, &next, &out),
                    4 => avx2::tile::<4>(x, w, ahead, &next, &out),
                    3 => avx2::tile::<3>(x, w, ahead, &next, &out),
                    2 => avx2::tile::<2>(x, w, ahead, &next, &out),
                    _ => avx2::tile::<1>(x, w, ahead, &next, &out),
                }
            },
            Kernel::Portable => {
                let _ = (next, ahead, panel_stride);
                // The portable variant's tile: at most 6 rows by one panel.
                assert!(
                    rows <= 6 && panels == 1,
                    "a portable tile of at most 6 rows by one panel"
                );
                let mut acc = [[0.0f32; PANEL]; 6];
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
    use super::{NextWeights, PANEL, TileOutput};
    use std::arch::x86_64::*;

    /// One tile of `ROWS` rows by [`PANEL`] outputs, accumulated in registers over the depth
    /// `w.len() / PANEL`, fetching the lines of `next` into L2 along the way and the weights
    /// `ahead` steps ahead into L1.
    ///
    /// # Safety
    /// AVX2 and FMA present; `x` holds depth x ROWS values; `out` is valid for ROWS rows (see
    /// [`TileOutput`]).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const ROWS: usize>(
        x: &[f32],
        w: &[f32],
        ahead: usize,
        next: &NextWeights,
        out: &TileOutput,
    ) {
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
        let ahead = ahead * PANEL;
        // `next`: lines of the next panel's weights for L2 (one panel: the AVX2 variant's
        // tiles have one), one every `every` steps, so they are spread over the sweep.
        let lines = next.lines * next.panels.min(1);
        let every = depth.checked_div(lines).map_or(usize::MAX, |steps| steps.max(1));
        let (mut pf, mut pf_left, mut countdown) = (next.start, lines, every);
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
                // One weight line (64 B) per step: ask for the line `ahead` steps ahead, so a
                // panel streaming from memory arrives before the sweep reaches it.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(ahead) as *const i8);
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
    use super::{NextWeights, PANEL, TileOutput};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// The most rows of a tile of `x` (the tallest variant's 14 rows fit in one gather).
    const MAX_TILE_ROWS: usize = 16;

    /// Packs one row tile of x (`rows` rows, `inputs` apart, from `first`): `tile` (depth x rows,
    /// depth-major) gets `x[first + r * inputs + k]` at `tile[k * rows + r]`. Sixteen steps of
    /// the depth at a time, the tile's rows are loaded (16 values each) and transposed in
    /// registers, each step stored with one masked store; the last steps (fewer than 16) take
    /// one gather each. Gathering every step took 1.9% of XL/2's forward on an Intel Xeon (the
    /// scalar copy before it, ~4 cycles a value, 2% on an AMD EPYC Zen 4).
    ///
    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_tile(x: &[f32], first: usize, inputs: usize, rows: usize, tile: &mut [MaybeUninit<f32>]) {
        let depth = tile.len() / rows.max(1);
        assert!(
            (1..=MAX_TILE_ROWS).contains(&rows)
                && tile.len() == depth * rows
                && (depth == 0 || first + (rows - 1) * inputs + depth <= x.len())
                && i32::try_from((rows - 1) * inputs).is_ok(),
            "a tile of at most {MAX_TILE_ROWS} rows of x"
        );
        let mask: __mmask16 = (((1u32 << rows) - 1) & 0xffff) as u16;
        let (source, target) = (x.as_ptr().wrapping_add(first), tile.as_mut_ptr().cast::<f32>());
        let whole = depth / 16 * 16;
        for k in (0..whole).step_by(16) {
            let mut lines = [_mm512_setzero_ps(); 16];
            for (r, line) in lines.iter_mut().enumerate().take(rows) {
                // SAFETY: row r's values k..k + 16 lie inside x (the assertion above).
                *line = unsafe { _mm512_loadu_ps(source.add(r * inputs + k)) };
            }
            let steps = transpose(lines);
            for (j, step) in steps.iter().enumerate() {
                // SAFETY: step k + j's `rows` slots lie inside the tile.
                unsafe { _mm512_mask_storeu_ps(target.add((k + j) * rows), mask, *step) };
            }
        }
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(inputs as i32));
        for k in whole..depth {
            // SAFETY: the rows' values at this depth lie inside x, and the step's `rows` slots
            // inside the tile (the assertion above).
            unsafe {
                let step = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, offsets, source.add(k));
                _mm512_mask_storeu_ps(target.add(k * rows), mask, step);
            }
        }
    }

    /// The 16 x 16 transpose of `lines`: value `c` of line `r` becomes value `r` of line `c`.
    #[target_feature(enable = "avx512f")]
    fn transpose(lines: [__m512; 16]) -> [__m512; 16] {
        let (ps, pd) = (_mm512_castpd_ps, _mm512_castps_pd);
        // Within each 128-bit lane: pairs of rows interleaved, then quads, so that line 4q + e
        // holds, in lane L, value 4L + e of rows 4q..4q + 4.
        let mut pairs = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            pairs[2 * i] = _mm512_unpacklo_ps(lines[2 * i], lines[2 * i + 1]);
            pairs[2 * i + 1] = _mm512_unpackhi_ps(lines[2 * i], lines[2 * i + 1]);
        }
        let mut quads = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let (a, b, c, d) = (pairs[4 * q], pairs[4 * q + 1], pairs[4 * q + 2], pairs[4 * q + 3]);
            quads[4 * q] = ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            quads[4 * q + 1] = ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            quads[4 * q + 2] = ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            quads[4 * q + 3] = ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        // Then the 128-bit lanes: value 4L + e of all 16 rows from lane L of lines e, 4 + e,
        // 8 + e and 12 + e.
        let mut out = [_mm512_setzero_ps(); 16];
        for e in 0..4 {
            let even_low = _mm512_shuffle_f32x4::<0x88>(quads[e], quads[4 + e]);
            let odd_low = _mm512_shuffle_f32x4::<0xdd>(quads[e], quads[4 + e]);
            let even_high = _mm512_shuffle_f32x4::<0x88>(quads[8 + e], quads[12 + e]);
            let odd_high = _mm512_shuffle_f32x4::<0xdd>(quads[8 + e], quads[12 + e]);
            out[e] = _mm512_shuffle_f32x4::<0x88>(even_low, even_high);
            out[8 + e] = _mm512_shuffle_f32x4::<0xdd>(even_low, even_high);
            out[4 + e] = _mm512_shuffle_f32x4::<0x88>(odd_low, odd_high);
            out[12 + e] = _mm512_shuffle_f32x4::<0xdd>(odd_low, odd_high);
        }
        out
    }

    /// [`tile`] of `rows` rows (at most 14) by `PANELS` panels (1 or 2).
    ///
    /// # Safety
    /// As [`tile`]'s.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tall_tile<const PANELS: usize>(
        rows: usize,
        x: &[f32],
        w: &[f32],
        panel_stride: usize,
        ahead: usize,
        next: &NextWeights,
        out: &TileOutput,
    ) {
        macro_rules! by_rows {
            ($($n:literal)*) => {
                match rows {
                    // SAFETY: as this function's.
                    $($n => unsafe { tile::<$n, PANELS>(x, w, panel_stride, ahead, next, out) },)*
                    _ => unreachable!("a tile of at most 14 rows"),
                }
            };
        }
        by_rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14)
    }

    /// [`tile`] of `rows` rows (at most 6) by `PANELS` panels (3 or 4).
    ///
    /// # Safety
    /// As [`tile`]'s.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn wide_tile<const PANELS: usize>(
        rows: usize,
        x: &[f32],
        w: &[f32],
        panel_stride: usize,
        ahead: usize,
        next: &NextWeights,
        out: &TileOutput,
    ) {
        macro_rules! by_rows {
            ($($n:literal)*) => {
                match rows {
                    // SAFETY: as this function's.
                    $($n => unsafe { tile::<$n, PANELS>(x, w, panel_stride, ahead, next, out) },)*
                    _ => unreachable!("a tile of at most 6 rows"),
                }
            };
        }
        by_rows!(1 2 3 4 5 6)
    }

    /// One tile of `ROWS` rows by `PANELS` panels of [`PANEL`] outputs (one register each),
    /// accumulated over the depth `x.len() / ROWS`: per step one weight load per panel and
    /// `ROWS x PANELS` FMAs, each row's value broadcast (from memory, into the FMA, with one
    /// panel). Panel `p`'s weights start `p * panel_stride` into `w`; each is prefetched into L1
    /// `ahead` steps ahead, and the lines of `next` into L2, spread over the sweep. Each
    /// output's sum is the same chain of FMAs as every other variant's.
    ///
    /// # Safety
    /// AVX-512F present; `x` holds depth x ROWS values, `w` the panels' depth steps; `out` is
    /// valid for ROWS rows of at least `(PANELS - 1) * PANEL + 1` columns (see [`TileOutput`]).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const ROWS: usize, const PANELS: usize>(
        x: &[f32],
        w: &[f32],
        panel_stride: usize,
        ahead: usize,
        next: &NextWeights,
        out: &TileOutput,
    ) {
        // The tile of `out` is only touched after the sweep: fetch it now, while the sweep runs.
        for r in 0..ROWS {
            for p in 0..PANELS {
                _mm_prefetch::<_MM_HINT_T0>(out.ptr.wrapping_add(r * out.stride + p * PANEL) as *const i8);
            }
        }
        let depth = x.len() / ROWS;
        assert!(
            x.len() == depth * ROWS && w.len() >= (PANELS - 1) * panel_stride + depth * PANEL,
            "x and w hold the tile's rows and panels over the depth"
        );
        let mut acc = [[_mm512_setzero_ps(); PANELS]; ROWS];
        let (mut xp, mut wp) = (x.as_ptr(), w.as_ptr());
        let ahead = ahead * PANEL;
        macro_rules! step {
            () => {
                // SAFETY: at most depth steps of ROWS values of x and PANEL of each panel of w
                // (the caller's contract); prefetches past the end are hints that never fault.
                unsafe {
                    let mut weights = [_mm512_setzero_ps(); PANELS];
                    for (p, panel) in weights.iter_mut().enumerate() {
                        _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(p * panel_stride + ahead) as *const i8);
                        *panel = _mm512_loadu_ps(wp.add(p * panel_stride));
                    }
                    for (r, acc_row) in acc.iter_mut().enumerate() {
                        let value = _mm512_set1_ps(*xp.add(r));
                        for (a, &panel) in acc_row.iter_mut().zip(&weights) {
                            *a = _mm512_fmadd_ps(value, panel, *a);
                        }
                    }
                    xp = xp.add(ROWS);
                    wp = wp.add(PANEL);
                }
            };
        }
        // `next`: one line of each of its panels for L2 every `every` steps, then the rest of
        // the sweep.
        let every = depth.checked_div(next.lines).map_or(depth + 1, |steps| steps.max(1));
        let prefetched = next.lines.min(depth / every);
        let mut line = next.start;
        for _ in 0..prefetched {
            for p in 0..next.panels {
                _mm_prefetch::<_MM_HINT_T1>(line.wrapping_add(p * next.panel_stride) as *const i8);
            }
            line = line.wrapping_add(PANEL);
            for _ in 0..every {
                step!();
            }
        }
        for _ in prefetched * every..depth {
            step!();
        }
        for (r, acc_row) in acc.iter().enumerate() {
            for (p, &sum) in acc_row.iter().enumerate() {
                // Only the tile's `columns` lanes exist in `out`: the others are masked off.
                let columns = out.columns.saturating_sub(p * PANEL).min(PANEL);
                let mask: __mmask16 = if columns == PANEL { !0 } else { (1u16 << columns) - 1 };
                // SAFETY: row r < ROWS of out, lanes below `columns` only; the bias holds
                // `columns` values (the caller's contract).
                unsafe {
                    let at = out.ptr.add(r * out.stride + p * PANEL);
                    let start = match out.bias {
                        Some(bias) => _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(p * PANEL)),
                        None => _mm512_maskz_loadu_ps(mask, at),
                    };
                    _mm512_mask_storeu_ps(at, mask, _mm512_add_ps(start, sum));
                }
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

    /// `x W^T + b` by `variant` on one core, into an output first filled with NaN: the kernel's
    /// first pass must store over it (it is uninitialised in [`PackedWeights::linear`]), never
    /// read it.
    fn kernel_product(packed: &PackedWeights, variant: PanelVariant, x: &Array2<f32>, b: &Array1<f32>) -> Array2<f32> {
        let mut y = Array2::from_elem((x.nrows(), packed.outputs()), f32::NAN);
        // SAFETY: the view covers exactly y's elements, and f32 and MaybeUninit<f32> share a layout.
        let uninit = unsafe { ArrayViewMut2::from_shape_ptr(y.dim(), y.as_mut_ptr().cast::<MaybeUninit<f32>>()) };
        let bias = b.as_slice().expect("contiguous bias");
        packed.multiply_into(
            variant,
            &PackedRows::pack(x.view(), variant),
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
        let sizes = |rows: Range<usize>| row_tiles(rows, 6).map(|t| t.len()).collect::<Vec<_>>();
        assert_eq!(sizes(0..32), [6, 6, 5, 5, 5, 5]);
        assert_eq!(sizes(10..12), [2]);
        assert_eq!(sizes(0..0), Vec::<usize>::new());
        for tile_rows in [6, 12, 14] {
            for n in 1..100 {
                let tiles: Vec<_> = row_tiles(7..7 + n, tile_rows).collect();
                assert_eq!(tiles[0].start, 7);
                assert!(tiles.windows(2).all(|p| p[0].end == p[1].start));
                assert_eq!(tiles.last().unwrap().end, 7 + n);
                assert!(tiles.iter().all(|t| (1..=tile_rows).contains(&t.len())));
                assert_eq!(tiles.len(), n.div_ceil(tile_rows));
            }
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

    /// Packed rows hold each pass's tiles depth-major (`tile[k * rows + r]`), whichever way the
    /// variant packs them (in-register transposes and gathers on AVX-512, a copy otherwise), at
    /// depths that are and are not multiples of 16.
    #[test]
    fn packed_rows_hold_each_tile_depth_major() {
        for variant in variants_of_this_cpu() {
            for (rows, inputs) in [(1, 5), (14, 16), (13, 37), (29, 300), (600, 70)] {
                let x = matrix(rows, inputs, 9);
                let packed = PackedRows::pack(x.view(), variant);
                for row_start in (0..rows).step_by(packed.row_block) {
                    let block = row_start..(row_start + packed.row_block).min(rows);
                    for depth_start in (0..inputs).step_by(packed.pass_depth) {
                        let depth = packed.pass_depth.min(inputs - depth_start);
                        let pass = packed.pass(block.clone(), depth_start, depth);
                        for tile in row_tiles(block.clone(), variant.tile_rows) {
                            let values = &pass[(tile.start - block.start) * depth..][..tile.len() * depth];
                            for k in 0..depth {
                                for r in 0..tile.len() {
                                    assert_eq!(
                                        values[k * tile.len() + r],
                                        x[[tile.start + r, depth_start + k]],
                                        "{} {rows}x{inputs}: row {} input {}",
                                        variant.name,
                                        tile.start + r,
                                        depth_start + k
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every variant has a tile its dispatch covers (`PanelVariant::run`: up to 14 rows by one
    /// or two panels, up to 6 rows by three or four), a group of whole tiles, a name that finds
    /// it, and a built-in choice exists for this CPU among the candidates.
    #[test]
    fn every_variant_fits_its_dispatch() {
        for &variant in PanelVariant::all() {
            let most_rows = match (variant.kernel, variant.tile_panels) {
                (Kernel::Portable, 1) => 6,
                #[cfg(target_arch = "x86_64")]
                (Kernel::Avx2Fma, 1) => 6,
                #[cfg(target_arch = "x86_64")]
                (Kernel::Avx512, 1 | 2) => 14,
                #[cfg(target_arch = "x86_64")]
                (Kernel::Avx512, 3 | 4) => 6,
                _ => 0,
            };
            assert!((1..=most_rows).contains(&variant.tile_rows), "{}", variant.name);
            assert!(
                variant.panel_group.is_multiple_of(variant.tile_panels),
                "{}",
                variant.name
            );
            assert!(variant.packed_x_values >= DEPTH * variant.tile_rows, "{}", variant.name);
            assert_eq!(PanelVariant::by_name(variant.name()), Some(variant));
        }
        #[cfg(target_arch = "x86_64")]
        assert!(PanelVariant::by_name(INTEL_BUILT_IN).is_some_and(|v| v.kernel == Kernel::Avx512));
        assert!(PanelVariant::candidates().contains(&PanelVariant::built_in()));
        assert!(PanelVariant::candidates().iter().all(|v| v.runs_here()));
    }

    /// Each line of the next group's pass is fetched by exactly one call of the group's sweep
    /// when it has at least two row tiles, by none otherwise.
    #[test]
    fn the_next_group_is_fetched_once() {
        let packed = PackedWeights::pack(matrix(40 * PANEL, 300, 1).view());
        let layout = packed.layout();
        for (depth_start, depth) in [(0, 256), (256, 44), (128, 128)] {
            let block_start = depth_start / DEPTH * DEPTH;
            let panel_stride = DEPTH.min(300 - block_start) * PANEL;
            let pass_start =
                |panel: usize| layout.slice_start(block_start, panel) + (depth_start - block_start) * PANEL;
            // (this group's panels, the next group's, tiles, panels per tile)
            for (group, next, tiles, tile_panels) in [
                (0..8, 8..16, 22, 1),
                (0..16, 16..32, 5, 2),
                (0..16, 16..21, 3, 2),
                (4..20, 20..36, 43, 4),
                (0..16, 16..32, 1, 2),
                (0..16, 16..16, 7, 2),
            ] {
                let next_group = NextGroup {
                    panels: next.clone(),
                    tiles,
                    depth,
                    tile_panels,
                    panel_stride,
                };
                let mut fetched = vec![0usize; packed.values.len()];
                for t in 0..tiles {
                    for c in 0..group.len().div_ceil(tile_panels) {
                        let share = next_group.share(&packed.values, pass_start, next_group.lines(t), c);
                        assert!(share.panels <= tile_panels);
                        let start = (share.start as usize).wrapping_sub(packed.values.as_ptr() as usize) / 4;
                        for p in 0..share.panels {
                            for line in 0..share.lines {
                                let at = start + p * share.panel_stride + line * PANEL;
                                fetched[at..at + PANEL].iter_mut().for_each(|n| *n += 1);
                            }
                        }
                    }
                }
                let expected = if tiles > 1 { next.len() * depth * PANEL } else { 0 };
                assert_eq!(fetched.iter().sum::<usize>(), expected, "{next:?} by {tiles} tiles");
                if tiles > 1 {
                    for panel in next.clone() {
                        let pass = pass_start(panel)..pass_start(panel) + depth * PANEL;
                        assert!(fetched[pass].iter().all(|&n| n == 1), "{next:?} by {tiles} tiles");
                    }
                }
            }
        }
    }

    /// The variants this CPU runs (a SKIP line for each it cannot).
    fn variants_of_this_cpu() -> Vec<PanelVariant> {
        PanelVariant::all()
            .iter()
            .copied()
            .filter(|variant| {
                let runs = variant.runs_here();
                if !runs {
                    println!("SKIP the {} variant: this CPU lacks its instructions", variant.name);
                }
                runs
            })
            .collect()
    }

    /// Shapes that exercise each edge: rows not a multiple of any tile, depths crossing a block
    /// of the layout, passes shallower than a block (600 rows: 128 deep) and blocks of rows
    /// (1100 rows for the AVX2 variant, 2200 for all), outputs not a multiple of a panel or of
    /// a tile of 2 or 4 panels, groups cut short.
    const AWKWARD_SHAPES: [(usize, usize, usize); 11] = [
        (3, 0, 5),
        (1, 3, 1),
        (5, 17, 16),
        (6, 256, 32),
        (13, 257, 33),
        (29, 70, 170),
        (300, 600, 50),
        (600, 520, 70),
        (1100, 300, 20),
        (25, 513, 200),
        (2200, 70, 20),
    ];

    /// Every variant this CPU runs, on the awkward shapes, on one core and split over the cores.
    /// Error relative to each entry's `|b| + sum |x w|`: measured at most 8.6e-7 (f32
    /// accumulation of up to 600 terms; f32 epsilon is 6e-8).
    #[test]
    fn every_variant_matches_the_exact_product_on_awkward_shapes() {
        let variants = variants_of_this_cpu();
        for &(rows, inputs, outputs) in &AWKWARD_SHAPES {
            let (x, w) = (matrix(rows, inputs, 2), matrix(outputs, inputs, 3));
            let b = Array1::from_shape_fn(outputs, |j| j as f32 * 0.01);
            let exact = reference_product(&x, &w, &b);
            let packed = PackedWeights::pack(w.view());
            for &variant in &variants {
                let y = kernel_product(&packed, variant, &x, &b);
                let error = relative_error(&y, &exact);
                assert!(
                    error < 2e-6,
                    "{} {rows}x{inputs}x{outputs}: relative error {error:e}",
                    variant.name
                );
                let split = packed.linear_with(variant, x.view(), b.view());
                let error = relative_error(&split, &exact);
                assert!(
                    error < 2e-6,
                    "{} split {rows}x{inputs}x{outputs}: relative error {error:e}",
                    variant.name
                );
            }
            let error = relative_error(&packed.linear(x.view(), b.view()), &exact);
            assert!(
                error < 2e-6,
                "linear {rows}x{inputs}x{outputs}: relative error {error:e}"
            );
        }
    }

    /// Every fused variant (the AVX2 and AVX-512 tiles of every shape) sums each output with the
    /// same chain of FMAs, in input order within a pass, with passes of the same depth: they
    /// agree bit for bit on every shape, whatever the row count, on one core, split over the
    /// cores, and on a slice of the outputs. Which one a CPU runs changes no result.
    #[test]
    fn every_fused_variant_gives_the_same_bits() {
        let variants = PanelVariant::candidates();
        if variants.len() < 2 {
            println!(
                "SKIP comparing the fused variants: this CPU runs {} of them",
                variants.len()
            );
            return;
        }
        let mut shapes = AWKWARD_SHAPES.to_vec();
        shapes.extend([(1, 40, 16), (200, 600, 50), (SAME_BITS_ROWS, 1152, 200)]);
        for (rows, inputs, outputs) in shapes {
            let (x, w) = (matrix(rows, inputs, 6), matrix(outputs, inputs, 7));
            let b = Array1::from_shape_fn(outputs, |j| 0.3 - j as f32 * 0.02);
            let packed = PackedWeights::pack(w.view());
            let expected = kernel_product(&packed, variants[0], &x, &b);
            let panels = packed.panel_count();
            let slice = panels / 3..panels - panels / 4;
            for &variant in &variants {
                let name = variant.name;
                assert_eq!(
                    kernel_product(&packed, variant, &x, &b),
                    expected,
                    "{name} {rows}x{inputs}x{outputs}"
                );
                assert_eq!(
                    packed.linear_with(variant, x.view(), b.view()),
                    expected,
                    "{name} split"
                );
                let columns = slice.start * PANEL..(slice.end * PANEL).min(outputs).max(slice.start * PANEL);
                assert_eq!(
                    packed.linear_panels(variant, x.view(), b.view(), slice.clone()),
                    expected.slice(ndarray::s![.., columns]),
                    "{name} panels {slice:?} of {rows}x{inputs}x{outputs}"
                );
            }
        }
    }

    /// Up to [`SAME_BITS_ROWS`] rows, each row's product is summed alone, in input order,
    /// whatever the rows beside it and the tile it falls in, with every variant:
    /// `Dit::conditioning_steps` relies on this to compute many steps' adaLN in one product
    /// with the same bits as one step at a time.
    #[test]
    fn a_row_gives_the_same_bits_whatever_rows_share_its_product() {
        let (x, w) = (matrix(SAME_BITS_ROWS, 700, 4), matrix(40, 700, 5));
        let b = ndarray::Array1::from_shape_fn(40, |j| j as f32 * 0.03);
        let packed = PackedWeights::pack(w.view());
        for variant in PanelVariant::candidates() {
            let all = packed.linear_with(variant, x.view(), b.view());
            for rows in [0..1, 0..2, 5..12, 100..164, 0..SAME_BITS_ROWS] {
                let part = packed.linear_with(variant, x.slice(ndarray::s![rows.clone(), ..]), b.view());
                assert_eq!(
                    part,
                    all.slice(ndarray::s![rows.clone(), ..]),
                    "{} rows {rows:?}",
                    variant.name
                );
            }
        }
    }

    proptest! {
        #![proptest_config(resca_tests::proptest_config(48))]
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

        /// Any shape: every fused variant gives the built-in variant's bits.
        #[test]
        fn every_variant_gives_the_built_in_bits(rows in 1usize..80, inputs in 1usize..600, outputs in 1usize..100, seed in 0usize..50) {
            let (x, w) = (matrix(rows, inputs, seed), matrix(outputs, inputs, seed + 2));
            let b = ndarray::Array1::from_shape_fn(outputs, |j| (j + seed) as f32 * 0.05);
            let packed = PackedWeights::pack(w.view());
            let expected = packed.linear_with(PanelVariant::built_in(), x.view(), b.view());
            for variant in PanelVariant::candidates() {
                prop_assert_eq!(&packed.linear_with(variant, x.view(), b.view()), &expected, "{}", variant.name);
            }
        }
    }
}
