//! Kernels at the largest shapes they accept, where a dimension has a limit of its own (the
//! other limits, attention's head dimension 128 and the GEMM tiles' edges, are tested in
//! `sim_attention.rs`, `sim_kernels.rs` and `sim_gemm.rs`):
//! - the Taylor kernels at `MAX_TAYLOR_ORDER` = 4, five factors (the coefficients they take hold
//!   five);
//! - attention at 65535 heads and at 65535 batch rows: the grid's y and z (a GPU's limit, which
//!   the simulator enforces), and one more refused with a clear error. The two largest runs take
//!   about two minutes on two cores, so `cargo test` leaves them out and `.ci/run` runs them as a
//!   step of their own: `cargo test -p resca-host --test sim_largest_shapes -- --ignored`.

mod support;

use ndarray::{Array2, Array3, Axis, s};
use proptest::prelude::*;
use resca_gpu_kernels::taylor::MAX_TAYLOR_ORDER;
use resca_host::pipeline::caching_engine::taylor_coefficients;
use resca_host::pipeline::device::{Device, Element, Slice};
use resca_host::pipeline::launch;
use resca_host::sim::SimDevice;
use resca_reference::cache::taylor::TaylorFactors;
use resca_reference::ops;
use resca_tests::max_abs_diff;
use support::{in_every_block_order, kernels, values};

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

/// The grid's y and z hold at most 65535 blocks: attention's heads and batch rows.
const MAX_GRID_YZ: usize = 65535;

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
#[ignore = "65535 blocks of 128 threads in two block orders: about two minutes on two cores; .ci/run runs it with --ignored"]
fn attention_at_the_largest_head_count_is_the_reference() {
    check_attention(1, MAX_GRID_YZ);
}

#[test]
#[ignore = "65535 blocks of 128 threads in two block orders: about two minutes on two cores; .ci/run runs it with --ignored"]
fn attention_at_the_largest_batch_is_the_reference() {
    check_attention(MAX_GRID_YZ, 1);
}

#[test]
fn attention_past_the_largest_head_count_and_batch_is_an_error() {
    for (batch, heads) in [(1, MAX_GRID_YZ + 1), (MAX_GRID_YZ + 1, 1)] {
        let qkv = vec![0.5f32; batch * 3 * heads * 2];
        let mut out = vec![0.0f32; batch * heads * 2];
        let err = kernels::attention(&qkv, &mut out, batch, 1, heads, 2).unwrap_err();
        assert!(
            err.to_string().contains("exceeds 65535"),
            "batch {batch}, heads {heads}: {err}"
        );
    }
}
