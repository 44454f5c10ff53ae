//! The digit classifier shipped with the embedded model (trained with it on MNIST, see
//! `train/README.md`): its 128-wide features feed a Frechet distance, its logits the class
//! accuracy of generated samples.
//!
//! Architecture (input (B, 1, 32, 32) in [-1, 1]): three blocks of 3x3 convolution (stride 1,
//! zero padding 1, bias) + ReLU + 2x2 max-pool (32 -> 64 -> 64 channels, 32 -> 16 -> 8 -> 4
//! pixels), flatten channel-major (c*16 + h*4 + w), `fc1` 1024 -> 128 + ReLU (the features),
//! `fc2` 128 -> 10 (the logits).

use anyhow::{Result, bail};
use ndarray::{Array1, Array2, Array3, ArrayView3, ArrayView4, Axis, Ix1, Ix2, s};
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::weights::Linear;

/// A 3x3 convolution with bias: weight (out, in, 3, 3) flattened to (out, in*9).
struct Conv3x3 {
    weight: Array2<f32>,
    bias: Array1<f32>,
}

/// The classifier's parameters and the real-data feature statistics of the Frechet distance.
pub struct Classifier {
    convs: [Conv3x3; 3],
    fc1: Linear,
    fc2: Linear,
    /// Mean (128) and unbiased covariance (128, 128) of the features over the real test digits.
    pub real_mean: Array1<f64>,
    pub real_covariance: Array2<f64>,
}

/// Features (B, 128) and logits (B, 10) of a batch.
pub struct ClassifierOutput {
    pub features: Array2<f32>,
    pub logits: Array2<f32>,
}

impl Conv3x3 {
    /// (C, H, W) -> (out, H, W), zero padding 1, as an im2col matrix product.
    fn forward(&self, x: ArrayView3<f32>) -> Array3<f32> {
        let (c, h, w) = x.dim();
        let mut columns = Array2::<f32>::zeros((h * w, c * 9));
        for y in 0..h {
            for xx in 0..w {
                let mut row = columns.row_mut(y * w + xx);
                for ch in 0..c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (sy, sx) = (y as i64 + ky as i64 - 1, xx as i64 + kx as i64 - 1);
                            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                row[ch * 9 + ky * 3 + kx] = x[[ch, sy as usize, sx as usize]];
                            }
                        }
                    }
                }
            }
        }
        let mut out = columns.dot(&self.weight.t());
        out += &self.bias;
        // (H*W, out) -> (out, H, W).
        let channels_first = out.reversed_axes().as_standard_layout().into_owned();
        channels_first
            .into_shape_with_order((self.weight.nrows(), h, w))
            .expect("standard layout")
    }
}

/// ReLU then 2x2 max-pool with stride 2.
fn relu_pool(x: Array3<f32>) -> Array3<f32> {
    let (c, h, w) = x.dim();
    Array3::from_shape_fn((c, h / 2, w / 2), |(ch, y, xx)| {
        let window = x.slice(s![ch, 2 * y..2 * y + 2, 2 * xx..2 * xx + 2]);
        window.fold(0.0f32, |m, &v| m.max(v))
    })
}

impl Classifier {
    /// Loads the weights and `fid.*` statistics, checking every shape.
    pub fn load(file: &SafetensorsFile) -> Result<Self> {
        let conv = |name: &str, out: usize, inp: usize| -> Result<Conv3x3> {
            let weight = file.read_f32_shaped(&format!("{name}.weight"), &[out, inp, 3, 3])?;
            Ok(Conv3x3 {
                weight: weight
                    .into_shape_with_order((out, inp * 9))?
                    .into_dimensionality::<Ix2>()?,
                bias: file
                    .read_f32_shaped(&format!("{name}.bias"), &[out])?
                    .into_dimensionality::<Ix1>()?,
            })
        };
        let linear = |name: &str, out: usize, inp: usize| -> Result<Linear> {
            let weight = file
                .read_f32_shaped(&format!("{name}.weight"), &[out, inp])?
                .into_dimensionality::<Ix2>()?;
            let bias = file
                .read_f32_shaped(&format!("{name}.bias"), &[out])?
                .into_dimensionality::<Ix1>()?;
            Ok(Linear::new(weight, bias))
        };
        Ok(Self {
            convs: [conv("conv1", 32, 1)?, conv("conv2", 64, 32)?, conv("conv3", 64, 64)?],
            fc1: linear("fc1", 128, 1024)?,
            fc2: linear("fc2", 10, 128)?,
            real_mean: file.read_f64("fid.mu")?.into_dimensionality::<Ix1>()?,
            real_covariance: file.read_f64("fid.sigma")?.into_dimensionality::<Ix2>()?,
        })
    }

    /// Runs a batch of images (B, 1, 32, 32); values are clamped to [-1, 1] first.
    pub fn forward(&self, images: ArrayView4<f32>) -> Result<ClassifierOutput> {
        if images.shape()[1..] != [1, 32, 32] {
            bail!("the classifier takes (B, 1, 32, 32) images, got {:?}", images.shape());
        }
        let b = images.dim().0;
        let mut flat = Array2::<f32>::zeros((b, 1024));
        for (i, image) in images.outer_iter().enumerate() {
            let mut x = image.mapv(|v| v.clamp(-1.0, 1.0));
            for conv in &self.convs {
                x = relu_pool(conv.forward(x.view()));
            }
            flat.row_mut(i)
                .assign(&x.into_shape_with_order(1024).expect("64 x 4 x 4"));
        }
        let features = self.fc1.forward(flat.view()).mapv(|v| v.max(0.0));
        let logits = self.fc2.forward(features.view());
        Ok(ClassifierOutput { features, logits })
    }

    /// The classes the classifier predicts.
    pub fn predict(output: &ClassifierOutput) -> Vec<usize> {
        output
            .logits
            .outer_iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
                    .0
            })
            .collect()
    }
}

/// Mean (D) and unbiased covariance (D, D) of feature rows (N, D), in float64.
pub fn feature_statistics(features: &Array2<f32>) -> (Array1<f64>, Array2<f64>) {
    let x = features.mapv(f64::from);
    let n = x.nrows() as f64;
    let mean = x.mean_axis(Axis(0)).expect("at least one row");
    let centred = &x - &mean;
    let covariance = centred.t().dot(&centred) / (n - 1.0).max(1.0);
    (mean, covariance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Ix4;

    /// The Rust port against the PyTorch classifier on ten real test digits
    /// (`assets/classifier_check.safetensors`, made by `train/classifier.py`).
    #[test]
    fn matches_the_pytorch_classifier_on_real_digits() {
        let file = SafetensorsFile::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/assets/classifier_check.safetensors"
        ))
        .unwrap();
        // The file `crate::embedded` builds in, read from disk (no upward import).
        let weights = SafetensorsFile::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/classifier.safetensors"));
        let classifier = Classifier::load(&weights.unwrap()).unwrap();
        let x = file.read_f32("x").unwrap().into_dimensionality::<Ix4>().unwrap();
        let output = classifier.forward(x.view()).unwrap();
        let max_diff = |a: &Array2<f32>, name: &str| {
            let b = file.read_f32(name).unwrap();
            a.iter()
                .zip(b.iter())
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
        };
        let (features, logits) = (
            max_diff(&output.features, "features"),
            max_diff(&output.logits, "logits"),
        );
        eprintln!("classifier vs PyTorch: features {features:.1e}, logits {logits:.1e}");
        // float32 with another summation order; budget 1e-4.
        assert!(features < 1e-4 && logits < 1e-4);
        let labels: Vec<usize> = file.read_i64("y").unwrap().iter().map(|&v| v as usize).collect();
        assert_eq!(Classifier::predict(&output), labels);
    }

    #[test]
    fn feature_statistics_are_mean_and_unbiased_covariance() {
        let features = ndarray::array![[1.0f32, 2.0], [3.0, 2.0], [5.0, 8.0]];
        let (mean, covariance) = feature_statistics(&features);
        assert_eq!(mean, ndarray::array![3.0, 4.0]);
        // Deviations (-2, -2), (0, -2), (2, 4): sums of products / (3 - 1).
        assert_eq!(covariance, ndarray::array![[4.0, 6.0], [6.0, 12.0]]);
    }
}
