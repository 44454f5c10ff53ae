//! Float functions for kernel bodies. `core` has no `exp`, `sin`, `tanh` or `sqrt`, and the PTX
//! is built without libdevice, so they are written here in plain arithmetic (no table lookups, no
//! calls), identical on the host and the GPU. LLVM's NVPTX backend does not contract `a * b + c`
//! into an FMA unless asked, so host and GPU round the same way.
//!
//! Accuracy, measured against glibc by the tests at the end of this file:
//! * [`sqrt`]: correctly rounded (IEEE), as `f32::sqrt`.
//! * [`exp`]: within 2 ulp of `f32::exp` (activations, softmax).
//! * [`sin_cos`], [`exp_f64`]: evaluated in f64 and rounded once, so the f32 results are
//!   correctly rounded but for rare double-rounding cases (timestep features, where one ulp of a
//!   frequency moves `cos(999 f)` by 6e-5, so precision matters).
//! * [`tanh`]: absolute error below 1.2e-7 (GELU only needs absolute accuracy).

#[cfg(target_arch = "nvptx64")]
use core::arch::asm;

/// `log2(e)`.
const LOG2_E: f32 = core::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for |n| < 2^15.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// Rounds to the nearest integer, ties away from zero (|v| < 2^31).
#[inline(always)]
fn round_i32(v: f32) -> i32 {
    if v >= 0.0 { (v + 0.5) as i32 } else { (v - 0.5) as i32 }
}

#[inline(always)]
fn round_i64(v: f64) -> i64 {
    if v >= 0.0 { (v + 0.5) as i64 } else { (v - 0.5) as i64 }
}

/// `2^k` for k in -126..=127.
#[inline(always)]
fn pow2_f32(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `2^k` for k in -1022..=1023.
#[inline(always)]
fn pow2_f64(k: i64) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// `|x|` with the sign bit cleared.
#[inline(always)]
pub fn abs(x: f32) -> f32 {
    f32::from_bits(x.to_bits() & 0x7fff_ffff)
}

/// The magnitude of `magnitude` with the sign of `sign`.
#[inline(always)]
pub fn copysign(magnitude: f32, sign: f32) -> f32 {
    f32::from_bits((magnitude.to_bits() & 0x7fff_ffff) | (sign.to_bits() & 0x8000_0000))
}

/// Correctly rounded square root (`sqrt.rn.f32` on the GPU).
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        let r: u32;
        // SAFETY: a pure arithmetic instruction on registers.
        unsafe { asm!("sqrt.rn.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x.to_bits()) };
        f32::from_bits(r)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        sqrt_soft(x)
    }
}

/// Software square root, correctly rounded: Newton steps in f64, then an exact check of the
/// result against the two neighbouring rounding boundaries (their squares are exact in f64).
pub fn sqrt_soft(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    let d = x as f64;
    let mut y = f64::from_bits((d.to_bits() >> 1) + 0x1ff8_0000_0000_0000);
    for _ in 0..5 {
        y = 0.5 * (y + d / y);
    }
    let r = y as f32;
    let rd = r as f64;
    let up = f32::from_bits(r.to_bits() + 1);
    let down = f32::from_bits(r.to_bits() - 1);
    let hi = 0.5 * (rd + up as f64);
    let lo = 0.5 * (rd + down as f64);
    if d >= hi * hi {
        up
    } else if d < lo * lo {
        down
    } else {
        r
    }
}

/// `e^x` in f32: `x = n ln2 + r`, |r| <= ln2/2, a degree-7 Taylor polynomial for `e^r`, then
/// scaling by `2^n`. Within 2 ulp; 0 below -103.97 (no subnormal results), inf above 88.72.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.722_84 {
        return f32::INFINITY;
    }
    if x < -103.972_08 {
        return 0.0;
    }
    let n = round_i32(x * LOG2_E);
    let nf = n as f32;
    let r = (x - nf * LN2_HI) - nf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    if n > 127 {
        p * pow2_f32(127) * pow2_f32(n - 127)
    } else if n < -126 {
        p * pow2_f32(-126) * pow2_f32(n + 126)
    } else {
        p * pow2_f32(n)
    }
}

/// `e^x` in f64 (relative error ~1e-16) for |x| < 700: Taylor polynomial of degree 13 after the
/// same reduction as [`exp`].
pub fn exp_f64(x: f64) -> f64 {
    // fdlibm's split of ln 2: a 32-bit head (exact multiples) and the rest.
    const LN2_HI_D: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO_D: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    if x.is_nan() {
        return x;
    }
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let n = round_i64(x * core::f64::consts::LOG2_E);
    let nf = n as f64;
    let r = (x - nf * LN2_HI_D) - nf * LN2_LO_D;
    let mut p = 1.0;
    let mut k = 13;
    while k > 0 {
        p = 1.0 + r * p / k as f64;
        k -= 1;
    }
    p * pow2_f64(n)
}

/// `(sin x, cos x)`, reduced and evaluated in f64 and rounded once to f32. Valid for
/// |x| < 2^28 pi/2 (the reduction uses a 25-bit head of pi/2, exact for such multiples).
pub fn sin_cos(x: f32) -> (f32, f32) {
    const FRAC_2_PI: f64 = core::f64::consts::FRAC_2_PI;
    // musl's split of pi/2: the first 25 bits and the rest.
    const PIO2_1: f64 = f64::from_bits(0x3ff9_21fb_5000_0000);
    const PIO2_1T: f64 = f64::from_bits(0x3e51_10b4_611a_6263);
    if !x.is_finite() {
        return (f32::NAN, f32::NAN);
    }
    let xd = x as f64;
    let k = round_i64(xd * FRAC_2_PI);
    let kf = k as f64;
    let r = (xd - kf * PIO2_1) - kf * PIO2_1T;
    let r2 = r * r;
    // Taylor series to r^17 and r^18: |r| <= pi/4 leaves a remainder below 1e-19.
    let mut s = 0.0;
    let mut c = 0.0;
    let mut n = 18;
    while n >= 2 {
        c = 1.0 - r2 * c / ((n * (n - 1)) as f64);
        s = 1.0 - r2 * s / (((n + 1) * n) as f64);
        n -= 2;
    }
    let s = r * s;
    let (sin, cos) = match k & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    };
    (sin as f32, cos as f32)
}

/// `tanh x` as `1 - 2 / (e^{2|x|} + 1)` with the sign of x: absolute error below 1.2e-7, which
/// is what GELU needs (its result is `0.5 x (1 + tanh(...))`).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = abs(x);
    if a > 9.0 {
        return copysign(1.0, x);
    }
    let e = exp(2.0 * a);
    copysign(1.0 - 2.0 / (e + 1.0), x)
}

/// `nn.SiLU`: `x * sigmoid(x)`, as the reference computes it: `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU, tanh approximation, in the reference's operation order.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// A deterministic spread of test points.
    fn points(lo: f32, hi: f32, n: u32) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * (i as f32 / n as f32))
    }

    #[test]
    fn sqrt_is_correctly_rounded() {
        for x in points(0.0, 3000.0, 200_000).chain([1e-40, 1e-30, 3.4e38, 2.0, 4.0]) {
            assert_eq!(sqrt_soft(x), std::primitive::f32::sqrt(x), "sqrt({x})");
        }
        assert!(sqrt_soft(-1.0).is_nan());
        assert_eq!(sqrt_soft(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0;
        for x in points(-87.0, 88.0, 400_000) {
            worst = worst.max(ulps(exp(x), std::primitive::f32::exp(x)));
        }
        // Measured: 1 ulp.
        assert!(worst <= 2, "exp off by {worst} ulp");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
    }

    #[test]
    fn f64_paths_round_like_glibc() {
        let mut off = 0;
        for k in 0..128 {
            let arg = (-9.210_340_371_976_184_f64 as f32 * k as f32) / 128.0;
            off += (exp_f64(arg as f64) as f32 != std::primitive::f32::exp(arg)) as u32;
        }
        // All 128 timestep frequencies agree with glibc's expf.
        assert_eq!(off, 0);
        let mut worst = 0;
        for x in points(-1000.0, 1000.0, 200_000) {
            let (s, c) = sin_cos(x);
            worst = worst.max(ulps(s, std::primitive::f32::sin(x)));
            worst = worst.max(ulps(c, std::primitive::f32::cos(x)));
        }
        // Measured: at most 1 ulp (glibc's sinf/cosf are themselves within 1 ulp).
        assert!(worst <= 1, "sin/cos off by {worst} ulp");
    }

    #[test]
    fn tanh_silu_gelu_match_std() {
        let mut worst = 0.0f32;
        for x in points(-12.0, 12.0, 100_000) {
            worst = worst.max((tanh(x) - std::primitive::f32::tanh(x)).abs());
            let silu_std = x / (1.0 + std::primitive::f32::exp(-x));
            assert!((silu(x) - silu_std).abs() <= 2e-7 * (1.0 + x.abs()), "silu({x})");
        }
        // Measured 1.2e-7 at most.
        assert!(worst <= 1.2e-7, "tanh abs error {worst}");
    }
}
