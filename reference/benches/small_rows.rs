//! Throughput of the few-rows matrix product that dominates ResCa's sparse steps (the K proxies of
//! each CFG row through the MLP, and adaLN): `y += x w^T` with x (M, K) and the weights (N, K), at
//! DiT-B/2's and DiT-XL/2's MLP shapes, one thread, against OpenBLAS's sgemm (one thread too).
//! "cold" cycles through 12 weight matrices (more than the caches hold), as a sampling step
//! does with its blocks' weights; "warm" reuses one.
//!
//! `cargo bench -p resca-reference --bench small_rows`

use ndarray::Array2;
use ndarray::linalg::general_mat_mul;
use resca_reference::ops::{single_threaded_blas, small_rows_product};
use std::time::Instant;

/// Best of `repeats` timings of `f` over every weight matrix, in seconds per matrix.
fn seconds_per_product(repeats: usize, weights: &[Array2<f32>], mut f: impl FnMut(&Array2<f32>)) -> f64 {
    (0..repeats)
        .map(|_| {
            let start = Instant::now();
            weights.iter().for_each(&mut f);
            start.elapsed().as_secs_f64() / weights.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    single_threaded_blas();
    println!("| M | N | K | weights | small_rows_product GFLOP/s | OpenBLAS sgemm GFLOP/s |");
    println!("| ---: | ---: | ---: | --- | ---: | ---: |");
    for (m, n, k) in [
        (32, 3072, 768),
        (32, 768, 3072),
        (2, 4608, 768),
        (32, 4608, 1152),
        (32, 1152, 4608),
    ] {
        let x = Array2::from_shape_fn((m, k), |(i, j)| ((i * 31 + j * 7) as f32 * 0.37).sin());
        let all: Vec<Array2<f32>> = (0..12)
            .map(|c| Array2::from_shape_fn((n, k), |(i, j)| ((i * 11 + j * 3 + c) as f32 * 0.21).cos()))
            .collect();
        let mut y = Array2::<f32>::zeros((m, n));
        let flops = 2.0 * (m * n * k) as f64;
        for (label, weights) in [("warm", &all[..1]), ("cold", &all[..])] {
            let ours = seconds_per_product(8, weights, |w| {
                let (xs, ws) = (x.as_slice().unwrap(), w.as_slice().unwrap());
                small_rows_product(xs, ws, y.as_slice_mut().unwrap(), m, n, k)
            });
            let blas = seconds_per_product(8, weights, |w| general_mat_mul(1.0, &x, &w.t(), 1.0, &mut y));
            println!(
                "| {m} | {n} | {k} | {label} | {:.1} | {:.1} |",
                flops / ours / 1e9,
                flops / blas / 1e9
            );
        }
    }
}
