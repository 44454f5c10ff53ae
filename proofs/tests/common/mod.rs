//! Shared proptest strategies: points of the closed left half-plane `Re z <= 0`.

#![allow(dead_code)] // each test file uses its own subset

pub mod pdds_run;

use proptest::prelude::*;
use resca_proofs::Complex;
use std::f64::consts::FRAC_PI_2;

/// Rounding allowance for `gain <= 1` checks. A gain is an O(1) expression of at most a few
/// dozen floating-point operations near the boundary `|G| = 1`, each off by at most half an ulp
/// (1.1e-16), so its error is below 1e-14; 1e-13 leaves a factor 10 of margin while staying far
/// below the smallest violation we assert elsewhere (1e-3).
pub const ROUNDING: f64 = 1e-13;

/// `r e^{i t}` with `log10 r` uniform in `[-12, 300]` and `t` uniform in `[pi/2, 3pi/2]`:
/// every direction of the closed left half-plane at every scale, up to `|z| = 1e300`.
/// `Re z = -r cos(t')` with `t' in [-pi/2, pi/2]`, so `Re z <= 0` holds exactly.
pub fn polar_left() -> impl Strategy<Value = Complex> {
    (-12.0f64..=300.0, -FRAC_PI_2..=FRAC_PI_2).prop_map(|(log_r, t)| {
        let r = 10f64.powf(log_r);
        Complex::new(-r * t.cos().abs(), r * t.sin())
    })
}

/// The imaginary axis itself (`Re z = 0` and `-0.0`), `|Im z|` log-uniform in
/// `[1e-12, 1e300]` with either sign, plus `z = 0`.
pub fn imaginary_axis() -> impl Strategy<Value = Complex> {
    prop_oneof![
        (-12.0f64..=300.0, any::<bool>(), any::<bool>()).prop_map(|(log_y, negative, neg_zero)| {
            let y = 10f64.powf(log_y);
            let re = if neg_zero { -0.0 } else { 0.0 };
            Complex::new(re, if negative { -y } else { y })
        }),
        Just(Complex::new(0.0, 0.0)),
    ]
}

/// Uniform in the box `[-10, 0] x [-10, 10]`, where all the interesting structure lies.
pub fn near_origin_left() -> impl Strategy<Value = Complex> {
    (-10.0f64..=0.0, -10.0f64..=10.0).prop_map(|(re, im)| Complex::new(re, im))
}

/// Points just left of the imaginary axis: `Re z` log-uniform in `[-1, -1e-9]`,
/// `Im z` uniform in `[-12, 12]` (the scan range of the implicit schemes).
pub fn hugging_axis_left() -> impl Strategy<Value = Complex> {
    (-9.0f64..=0.0, -12.0f64..=12.0).prop_map(|(log_x, im)| Complex::new(-(10f64.powf(log_x)), im))
}

/// The closed left half-plane, all of the above mixed.
pub fn closed_left_half_plane() -> impl Strategy<Value = Complex> {
    prop_oneof![polar_left(), imaginary_axis(), near_origin_left(), hugging_axis_left()]
}
