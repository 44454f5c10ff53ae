//! Kernels at the largest shapes they accept, where a dimension has a limit of its own (the
//! other limits, attention's head dimension 128 and the GEMM tiles' edges, are tested in
//! `sim_attention.rs`, `sim_kernels.rs` and `sim_gemm.rs`):
//! - the Taylor kernels at `MAX_TAYLOR_ORDER` = 4, five factors (the coefficients they take hold
//!   five). PDDS reads such a cache: its launches refuse order 5 with an error naming the order
//!   (here); order 4 with five stored factors and four proxy residuals, against the reference in
//!   both block orders, is in `sim_cache_kernels.rs` (`pdds_matches_for_every_solver_at_k_1_and_k_n`);
//! - the grid's y and z hold 65535 blocks (a GPU's limit, which the simulator enforces; the
//!   launches refuse more with an error naming the dimension). At 65535, against the reference:
//!   attention's heads (y) and batch rows (z), the exact FMA GEMM's row tiles (y; 64- and
//!   128-row tiles), K-medoids' batch rows (the medoid update's y), split-K's splits (z) and the
//!   similarity's batch (z), each in both block orders; the mul + add GEMM's and the BF16
//!   tensor-core GEMM's row tiles in grid order (the three tensor-core modes share the row
//!   indexing; one block order of 3xTF32 would take 5 minutes). One more is refused for each,
//!   and for every tensor-core mode.
//!
//! The runs at the limit take about 6 minutes of CPU on an Intel Xeon (family 6 model 167):
//! attention 24 and 25 s, the FMA GEMM 31 s (64-row tiles) and 81 s (128-row tiles), the mul + add
//! GEMM 17 s, the BF16 GEMM about 90 s, K-medoids 27 s, split-K 38 s, the similarity about 35 s.
//! So `cargo test` leaves them out and `.ci/run` runs them as a step of their own, two at a
//! time: `cargo test -p resca-host --test sim_largest_shapes -- --ignored`.

mod support;

use ndarray::{Array1, Array2, Array3, Axis, s};
use proptest::prelude::*;
use resca_gpu_kernels::gemm::GEMM_TILE_M;
use resca_gpu_kernels::gemm_tc::TC_TILE_M;
use resca_gpu_kernels::gemm_tiled::tile_side;
use resca_gpu_kernels::taylor::MAX_TAYLOR_ORDER;
use resca_host::pipeline::caching_engine::{self as caching, taylor_coefficients};
use resca_host::pipeline::device::{Device, DeviceError, Element, Slice};
use resca_host::pipeline::launch::{self, Epilogue, GemmTile, GemmWeight, MAX_GRID_YZ as GRID_YZ, Precision};
use resca_host::sim::{BlockOrder, SimDevice, with_block_order};
use resca_reference::cache::taylor::TaylorFactors;
use resca_reference::cache::tetc;
use resca_reference::ops;
use resca_tests::max_abs_diff;
use support::{BLOCK_ORDERS, in_every_block_order, kernels, values};

fn up<T: Element>(dev: &mut SimDevice, data: &[T]) -> Slice<T> {
    dev.upload_new(data).unwrap().all()
}

fn down<T: Element>(dev: &mut SimDevice, slice: Slice<T>) -> Vec<T> {
    dev.download_vec(slice).unwrap()
}

fn flat<D: ndarray::Dimension>(a: &ndarray::Array<f32, D>) -> Vec<f32> {
    a.iter().copied().collect()
}

#[test]
fn taylor_kernels_at_their_largest_order_are_the_reference() {
    let order = MAX_TAYLOR_ORDER as usize;
    let (batch, tokens, d) = (2, 5, 37);
    let len = batch * tokens * d;
    in_every_block_order(|| {
        let dev = &mut SimDevice::new();
        let factors = up(dev, &vec![0.0f32; (order + 1) * len]);
        let mut reference = TaylorFactors::default();
        let mut stored = 0;
        // Six updates: the cache fills to order 4 (five factors) and then drops its oldest.
        for u in 0..6u64 {
            let new = Array3::from_shape_vec((batch, tokens, d), values(40 + u, len)).unwrap();
            let gap = -((u % 3) as f32 + 1.0);
            let fresh = up(dev, &flat(&new));
            launch::taylor_update(dev, factors, fresh, len, stored, order, gap).unwrap();
            stored = stored.min(order) + 1;
            reference.update(new.view(), gap, order);
        }
        prop_assert_eq!(stored, order + 1);
        prop_assert_eq!(reference.orders.len(), order + 1);
        let held = down(dev, factors);
        prop_assert_eq!(held, reference.orders.iter().flat_map(flat).collect::<Vec<_>>());

        let distance = -3.0;
        let coef = taylor_coefficients(distance);
        let out = up(dev, &vec![f32::NAN; len]);
        launch::taylor_predict(dev, factors, out, len, stored, coef).unwrap();
        let predicted = reference.predict(distance);
        prop_assert_eq!(down(dev, out), flat(&predicted));

        let modulation = Array2::from_shape_vec((batch, 6 * d), values(50, batch * 6 * d)).unwrap();
        let x0 = values(51, len);
        let (x, m) = (up(dev, &x0), up(dev, &flat(&modulation)));
        let coef = up(dev, &coef.to_values());
        launch::taylor_predict_gated_add(
            dev,
            x,
            factors,
            m,
            batch * tokens,
            d,
            tokens,
            6 * d,
            5 * d,
            stored,
            coef,
        )
        .unwrap();
        let mut expected = Array3::from_shape_vec((batch, tokens, d), x0).unwrap();
        for b in 0..batch {
            ops::gated_add(
                expected.index_axis_mut(Axis(0), b),
                modulation.slice(s![b, 5 * d..]),
                predicted.index_axis(Axis(0), b),
            );
        }
        prop_assert_eq!(down(dev, x), flat(&expected));
        Ok(())
    })
    .unwrap();
}

/// The grid's y and z limit as a size.
const MAX_GRID_YZ: usize = GRID_YZ as usize;

/// Attention of `batch` rows of one token with `heads` heads of dimension 2 against the
/// reference, in every block order.
fn check_attention(batch: usize, heads: usize) {
    let (tokens, head_dim) = (1, 2);
    let width = 3 * heads * head_dim;
    let qkv = Array2::from_shape_vec((batch * tokens, width), values(7, batch * tokens * width)).unwrap();
    let mut expected = Vec::with_capacity(batch * heads * head_dim);
    for row in 0..batch {
        expected.extend(ops::attention(qkv.slice(s![row..row + 1, ..]), heads).iter().copied());
    }
    in_every_block_order(|| {
        let mut out = vec![f32::NAN; batch * heads * head_dim];
        kernels::attention(qkv.as_slice().unwrap(), &mut out, batch, tokens, heads, head_dim).unwrap();
        let err = max_abs_diff("attention at the grid's limit", &out, &expected);
        // One token: the softmax weight is exactly 1 and the output is v; measured 0.
        prop_assert!(err <= 1e-6, "max |kernel - reference| {err}");
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "65535 blocks of 128 threads in two block orders: 24 s of CPU; .ci/run runs it with --ignored"]
fn attention_at_the_largest_head_count_is_the_reference() {
    check_attention(1, MAX_GRID_YZ);
}

#[test]
#[ignore = "65535 blocks of 128 threads in two block orders: 25 s of CPU; .ci/run runs it with --ignored"]
fn attention_at_the_largest_batch_is_the_reference() {
    check_attention(MAX_GRID_YZ, 1);
}

#[test]
fn attention_past_the_largest_head_count_and_batch_is_an_error() {
    for (batch, heads) in [(1, MAX_GRID_YZ + 1), (MAX_GRID_YZ + 1, 1)] {
        let qkv = vec![0.5f32; batch * 3 * heads * 2];
        let mut out = vec![0.0f32; batch * heads * 2];
        let named = if heads > MAX_GRID_YZ {
            "heads = 65536 is 65536 blocks in the grid's y"
        } else {
            "batch = 65536 is 65536 blocks in the grid's z"
        };
        let refused = [
            kernels::attention(&qkv, &mut out, batch, 1, heads, 2),
            kernels::attention_tc(Precision::Tf32, &qkv, &mut out, batch, 1, heads, 2),
        ];
        for result in refused {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains(named) && err.contains("exceeds its limit of 65535"),
                "batch {batch}, heads {heads}: {err}"
            );
        }
    }
}

#[test]
fn pdds_past_the_largest_order_is_an_error() {
    let order = MAX_TAYLOR_ORDER as usize + 1;
    let (batch, tokens, clusters, hidden) = (1, 4, 2, 8);
    let len = batch * tokens * hidden;
    let dev = &mut SimDevice::new();
    // Buffers of order 5's sizes, so that only the order can be refused.
    let cache = up(dev, &values(60, (order + 1) * len));
    let fresh = up(dev, &values(61, batch * clusters * hidden));
    let residuals = up(dev, &vec![0.0f32; order * batch * clusters * hidden]);
    let (labels, proxies) = (up(dev, &[0u32, 0, 1, 1]), up(dev, &[0u32, 2]));
    let (out, x) = (up(dev, &vec![0.0f32; len]), up(dev, &vec![0.0f32; len]));
    let gate = up(dev, &values(62, batch * hidden));
    let refused = [
        launch::pdds_proxy_residuals(
            dev,
            fresh,
            cache,
            proxies,
            residuals,
            batch,
            tokens,
            clusters,
            hidden,
            order,
            order + 1,
            -1.0,
        ),
        launch::pdds_update(
            dev,
            cache,
            labels,
            proxies,
            residuals,
            fresh,
            out,
            x,
            gate,
            batch,
            tokens,
            clusters,
            hidden,
            order,
            order + 1,
            -1.0,
            false,
            hidden,
            0,
        ),
    ];
    for (kernel, result) in ["pdds_proxy_residuals", "pdds_update"].iter().zip(refused) {
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{kernel}`: order 5 exceeds 4")),
            "{kernel}: {err}"
        );
    }
}

/// The GEMMs, whose grid's y counts the row tiles of M: each family's row tile.
#[derive(Clone, Copy, Debug)]
enum RowTiledGemm {
    /// `gemm_bias`: mul + add, 64-row tiles.
    MulAdd,
    /// `gemm64_bias` / `gemm128_bias`: the exact FMA GEMM.
    Fma(GemmTile),
    /// `gemm_bf16_bias`: BF16 tensor cores, 128-row tiles.
    Bf16,
}

impl RowTiledGemm {
    fn row_tile(self) -> usize {
        match self {
            RowTiledGemm::MulAdd => GEMM_TILE_M as usize,
            RowTiledGemm::Fma(tile) => tile_side(tile.micro()) as usize,
            RowTiledGemm::Bf16 => TC_TILE_M as usize,
        }
    }

    /// `A W^T + b` (M, N) on the kernel.
    fn run(self, a: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Result<Vec<f32>, DeviceError> {
        let dev = &mut SimDevice::new();
        let (a, bias, out) = (up(dev, a), up(dev, bias), up(dev, &vec![f32::NAN; m * n]));
        match self {
            RowTiledGemm::MulAdd => {
                let w = up(dev, w);
                launch::gemm(dev, a, w, bias, out, m, n, k, Epilogue::Bias)?
            }
            RowTiledGemm::Fma(tile) => {
                let w = up(dev, w);
                launch::gemm_tiled(dev, tile, a, w, bias, out, m, n, k, Epilogue::Bias)?
            }
            RowTiledGemm::Bf16 => {
                let w = GemmWeight::Bf16(up(dev, &launch::pack_bf16_weight(w, n, k)));
                launch::gemm_tc(dev, Precision::Bf16, a, w, bias, out, m, n, k, Epilogue::Bias)?
            }
        }
        Ok(down(dev, out))
    }
}

/// The shape of the GEMMs at the grid's limit: one column tile and two k, so that the grid is
/// the row tiles alone and the buffers stay small (8 million rows of 128-row tiles: 64 MB of A).
const GEMM_N: usize = 3;
const GEMM_K: usize = 2;

/// `gemm` at the grid's limit, 65535 full row tiles, against `ops::linear`, in `orders`.
fn check_gemm_at_the_largest_row_tile_count(gemm: RowTiledGemm, orders: &[BlockOrder]) {
    let (m, n, k) = (MAX_GRID_YZ * gemm.row_tile(), GEMM_N, GEMM_K);
    let a = Array2::from_shape_vec((m, k), values(70, m * k)).unwrap();
    let w = Array2::from_shape_vec((n, k), values(71, n * k)).unwrap();
    let bias = Array1::from_vec(values(72, n));
    let expected = ops::linear(a.view(), w.view(), bias.view());
    for &order in orders {
        let out = with_block_order(order, || {
            gemm.run(
                a.as_slice().unwrap(),
                w.as_slice().unwrap(),
                bias.as_slice().unwrap(),
                m,
                n,
                k,
            )
        })
        .unwrap();
        let err = max_abs_diff("GEMM at the grid's limit", &out, expected.as_slice().unwrap());
        // Two products of values in [-2, 2] and a bias in [-2, 2], rounded as the kernel's
        // chain rounds them and as the BLAS does: sums below 10, whose last bit is 9.5e-7.
        // Measured 0 (FMA, both tiles, both orders) and 2.4e-7 (mul + add).
        assert!(
            err <= 2e-6,
            "{gemm:?}, blocks {order:?}: max |kernel - reference| {err}"
        );
    }
}

#[test]
#[ignore = "65535 blocks of 256 threads in two block orders: 31 s of CPU; .ci/run runs it with --ignored"]
fn the_fma_gemm64_at_the_largest_row_tile_count_is_the_reference() {
    check_gemm_at_the_largest_row_tile_count(RowTiledGemm::Fma(GemmTile::Tile64), &BLOCK_ORDERS);
}

#[test]
#[ignore = "65535 blocks of 256 threads in two block orders: 81 s of CPU; .ci/run runs it with --ignored"]
fn the_fma_gemm128_at_the_largest_row_tile_count_is_the_reference() {
    check_gemm_at_the_largest_row_tile_count(RowTiledGemm::Fma(GemmTile::Tile128), &BLOCK_ORDERS);
}

#[test]
#[ignore = "65535 blocks of 256 threads in grid order: 17 s of CPU; .ci/run runs it with --ignored"]
fn the_mul_add_gemm_at_the_largest_row_tile_count_is_the_reference() {
    check_gemm_at_the_largest_row_tile_count(RowTiledGemm::MulAdd, &[BlockOrder::InOrder]);
}

#[test]
fn gemms_past_the_largest_row_tile_count_are_an_error() {
    for gemm in [
        RowTiledGemm::MulAdd,
        RowTiledGemm::Fma(GemmTile::Tile64),
        RowTiledGemm::Fma(GemmTile::Tile128),
        RowTiledGemm::Bf16,
    ] {
        // One row more than 65535 tiles hold.
        let (m, n, k) = (MAX_GRID_YZ * gemm.row_tile() + 1, GEMM_N, GEMM_K);
        let err = gemm
            .run(&vec![0.5; m * k], &vec![0.5; n * k], &vec![0.5; n], m, n, k)
            .unwrap_err()
            .to_string();
        let named = format!(
            "M = {m} in row tiles of {} is 65536 blocks in the grid's y",
            gemm.row_tile()
        );
        assert!(
            err.contains(&named) && err.contains("exceeds its limit of 65535"),
            "{gemm:?}: {err}"
        );
    }
}

/// The K-medoids loop (assign, update, at most three iterations) on `batch` rows of five tokens
/// in two clusters against `tetc::k_medoids`, in every block order.
fn check_kmedoids(batch: usize) {
    let (n, k, iters) = (5, 2, 3);
    let sims: Vec<Array2<f32>> = (0..batch as u64)
        .map(|b| {
            let x = Array2::from_shape_vec((n, 4), values(80 ^ b, n * 4)).unwrap();
            tetc::cosine_similarity_matrix(x.view())
        })
        .collect();
    let expected: Vec<_> = sims.iter().map(|s| tetc::k_medoids(s.view(), k, iters)).collect();
    let s_all: Vec<f32> = sims.iter().flat_map(flat).collect();
    in_every_block_order(|| {
        let dev = &mut SimDevice::new();
        let s = up(dev, &s_all);
        let labels = up(dev, &vec![u32::MAX; batch * n]);
        let medoids = [up(dev, &vec![u32::MAX; batch * k]), up(dev, &vec![u32::MAX; batch * k])];
        let at = caching::k_medoids(dev, s, labels, medoids, batch, n, k, iters).unwrap();
        let (labels, medoids) = (down(dev, labels), down(dev, medoids[at]));
        for (b, expected) in expected.iter().enumerate() {
            let as_usize = |v: &[u32]| v.iter().map(|&i| i as usize).collect::<Vec<_>>();
            prop_assert_eq!(
                as_usize(&labels[b * n..(b + 1) * n]),
                expected.labels.clone(),
                "batch row {}",
                b
            );
            prop_assert_eq!(
                as_usize(&medoids[b * k..(b + 1) * k]),
                expected.medoids.clone(),
                "batch row {}",
                b
            );
        }
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "2 x 65535 blocks of 128 threads, up to three iterations in two block orders: 27 s of CPU; .ci/run runs it with --ignored"]
fn kmedoids_at_the_largest_batch_is_the_reference() {
    check_kmedoids(MAX_GRID_YZ);
}

#[test]
fn kmedoids_and_the_similarity_past_the_largest_batch_are_an_error() {
    let (batch, n, k, dim) = (MAX_GRID_YZ + 1, 2, 1, 2);
    let dev = &mut SimDevice::new();
    let xn = up(dev, &vec![0.5f32; batch * n * dim]);
    let s = up(dev, &vec![0.0f32; batch * n * n]);
    let labels = up(dev, &vec![0u32; batch * n]);
    let (medoids, next) = (up(dev, &vec![0u32; batch * k]), up(dev, &vec![0u32; batch * k]));
    let refused = [
        (
            "kmedoids_update",
            "y",
            launch::kmedoids_update(dev, s, labels, medoids, next, batch, n, k),
        ),
        ("similarity", "z", launch::similarity(dev, xn, s, batch, n, dim)),
    ];
    for (kernel, axis, result) in refused {
        let err = result.unwrap_err().to_string();
        let named = format!("`{kernel}`: batch = 65536 is 65536 blocks in the grid's {axis}");
        assert!(
            err.contains(&named) && err.contains("exceeds its limit of 65535"),
            "{err}"
        );
    }
}

#[test]
fn split_k_past_the_largest_split_count_is_an_error() {
    // K = 65536 in splits of one k: 65536 blocks in z.
    let (m, n, k) = (1, 1, MAX_GRID_YZ + 1);
    let dev = &mut SimDevice::new();
    let a = up(dev, &vec![0.5f32; m * k]);
    let w = up(dev, &vec![0.5f32; n * k]);
    let partials = up(dev, &vec![0.0f32; k * m * n]);
    let err = launch::gemm_splitk_partial(dev, a, w, partials, m, n, k, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`gemm_splitk_partial`: K = 65536 in splits of 1 is 65536 blocks in the grid's z"),
        "{err}"
    );
}

#[test]
#[ignore = "65535 row tiles of 128 rows on BF16 tensor cores in grid order: about 90 s of CPU; .ci/run runs it with --ignored"]
fn the_bf16_tensor_core_gemm_at_the_largest_row_tile_count_is_the_reference() {
    // The three tensor-core modes share the row-tile indexing (they differ in the mma and the
    // weights' layout), so BF16, the quickest on the simulator, stands for them at the limit.
    let gemm = RowTiledGemm::Bf16;
    let (m, n, k) = (MAX_GRID_YZ * gemm.row_tile(), GEMM_N, GEMM_K);
    let (a, w, bias) = (values(70, m * k), values(71, n * k), values(72, n));
    let out = gemm.run(&a, &w, &bias, m, n, k).unwrap();
    let mut worst = 0.0f64;
    for (i, &got) in out.iter().enumerate() {
        let (row, col) = (i / n, i % n);
        let (mut dot, mut scale) = (bias[col] as f64, bias[col].abs() as f64);
        for kk in 0..k {
            let p = a[row * k + kk] as f64 * w[col * k + kk] as f64;
            dot += p;
            scale += p.abs();
        }
        assert!(got.is_finite(), "output {i}: {got}");
        worst = worst.max((got as f64 - dot).abs() / scale);
    }
    // Two BF16 roundings (2^-8 each) per product, as in `sim_precision`'s BF16 budget (8e-3);
    // measured 4.9e-3.
    assert!(worst < 8e-3, "worst relative error {worst}");
}

#[test]
#[ignore = "65535 splits of one k, one block each, in two block orders: about 40 s of CPU; .ci/run runs it with --ignored"]
fn split_k_at_the_largest_split_count_is_the_reference() {
    // K = 65535 in splits of one k: 65535 blocks in the grid's z, then the ordered reduction.
    let (m, n, k) = (2, 3, MAX_GRID_YZ);
    let (a, w, bias) = (values(90, m * k), values(91, n * k), values(92, n));
    // The kernels' sum: each split's one product, added in split order to the bias.
    let expected: Vec<f32> = (0..m * n)
        .map(|i| {
            let (row, col) = (i / n, i % n);
            (0..k).fold(0.0f32, |acc, kk| acc + a[row * k + kk] * w[col * k + kk]) + bias[col]
        })
        .collect();
    in_every_block_order(|| {
        let dev = &mut SimDevice::new();
        let (ga, gw, gb) = (up(dev, &a), up(dev, &w), up(dev, &bias));
        let partials = up(dev, &vec![f32::NAN; k * m * n]);
        let out = up(dev, &vec![f32::NAN; m * n]);
        launch::gemm_splitk_partial(dev, ga, gw, partials, m, n, k, 1).unwrap();
        launch::gemm_splitk_reduce(dev, partials, gb, out, m, n, k, Epilogue::Bias).unwrap();
        let err = max_abs_diff("split-K at the grid's limit", &down(dev, out), &expected);
        // The products summed in split order, then the bias: the expectation's order, so the
        // same bits (measured 0).
        prop_assert_eq!(err, 0.0, "max |kernel - sum| {}", err);
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "65535 blocks of the similarity in two block orders: about 20 s of CPU; .ci/run runs it with --ignored"]
fn the_similarity_at_the_largest_batch_is_the_reference() {
    let (batch, n, dim) = (MAX_GRID_YZ, 3, 4);
    let x = Array3::from_shape_vec((batch, n, dim), values(95, batch * n * dim)).unwrap();
    let expected: Vec<f32> = (0..batch)
        .flat_map(|b| flat(&tetc::cosine_similarity_matrix(x.index_axis(Axis(0), b))))
        .collect();
    in_every_block_order(|| {
        let dev = &mut SimDevice::new();
        let xi = up(dev, &flat(&x));
        let xn = up(dev, &vec![f32::NAN; batch * n * dim]);
        let s = up(dev, &vec![f32::NAN; batch * n * n]);
        launch::row_normalize(dev, xi, xn, batch * n, dim).unwrap();
        launch::similarity(dev, xn, s, batch, n, dim).unwrap();
        let err = max_abs_diff("similarity at the grid's limit", &down(dev, s), &expected);
        // Cosines in [-1, 1], as `sim_cache_kernels`' property (budget 2e-6 there); measured
        // 4.8e-7.
        prop_assert!(err <= 2e-6, "max |kernel - reference| {}", err);
        Ok(())
    })
    .unwrap();
}

#[test]
fn taylor_kernels_past_the_largest_order_are_an_error() {
    let (len, order) = (6, MAX_TAYLOR_ORDER as usize);
    let dev = &mut SimDevice::new();
    let factors = up(dev, &vec![0.0f32; (order + 2) * len]);
    let (fresh, out) = (up(dev, &vec![1.0f32; len]), up(dev, &vec![0.0f32; len]));
    let coef = taylor_coefficients(1.0);
    let refused = [
        (
            "taylor_update",
            "order 5 exceeds 4",
            launch::taylor_update(dev, factors, fresh, len, 1, order + 1, -1.0),
        ),
        (
            "taylor_update",
            "stored 6 exceeds 5",
            launch::taylor_update(dev, factors, fresh, len, order + 2, order, -1.0),
        ),
        (
            "taylor_predict",
            "stored 6 exceeds 5",
            launch::taylor_predict(dev, factors, out, len, order + 2, coef),
        ),
    ];
    for (kernel, what, result) in refused {
        let err = result.unwrap_err().to_string();
        assert!(err.contains(&format!("`{kernel}`: {what}")), "{kernel}: {err}");
    }
}
