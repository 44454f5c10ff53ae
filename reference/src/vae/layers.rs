//! The decoder's layers on channel-major feature maps (C, H*W) of one image, as PyTorch lays out
//! each image of an NCHW batch.
//!
//! A 3x3 convolution is one GEMM per band of output rows: the band's input rows (plus a row of
//! halo above and below, zero-padded) are gathered into columns (im2col, `Cin*9` rows by the
//! band's pixels) and multiplied by the weight matrix (Cout, Cin*9) with OpenBLAS, the product
//! added onto the output's band, which already holds the bias or the residual. Bands run on
//! all cores, each with its own small column buffer (a few MB), so the full im2col matrix (over
//! 1 GB at 512x512) never exists. Two things are folded into the gathering, so that their
//! results never take a full feature map of memory: the GroupNorm + SiLU before a convolution
//! (applied as a per-channel scale and shift, then SiLU, to the gathered rows) and the 2x
//! nearest-neighbour upsampling before an upsampler's convolution (each output pixel reads its
//! source pixel).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, Axis, s};
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
    pub fn affine(&self, x: &FeatureMap) -> NormSilu {
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
        let NormSilu { scale, shift } = self.affine(x);
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
        ops::single_threaded_blas();
        assert_eq!(x.channels(), self.in_channels(), "input channels");
        let factor = if upsample { 2 } else { 1 };
        let (height, width) = (x.height * factor, x.width * factor);
        let mut out = match residual {
            Some(residual) => {
                assert_eq!(
                    (residual.channels(), residual.height, residual.width),
                    (self.out_channels(), height, width),
                    "residual of the output's shape"
                );
                let mut values = residual.values;
                values
                    .axis_iter_mut(Axis(0))
                    .into_par_iter()
                    .zip(self.bias.as_slice().expect("contiguous").par_iter())
                    .for_each(|(mut row, &b)| row += b);
                values
            }
            None => self
                .bias
                .broadcast((height * width, self.out_channels()))
                .expect("one bias per output")
                .t()
                .to_owned(),
        };
        let band_rows = (BAND_PIXELS / width).max(1);
        out.axis_chunks_iter_mut(Axis(1), band_rows * width)
            .into_par_iter()
            .enumerate()
            .for_each(|(band, mut out_band)| {
                let first_row = band * band_rows;
                let rows = out_band.ncols() / width;
                let columns = if self.kernel == 1 {
                    gather_pixels(x, norm, factor, first_row, rows)
                } else {
                    im2col_3x3(x, norm, factor, first_row, rows)
                };
                general_mat_mul(1.0, &self.weight, &columns, 1.0, &mut out_band);
            });
        FeatureMap::new(out, height, width)
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
        let FeatureMap { values, height, width } = x;
        let (inputs, pixels) = values.dim();
        let outputs = self.out_channels();
        let mut flat = values.into_raw_vec_and_offset().0;
        {
            let mut view = ndarray::ArrayViewMut2::from_shape((inputs, pixels), &mut flat).expect("contiguous");
            view.axis_chunks_iter_mut(Axis(1), BAND_PIXELS)
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
        }
        flat.truncate(outputs * pixels);
        flat.shrink_to_fit();
        FeatureMap::new(
            Array2::from_shape_vec((outputs, pixels), flat).expect("sized above"),
            height,
            width,
        )
    }
}

/// The input pixels of output rows `first_row..first_row + rows` (channels, pixels), through
/// `norm` if given, for a 1x1 convolution.
fn gather_pixels(x: &FeatureMap, norm: Option<&NormSilu>, factor: usize, first_row: usize, rows: usize) -> Array2<f32> {
    if factor == 1 && norm.is_none() {
        let start = first_row * x.width;
        return x.values.slice(s![.., start..start + rows * x.width]).to_owned();
    }
    let mut padded = padded_rows(x, norm, factor, first_row, rows, 0);
    padded.remove_halo()
}

/// The columns of a 3x3 convolution's output rows `first_row..first_row + rows`: row
/// `c * 9 + dy * 3 + dx` holds input channel `c` shifted by (dy - 1, dx - 1) for each output
/// pixel, zero outside the image.
fn im2col_3x3(x: &FeatureMap, norm: Option<&NormSilu>, factor: usize, first_row: usize, rows: usize) -> Array2<f32> {
    let padded = padded_rows(x, norm, factor, first_row, rows, 1);
    let width = x.width * factor;
    let pixels = rows * width;
    let channels = x.channels();
    let mut columns = Array2::<f32>::zeros((channels * 9, pixels));
    let padded_width = width + 2;
    for (c, mut channel_columns) in columns.axis_chunks_iter_mut(Axis(0), 9).enumerate() {
        let source = &padded.values[c * padded.rows * padded_width..(c + 1) * padded.rows * padded_width];
        for dy in 0..3 {
            for dx in 0..3 {
                let mut column = channel_columns.row_mut(dy * 3 + dx);
                let column = column.as_slice_mut().expect("contiguous rows");
                for r in 0..rows {
                    let from = (r + dy) * padded_width + dx;
                    column[r * width..(r + 1) * width].copy_from_slice(&source[from..from + width]);
                }
            }
        }
    }
    columns
}

/// Input rows around a band of output rows, zero-padded by `halo` pixels on every side, after
/// the upsampling and `norm`: channel-major (channels, rows + 2 halo, width + 2 halo).
struct PaddedRows {
    values: Vec<f32>,
    channels: usize,
    rows: usize,
    width: usize,
    halo: usize,
}

impl PaddedRows {
    /// The rows without their halo (halo 0 only), as (channels, pixels).
    fn remove_halo(&mut self) -> Array2<f32> {
        assert_eq!(self.halo, 0);
        Array2::from_shape_vec(
            (self.channels, self.rows * self.width),
            std::mem::take(&mut self.values),
        )
        .expect("sized by padded_rows")
    }
}

fn padded_rows(
    x: &FeatureMap,
    norm: Option<&NormSilu>,
    factor: usize,
    first_row: usize,
    rows: usize,
    halo: usize,
) -> PaddedRows {
    let (height, width) = (x.height * factor, x.width * factor);
    let (padded_rows, padded_width) = (rows + 2 * halo, width + 2 * halo);
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
        halo,
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
