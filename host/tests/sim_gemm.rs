//! The exact FMA GEMM family (`gemm_tiled`: 128 x 128 and 64 x 64 tiles, split-K with its
//! reductions) on the simulator, at DiT shapes cut down: odd M, N, K that are not multiples of
//! the tiles, M = 1, the split-K path for few rows, the largest tile. Each result is compared
//! bit for bit with a CPU model of the kernel's arithmetic (the chain `acc = fma(a_k, w_k, acc)`
//! in k order, the split sums in split order) and, NaN-aware, with an f64 product within a
//! budget. A wrong index in the tile loop changes bits, so the exact comparison catches it.

mod support;

use resca_gpu_kernels::gemm_tiled::{GEMM64_SHARED_BYTES, TILED_THREADS};
use resca_gpu_kernels::{Dim3, LaunchDims, ThreadCtx, math};
use resca_host::pipeline::device::{Device, Slice};
use resca_host::pipeline::gemm_plan::{self, GemmOutput, GemmPlan};
use resca_host::pipeline::launch::{self, Epilogue, GemmTile};
use resca_host::sim::{self, SimDevice, SimError};
use support::values;

/// A (rows, cols) matrix of values in [-scale, scale].
fn matrix(seed: u64, rows: usize, cols: usize, scale: f32) -> Vec<f32> {
    values(seed, rows * cols).into_iter().map(|v| v * scale / 2.0).collect()
}

/// The kernels' chain for output (row, col) over k in `range`.
fn fma_chain(a: &[f32], w: &[f32], k: usize, row: usize, col: usize, range: std::ops::Range<usize>) -> f32 {
    range.fold(0.0f32, |acc, i| a[row * k + i].mul_add(w[col * k + i], acc))
}

/// The dot products as the kernels compute them: one chain, or `splits` chains over ranges of
/// `k_per_split` summed in split order.
fn model_dots(a: &[f32], w: &[f32], m: usize, n: usize, k: usize, split: Option<usize>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    for row in 0..m {
        for col in 0..n {
            out.push(match split {
                None => fma_chain(a, w, k, row, col, 0..k),
                Some(per) => {
                    let splits = launch::splitk_count(k, per);
                    let mut sum = fma_chain(a, w, k, row, col, 0..per.min(k));
                    for z in 1..splits {
                        sum += fma_chain(a, w, k, row, col, z * per..((z + 1) * per).min(k));
                    }
                    sum
                }
            });
        }
    }
    out
}

/// The f64 product `A W^T`.
fn f64_dots(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(m * n);
    for row in 0..m {
        for col in 0..n {
            out.push((0..k).map(|i| a[row * k + i] as f64 * w[col * k + i] as f64).sum());
        }
    }
    out
}

/// The epilogue on a dot product, in the kernels' operation order.
fn epilogue_of(epilogue: Epilogue, dot: f32, bias: f32) -> f32 {
    match epilogue {
        Epilogue::Bias => dot + bias,
        Epilogue::BiasGelu => math::gelu_tanh(dot + bias),
    }
}

/// Bit-for-bit equality, any NaN equal to any NaN; panics naming the first difference.
fn assert_same_bits(what: &str, ours: &[f32], model: &[f32], n: usize) {
    assert_eq!(ours.len(), model.len());
    for (i, (&o, &e)) in ours.iter().zip(model).enumerate() {
        assert!(
            o.to_bits() == e.to_bits() || (o.is_nan() && e.is_nan()),
            "{what}: element ({}, {}) is {o:e} ({:#010x}), the model gives {e:e} ({:#010x})",
            i / n,
            i % n,
            o.to_bits(),
            e.to_bits()
        );
    }
}

/// The largest |ours - exact| over the non-NaN elements, relative to the largest |exact|;
/// NaN exactly where `exact` is NaN.
fn max_rel_error(what: &str, ours: &[f32], exact: &[f64]) -> f64 {
    let scale = exact
        .iter()
        .filter(|v| v.is_finite())
        .fold(1e-30f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, (&o, &e)) in ours.iter().zip(exact).enumerate() {
        assert_eq!(
            o.is_nan(),
            e.is_nan(),
            "{what}: element {i} is {o}, the f64 product {e}"
        );
        if !e.is_nan() {
            worst = worst.max((o as f64 - e).abs() / scale);
        }
    }
    worst
}

/// Uploads the operands of one GEMM to a fresh simulator.
struct Operands {
    dev: SimDevice,
    a: Slice<f32>,
    w: Slice<f32>,
    bias: Slice<f32>,
}

impl Operands {
    fn new(a: &[f32], w: &[f32], bias: &[f32]) -> Self {
        let mut dev = SimDevice::new();
        let (a, w, bias) = (
            dev.upload_new(a).unwrap().all(),
            dev.upload_new(w).unwrap().all(),
            dev.upload_new(bias).unwrap().all(),
        );
        Self { dev, a, w, bias }
    }
}

/// DiT shapes cut down (hidden 72 / 144 for 1152, MLP 4 x, qkv 3 x): (M, N, K).
const TILED_SHAPES: &[(usize, usize, usize)] = &[
    (1, 216, 72),    // one row (a single token)
    (67, 77, 93),    // nothing a multiple of anything
    (129, 257, 40),  // one past the 128 tile in M and N: 2 x 3 blocks of 128
    (200, 144, 288), // an MLP fc2 at hidden 144, K a multiple of the k tile
];

#[test]
fn tiled_gemms_are_the_fma_chain_bit_for_bit_and_close_to_the_f64_product() {
    for (s, &(m, n, k)) in TILED_SHAPES.iter().enumerate() {
        let seed = 100 + s as u64;
        let mut a = matrix(seed, m, k, 2.0);
        let w = matrix(seed ^ 1, n, k, 2.0 / (k as f32).sqrt());
        let bias = matrix(seed ^ 2, 1, n, 0.2);
        // A NaN in the last row (of several): that row's outputs are NaN, no other is.
        if m > 1 {
            a[(m - 1) * k + k / 2] = f32::NAN;
        }
        let dots = model_dots(&a, &w, m, n, k, None);
        let exact = f64_dots(&a, &w, m, n, k);
        for tile in [GemmTile::Tile128, GemmTile::Tile64] {
            for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
                let mut ops = Operands::new(&a, &w, &bias);
                let out = ops.dev.alloc::<f32>(m * n).unwrap().all();
                launch::gemm_tiled(&mut ops.dev, tile, ops.a, ops.w, ops.bias, out, m, n, k, epilogue).unwrap();
                let ours = ops.dev.download_vec(out).unwrap();
                let what = format!("{tile:?} {epilogue:?} {m}x{n}x{k}");
                let model: Vec<f32> = (0..m * n)
                    .map(|i| epilogue_of(epilogue, dots[i], bias[i % n]))
                    .collect();
                assert_same_bits(&what, &ours, &model, n);
                if epilogue == Epilogue::Bias {
                    let exact: Vec<f64> = (0..m * n).map(|i| exact[i] + bias[i % n] as f64).collect();
                    let err = max_rel_error(&what, &ours, &exact);
                    eprintln!("{what}: max relative error vs f64 {err:.1e}");
                    // K <= 288 products summed in f32: a few ulp of the largest output.
                    // Measured max 6.0e-7 (200 x 144 x 288).
                    assert!(err < 2e-6, "{what}: relative error {err:e}");
                }
            }
        }
    }
}

#[test]
fn tiled_gated_residual_is_the_fma_chain_bit_for_bit() {
    // 3 samples of 43 tokens (M = 129, one past a 128 tile), N = 72, K = 104.
    let (batch, tokens, n, k) = (3, 43, 72, 104);
    let m = batch * tokens;
    let a = matrix(7, m, k, 2.0);
    let w = matrix(8, n, k, 2.0 / (k as f32).sqrt());
    let bias = matrix(9, 1, n, 0.2);
    let modulation = matrix(10, batch, 6 * n, 2.0);
    let x0 = matrix(11, m, n, 2.0);
    let dots = model_dots(&a, &w, m, n, k, None);
    let model: Vec<f32> = (0..m * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            let gate = modulation[(row / tokens) * 6 * n + 5 * n + col];
            x0[i] + gate * (dots[i] + bias[col])
        })
        .collect();
    for tile in [GemmTile::Tile128, GemmTile::Tile64] {
        let mut ops = Operands::new(&a, &w, &bias);
        let x = ops.dev.upload_new(&x0).unwrap().all();
        let gate = ops.dev.upload_new(&modulation).unwrap().all();
        launch::gemm_tiled_gated_residual(
            &mut ops.dev,
            tile,
            ops.a,
            ops.w,
            ops.bias,
            x,
            gate,
            m,
            n,
            k,
            tokens,
            6 * n,
            5 * n,
        )
        .unwrap();
        assert_same_bits(&format!("{tile:?} gated"), &ops.dev.download_vec(x).unwrap(), &model, n);
    }
}

/// Split-K shapes: (M, N, K, k_per_split), M <= 128.
const SPLIT_SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 72, 300, 128),   // one row, 3 ranges, the last short (44)
    (64, 100, 576, 72),  // a sparse step's 64 proxies, 8 ranges
    (128, 65, 257, 136), // 128 rows, 2 ranges, N one past the 64 tile
    (37, 130, 41, 8),    // 6 ranges of one k tile, the last of one k
];

#[test]
fn split_k_sums_the_partial_chains_in_split_order_bit_for_bit() {
    for (s, &(m, n, k, per)) in SPLIT_SHAPES.iter().enumerate() {
        let seed = 200 + s as u64;
        let a = matrix(seed, m, k, 2.0);
        let w = matrix(seed ^ 1, n, k, 2.0 / (k as f32).sqrt());
        let bias = matrix(seed ^ 2, 1, n, 0.2);
        let splits = launch::splitk_count(k, per);
        let dots = model_dots(&a, &w, m, n, k, Some(per));
        let exact = f64_dots(&a, &w, m, n, k);
        for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
            let mut ops = Operands::new(&a, &w, &bias);
            // The workspace starts as garbage: every partial the reduction reads must be written.
            let partials = ops.dev.upload_new(&vec![f32::NAN; splits * m * n]).unwrap().all();
            let out = ops.dev.alloc::<f32>(m * n).unwrap().all();
            launch::gemm_splitk_partial(&mut ops.dev, ops.a, ops.w, partials, m, n, k, per).unwrap();
            launch::gemm_splitk_reduce(&mut ops.dev, partials, ops.bias, out, m, n, splits, epilogue).unwrap();
            let ours = ops.dev.download_vec(out).unwrap();
            let what = format!("split-K {splits} x {per} {epilogue:?} {m}x{n}x{k}");
            let model: Vec<f32> = (0..m * n)
                .map(|i| epilogue_of(epilogue, dots[i], bias[i % n]))
                .collect();
            assert_same_bits(&what, &ours, &model, n);
            if epilogue == Epilogue::Bias {
                let exact: Vec<f64> = (0..m * n).map(|i| exact[i] + bias[i % n] as f64).collect();
                let err = max_rel_error(&what, &ours, &exact);
                eprintln!("{what}: max relative error vs f64 {err:.1e}");
                // As the unsplit chain (shorter chains, one more sum). Measured max 3.4e-7
                // (128 x 65 x 257).
                assert!(err < 2e-6, "{what}: relative error {err:e}");
            }
        }
    }
}

/// The split-K reduction with the gated residual on every split shape, M N of them not a
/// multiple of the 256-thread reduction block (128 x 65, 37 x 130): the last block's threads past
/// M N must neither read past the partials nor write past x, which hold exactly what the
/// product needs.
#[test]
fn split_k_gated_residual_sums_in_split_order_bit_for_bit_past_a_partial_block() {
    for (s, &(m, n, k, per)) in SPLIT_SHAPES.iter().enumerate() {
        let seed = 300 + s as u64;
        // Two samples where M is even, else one: the gate row of each token is its sample's.
        let tokens = if m % 2 == 0 { m / 2 } else { m };
        let batch = m / tokens;
        let a = matrix(seed, m, k, 2.0);
        let w = matrix(seed ^ 1, n, k, 2.0 / (k as f32).sqrt());
        let bias = matrix(seed ^ 2, 1, n, 0.2);
        let modulation = matrix(seed ^ 3, batch, 6 * n, 2.0);
        let x0 = matrix(seed ^ 4, m, n, 2.0);
        let splits = launch::splitk_count(k, per);
        let dots = model_dots(&a, &w, m, n, k, Some(per));
        let model: Vec<f32> = (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                x0[i] + modulation[(row / tokens) * 6 * n + 2 * n + col] * (dots[i] + bias[col])
            })
            .collect();
        let mut ops = Operands::new(&a, &w, &bias);
        let partials = ops.dev.upload_new(&vec![f32::NAN; splits * m * n]).unwrap().all();
        let x = ops.dev.upload_new(&x0).unwrap().all();
        let gate = ops.dev.upload_new(&modulation).unwrap().all();
        launch::gemm_splitk_partial(&mut ops.dev, ops.a, ops.w, partials, m, n, k, per).unwrap();
        launch::gemm_splitk_gated_residual(
            &mut ops.dev,
            partials,
            ops.bias,
            x,
            gate,
            m,
            n,
            splits,
            tokens,
            6 * n,
            2 * n,
        )
        .unwrap();
        let what = format!("split-K {splits} x {per} gated {m}x{n}x{k}");
        assert_same_bits(&what, &ops.dev.download_vec(x).unwrap(), &model, n);
    }
}

#[test]
fn the_shape_choice_runs_split_k_with_the_gated_residual_deterministically() {
    // 2 samples of 32 proxies, fc2-like (N 72, K 4 x 72 x 2): the host picks split-K.
    let (batch, tokens, n, k) = (2, 32, 72, 576);
    let m = batch * tokens;
    let workspace_len = gemm_plan::splitk_workspace_len(n);
    let GemmPlan::SplitK { splits, k_per_split } = gemm_plan::choose_gemm(m, n, k, workspace_len) else {
        panic!("a 64 x 72 x 576 product should be split");
    };
    assert_eq!((splits, k_per_split), (4, 144));
    let a = matrix(21, m, k, 2.0);
    let w = matrix(22, n, k, 2.0 / (k as f32).sqrt());
    let bias = matrix(23, 1, n, 0.2);
    let modulation = matrix(24, batch, 6 * n, 2.0);
    let x0 = matrix(25, m, n, 2.0);
    let dots = model_dots(&a, &w, m, n, k, Some(k_per_split));
    let model: Vec<f32> = (0..m * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            x0[i] + modulation[(row / tokens) * 6 * n + 2 * n + col] * (dots[i] + bias[col])
        })
        .collect();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut ops = Operands::new(&a, &w, &bias);
        let x = ops.dev.upload_new(&x0).unwrap().all();
        let gate = ops.dev.upload_new(&modulation).unwrap().all();
        let workspace = ops.dev.alloc::<f32>(workspace_len).unwrap().all();
        let output = GemmOutput::GatedResidual {
            x,
            gate,
            tokens,
            gate_stride: 6 * n,
            gate_offset: 2 * n,
        };
        gemm_plan::linear(&mut ops.dev, ops.a, ops.w, ops.bias, output, workspace, m, n, k).unwrap();
        let ours = ops.dev.download_vec(x).unwrap();
        assert_same_bits("linear, split-K gated", &ours, &model, n);
        runs.push(ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    assert_eq!(runs[0], runs[1], "two runs differ");
}

#[test]
fn a_too_small_split_k_workspace_is_an_error_not_a_fault() {
    let mut ops = Operands::new(&[1.0; 4 * 16], &[1.0; 3 * 16], &[0.0; 3]);
    let partials = ops.dev.alloc::<f32>(2 * 4 * 3 - 1).unwrap().all();
    let err = launch::gemm_splitk_partial(&mut ops.dev, ops.a, ops.w, partials, 4, 3, 16, 8).unwrap_err();
    assert!(err.to_string().contains("2 splits of 4 x 3 need 24"), "{err}");
}

#[test]
fn a_misaligned_vector_shared_load_is_reported() {
    let dims = LaunchDims {
        grid: Dim3::x(1),
        block: Dim3::x(TILED_THREADS),
        shared_bytes: GEMM64_SHARED_BYTES,
    };
    let err = sim::run_grid("misaligned", dims, |ctx| {
        let t = ctx.thread_idx_x() as usize;
        ctx.shared_store(t, 1.0f32);
        ctx.sync_threads();
        // Word 4 t + 2 is 8 bytes past a 16-byte boundary.
        let _ = ctx.shared_load4(4 * t + 2);
    })
    .unwrap_err();
    assert!(matches!(err, SimError::MisalignedShared { index: 2, .. }), "{err}");
    assert!(err.to_string().contains("not 16-byte aligned"), "{err}");
}

#[test]
fn the_tiled_gemms_launch_one_block_per_output_tile() {
    use resca_gpu_kernels::gemm_tiled::{MICRO_64, MICRO_128, gemm_splitk_partial_dims, gemm_tiled_dims};
    // The kernels' names say their tiles: `gemm64_*` covers 64 x 64 outputs per block and
    // `gemm128_*` 128 x 128. A grid with more blocks gives the same outputs (the extra blocks
    // find no rows), but wastes blocks and makes the grid-limit check refuse shapes that fit.
    for (micro, side) in [(MICRO_64, 64u32), (MICRO_128, 128)] {
        for (m, n) in [(1, 1), (64, 64), (65, 130), (300, 1152), (4 * 128 + 1, 127)] {
            let dims = gemm_tiled_dims(m, n, micro);
            assert_eq!(
                (dims.grid.x, dims.grid.y, dims.grid.z),
                (n.div_ceil(side), m.div_ceil(side), 1),
                "{side}: {m} x {n}"
            );
        }
    }
    let dims = gemm_splitk_partial_dims(65, 130, 3);
    assert_eq!((dims.grid.x, dims.grid.y, dims.grid.z), (3, 2, 3));
}
