//! The decoder's layers on channel-major feature maps (C, H*W) of one image, as PyTorch lays out
//! each image of an NCHW batch.
//!
//! A 3x3 convolution runs by Winograd's F(2x2, 3x3) on bands of output rows: the band's input
//! rows (plus a row of halo above and below, zero-padded) are gathered, each 2x2 output tile's
//! 4x4 input patch transformed, the 16 transformed points multiplied by the transformed kernels
//! (16 OpenBLAS GEMMs of depth Cin, where im2col would need one of depth 9 Cin: 2.25x fewer
//! multiply-adds), and the products transformed back and added onto the output's band, which
//! already holds the bias or the residual. Bands run on all cores, each with its own buffers of
//! a few MB. A 1x1 convolution is one GEMM per band. Two things are folded into the gathering, so that their
//! results never take a full feature map of memory: the GroupNorm + SiLU before a convolution
//! (applied as a per-channel scale and shift, then SiLU, to the gathered rows) and the 2x
//! nearest-neighbour upsampling before an upsampler's convolution (each output pixel reads its
//! source pixel).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use crate::ops;

/// Output pixels per band of a convolution (whole rows; at least one row).
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
            .map(|row| {
                row.iter().fold((0.0f64, 0.0f64), |(s, q), &v| {
                    let v = f64::from(v);
                    (s + v, q + v * v)
                })
            })
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
            let band_rows = winograd_band_rows(width);
            out.axis_chunks_iter_mut(Axis(1), band_rows * width)
                .into_par_iter()
                .enumerate()
                .for_each(|(band, out_band)| self.winograd_band(&kernels, x, norm, factor, band * band_rows, out_band));
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
    let band_rows = winograd_band_rows(width);
    let band_pixels = band_rows * width;
    let bands = height.div_ceil(band_rows);
    let group = 2 * rayon::current_num_threads();
    let kernels = winograd_weights(conv.weight.view());
    let mut pending: Vec<(usize, Array2<f32>)> = Vec::new();
    for first in (0..bands).step_by(group) {
        let input = MapView {
            values: values.view(),
            height,
            width,
        };
        let computed: Vec<(usize, Array2<f32>)> = (first..(first + group).min(bands))
            .into_par_iter()
            .map(|band| {
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
                conv.winograd_band(&kernels, input, Some(norm), 1, band * band_rows, to_conv);
                (start, result)
            })
            .collect();
        for (start, result) in pending {
            values
                .slice_mut(s![..2 * outputs, start..start + result.ncols()])
                .assign(&result);
        }
        pending = computed;
    }
    for (start, result) in pending {
        values
            .slice_mut(s![..2 * outputs, start..start + result.ncols()])
            .assign(&result);
    }
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
    let gathered = padded_to(x, norm, factor, first_row, rows, width, 0);
    Array2::from_shape_vec((gathered.channels, rows * width), gathered.values).expect("sized by padded_to")
}

/// Input rows around a band of output rows, zero-padded by `halo` pixels on the top and left
/// (and up to `rows` x `width` on the bottom and right), after the upsampling and `norm`:
/// channel-major (channels, rows, width).
struct PaddedRows {
    values: Vec<f32>,
    channels: usize,
    rows: usize,
    width: usize,
}

/// The input rows from `first_row - halo` on, upsampled by `factor` and through `norm`, into a
/// buffer of `padded_rows` x `padded_width` per channel with `halo` columns of zeros on the left
/// (rows and columns outside the upsampled input are zeros).
fn padded_to(
    x: MapView,
    norm: Option<&NormSilu>,
    factor: usize,
    first_row: usize,
    padded_rows: usize,
    padded_width: usize,
    halo: usize,
) -> PaddedRows {
    let (height, width) = (x.height * factor, x.width * factor);
    let channels = x.channels();
    let mut values = vec![0.0f32; channels * padded_rows * padded_width];
    for c in 0..channels {
        let source = x.values.row(c);
        let source = source.as_slice().expect("contiguous rows");
        for r in 0..padded_rows {
            let Some(y) = (first_row + r).checked_sub(halo).filter(|&y| y < height) else {
                continue;
            };
            let start = (c * padded_rows + r) * padded_width + halo;
            let destination = &mut values[start..start + width];
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
    PaddedRows {
        values,
        channels,
        rows: padded_rows,
        width: padded_width,
    }
}

/// Output rows per band of a Winograd convolution: an even number, about [`BAND_PIXELS`] pixels.
fn winograd_band_rows(width: usize) -> usize {
    ((BAND_PIXELS / width).max(2) / 2) * 2
}

/// The values a convolution from `inputs` to `outputs` channels, `width` output pixels wide,
/// allocates besides its input and output, `threads` bands at a time: the transformed kernels
/// and, per band, the gathered rows, the transformed inputs and the products of the Winograd
/// convolution (an upper bound for a 1x1 convolution's band copies, of at most a quarter as many
/// values).
pub fn conv_scratch(inputs: usize, outputs: usize, width: usize, threads: usize) -> u64 {
    let band_rows = winograd_band_rows(width) as u64;
    let tiles_across = width.div_ceil(2) as u64;
    let gathered = inputs as u64 * (band_rows + 2) * (2 * tiles_across + 2);
    let transformed_and_products = 16 * (inputs + outputs) as u64 * (band_rows / 2) * tiles_across;
    16 * (inputs * outputs) as u64 + threads as u64 * (gathered + transformed_and_products)
}

/// The values [`conv_and_shortcut_in_place`] allocates besides the input and
/// [`conv_scratch`]: the results of two groups of bands (the group computed and the one waiting
/// to be stored), `2 threads` bands each.
pub fn in_place_results(outputs: usize, width: usize, threads: usize) -> u64 {
    4 * threads as u64 * 2 * outputs as u64 * (winograd_band_rows(width) * width) as u64
}

/// `G g G^T` for each (out, in) 3x3 kernel g, `G` = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2],
/// [0, 0, 1]]: the 16 points of the transformed 4x4 kernel, each as an (out, in) matrix.
// The transforms index several small arrays by the same point, as the matrix formulas read.
#[allow(clippy::needless_range_loop)]
fn winograd_weights(weight: ArrayView2<f32>) -> Vec<Array2<f32>> {
    let (outputs, columns) = weight.dim();
    let inputs = columns / 9;
    let mut points = vec![Array2::<f32>::zeros((outputs, inputs)); 16];
    for o in 0..outputs {
        for i in 0..inputs {
            let g = |r: usize, c: usize| f64::from(weight[[o, i * 9 + r * 3 + c]]);
            // G g: 4 x 3.
            let mut gg = [[0.0f64; 3]; 4];
            for c in 0..3 {
                gg[0][c] = g(0, c);
                gg[1][c] = 0.5 * (g(0, c) + g(1, c) + g(2, c));
                gg[2][c] = 0.5 * (g(0, c) - g(1, c) + g(2, c));
                gg[3][c] = g(2, c);
            }
            for r in 0..4 {
                let row = [
                    gg[r][0],
                    0.5 * (gg[r][0] + gg[r][1] + gg[r][2]),
                    0.5 * (gg[r][0] - gg[r][1] + gg[r][2]),
                    gg[r][2],
                ];
                for (c, v) in row.into_iter().enumerate() {
                    points[r * 4 + c][[o, i]] = v as f32;
                }
            }
        }
    }
    points
}

impl Conv2d {
    /// One band of the 3x3 convolution by Winograd's F(2x2, 3x3), output rows from `first_row`
    /// (an even row), `out_band` (out, its pixels): each 2x2 output tile's 4x4 input patch is
    /// transformed (`B^T d B`), the 16 points multiplied by the transformed kernels `kernels`
    /// ([`winograd_weights`]; 16 GEMMs with depth `in`, against 9 `in` for im2col: 2.25x fewer
    /// multiply-adds), and the products transformed back (`A^T m A`) and added onto `out_band`.
    #[allow(clippy::needless_range_loop)]
    fn winograd_band(
        &self,
        kernels: &[Array2<f32>],
        x: MapView,
        norm: Option<&NormSilu>,
        factor: usize,
        first_row: usize,
        mut out_band: ArrayViewMut2<f32>,
    ) {
        let width = x.width * factor;
        let tiles_across = width.div_ceil(2);
        let (inputs, outputs) = (self.in_channels(), self.out_channels());
        let rows = out_band.ncols() / width;
        let tiles_down = rows.div_ceil(2);
        let tiles = tiles_down * tiles_across;
        let padded = padded_to(x, norm, factor, first_row, 2 * tiles_down + 2, 2 * tiles_across + 2, 1);
        let pw = padded.width;
        // Transformed inputs: point p's matrix (in, tiles) at p * in * tiles.
        let mut transformed = vec![0.0f32; 16 * inputs * tiles];
        for c in 0..inputs {
            let channel = &padded.values[c * padded.rows * pw..(c + 1) * padded.rows * pw];
            for ty in 0..tiles_down {
                for tx in 0..tiles_across {
                    let at = |r: usize, q: usize| channel[(2 * ty + r) * pw + 2 * tx + q];
                    // B^T d: rows.
                    let mut bd = [[0.0f32; 4]; 4];
                    for q in 0..4 {
                        let (d0, d1, d2, d3) = (at(0, q), at(1, q), at(2, q), at(3, q));
                        bd[0][q] = d0 - d2;
                        bd[1][q] = d1 + d2;
                        bd[2][q] = d2 - d1;
                        bd[3][q] = d1 - d3;
                    }
                    let tile = ty * tiles_across + tx;
                    for r in 0..4 {
                        let [d0, d1, d2, d3] = bd[r];
                        let v = [d0 - d2, d1 + d2, d2 - d1, d1 - d3];
                        for q in 0..4 {
                            transformed[((r * 4 + q) * inputs + c) * tiles + tile] = v[q];
                        }
                    }
                }
            }
        }
        drop(padded);
        let mut products = Array2::<f32>::zeros((16 * outputs, tiles));
        for (p, mut product) in products.axis_chunks_iter_mut(Axis(0), outputs).enumerate() {
            let v = ArrayView2::from_shape(
                (inputs, tiles),
                &transformed[p * inputs * tiles..(p + 1) * inputs * tiles],
            )
            .expect("sized above");
            general_mat_mul(1.0, &kernels[p], &v, 0.0, &mut product);
        }
        drop(transformed);
        let products = products.as_slice().expect("contiguous");
        for o in 0..outputs {
            let mut out_row = out_band.row_mut(o);
            let out_row = out_row.as_slice_mut().expect("contiguous rows");
            for ty in 0..tiles_down {
                for tx in 0..tiles_across {
                    let tile = ty * tiles_across + tx;
                    let m = |r: usize, q: usize| products[((r * 4 + q) * outputs + o) * tiles + tile];
                    // A^T m A with A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
                    let mut am = [[0.0f32; 4]; 2];
                    for q in 0..4 {
                        am[0][q] = m(0, q) + m(1, q) + m(2, q);
                        am[1][q] = m(1, q) - m(2, q) - m(3, q);
                    }
                    for (r, row) in am.iter().enumerate() {
                        let y = 2 * ty + r;
                        if y >= rows {
                            continue;
                        }
                        let pair = [row[0] + row[1] + row[2], row[1] - row[2] - row[3]];
                        for (q, v) in pair.into_iter().enumerate() {
                            let xcol = 2 * tx + q;
                            if xcol < width {
                                out_row[y * width + xcol] += v;
                            }
                        }
                    }
                }
            }
        }
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
