//! Error and quality measures of generated samples against full compute and real data.

use anyhow::{Result, bail};
use ndarray::{Array1, Array2, ArrayView, ArrayView1, ArrayView2, Dimension};
use ndarray_linalg::{Eigh, UPLO};

/// Root mean square difference of two tensors of the same shape.
pub fn rmse<D: Dimension>(a: ArrayView<f32, D>, b: ArrayView<f32, D>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "rmse of tensors of different shapes");
    let sum: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    (sum / a.len().max(1) as f64).sqrt()
}

/// Peak signal-to-noise ratio in dB for data spanning `range` (2 for images in [-1, 1]):
/// `20 log10(range / rmse)`; infinite for identical tensors.
pub fn psnr<D: Dimension>(a: ArrayView<f32, D>, b: ArrayView<f32, D>, range: f64) -> f64 {
    20.0 * (range / rmse(a, b)).log10()
}

/// Fraction of `predicted` equal to `expected`.
pub fn accuracy(predicted: &[usize], expected: &[usize]) -> f64 {
    let right = predicted.iter().zip(expected).filter(|(p, e)| p == e).count();
    right as f64 / expected.len().max(1) as f64
}

/// Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding
/// clamped to 0).
fn sqrt_psd(m: ArrayView2<f64>) -> Result<Array2<f64>> {
    let (values, vectors) = m.eigh(UPLO::Lower)?;
    let roots = values.mapv(|v| v.max(0.0).sqrt());
    Ok((&vectors * &roots).dot(&vectors.t()))
}

/// The Frechet distance between Gaussians N(mu1, S1) and N(mu2, S2):
/// `|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`, with `tr (S1 S2)^(1/2)` computed as
/// `tr (S1^(1/2) S2 S1^(1/2))^(1/2)` (the same eigenvalues, but a symmetric matrix).
pub fn frechet_distance(
    mu1: ArrayView1<f64>,
    s1: ArrayView2<f64>,
    mu2: ArrayView1<f64>,
    s2: ArrayView2<f64>,
) -> Result<f64> {
    if mu1.len() != mu2.len() || s1.dim() != s2.dim() || s1.nrows() != mu1.len() {
        bail!("Frechet distance of statistics with different dimensions");
    }
    let diff: Array1<f64> = &mu1 - &mu2;
    let root1 = sqrt_psd(s1)?;
    let middle = root1.dot(&s2).dot(&root1);
    let middle = (&middle + &middle.t()) / 2.0;
    let (values, _) = middle.eigh(UPLO::Lower)?;
    let trace_root: f64 = values.iter().map(|v| v.max(0.0).sqrt()).sum();
    Ok(diff.dot(&diff) + s1.diag().sum() + s2.diag().sum() - 2.0 * trace_root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, array};

    #[test]
    fn rmse_and_psnr_of_known_tensors() {
        let a = array![0.0f32, 0.0, 0.0, 0.0];
        let b = array![1.0f32, -1.0, 1.0, -1.0];
        assert_eq!(rmse(a.view(), b.view()), 1.0);
        // range 2, rmse 1: 20 log10(2) = 6.0206 dB.
        assert!((psnr(a.view(), b.view(), 2.0) - 6.020_599_913).abs() < 1e-9);
        assert!(psnr(a.view(), a.view(), 2.0).is_infinite());
    }

    #[test]
    fn accuracy_counts_matches() {
        assert_eq!(accuracy(&[1, 2, 3, 4], &[1, 2, 0, 4]), 0.75);
    }

    #[test]
    fn frechet_distance_of_known_gaussians() {
        let eye = Array2::<f64>::eye(3);
        let zero = array![0.0, 0.0, 0.0];
        // Same Gaussian: 0.
        assert!(
            frechet_distance(zero.view(), eye.view(), zero.view(), eye.view())
                .unwrap()
                .abs()
                < 1e-12
        );
        // Shifted means only: |mu1 - mu2|^2 = 1 + 4 + 4 = 9.
        let shifted = array![1.0, 2.0, -2.0];
        let d = frechet_distance(zero.view(), eye.view(), shifted.view(), eye.view()).unwrap();
        assert!((d - 9.0).abs() < 1e-12);
        // Isotropic variances a^2 I and b^2 I in 3-D: 3 (a - b)^2 = 3 (2 - 0.5)^2 = 6.75.
        let d = frechet_distance(zero.view(), (&eye * 4.0).view(), zero.view(), (&eye * 0.25).view()).unwrap();
        assert!((d - 6.75).abs() < 1e-12);
        // Non-commuting covariances: symmetric in its arguments.
        let s1 = array![[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]];
        let s2 = array![[1.0, -0.3, 0.1], [-0.3, 2.0, 0.0], [0.1, 0.0, 1.5]];
        let ab = frechet_distance(zero.view(), s1.view(), shifted.view(), s2.view()).unwrap();
        let ba = frechet_distance(shifted.view(), s2.view(), zero.view(), s1.view()).unwrap();
        assert!((ab - ba).abs() < 1e-10 && ab > 9.0);
    }
}
