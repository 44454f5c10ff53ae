//! The numeric comparisons every test uses to hold an output against its expectation.
//!
//! A measure such as `max |a - b|` computed with `f32::max` silently drops NaN (`f32::max`
//! returns the other operand), so a kernel writing NaN everywhere would measure an error of 0.
//! These helpers instead fail on the first NaN or infinity in either tensor, naming the tensor,
//! the element's index and both values. A test that expects non-finite values says so by calling
//! [`max_abs_diff_matching_non_finite`].
//!
//! Shapes must be equal: a slice has the one-dimensional shape `[len]`, an ndarray array its own.

use ndarray::{ArrayBase, Data, Dimension};

/// A tensor of f32 values in row-major (logical) order.
pub trait Tensor {
    fn shape(&self) -> Vec<usize>;
    fn values(&self) -> impl Iterator<Item = f32> + '_;
}

impl Tensor for [f32] {
    fn shape(&self) -> Vec<usize> {
        vec![self.len()]
    }
    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.iter().copied()
    }
}

impl Tensor for Vec<f32> {
    fn shape(&self) -> Vec<usize> {
        vec![self.len()]
    }
    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.iter().copied()
    }
}

impl<S: Data<Elem = f32>, D: Dimension> Tensor for ArrayBase<S, D> {
    fn shape(&self) -> Vec<usize> {
        ArrayBase::shape(self).to_vec()
    }
    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.iter().copied()
    }
}

/// The multi-dimensional index of the `flat`-th element of a row-major tensor of `shape`.
fn index_of(flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (i, &extent) in shape.iter().enumerate().rev() {
        index[i] = rest % extent.max(1);
        rest /= extent.max(1);
    }
    index
}

fn check_shapes(what: &str, actual: &[usize], expected: &[usize]) {
    assert_eq!(actual, expected, "{what}: shape {actual:?}, expected {expected:?}");
}

/// Largest `|actual - expected|`. Panics, naming `what` and the index, when the shapes differ or
/// when either tensor holds a NaN or an infinity.
pub fn max_abs_diff<A, E>(what: &str, actual: &A, expected: &E) -> f32
where
    A: Tensor + ?Sized,
    E: Tensor + ?Sized,
{
    largest_difference(what, actual, expected, false)
}

/// The one comparison loop: the largest difference over the finite pairs; a non-finite value
/// fails, unless `match_non_finite` and the output has the expected NaN or the same infinity.
fn largest_difference<A, E>(what: &str, actual: &A, expected: &E, match_non_finite: bool) -> f32
where
    A: Tensor + ?Sized,
    E: Tensor + ?Sized,
{
    let shape = actual.shape();
    check_shapes(what, &shape, &expected.shape());
    let mut largest = 0.0f32;
    for (flat, (a, e)) in actual.values().zip(expected.values()).enumerate() {
        if a.is_finite() && e.is_finite() {
            largest = largest.max((a - e).abs());
            continue;
        }
        let index = index_of(flat, &shape);
        if !match_non_finite {
            let which = if a.is_finite() { "expected" } else { "output" };
            panic!("{what}: non-finite {which} at index {index:?}: output {a}, expected {e}");
        }
        let same_non_finite = (a.is_nan() && e.is_nan()) || (a.is_infinite() && a == e);
        if !same_non_finite {
            panic!("{what}: at index {index:?}: output {a}, expected {e}");
        }
    }
    largest
}

/// Largest `|actual - expected|` divided by the largest `|expected|` (the measure for tensors
/// whose scale grows, such as sampling trajectories); the absolute difference when `expected` is
/// all zeros. Fails as [`max_abs_diff`] does.
pub fn max_rel_to_max<A, E>(what: &str, actual: &A, expected: &E) -> f32
where
    A: Tensor + ?Sized,
    E: Tensor + ?Sized,
{
    let diff = max_abs_diff(what, actual, expected);
    let scale = expected.values().fold(0.0f32, |m, v| m.max(v.abs()));
    if scale > 0.0 { diff / scale } else { diff }
}

/// Largest `|actual - expected|` over the elements where `expected` is finite, for a test that
/// expects non-finite values: where `expected` is NaN the output must be NaN, where it is an
/// infinity the output must be the same infinity, and a non-finite output anywhere else fails.
pub fn max_abs_diff_matching_non_finite<A, E>(what: &str, actual: &A, expected: &E) -> f32
where
    A: Tensor + ?Sized,
    E: Tensor + ?Sized,
{
    largest_difference(what, actual, expected, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;
    use std::panic::catch_unwind;

    fn message(result: std::thread::Result<f32>) -> String {
        let payload = result.expect_err("the comparison passed");
        payload.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn an_all_nan_output_fails_naming_the_tensor_and_index() {
        let expected = vec![1.0f32, -2.0, 3.0];
        let nan = vec![f32::NAN; 3];
        let text = message(catch_unwind(|| max_abs_diff("gemm out", &nan, &expected)));
        assert!(
            text.contains("gemm out") && text.contains("[0]") && text.contains("NaN"),
            "{text}"
        );
        let text = message(catch_unwind(|| max_rel_to_max("x", &nan, &expected)));
        assert!(text.contains("x: non-finite output at index [0]"), "{text}");
    }

    #[test]
    fn a_single_infinity_is_named_by_its_multi_dimensional_index() {
        let expected = Array2::<f32>::zeros((3, 4));
        let mut actual = expected.clone();
        actual[[2, 1]] = f32::INFINITY;
        let text = message(catch_unwind(|| max_abs_diff("norm", &actual, &expected)));
        assert!(text.contains("index [2, 1]") && text.contains("inf"), "{text}");
        // A NaN in the expectation is as much a failure: the reference went wrong.
        let mut expected_nan = expected.clone();
        expected_nan[[0, 3]] = f32::NAN;
        let text = message(catch_unwind(|| max_abs_diff("norm", &expected, &expected_nan)));
        assert!(text.contains("non-finite expected at index [0, 3]"), "{text}");
    }

    #[test]
    fn shapes_must_match() {
        let text = message(catch_unwind(|| max_abs_diff("attn", &vec![0.0; 4], &vec![0.0; 3])));
        assert!(text.contains("shape [4], expected [3]"), "{text}");
        let a = Array2::<f32>::zeros((2, 3));
        let b = Array2::<f32>::zeros((3, 2));
        assert!(catch_unwind(|| max_abs_diff("t", &a, &b)).is_err());
    }

    #[test]
    fn finite_tensors_measure_their_largest_difference() {
        let expected = [1.0f32, -4.0, 2.0];
        assert_eq!(max_abs_diff("v", &[1.5f32, -4.0, 2.25][..], &expected[..]), 0.5);
        assert_eq!(max_rel_to_max("v", &[1.5f32, -4.0, 2.25][..], &expected[..]), 0.125);
        assert_eq!(max_rel_to_max("zeros", &[0.5f32][..], &[0.0f32][..]), 0.5);
    }

    #[test]
    fn expected_non_finite_values_must_be_matched_exactly() {
        let expected = [f32::NAN, f32::NEG_INFINITY, 2.0];
        let good = [f32::NAN, f32::NEG_INFINITY, 2.5];
        assert_eq!(max_abs_diff_matching_non_finite("v", &good[..], &expected[..]), 0.5);
        for bad in [
            [0.0, f32::NEG_INFINITY, 2.0],
            [f32::NAN, f32::INFINITY, 2.0],
            [f32::NAN, f32::NEG_INFINITY, f32::NAN],
        ] {
            assert!(catch_unwind(|| max_abs_diff_matching_non_finite("v", &bad[..], &expected[..])).is_err());
        }
    }
}
