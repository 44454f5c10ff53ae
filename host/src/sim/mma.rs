//! The simulator's model of the tensor-core instructions: the TF32 and BF16 conversions,
//! `ldmatrix` and `mma.sync`, from the PTX ISA's fragment tables (g = lane / 4, t = lane % 4).
//!
//! Exactness tiers (docs/gpu.md, "Simulator models"):
//! * [`tf32`], [`bf16`] and [`ldmatrix`] are exact: the GPU computes the same bits.
//! * [`mma`] is modelled: every product of two TF32 or BF16 values is exact in f64 (at most
//!   22 significand bits), and the sum is taken in f64 in a fixed order, C first and then k
//!   upwards, and rounded once to f32 (to nearest, even). This is "the exact sum, rounded once"
//!   up to the f64 rounding of the partial sums (relative 2^-53 of the largest term, far below an
//!   f32 ulp). NVIDIA does not specify the order or the internal precision of one instruction;
//!   tensor cores are documented by measurement to align the products to the largest exponent
//!   and truncate, so the GPU may differ from this model in the last bits of a result: by at
//!   most about (K + 1) 2^-23 (|c| + sum |a_k b_k|) per instruction. Across instructions the
//!   order is the kernel's and is exact.

/// The f32 bits that `cvt.rna.tf32.f32` drops (a TF32 operand has them zero).
pub const TF32_DROPPED_BITS: u32 = (1 << 13) - 1;

/// `cvt.rna.tf32.f32`: round to 10 fraction bits, to nearest with ties away from zero.
pub fn tf32(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((bits | 0x0040_0000) & !TF32_DROPPED_BITS);
    }
    // Sign and magnitude: adding half of the dropped range to the magnitude rounds it away
    // from zero on a tie; a carry into the exponent is the correct rounding up (to infinity
    // past the largest TF32 value).
    f32::from_bits((bits + (1 << 12)) & !TF32_DROPPED_BITS)
}

/// `cvt.rn.bf16.f32`: the upper 16 bits of `x` rounded to nearest, ties to even.
pub fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let bias = 0x7fff + ((bits >> 16) & 1);
    ((bits + bias) >> 16) as u16
}

/// The f32 value of a BF16.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The `mma.sync` shapes the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaShape {
    /// `m16n8k8.row.col.f32.tf32.tf32.f32`.
    Tf32M16n8k8,
    /// `m16n8k16.row.col.f32.bf16.bf16.f32`.
    Bf16M16n8k16,
}

impl MmaShape {
    /// The K of one instruction.
    pub const fn k(self) -> usize {
        match self {
            MmaShape::Tf32M16n8k8 => 8,
            MmaShape::Bf16M16n8k16 => 16,
        }
    }
}

/// The warp's A (16 x K), B (K x 8) and C (16 x 8) of one `mma.sync`, as f64.
pub struct MmaOperands {
    pub a: [[f64; 16]; 16],
    pub b: [[f64; 8]; 16],
    pub c: [[f64; 8]; 16],
}

/// Where lane `lane`'s C / D register `i` sits in the 16 x 8 tile: (row, column).
pub const fn c_position(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    (g + 8 * (i / 2), 2 * t + i % 2)
}

/// Where lane `lane`'s A register `i` sits in the 16 x K tile: (row, first k). TF32 holds one
/// element, BF16 two (k and k + 1, the lower in the low half).
pub const fn a_position(shape: MmaShape, lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    let row = g + 8 * (i % 2);
    match shape {
        MmaShape::Tf32M16n8k8 => (row, t + 4 * (i / 2)),
        MmaShape::Bf16M16n8k16 => (row, 2 * t + 8 * (i / 2)),
    }
}

/// Where lane `lane`'s B register `i` sits in the K x 8 tile: (first k, column).
pub const fn b_position(shape: MmaShape, lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = (lane / 4, lane % 4);
    match shape {
        MmaShape::Tf32M16n8k8 => (t + 4 * i, g),
        MmaShape::Bf16M16n8k16 => (2 * t + 8 * i, g),
    }
}

/// Assembles the warp's matrices from every lane's operands (a0..a3, b0, b1, c0..c3).
pub fn gather(shape: MmaShape, lanes: &[[u32; 10]; 32]) -> MmaOperands {
    let mut m = MmaOperands {
        a: [[0.0; 16]; 16],
        b: [[0.0; 8]; 16],
        c: [[0.0; 8]; 16],
    };
    for (lane, o) in lanes.iter().enumerate() {
        for i in 0..4 {
            let (row, k) = a_position(shape, lane, i);
            match shape {
                MmaShape::Tf32M16n8k8 => m.a[row][k] = f32::from_bits(o[i]) as f64,
                MmaShape::Bf16M16n8k16 => {
                    m.a[row][k] = bf16_to_f32(o[i] as u16) as f64;
                    m.a[row][k + 1] = bf16_to_f32((o[i] >> 16) as u16) as f64;
                }
            }
            let (row, col) = c_position(lane, i);
            m.c[row][col] = f32::from_bits(o[6 + i]) as f64;
        }
        for i in 0..2 {
            let (k, col) = b_position(shape, lane, i);
            match shape {
                MmaShape::Tf32M16n8k8 => m.b[k][col] = f32::from_bits(o[4 + i]) as f64,
                MmaShape::Bf16M16n8k16 => {
                    m.b[k][col] = bf16_to_f32(o[4 + i] as u16) as f64;
                    m.b[k + 1][col] = bf16_to_f32((o[4 + i] >> 16) as u16) as f64;
                }
            }
        }
    }
    m
}

/// `D = A B + C` with the accumulation model of the module docs.
pub fn product(shape: MmaShape, m: &MmaOperands) -> [[f32; 8]; 16] {
    let mut d = [[0.0f32; 8]; 16];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            let mut sum = m.c[i][j];
            for k in 0..shape.k() {
                sum += m.a[i][k] * m.b[k][j];
            }
            *out = sum as f32;
        }
    }
    d
}

/// Every lane's D registers of one `mma.sync` of the warp.
pub fn mma(shape: MmaShape, lanes: &[[u32; 10]; 32]) -> [[u32; 4]; 32] {
    let d = product(shape, &gather(shape, lanes));
    let mut results = [[0u32; 4]; 32];
    for (lane, result) in results.iter_mut().enumerate() {
        for (i, r) in result.iter_mut().enumerate() {
            let (row, col) = c_position(lane, i);
            *r = d[row][col].to_bits();
        }
    }
    results
}

/// Every lane's registers of one `ldmatrix` of `matrices` 8 x 8 b16 matrices, from the rows
/// the lanes read (lane `8 i + r` holds row r of matrix i in its first 4 words).
pub fn ldmatrix(lanes: &[[u32; 10]; 32], matrices: u32, trans: bool) -> [[u32; 4]; 32] {
    // Element (r, c) of matrix i: half c % 2 of word c / 2 of its row r.
    let element = |i: usize, r: usize, c: usize| (lanes[8 * i + r][c / 2] >> (16 * (c % 2))) & 0xffff;
    let mut results = [[0u32; 4]; 32];
    for (lane, result) in results.iter_mut().enumerate() {
        for (i, r) in result.iter_mut().take(matrices as usize).enumerate() {
            *r = if trans {
                let (row, col) = (2 * (lane % 4), lane / 4);
                element(i, row, col) | element(i, row + 1, col) << 16
            } else {
                lanes[8 * i + lane / 4][lane % 4]
            };
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_nearest_with_ties_away_from_zero() {
        let one = 1.0f32.to_bits();
        // Exactly half of the last kept bit: away from zero, for both signs.
        assert_eq!(tf32(f32::from_bits(one + 0x1000)).to_bits(), one + 0x2000);
        assert_eq!(
            tf32(-f32::from_bits(one + 0x1000)).to_bits(),
            (-1.0f32).to_bits() + 0x2000
        );
        // Just below half: down; just above: up.
        assert_eq!(tf32(f32::from_bits(one + 0x0fff)).to_bits(), one);
        assert_eq!(tf32(f32::from_bits(one + 0x1001)).to_bits(), one + 0x2000);
        assert_eq!(tf32(f32::MAX), f32::INFINITY);
        assert!(tf32(f32::NAN).is_nan());
        assert_eq!(tf32(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn bf16_rounds_to_nearest_with_ties_to_even() {
        let one = 1.0f32.to_bits();
        assert_eq!(bf16(f32::from_bits(one + 0x8000)), 0x3f80); // tie, even below
        assert_eq!(bf16(f32::from_bits(one + 0x1_8000)), 0x3f82); // tie, even above
        assert_eq!(bf16(f32::from_bits(one + 0x8001)), 0x3f81);
        assert_eq!(bf16(-1.5), 0xbfc0);
        assert!(bf16_to_f32(bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn fragment_positions_cover_each_tile_once() {
        for shape in [MmaShape::Tf32M16n8k8, MmaShape::Bf16M16n8k16] {
            let per_register = if shape == MmaShape::Tf32M16n8k8 { 1 } else { 2 };
            let mut a = [[0; 16]; 16];
            let mut b = [[0; 8]; 16];
            let mut c = [[0; 8]; 16];
            for lane in 0..32 {
                for i in 0..4 {
                    let (row, k) = a_position(shape, lane, i);
                    for e in 0..per_register {
                        a[row][k + e] += 1;
                    }
                    let (row, col) = c_position(lane, i);
                    c[row][col] += 1;
                }
                for i in 0..2 {
                    let (k, col) = b_position(shape, lane, i);
                    for e in 0..per_register {
                        b[k + e][col] += 1;
                    }
                }
            }
            assert!(a.iter().all(|r| r[..shape.k()].iter().all(|&n| n == 1)), "{shape:?} A");
            assert!(b[..shape.k()].iter().all(|r| r.iter().all(|&n| n == 1)), "{shape:?} B");
            assert!(c.iter().all(|r| r.iter().all(|&n| n == 1)), "{shape:?} C");
        }
    }
}
