//! The tensor-core attention kernels (`flash_attention_tf32`, `_tf32x3`, `_bf16`) on the
//! simulator against the reference's two-pass softmax (`resca_reference::ops::attention`), each
//! mode within a budget of about 4x the error measured here: head dimensions 1, 72 (DiT's, the
//! q k^T reduction padded to 80), 127 (4-byte copies) and 128 (the largest), token counts on both
//! sides of the 32-key and 64-query tiles, one token, both block orders; NaN in a query, a key or
//! a value landing where the reference puts it; and a model with a wrong fragment index, which
//! must fail.

mod support;

use std::cell::Cell;

use ndarray::Array2;
use proptest::test_runner::TestCaseError;
use resca_gpu_kernels::attention_tc::{self, attention_tc_dims};
use resca_gpu_kernels::gemm_tc::TF32;
use resca_gpu_kernels::{Global, GlobalMut, SharedWord, ThreadCtx};
use resca_host::pipeline::launch::Precision;
use resca_host::sim::{SimThread, run_grid};
use resca_tests::{max_abs_diff, max_abs_diff_matching_non_finite};
use support::{attention_reference, kernels, seeded_matrix};

const FAST: [Precision; 3] = [Precision::Tf32x3, Precision::Tf32, Precision::Bf16];

/// The largest |kernel - reference| allowed on inputs in [-1.5, 1.5] (outputs are convex
/// combinations of the values, so at most 1.5 in magnitude).
fn budget(precision: Precision) -> f32 {
    match precision {
        // Measured 5.5e-7 over the tile-edge cases: FP32 level (the exact kernel: 5.4e-7).
        Precision::Tf32x3 => 2e-6,
        // Measured 5.3e-4: q, k, p and v rounded to TF32 (2^-11 relative each).
        Precision::Tf32 => 2e-3,
        // Measured 3.9e-3: rounded to BF16 (2^-8 relative each).
        Precision::Bf16 => 1.5e-2,
        Precision::Exact => unreachable!(),
    }
}

/// The tensor-core kernel's attention of `qkv` in `precision`.
fn kernel(
    precision: Precision,
    qkv: &Array2<f32>,
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let mut out = vec![f32::MAX; batch * tokens * heads * head_dim];
    let qkv = qkv.as_standard_layout();
    kernels::attention_tc(
        precision,
        qkv.as_slice().unwrap(),
        &mut out,
        batch,
        tokens,
        heads,
        head_dim,
    )
    .unwrap();
    out
}

/// Prints `err` with `SIM_PRINT_ERRORS` set (the measured errors the budgets quote).
fn report(case: &str, err: f32) {
    if std::env::var_os("SIM_PRINT_ERRORS").is_some() {
        eprintln!("{case}: {err:.3e}");
    }
}

#[test]
fn tensor_core_attention_matches_the_reference_at_the_tile_edges() {
    for precision in FAST {
        let worst = Cell::new(0.0f32);
        for head_dim in [1, 72, 127, 128] {
            for tokens in [1, 31, 32, 33, 63, 64, 65, 97] {
                let (batch, heads) = (2, 2);
                let seed = (head_dim * 1000 + tokens) as u64;
                let qkv = seeded_matrix(seed, batch * tokens, 3 * heads * head_dim, 1.5);
                let expected = attention_reference(&qkv, batch, tokens, heads);
                let case = format!("{}, head_dim {head_dim}, tokens {tokens}", precision.name());
                support::in_every_block_order(|| {
                    let err = max_abs_diff(
                        &case,
                        &kernel(precision, &qkv, batch, tokens, heads, head_dim),
                        &expected,
                    );
                    report(&case, err);
                    worst.set(worst.get().max(err));
                    if err <= budget(precision) {
                        Ok(())
                    } else {
                        Err(TestCaseError::fail(format!("{case}: err {err}")))
                    }
                })
                .unwrap();
            }
        }
        let worst = worst.get();
        eprintln!("{}: worst |error| {worst:.2e}", precision.name());
        // Every mode rounds somewhere (at least the f32 accumulation in another order).
        assert!(
            worst > 0.0,
            "{}: bit-identical to a two-pass softmax?",
            precision.name()
        );
    }
}

#[test]
fn the_modes_lose_what_their_operands_predict() {
    // One case, DiT's head dimension, three tiles of keys: 3xTF32 at FP32 level, TF32 about 8x
    // more accurate than BF16 (3 more fraction bits).
    let (batch, tokens, heads, head_dim) = (1, 80, 2, 72);
    let qkv = seeded_matrix(5, batch * tokens, 3 * heads * head_dim, 1.5);
    let expected = attention_reference(&qkv, batch, tokens, heads);
    let err = |p: Precision| max_abs_diff(p.name(), &kernel(p, &qkv, batch, tokens, heads, head_dim), &expected);
    let (x3, tf32, bf16) = (err(Precision::Tf32x3), err(Precision::Tf32), err(Precision::Bf16));
    report("tf32x3, head_dim 72, tokens 80", x3);
    report("tf32, head_dim 72, tokens 80", tf32);
    report("bf16, head_dim 72, tokens 80", bf16);
    // Measured 2.2e-7, 2.1e-4, 1.8e-3.
    assert!(x3 < 1e-6, "tf32x3 {x3}");
    assert!(
        tf32 > 20.0 * x3 && tf32 < budget(Precision::Tf32),
        "tf32 {tf32}, tf32x3 {x3}"
    );
    assert!(
        bf16 > 2.0 * tf32 && bf16 < budget(Precision::Bf16),
        "bf16 {bf16}, tf32 {tf32}"
    );
}

#[test]
fn tensor_core_attention_handles_large_scores_like_the_reference() {
    // Scores of +-30 after scaling: the running maximum moves between key tiles, and a
    // rescaling that went wrong would overflow or zero whole rows.
    let (batch, tokens, heads, head_dim) = (1, 100, 1, 16);
    let qkv = seeded_matrix(7, batch * tokens, 3 * heads * head_dim, 6.0);
    let expected = attention_reference(&qkv, batch, tokens, heads);
    for precision in FAST {
        let err = max_abs_diff(
            "large scores",
            &kernel(precision, &qkv, batch, tokens, heads, head_dim),
            &expected,
        );
        report(&format!("{}, large scores", precision.name()), err);
        // Values in [-6, 6], near one-hot rows: an error of the operands' rounding in a score of
        // up to 30 moves its weight by that much relative. Measured 1.6e-5 (tf32x3), 2.3e-2
        // (tf32), 1.4e-1 (bf16).
        let large_budget = match precision {
            Precision::Tf32x3 => 6e-5,
            Precision::Tf32 => 1e-1,
            _ => 5e-1,
        };
        assert!(err <= large_budget, "{}: err {err}", precision.name());
    }
}

#[test]
fn nan_lands_where_the_reference_puts_it() {
    let (batch, tokens, heads, head_dim) = (2, 70, 2, 72);
    let d = heads * head_dim;
    // (row, column) of the NaN: a query of head 0, a key of head 1 in the second key tile, a
    // value feature of head 0 in the last (partial) n8 feature tile.
    for (row, col) in [(5, 3), (tokens + 40, d + head_dim + 7), (17, 2 * d + 70)] {
        let mut qkv = seeded_matrix(11, batch * tokens, 3 * d, 1.5);
        qkv[[row, col]] = f32::NAN;
        let expected = attention_reference(&qkv, batch, tokens, heads);
        let nans = expected.iter().filter(|v| v.is_nan()).count();
        assert!(
            nans > 0 && nans < expected.len(),
            "the reference spreads the NaN of ({row}, {col}) partly"
        );
        for precision in FAST {
            let ours = kernel(precision, &qkv, batch, tokens, heads, head_dim);
            let err = max_abs_diff_matching_non_finite("attention with a NaN input", &ours, &expected);
            report(&format!("{}, NaN at ({row}, {col})", precision.name()), err);
            // The same NaN pattern, the rest as in the finite cases.
            assert!(
                err <= budget(precision),
                "{}: NaN at ({row}, {col}): err {err}",
                precision.name()
            );
        }
    }
}

#[test]
fn tensor_core_attention_refuses_what_it_does_not_cover() {
    for precision in FAST {
        for head_dim in [0, 129] {
            let qkv = vec![0.0f32; 3 * head_dim.max(1)];
            let mut out = vec![0.0f32; head_dim.max(1)];
            let err = kernels::attention_tc(precision, &qkv, &mut out, 1, 1, 1, head_dim).unwrap_err();
            assert!(err.to_string().contains("head_dim"), "{err}");
            assert!(err.to_string().contains("flash_attention_"), "{err}");
        }
    }
    let err = kernels::attention_tc(Precision::Exact, &[0.0; 3], &mut [0.0], 1, 1, 1, 1).unwrap_err();
    assert!(err.to_string().contains("exact precision"), "{err}");
}

/// The simulator's thread with a mutated `mma.sync` model: A's registers a1 and a2 trade places,
/// as if a kernel (or the model) read A(g + 8, t) where the PTX ISA table says A(g, t + 4).
struct SwappedA<'a, 'b>(&'a SimThread<'b>);

impl ThreadCtx for SwappedA<'_, '_> {
    fn thread_idx_x(&self) -> u32 {
        self.0.thread_idx_x()
    }
    fn thread_idx_y(&self) -> u32 {
        self.0.thread_idx_y()
    }
    fn thread_idx_z(&self) -> u32 {
        self.0.thread_idx_z()
    }
    fn block_idx_x(&self) -> u32 {
        self.0.block_idx_x()
    }
    fn block_idx_y(&self) -> u32 {
        self.0.block_idx_y()
    }
    fn block_idx_z(&self) -> u32 {
        self.0.block_idx_z()
    }
    fn block_dim_x(&self) -> u32 {
        self.0.block_dim_x()
    }
    fn block_dim_y(&self) -> u32 {
        self.0.block_dim_y()
    }
    fn block_dim_z(&self) -> u32 {
        self.0.block_dim_z()
    }
    fn grid_dim_x(&self) -> u32 {
        self.0.grid_dim_x()
    }
    fn grid_dim_y(&self) -> u32 {
        self.0.grid_dim_y()
    }
    fn grid_dim_z(&self) -> u32 {
        self.0.grid_dim_z()
    }
    fn sync_threads(&self) {
        self.0.sync_threads()
    }
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        self.0.shfl_xor_f32(value, lane_mask)
    }
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        self.0.shfl_down_f32(value, delta)
    }
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        self.0.shfl_idx_f32(value, src_lane)
    }
    fn fma(&self, a: f32, b: f32, c: f32) -> f32 {
        self.0.fma(a, b, c)
    }
    fn tf32(&self, x: f32) -> f32 {
        self.0.tf32(x)
    }
    fn bf16x2(&self, lo: f32, hi: f32) -> u32 {
        self.0.bf16x2(lo, hi)
    }
    fn mma_tf32_m16n8k8(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        self.0.mma_tf32_m16n8k8([a[0], a[2], a[1], a[3]], b, c)
    }
    fn mma_bf16_m16n8k16(&self, a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
        self.0.mma_bf16_m16n8k16([a[0], a[2], a[1], a[3]], b, c)
    }
    fn ldmatrix_x1(&self, row: usize) -> u32 {
        self.0.ldmatrix_x1(row)
    }
    fn ldmatrix_x2(&self, row: usize) -> [u32; 2] {
        self.0.ldmatrix_x2(row)
    }
    fn ldmatrix_x4(&self, row: usize) -> [u32; 4] {
        self.0.ldmatrix_x4(row)
    }
    fn ldmatrix_x4_trans(&self, row: usize) -> [u32; 4] {
        self.0.ldmatrix_x4_trans(row)
    }
    fn cp_async<T: SharedWord>(&self, dst: usize, src: Global<'_, T>, index: usize, words: u32, read: bool) {
        self.0.cp_async(dst, src, index, words, read)
    }
    fn cp_async_commit(&self) {
        self.0.cp_async_commit()
    }
    fn cp_async_wait(&self, pending: u32) {
        self.0.cp_async_wait(pending)
    }
    fn shared_load<T: SharedWord>(&self, index: usize) -> T {
        self.0.shared_load(index)
    }
    fn shared_store<T: SharedWord>(&self, index: usize, value: T) {
        self.0.shared_store(index, value)
    }
    fn load<T: Copy>(&self, buffer: Global<'_, T>, index: usize) -> T {
        self.0.load(buffer, index)
    }
    fn store<T: Copy>(&self, buffer: GlobalMut<'_, T>, index: usize, value: T) {
        self.0.store(buffer, index, value)
    }
}

#[test]
fn a_wrong_fragment_index_fails_the_attention_test() {
    let (batch, tokens, heads, head_dim) = (1, 40, 2, 72);
    let qkv = seeded_matrix(13, batch * tokens, 3 * heads * head_dim, 1.5);
    let expected = attention_reference(&qkv, batch, tokens, heads);
    let flat = qkv.as_standard_layout();
    let run = |mutated: bool| {
        let mut out = vec![0.0f32; batch * tokens * heads * head_dim];
        let (gq, go) = (Global::new(flat.as_slice().unwrap()), GlobalMut::new(&mut out));
        let dims = attention_tc_dims(batch as u32, tokens as u32, heads as u32, head_dim as u32);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (n, h, hd) = (tokens as u32, heads as u32, head_dim as u32);
        run_grid("flash_attention_tf32", dims, |ctx| {
            if mutated {
                attention_tc::flash_attention_tc::<_, TF32>(&SwappedA(ctx), gq, go, n, h, hd, scale);
            } else {
                attention_tc::flash_attention_tc::<_, TF32>(ctx, gq, go, n, h, hd, scale);
            }
        })
        .unwrap();
        out
    };
    let correct = max_abs_diff("correct model", &run(false), &expected);
    let mutated = max_abs_diff("mutated model", &run(true), &expected);
    report("TF32, correct mma model", correct);
    report("TF32, mutated mma model", mutated);
    // Measured 3.0e-4 (the model as the PTX ISA says) and 8.5e-1 (a1 and a2 swapped).
    assert!(correct <= budget(Precision::Tf32), "correct model: {correct}");
    assert!(
        mutated > 10.0 * budget(Precision::Tf32),
        "the mutation went unnoticed: {mutated}"
    );
}
