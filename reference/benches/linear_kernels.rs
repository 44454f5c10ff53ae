//! Throughput of the model's linear layers: `x W^T + b` with the weights packed at load time
//! ([`resca_reference::gemm`]) against OpenBLAS's sgemm on the plain layout (which packs the
//! weights on every call), at the shapes a sampling run multiplies: dense layers of DiT-B/2 (its
//! CFG pair: 512 token rows) and DiT-XL/2 (256 rows per image), DiT-B/2's proxies' MLP on a ResCa
//! sparse step (2 x 16 rows) and adaLN (2 rows). On both cores each is split by output features, as the model does; on one core,
//! one product at a time. Each product cycles through enough weight matrices (>= 40 MB) that they
//! come from memory, as a sampling step's blocks' weights do. The two are timed alternately, 12
//! rounds, best and median, to cancel the drift of a shared virtual machine's speed.
//!
//! `cargo bench -p resca-reference --bench linear_kernels`

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Axis};
use rayon::prelude::*;
use resca_reference::gemm::PackedWeights;
use resca_reference::lanes_gemm::LanePackedWeights;
use resca_reference::ops;
use resca_reference::parallel::with_workers_awake;
use resca_reference::weights::FEW_ROWS;
use std::time::Instant;

/// Seconds per product of one pass of `f` over every weight matrix.
fn seconds_per_product(count: usize, mut f: impl FnMut(usize)) -> f64 {
    let start = Instant::now();
    (0..count).for_each(&mut f);
    start.elapsed().as_secs_f64() / count as f64
}

/// OpenBLAS on the plain layout, split over the cores by output features.
fn blas_split(x: &Array2<f32>, w: &Array2<f32>, bias: &Array1<f32>) -> Array2<f32> {
    let (rows, outputs) = (x.nrows(), w.nrows());
    let mut y = bias.broadcast((rows, outputs)).expect("bias width").to_owned();
    let size = outputs.div_ceil(rayon::current_num_threads());
    y.axis_chunks_iter_mut(Axis(1), size)
        .into_par_iter()
        .zip(w.axis_chunks_iter(Axis(0), size).into_par_iter())
        .for_each(|(mut y, w)| general_mat_mul(1.0, x, &w.t(), 1.0, &mut y));
    y
}

fn best_and_median(mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn main() {
    resca_reference::memory::retain_freed_memory();
    ops::single_threaded_blas();
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a pool");
    let cores = rayon::current_num_threads();
    println!("GFLOP/s, best (median) of 12 alternated rounds; {cores} cores = the model's split\n");
    println!(
        "| layer | rows x outputs x inputs | panels, {cores} cores | lanes, {cores} cores | OpenBLAS, {cores} cores | panels, 1 core | lanes, 1 core | OpenBLAS, 1 core |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (layer, rows, outputs, inputs) in [
        ("B/2 qkv, CFG pair", 512, 2304, 768),
        ("B/2 fc2, CFG pair", 512, 768, 3072),
        ("XL/2 qkv", 256, 3456, 1152),
        ("XL/2 proj", 256, 1152, 1152),
        ("XL/2 fc1", 256, 4608, 1152),
        ("XL/2 fc2", 256, 1152, 4608),
        ("XL/2 fc1, batch 2", 512, 4608, 1152),
        ("B/2 proxies' fc1", 32, 3072, 768),
        ("B/2 proxies' fc2", 32, 768, 3072),
        ("B/2 adaLN", 2, 4608, 768),
    ] {
        let copies = (40_000_000 / (outputs * inputs * 4)).max(2);
        let x = Array2::from_shape_fn((rows, inputs), |(i, j)| ((i * 31 + j * 7) as f32 * 0.37).sin());
        let bias = Array1::from_shape_fn(outputs, |j| (j as f32 * 0.1).cos());
        let weights: Vec<Array2<f32>> = (0..copies)
            .map(|c| Array2::from_shape_fn((outputs, inputs), |(i, j)| ((i * 11 + j * 3 + c) as f32 * 0.21).cos()))
            .collect();
        let packed: Vec<PackedWeights> = weights.iter().map(|w| PackedWeights::pack(w.view())).collect();
        let lanes: Vec<LanePackedWeights> = if rows <= FEW_ROWS {
            weights.iter().map(|w| LanePackedWeights::pack(w.view())).collect()
        } else {
            Vec::new()
        };
        // Columns: panels, lanes, OpenBLAS on all cores, then on one core.
        let mut times: [Vec<f64>; 6] = Default::default();
        for _ in 0..12 {
            with_workers_awake(|| {
                times[0].push(seconds_per_product(copies, |c| {
                    std::hint::black_box(packed[c].linear(x.view(), bias.view()));
                }));
                if !lanes.is_empty() {
                    times[1].push(seconds_per_product(copies, |c| {
                        std::hint::black_box(lanes[c].linear(x.view(), bias.view()));
                    }));
                }
                times[2].push(seconds_per_product(copies, |c| {
                    std::hint::black_box(blas_split(&x, &weights[c], &bias));
                }));
            });
            one_core.install(|| {
                times[3].push(seconds_per_product(copies, |c| {
                    std::hint::black_box(packed[c].linear(x.view(), bias.view()));
                }));
                if !lanes.is_empty() {
                    times[4].push(seconds_per_product(copies, |c| {
                        std::hint::black_box(lanes[c].linear(x.view(), bias.view()));
                    }));
                }
                times[5].push(seconds_per_product(copies, |c| {
                    std::hint::black_box(ops::linear(x.view(), weights[c].view(), bias.view()));
                }));
            });
        }
        let gflops = |seconds: f64| 2.0 * (rows * outputs * inputs) as f64 / seconds / 1e9;
        let cells: Vec<String> = times
            .into_iter()
            .map(|t| {
                if t.is_empty() {
                    return "-".to_string();
                }
                let (best, median) = best_and_median(t);
                format!("{:.1} ({:.1})", gflops(best), gflops(median))
            })
            .collect();
        println!("| {layer} | {rows} x {outputs} x {inputs} | {} |", cells.join(" | "));
    }
}
