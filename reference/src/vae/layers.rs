//! The decoder's layers on channel-major feature maps (C, H*W) of one image, as PyTorch lays out
//! each image of an NCHW batch.
//!
//! A 3x3 convolution runs by Winograd's F(2x2, 3x3) on bands of output rows: the band's input
//! rows (plus a row of halo above and below, zero-padded) are gathered, each 2x2 output tile's
//! 4x4 input patch transformed, the 16 transformed points multiplied by the transformed kernels
//! (16 OpenBLAS GEMMs of depth Cin, where im2col would need one of depth 9 Cin: 2.25x fewer
//! multiply-adds), and the products transformed back and added onto the output's band, which
//! already holds the bias or the residual. Bands run on all cores; a band's buffers (8 MB at
//! most, whatever the width: narrower layers get longer bands, whose GEMMs spend less of their
//! time packing the kernels) are kept from one band to the next on a core, and the transforms
//! run over contiguous rows of tiles, compiled for AVX-512 or AVX2 where the CPU has them. A 1x1
//! convolution is one GEMM per band. Two things are folded into the gathering, so that their
//! results never take a full feature map of memory: the GroupNorm + SiLU before a convolution
//! (applied as a per-channel scale and shift, then SiLU, to the gathered rows) and the 2x
//! nearest-neighbour upsampling before an upsampler's convolution (each output pixel reads its
//! source pixel). A resnet that narrows its width by half or more computes its first
//! convolution and its shortcut into its input's memory ([`conv_and_shortcut_in_place`]).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use crate::ops;

/// Output pixels per band of a 1x1 convolution (whole rows; at least one row).
const BAND_PIXELS: usize = 512;

/// One image's feature map: `values` (channels, height * width), row-major pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap {
    pub values: Array2<f32>,
    pub height: usize,
    pub width: usize,
}

impl FeatureMap {
    pub fn new(values: Array2<f32>, height: usize, width: usize) -> Self {
        assert_eq!(values.ncols(), height * width, "one column per pixel");
        Self { values, height, width }
    }

    pub fn channels(&self) -> usize {
        self.values.nrows()
    }

    pub fn view(&self) -> MapView<'_> {
        MapView {
            values: self.values.view(),
            height: self.height,
            width: self.width,
        }
    }

    /// The map's first `channels` channels, the memory of the others given back (the rows are
    /// the tail of the allocation, so nothing moves).
    pub fn keep_channels(self, channels: usize) -> FeatureMap {
        let FeatureMap { values, height, width } = self;
        let pixels = values.ncols();
        assert!(channels <= values.nrows() && values.is_standard_layout());
        let mut flat = values.into_raw_vec_and_offset().0;
        flat.truncate(channels * pixels);
        flat.shrink_to_fit();
        FeatureMap::new(
            Array2::from_shape_vec((channels, pixels), flat).expect("sized above"),
            height,
            width,
        )
    }
}

/// A feature map borrowed: `values` (channels, height * width), each channel's pixels contiguous
/// (rows of a [`FeatureMap`] or of a part of one).
#[derive(Clone, Copy, Debug)]
pub struct MapView<'a> {
    pub values: ArrayView2<'a, f32>,
    pub height: usize,
    pub width: usize,
}

impl MapView<'_> {
    pub fn channels(&self) -> usize {
        self.values.nrows()
    }
}

/// A per-channel map `x * scale + shift` followed by SiLU: a GroupNorm (with its statistics of
/// one feature map) and the activation after it, applied by the convolution that reads them.
#[derive(Clone, Debug)]
pub struct NormSilu {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

/// `nn.GroupNorm(groups, channels, eps)` with its affine weight and bias.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f64,
    pub weight: Array1<f32>,
    pub bias: Array1<f32>,
}

impl GroupNorm {
    /// The norm of `x` as a per-channel scale and shift: each group's mean and (biased)
    /// variance over its channels and pixels, accumulated in f64.
    pub fn affine(&self, x: MapView) -> NormSilu {
        let channels = x.channels();
        let per_group = channels / self.groups;
        let sums: Vec<(f64, f64)> = x
            .values
            .axis_iter(Axis(0))
            .into_par_iter()
            .map(|row| sums_and_squares(row.as_slice().expect("contiguous rows")))
            .collect();
        let count = (per_group * x.values.ncols()) as f64;
        let mut scale = vec![0.0; channels];
        let mut shift = vec![0.0; channels];
        for group in 0..self.groups {
            let range = group * per_group..(group + 1) * per_group;
            let (sum, squares) = sums[range.clone()]
                .iter()
                .fold((0.0, 0.0), |(s, q), &(cs, cq)| (s + cs, q + cq));
            let mean = sum / count;
            let variance = (squares / count - mean * mean).max(0.0);
            let inverse_std = 1.0 / (variance + self.eps).sqrt();
            for c in range {
                let channel_scale = f64::from(self.weight[c]) * inverse_std;
                scale[c] = channel_scale as f32;
                shift[c] = (f64::from(self.bias[c]) - mean * channel_scale) as f32;
            }
        }
        NormSilu { scale, shift }
    }

    /// The normalised map itself (no activation): the mid-block attention's input.
    pub fn apply(&self, x: &FeatureMap) -> FeatureMap {
        let NormSilu { scale, shift } = self.affine(x.view());
        let mut values = x.values.clone();
        values
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(c, mut row)| row.mapv_inplace(|v| v * scale[c] + shift[c]));
        FeatureMap::new(values, x.height, x.width)
    }
}

/// An `nn.Conv2d` with a 1x1 or 3x3 kernel (stride 1, padding `kernel / 2`), or an `nn.Linear`
/// applied to every pixel (a 1x1 convolution): weight (out, in * kernel^2), bias (out).
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
    pub kernel: usize,
}

impl Conv2d {
    /// A convolution of weight (out, in * kernel^2).
    pub fn new(weight: Array2<f32>, bias: Array1<f32>, kernel: usize) -> Self {
        Self { weight, bias, kernel }
    }

    pub fn in_channels(&self) -> usize {
        self.weight.ncols() / (self.kernel * self.kernel)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.nrows()
    }

    /// The convolution of `x` (plus its bias), read through `norm` (GroupNorm + SiLU) if given
    /// and upsampled 2x (nearest) if `upsample`, added onto `residual` if given (whose memory
    /// then holds the result).
    pub fn forward(
        &self,
        x: &FeatureMap,
        norm: Option<&NormSilu>,
        upsample: bool,
        residual: Option<FeatureMap>,
    ) -> FeatureMap {
        let factor = if upsample { 2 } else { 1 };
        let (height, width) = (x.height * factor, x.width * factor);
        let mut out = match residual {
            Some(residual) => {
                assert_eq!(
                    (residual.channels(), residual.height, residual.width),
                    (self.out_channels(), height, width),
                    "residual of the output's shape"
                );
                residual.values
            }
            None => Array2::zeros((self.out_channels(), height * width)),
        };
        self.add_onto(x.view(), norm, upsample, out.view_mut());
        FeatureMap::new(out, height, width)
    }

    /// Adds the convolution of `x` (with its bias; through `norm` and upsampled as in
    /// [`Self::forward`]) onto `out` (out channels, output pixels).
    pub fn add_onto(&self, x: MapView, norm: Option<&NormSilu>, upsample: bool, mut out: ArrayViewMut2<f32>) {
        ops::single_threaded_blas();
        assert_eq!(x.channels(), self.in_channels(), "input channels");
        let factor = if upsample { 2 } else { 1 };
        let width = x.width * factor;
        assert_eq!(
            out.dim(),
            (self.out_channels(), x.height * factor * width),
            "output of the convolution's shape"
        );
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(self.bias.as_slice().expect("contiguous").par_iter())
            .for_each(|(mut row, &b)| row += b);
        if self.kernel == 3 {
            // Transformed for this call only (16/9 of the layer's weights, at most 16 MB for the
            // sd-vae's widest layer, and well under 1% of the convolution's work): kept with the
            // model, the transforms would add 1.8x its weights to its memory.
            let kernels = winograd_weights(self.weight.view());
            let band_rows = winograd_band_rows(width, self.in_channels(), self.out_channels());
            out.axis_chunks_iter_mut(Axis(1), band_rows * width)
                .into_par_iter()
                .enumerate()
                .for_each_init(WinogradScratch::default, |scratch, (band, out_band)| {
                    self.winograd_band(&kernels, scratch, x, norm, factor, band * band_rows, out_band)
                });
            return;
        }
        let band_rows = (BAND_PIXELS / width).max(1);
        out.axis_chunks_iter_mut(Axis(1), band_rows * width)
            .into_par_iter()
            .enumerate()
            .for_each(|(band, mut out_band)| {
                let rows = out_band.ncols() / width;
                let columns = gather_pixels(x, norm, factor, band * band_rows, rows);
                general_mat_mul(1.0, &self.weight, &columns, 1.0, &mut out_band);
            });
    }

    /// A 1x1 convolution to fewer channels written over its own input's memory (a resnet's
    /// shortcut): each band of pixels is copied out, multiplied, and its outputs stored in the
    /// same pixels' places of the first `out` channel rows, which only those pixels' inputs
    /// occupied. The freed rows are then given back, so the input and the output never take
    /// memory together.
    pub fn forward_in_place(&self, x: FeatureMap) -> FeatureMap {
        assert!(
            self.kernel == 1 && self.out_channels() <= x.channels(),
            "a narrowing 1x1 convolution"
        );
        ops::single_threaded_blas();
        let mut x = x;
        let outputs = self.out_channels();
        x.values
            .axis_chunks_iter_mut(Axis(1), BAND_PIXELS)
            .into_par_iter()
            .for_each(|mut band| {
                let input = band.to_owned();
                let mut product = self
                    .bias
                    .broadcast((input.ncols(), outputs))
                    .expect("one bias per output")
                    .t()
                    .to_owned();
                general_mat_mul(1.0, &self.weight, &input, 1.0, &mut product);
                band.slice_mut(s![..outputs, ..]).assign(&product);
            });
        x.keep_channels(outputs)
    }
}

/// A narrowing resnet's first convolution and its shortcut, into their input's memory:
/// `conv` (3x3) of `x` through `norm` and `shortcut` (1x1) of `x`, both from `in` to `out`
/// channels with their biases, `2 out <= in`. Returns `[shortcut; conv]`, (2 out, pixels), in
/// `x`'s allocation, its other rows given back; the input, the hidden map and the shortcut's
/// output never take more memory together than the input alone.
///
/// A band's outputs (all `2 out` channels of its pixels) take exactly the places of the band's
/// own inputs in the channel-major layout, but its neighbours read one row of them as their
/// 3x3 halo. So bands are computed a group at a time (in parallel, into buffers of a few MB),
/// and a group's outputs are stored once the next group, the last reader of its inputs, has
/// been computed.
pub fn conv_and_shortcut_in_place(x: FeatureMap, norm: &NormSilu, conv: &Conv2d, shortcut: &Conv2d) -> FeatureMap {
    let (inputs, outputs) = (conv.in_channels(), conv.out_channels());
    assert!(
        conv.kernel == 3
            && shortcut.kernel == 1
            && (shortcut.in_channels(), shortcut.out_channels()) == (inputs, outputs)
            && x.channels() == inputs
            && 2 * outputs <= inputs,
        "a narrowing 3x3 convolution and its 1x1 shortcut"
    );
    ops::single_threaded_blas();
    let FeatureMap {
        mut values,
        height,
        width,
    } = x;
    let pixels = height * width;
    let band_rows = winograd_band_rows(width, inputs, outputs);
    let band_pixels = band_rows * width;
    let bands = height.div_ceil(band_rows);
    let group = 2 * rayon::current_num_threads();
    let kernels = winograd_weights(conv.weight.view());
    // The results of consecutive bands, from their first pixel on, into their places.
    let store = |values: &mut Array2<f32>, results: Vec<(usize, Array2<f32>)>| {
        let Some(&(start, _)) = results.first() else {
            return;
        };
        let end = results
            .iter()
            .map(|(start, result)| start + result.ncols())
            .max()
            .expect("not empty");
        values
            .slice_mut(s![..2 * outputs, start..end])
            .axis_chunks_iter_mut(Axis(1), band_pixels)
            .into_par_iter()
            .zip(results.par_iter())
            .for_each(|(mut place, (_, result))| place.assign(result));
    };
    let mut pending: Vec<(usize, Array2<f32>)> = Vec::new();
    for first in (0..bands).step_by(group) {
        let input = MapView {
            values: values.view(),
            height,
            width,
        };
        let computed: Vec<(usize, Array2<f32>)> = (first..(first + group).min(bands))
            .into_par_iter()
            .map_init(WinogradScratch::default, |scratch, band| {
                let start = band * band_pixels;
                let end = (start + band_pixels).min(pixels);
                let mut result = Array2::<f32>::zeros((2 * outputs, end - start));
                let (mut to_shortcut, mut to_conv) = result.view_mut().split_at(Axis(0), outputs);
                for (mut row, &b) in to_shortcut.rows_mut().into_iter().zip(&shortcut.bias) {
                    row.fill(b);
                }
                for (mut row, &b) in to_conv.rows_mut().into_iter().zip(&conv.bias) {
                    row.fill(b);
                }
                let band_inputs = input.values.slice(s![.., start..end]);
                general_mat_mul(1.0, &shortcut.weight, &band_inputs, 1.0, &mut to_shortcut);
                conv.winograd_band(&kernels, scratch, input, Some(norm), 1, band * band_rows, to_conv);
                (start, result)
            })
            .collect();
        store(&mut values, std::mem::replace(&mut pending, computed));
    }
    store(&mut values, pending);
    FeatureMap::new(values, height, width).keep_channels(2 * outputs)
}

/// The input pixels of output rows `first_row..first_row + rows` (channels, pixels), through
/// `norm` if given, for a 1x1 convolution.
fn gather_pixels(x: MapView, norm: Option<&NormSilu>, factor: usize, first_row: usize, rows: usize) -> Array2<f32> {
    if factor == 1 && norm.is_none() {
        let start = first_row * x.width;
        return x.values.slice(s![.., start..start + rows * x.width]).to_owned();
    }
    let width = x.width * factor;
    let mut gathered = Vec::new();
    gather_padded(&mut gathered, x, norm, factor, first_row, rows, width, 0);
    Array2::from_shape_vec((x.channels(), rows * width), gathered).expect("sized by gather_padded")
}

/// The input rows from `first_row - halo` on, upsampled by `factor` and through `norm`, into
/// `values`, resized to `padded_rows` x `padded_width` per channel (channel-major), each row
/// with `halo` zeros on the left and zeros after the input's width; rows outside the upsampled
/// input are zeros. Every value is written, so `values` may hold a previous band's.
#[allow(clippy::too_many_arguments)]
fn gather_padded(
    values: &mut Vec<f32>,
    x: MapView,
    norm: Option<&NormSilu>,
    factor: usize,
    first_row: usize,
    padded_rows: usize,
    padded_width: usize,
    halo: usize,
) {
    let (height, width) = (x.height * factor, x.width * factor);
    values.resize(x.channels() * padded_rows * padded_width, 0.0);
    for (c, channel) in values.chunks_exact_mut(padded_rows * padded_width).enumerate() {
        let source = x.values.row(c);
        let source = source.as_slice().expect("contiguous rows");
        for (r, row) in channel.chunks_exact_mut(padded_width).enumerate() {
            let Some(y) = (first_row + r).checked_sub(halo).filter(|&y| y < height) else {
                row.fill(0.0);
                continue;
            };
            let (left, rest) = row.split_at_mut(halo);
            let (destination, right) = rest.split_at_mut(width);
            left.fill(0.0);
            right.fill(0.0);
            let source_row = &source[(y / factor) * x.width..(y / factor + 1) * x.width];
            if factor == 1 {
                destination.copy_from_slice(source_row);
            } else {
                for (pair, &v) in destination.chunks_exact_mut(factor).zip(source_row) {
                    pair.fill(v);
                }
            }
            if let Some(norm) = norm {
                ops::scale_shift_silu_slice(destination, norm.scale[c], norm.shift[c]);
            }
        }
    }
}

/// The values of a Winograd band's transformed inputs and products together, 16 (in + out) per
/// 4 output pixels: 8 MB, what the sd-vae's 512-channel layers take in 512-pixel bands.
/// Narrower layers get longer bands of the same size: each of a band's 16 GEMMs packs its
/// transformed kernels, and the more tiles it multiplies them with, the less of its time that
/// packing takes (a third of the GEMMs' time at 128 tiles).
const WINOGRAD_BAND_VALUES: usize = 2 << 20;

/// The most pixels of a Winograd band (the sd-vae's 128-channel layers'; narrower layers, whose
/// GEMMs are short anyway, keep their bands' buffers small beside their feature maps).
const WINOGRAD_BAND_MAX_PIXELS: usize = 2048;

/// Output rows per band of a Winograd convolution from `inputs` to `outputs` channels: an even
/// number, about [`WINOGRAD_BAND_VALUES`] / (4 (in + out)) pixels, at most
/// [`WINOGRAD_BAND_MAX_PIXELS`], at least 2 rows.
fn winograd_band_rows(width: usize, inputs: usize, outputs: usize) -> usize {
    let pixels = (WINOGRAD_BAND_VALUES / (4 * (inputs + outputs))).min(WINOGRAD_BAND_MAX_PIXELS);
    ((pixels / width).max(2) / 2) * 2
}

/// The values a convolution from `inputs` to `outputs` channels, `width` output pixels wide,
/// allocates besides its input and output, `threads` bands at a time: the transformed kernels
/// (twice, as they are laid out) and, per band, the gathered rows, the transformed inputs, the
/// products and a few rows of the transforms of the Winograd convolution (an upper bound for a
/// 1x1 convolution's band copies, of at most a quarter as many values).
pub fn conv_scratch(inputs: usize, outputs: usize, width: usize, threads: usize) -> u64 {
    let band_rows = winograd_band_rows(width, inputs, outputs) as u64;
    let tiles_across = width.div_ceil(2) as u64;
    let gathered = inputs as u64 * (band_rows + 2) * (2 * tiles_across + 2);
    let transformed_and_products = 16 * (inputs + outputs) as u64 * (band_rows / 2) * tiles_across;
    let transform_rows = 12 * (tiles_across + 1);
    32 * (inputs * outputs) as u64 + threads as u64 * (gathered + transformed_and_products + transform_rows)
}

/// The values [`conv_and_shortcut_in_place`] allocates besides the input and
/// [`conv_scratch`]: the results of two groups of bands (the group computed and the one waiting
/// to be stored), `2 threads` bands each.
pub fn in_place_results(inputs: usize, outputs: usize, width: usize, threads: usize) -> u64 {
    4 * threads as u64 * 2 * outputs as u64 * (winograd_band_rows(width, inputs, outputs) * width) as u64
}

/// `G g G^T` for each (out, in) 3x3 kernel g, `G` = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2],
/// [0, 0, 1]]: the 16 points of the transformed 4x4 kernel, each an (out, in) matrix of the
/// result (16, out, in).
fn winograd_weights(weight: ArrayView2<f32>) -> Array3<f32> {
    let (outputs, columns) = weight.dim();
    let inputs = columns / 9;
    // Computed per output channel on all cores, (out, 16, in), then laid out by point.
    let mut by_output = Array3::<f32>::zeros((outputs, 16, inputs));
    by_output
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(weight.axis_iter(Axis(0)))
        .for_each(|(mut points, row)| {
            let row = row.as_slice().expect("contiguous rows");
            for (i, g) in row.chunks_exact(9).enumerate() {
                let g = |r: usize, c: usize| f64::from(g[r * 3 + c]);
                // G g: 4 x 3, then (G g) G^T: 4 x 4.
                let gg: [[f64; 3]; 4] = std::array::from_fn(|r| {
                    std::array::from_fn(|c| match r {
                        0 => g(0, c),
                        1 => 0.5 * (g(0, c) + g(1, c) + g(2, c)),
                        2 => 0.5 * (g(0, c) - g(1, c) + g(2, c)),
                        _ => g(2, c),
                    })
                });
                for (r, [a, b, c]) in gg.into_iter().enumerate() {
                    let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                    for (q, v) in row.into_iter().enumerate() {
                        points[[r * 4 + q, i]] = v as f32;
                    }
                }
            }
        });
    let mut points = Array3::<f32>::zeros((16, outputs, inputs));
    points
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(p, mut point)| point.assign(&by_output.index_axis(Axis(1), p)));
    points
}

/// A Winograd band's gathered rows, transformed inputs and products, kept from one band to the
/// next on a core.
#[derive(Default)]
struct WinogradScratch {
    gathered: Vec<f32>,
    transformed: Vec<f32>,
    products: Vec<f32>,
}

impl Conv2d {
    /// One band of the 3x3 convolution by Winograd's F(2x2, 3x3), output rows from `first_row`
    /// (an even row), `out_band` (out, its pixels): each 2x2 output tile's 4x4 input patch is
    /// transformed (`B^T d B`), the 16 points multiplied by the transformed kernels `kernels`
    /// ([`winograd_weights`]; 16 GEMMs with depth `in`, against 9 `in` for im2col: 2.25x fewer
    /// multiply-adds), and the products transformed back (`A^T m A`) and added onto `out_band`.
    #[allow(clippy::needless_range_loop)]
    #[allow(clippy::too_many_arguments)]
    fn winograd_band(
        &self,
        kernels: &Array3<f32>,
        scratch: &mut WinogradScratch,
        x: MapView,
        norm: Option<&NormSilu>,
        factor: usize,
        first_row: usize,
        out_band: ArrayViewMut2<f32>,
    ) {
        let width = x.width * factor;
        let tiles_across = width.div_ceil(2);
        let (inputs, outputs) = (self.in_channels(), self.out_channels());
        let rows = out_band.ncols() / width;
        let tiles_down = rows.div_ceil(2);
        let tiles = tiles_down * tiles_across;
        let (padded_rows, pw) = (2 * tiles_down + 2, 2 * tiles_across + 2);
        gather_padded(&mut scratch.gathered, x, norm, factor, first_row, padded_rows, pw, 1);
        // Transformed inputs: point p's matrix (in, tiles) at p * in * tiles (every value written,
        // so the buffer of the previous band is reused as it is).
        let transformed = &mut scratch.transformed;
        transformed.resize(16 * inputs * tiles, 0.0);
        transform_inputs(
            &scratch.gathered,
            inputs,
            padded_rows,
            pw,
            tiles_down,
            tiles_across,
            transformed,
        );
        // The products, point p's (out, tiles) at p * out * tiles (overwritten: beta 0).
        scratch.products.resize(16 * outputs * tiles, 0.0);
        for p in 0..16 {
            let v = ArrayView2::from_shape(
                (inputs, tiles),
                &transformed[p * inputs * tiles..(p + 1) * inputs * tiles],
            )
            .expect("sized above");
            let mut product = ArrayViewMut2::from_shape(
                (outputs, tiles),
                &mut scratch.products[p * outputs * tiles..(p + 1) * outputs * tiles],
            )
            .expect("sized above");
            general_mat_mul(1.0, &kernels.index_axis(Axis(0), p), &v, 0.0, &mut product);
        }
        add_transformed_products(
            &scratch.products,
            outputs,
            tiles_down,
            tiles_across,
            rows,
            width,
            out_band,
        );
    }
}

/// Defines `fn $name` three times, for AVX-512, for AVX2 + FMA and for the baseline x86-64,
/// choosing at run time (as `ops` does for its element-wise loops): the transforms' loops
/// vectorise 16 or 8 wide on the CPUs that can. The same IEEE operations run either way (Rust
/// fuses no multiply-add by itself), so the results are identical.
macro_rules! for_each_cpu {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn widest($($arg: $ty),*) $(-> $ret)? $body
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `widest` was compiled for.
                    return unsafe { widest($($arg),*) };
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? $body
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `wide` was compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            #[allow(clippy::too_many_arguments)]
            fn narrow($($arg: $ty),*) $(-> $ret)? $body
            narrow($($arg),*)
        }
    };
}

for_each_cpu! {
    /// `B^T d B` of every tile's 4x4 input patch d, `B^T` = [[1, 0, -1, 0], [0, 1, 1, 0],
    /// [0, -1, 1, 0], [0, 1, 0, -1]]: `padded` (inputs, padded_rows, pw) with tile (ty, tx)'s
    /// patch at rows 2ty.., columns 2tx.., into `transformed` (16, inputs, tiles).
    ///
    /// Per tile row, the 4 rows of `B^T d` (combinations of the 4 input rows) are split into
    /// their even and odd columns: tile tx reads columns 2tx..2tx+3, which are even[tx],
    /// odd[tx], even[tx + 1] and odd[tx + 1], so both passes run over contiguous slices.
    fn transform_inputs(
        padded: &[f32],
        inputs: usize,
        padded_rows: usize,
        pw: usize,
        tiles_down: usize,
        tiles_across: usize,
        transformed: &mut [f32]
    ) {
        let tiles = tiles_down * tiles_across;
        let half = tiles_across + 1;
        let mut even = vec![0.0f32; 4 * half];
        let mut odd = vec![0.0f32; 4 * half];
        for c in 0..inputs {
            let channel = &padded[c * padded_rows * pw..(c + 1) * padded_rows * pw];
            for ty in 0..tiles_down {
                let row = |r: usize| &channel[(2 * ty + r) * pw..(2 * ty + r) * pw + 2 * half];
                let (d0, d1, d2, d3) = (row(0), row(1), row(2), row(3));
                let (e0, rest) = even.split_at_mut(half);
                let (e1, rest) = rest.split_at_mut(half);
                let (e2, e3) = rest.split_at_mut(half);
                let (o0, rest) = odd.split_at_mut(half);
                let (o1, rest) = rest.split_at_mut(half);
                let (o2, o3) = rest.split_at_mut(half);
                // B^T d: [d0 - d2, d1 + d2, d2 - d1, d1 - d3].
                for j in 0..half {
                    let (a, b) = (2 * j, 2 * j + 1);
                    (e0[j], e1[j], e2[j], e3[j]) = (d0[a] - d2[a], d1[a] + d2[a], d2[a] - d1[a], d1[a] - d3[a]);
                    (o0[j], o1[j], o2[j], o3[j]) = (d0[b] - d2[b], d1[b] + d2[b], d2[b] - d1[b], d1[b] - d3[b]);
                }
                // (B^T d) B: the same combinations of the columns, into points (r, 0..4).
                for r in 0..4 {
                    let (e, o) = (&even[r * half..(r + 1) * half], &odd[r * half..(r + 1) * half]);
                    let (e_this, e_next) = (&e[..tiles_across], &e[1..]);
                    let (o_this, o_next) = (&o[..tiles_across], &o[1..]);
                    let at = |q: usize| ((r * 4 + q) * inputs + c) * tiles + ty * tiles_across;
                    let destination = &mut transformed[at(0)..at(0) + tiles_across];
                    for ((v, &a), &b) in destination.iter_mut().zip(e_this).zip(e_next) {
                        *v = a - b;
                    }
                    let destination = &mut transformed[at(1)..at(1) + tiles_across];
                    for ((v, &a), &b) in destination.iter_mut().zip(o_this).zip(e_next) {
                        *v = a + b;
                    }
                    let destination = &mut transformed[at(2)..at(2) + tiles_across];
                    for ((v, &a), &b) in destination.iter_mut().zip(e_next).zip(o_this) {
                        *v = a - b;
                    }
                    let destination = &mut transformed[at(3)..at(3) + tiles_across];
                    for ((v, &a), &b) in destination.iter_mut().zip(o_this).zip(o_next) {
                        *v = a - b;
                    }
                }
            }
        }
    }
}

for_each_cpu! {
    /// `A^T m A` of every tile's 16 products m, `A^T` = [[1, 1, 1, 0], [0, 1, -1, -1]]: the
    /// tile's 2x2 outputs, added onto `out_band` (outputs, rows * width); `products`
    /// (16, outputs, tiles).
    fn add_transformed_products(
        products: &[f32],
        outputs: usize,
        tiles_down: usize,
        tiles_across: usize,
        rows: usize,
        width: usize,
        out_band: ArrayViewMut2<f32>
    ) {
        let tiles = tiles_down * tiles_across;
        let mut out_band = out_band;
        // Row r of A^T m, its 4 columns for the tiles of a tile row.
        let mut am = vec![0.0f32; 4 * tiles_across];
        for o in 0..outputs {
            let mut out_row = out_band.row_mut(o);
            let out_row = out_row.as_slice_mut().expect("contiguous rows");
            for ty in 0..tiles_down {
                let start = o * tiles + ty * tiles_across;
                let m = |p: usize| &products[p * outputs * tiles + start..p * outputs * tiles + start + tiles_across];
                for r in 0..2 {
                    let y = 2 * ty + r;
                    if y >= rows {
                        break;
                    }
                    for (q, column) in am.chunks_exact_mut(tiles_across).enumerate() {
                        if r == 0 {
                            for (((v, &a), &b), &c) in column.iter_mut().zip(m(q)).zip(m(4 + q)).zip(m(8 + q)) {
                                *v = a + b + c;
                            }
                        } else {
                            for (((v, &a), &b), &c) in column.iter_mut().zip(m(4 + q)).zip(m(8 + q)).zip(m(12 + q)) {
                                *v = a - b - c;
                            }
                        }
                    }
                    let (a0, rest) = am.split_at(tiles_across);
                    let (a1, rest) = rest.split_at(tiles_across);
                    let (a2, a3) = rest.split_at(tiles_across);
                    let destination = &mut out_row[y * width..(y + 1) * width];
                    let columns = a0.iter().zip(a1).zip(a2).zip(a3);
                    for (pair, (((&v0, &v1), &v2), &v3)) in destination.chunks_exact_mut(2).zip(columns) {
                        pair[0] += v0 + v1 + v2;
                        pair[1] += v1 - v2 - v3;
                    }
                    if width % 2 == 1 {
                        let tx = tiles_across - 1;
                        destination[width - 1] += a0[tx] + a1[tx] + a2[tx];
                    }
                }
            }
        }
    }
}

for_each_cpu! {
    /// The sum and the sum of squares of `values`, in f64 over blocks of 256 values, each summed
    /// in f32 in 16 lanes (16 values a lane: the f32 rounding stays near 1e-7 of the block's
    /// magnitude, and the loop vectorises).
    fn sums_and_squares(values: &[f32]) -> (f64, f64) {
        let (mut sum, mut squares) = (0.0f64, 0.0f64);
        for block in values.chunks(256) {
            let (mut block_sums, mut block_squares) = ([0.0f32; 16], [0.0f32; 16]);
            let chunks = block.chunks_exact(16);
            let rest = chunks.remainder();
            for chunk in chunks {
                for lane in 0..16 {
                    block_sums[lane] += chunk[lane];
                    block_squares[lane] += chunk[lane] * chunk[lane];
                }
            }
            for (lane, &v) in rest.iter().enumerate() {
                block_sums[lane] += v;
                block_squares[lane] += v * v;
            }
            sum += block_sums.iter().map(|&v| f64::from(v)).sum::<f64>();
            squares += block_squares.iter().map(|&v| f64::from(v)).sum::<f64>();
        }
        (sum, squares)
    }
}

/// Queries per chunk of the attention (scores of a chunk: this many rows by all pixels).
pub const QUERY_CHUNK: usize = 256;

/// Single-head self-attention over the pixels of `x`, as diffusers' VAE `Attention` computes
/// it: GroupNorm, q/k/v projections, softmax(q k^T / sqrt(C)) v, the output projection, plus
/// the input. Queries are taken in chunks on all cores, so the scores never take more than a
/// chunk's rows (an image's full score matrix is 64 MB at 512x512).
pub fn self_attention(x: FeatureMap, norm: &GroupNorm, q: &Conv2d, k: &Conv2d, v: &Conv2d, out: &Conv2d) -> FeatureMap {
    let normed = norm.apply(&x);
    let (queries, keys, values) = (
        q.forward(&normed, None, false, None),
        k.forward(&normed, None, false, None),
        v.forward(&normed, None, false, None),
    );
    drop(normed);
    let channels = x.channels();
    let scale = 1.0 / (channels as f32).sqrt();
    let mut attended = Array2::<f32>::zeros(queries.values.dim());
    attended
        .axis_chunks_iter_mut(Axis(1), QUERY_CHUNK)
        .into_par_iter()
        .enumerate()
        .for_each(|(chunk, mut attended)| {
            let start = chunk * QUERY_CHUNK;
            let chunk_queries: ArrayView2<f32> = queries.values.slice(s![.., start..start + attended.ncols()]);
            let mut scores = Array2::<f32>::zeros((attended.ncols(), keys.values.ncols()));
            general_mat_mul(scale, &chunk_queries.t(), &keys.values, 0.0, &mut scores);
            ops::softmax_rows_in_place(scores.view_mut());
            general_mat_mul(1.0, &values.values, &scores.t(), 0.0, &mut attended);
        });
    let attended = FeatureMap::new(attended, x.height, x.width);
    out.forward(&attended, None, false, Some(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 3x3 convolution of `x` by the definition, in f64: zero padding 1, the input through
    /// GroupNorm's scale and shift and SiLU, upsampled 2x if `factor` is 2.
    fn direct(conv: &Conv2d, x: &FeatureMap, norm: Option<&NormSilu>, factor: usize) -> Array2<f64> {
        let (h, w) = (x.height * factor, x.width * factor);
        let input = |c: usize, y: isize, xx: isize| -> f64 {
            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                return 0.0;
            }
            let v = f64::from(x.values[[c, (y as usize / factor) * x.width + xx as usize / factor]]);
            match norm {
                Some(n) => {
                    let a = v * f64::from(n.scale[c]) + f64::from(n.shift[c]);
                    a / (1.0 + (-a).exp())
                }
                None => v,
            }
        };
        Array2::from_shape_fn((conv.out_channels(), h * w), |(o, p)| {
            let (y, xx) = ((p / w) as isize, (p % w) as isize);
            let mut sum = f64::from(conv.bias[o]);
            for c in 0..conv.in_channels() {
                for dy in 0..3 {
                    for dx in 0..3 {
                        sum += f64::from(conv.weight[[o, c * 9 + dy * 3 + dx]])
                            * input(c, y + dy as isize - 1, xx + dx as isize - 1);
                    }
                }
            }
            sum
        })
    }

    /// Winograd's F(2x2, 3x3) against the definition on odd and even sides, several bands,
    /// with the norm and the upsampling folded in. Measured: at most 3e-7 of the output's
    /// largest magnitude.
    #[test]
    fn winograd_convolution_matches_the_definition_on_odd_sides_and_bands() {
        let weight = Array2::from_shape_fn((5, 3 * 9), |(o, k)| ((o * 31 + k * 7) % 13) as f32 / 6.0 - 1.0);
        let conv = Conv2d::new(weight, Array1::from_shape_fn(5, |o| o as f32 * 0.1), 3);
        let norm = NormSilu {
            scale: vec![0.9, 1.1, -0.7],
            shift: vec![0.1, -0.2, 0.3],
        };
        for (height, width, factor) in [(5, 7, 1), (9, 3, 1), (3, 5, 2), (5, 300, 1), (1, 1, 1)] {
            let values =
                Array2::from_shape_fn((3, height * width), |(c, p)| ((c * 17 + p * 5) % 11) as f32 / 5.0 - 1.0);
            let x = FeatureMap::new(values, height, width);
            for norm in [None, Some(&norm)] {
                let ours = conv.forward(&x, norm, factor == 2, None);
                let expected = direct(&conv, &x, norm, factor);
                let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let error = ours
                    .values
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (f64::from(*a) - b).abs())
                    .fold(0.0, f64::max)
                    / scale;
                assert!(error < 1e-5, "{height}x{width} x{factor}: {error:e}");
            }
        }
    }

    /// The narrowing resnet's convolution and shortcut computed into their input's memory
    /// against the two computed apart, with one band, bands in several groups (so a group is
    /// stored after the next one read its halo), and 1 to 3 cores. Measured: at most 2e-7 of
    /// the output's largest magnitude (the same sums; the shortcut's GEMM over other columns).
    #[test]
    fn conv_and_shortcut_in_place_match_the_two_computed_apart() {
        for (inputs, outputs) in [(6, 3), (7, 3)] {
            let weight = Array2::from_shape_fn((outputs, inputs * 9), |(o, k)| {
                ((o * 31 + k * 7) % 13) as f32 / 6.0 - 1.0
            });
            let conv = Conv2d::new(weight, Array1::from_shape_fn(outputs, |o| o as f32 * 0.1), 3);
            let weight = Array2::from_shape_fn((outputs, inputs), |(o, i)| ((o * 5 + i * 3) % 7) as f32 / 3.0 - 1.0);
            let shortcut = Conv2d::new(weight, Array1::from_shape_fn(outputs, |o| 0.2 - o as f32 * 0.1), 1);
            let norm = NormSilu {
                scale: (0..inputs).map(|c| 0.8 + 0.1 * c as f32).collect(),
                shift: (0..inputs).map(|c| 0.1 - 0.05 * c as f32).collect(),
            };
            // 512-pixel bands: one band of 5 rows; 2-row bands of width 300, 11 of them.
            for (height, width) in [(5, 7), (21, 300), (1, 1)] {
                let values = Array2::from_shape_fn((inputs, height * width), |(c, p)| {
                    ((c * 17 + p * 5) % 11) as f32 / 5.0 - 1.0
                });
                let x = FeatureMap::new(values, height, width);
                let mut expected = shortcut.forward(&x, None, false, None).values;
                expected
                    .append(Axis(0), conv.forward(&x, Some(&norm), false, None).values.view())
                    .unwrap();
                let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let ours = pool.install(|| conv_and_shortcut_in_place(x.clone(), &norm, &conv, &shortcut));
                    assert_eq!((ours.height, ours.width), (height, width));
                    assert_eq!(ours.values.dim(), expected.dim());
                    assert!(ours.values.iter().all(|v| v.is_finite()));
                    let error = (&ours.values - &expected).iter().fold(0.0f32, |m, v| m.max(v.abs())) / scale;
                    assert!(
                        error < 1e-6,
                        "{inputs}->{outputs} {height}x{width}, {threads} threads: {error:e}"
                    );
                }
            }
        }
    }
}
