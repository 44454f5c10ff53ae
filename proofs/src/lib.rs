//! Stability of the update rules behind TaylorSeer (explicit Taylor) and ResCa (implicit
//! Taylor, BDF2) on the linear test equation `y' = lambda y`, `z = h lambda`, `Re z <= 0`.
//!
//! The supplement of the ResCa paper (Sec. B.8) argues that ResCa's implicit update is
//! A-stable "for the same order M" as the explicit predictor. This crate computes what holds:
//!
//! | scheme            | order | A-stable | max gain on the imaginary axis        |
//! |-------------------|-------|----------|---------------------------------------|
//! | explicit Taylor   | 1..=4 | no       | unbounded (`z = -3` is unstable too)  |
//! | implicit Taylor   | 1, 2  | yes      | 1, at `z = 0`                         |
//! | implicit Taylor   | 3     | **no**   | `3/(2 sqrt 2) = 1.0607` at `z = i sqrt 2` |
//! | implicit Taylor   | 4     | **no**   | `2` at `z = i sqrt 6`                 |
//! | BDF2              | 2     | yes      | 1, at `z = 0`                         |
//!
//! On the imaginary axis `|P_M(iy)|^2` is `1 + y^2`, `1 + y^4/4`, `1 - y^4/12 + y^6/36` and
//! `1 - y^6/72 + y^8/576` for `M = 1..=4` (`P_M` the Taylor polynomial of `exp`); the last two
//! dip below 1 (minima `8/9` at `y^2 = 2` and `1/4` at `y^2 = 6`), which is where the
//! implicit gain `1/|P_M(-iy)|` exceeds 1.
//!
//! Modules:
//! * [`scheme`]: [`Scheme`] with its CLI spellings and supported orders, the errors;
//! * [`amplification`]: `G(z)` of each scheme, [`gain`], the implicit Taylor poles, BDF2 roots;
//! * [`a_stability`]: [`analyse`] (the maximum-modulus argument and the imaginary-axis scan),
//!   [`stable_half_plane_shift`] (how far from A-stable a scheme is);
//! * [`region_png`]: [`render_stability_png`], the picture of a stability region;
//! * [`residuals`]: the multi-order residual `Delta^(m)` of ResCa (supplement Eq. S4);
//! * [`pdds_recurrence`]: the exact linear recurrence PDDS applies to a driven token, and the
//!   roots of its characteristic polynomial.

pub mod a_stability;
pub mod amplification;
pub mod pdds_recurrence;
pub mod region_png;
pub mod residuals;
pub mod scheme;

/// Complex numbers of `f64` (the `num-complex` crate's `Complex64`).
pub type Complex = num_complex::Complex64;
pub use num_complex;

pub use a_stability::{
    Counterexample, GAIN_TOLERANCE, LineMaximum, StabilityReport, analyse, max_gain_on_vertical_line,
    stable_half_plane_shift,
};
pub use amplification::gain;
pub use region_png::{PlotWindow, RenderError, render_stability_image, render_stability_png};
pub use scheme::{ParseSchemeError, Scheme, StabilityError};
