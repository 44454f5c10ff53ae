//! Throughput of the model's linear layers, `x W^T + b`, on every kernel this CPU runs: each
//! variant of the panel kernel on weights packed at load ([`resca_reference::gemm`]), the lanes
//! kernel for a few rows ([`resca_reference::lanes_gemm`]) and OpenBLAS's sgemm on the plain
//! layout (which packs the weights on every call), at the shapes a sampling run multiplies: dense
//! layers of DiT-B/2 (its CFG pair: 512 token rows) and DiT-XL/2 (256 rows per image), DiT-B/2's
//! proxies' MLP on a ResCa sparse step (2 x 16 rows) and adaLN (2 rows). On all cores each
//! product is split by output features, as the model does; on one core, one product at a time.
//! Each product cycles through enough weight matrices (>= 40 MB) that they come from memory, as
//! a sampling step's blocks' weights do. The kernels are timed alternately, ROUNDS rounds (12 by
//! default), best and median, to cancel the drift of a shared virtual machine's speed. First, the
//! CPU's f32 FMA peak on one core and on all (16 independent FMA chains per core, enough for two
//! FMA units of 4 cycles' latency); last, the kernel the calibration picks for each shape
//! ([`resca_reference::calibration`]) and the time it took to measure them.
//!
//! `cargo bench -p resca-reference --bench linear_kernels -- [ROUNDS] [LAYER FILTER]`

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Axis};
use rayon::prelude::*;
use resca_reference::calibration::{self, KernelChoice};
use resca_reference::gemm::{PackedWeights, PanelVariant};
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

/// f32 FMA peak in GFLOP/s of one core: 16 independent chains of `width`-lane FMAs.
#[cfg(target_arch = "x86_64")]
fn fma_peak(width: usize) -> f64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 16;
    const STEPS: usize = 20_000_000;
    #[target_feature(enable = "avx512f")]
    fn chains_512(steps: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..steps {
            for value in acc.iter_mut() {
                *value = _mm512_fmadd_ps(*value, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    fn chains_256(steps: usize) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..steps {
            for value in acc.iter_mut() {
                *value = _mm256_fmadd_ps(*value, a, b);
            }
        }
        let mut total = 0.0;
        for value in acc {
            let mut lanes = [0.0f32; 8];
            // SAFETY: 8 lanes into an array of 8.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), value) };
            total += lanes.iter().sum::<f32>();
        }
        total
    }
    let started = Instant::now();
    // The step count passes through black_box after the clock is read, so that the chains
    // (pure arithmetic) cannot be computed before it.
    let steps = std::hint::black_box(STEPS);
    // SAFETY: the caller checked that the CPU has the features.
    std::hint::black_box(unsafe {
        if width == 16 {
            chains_512(steps)
        } else {
            chains_256(steps)
        }
    });
    (2 * width * CHAINS * STEPS) as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// The FMA peak of one core and of all, for each vector width this CPU has.
fn print_fma_peaks(cores: usize) {
    #[cfg(target_arch = "x86_64")]
    for (name, width, present) in [
        ("AVX-512", 16, std::is_x86_feature_detected!("avx512f")),
        (
            "AVX2",
            8,
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
        ),
    ] {
        if !present {
            continue;
        }
        let one = (0..3).map(|_| fma_peak(width)).fold(0.0, f64::max);
        let all: f64 = (0..3)
            .map(|_| {
                std::thread::scope(|scope| {
                    let threads: Vec<_> = (0..cores).map(|_| scope.spawn(|| fma_peak(width))).collect();
                    threads.into_iter().map(|t| t.join().expect("no panic")).sum::<f64>()
                })
            })
            .fold(0.0, f64::max);
        println!("f32 FMA peak, {name}: {one:.1} GFLOP/s on one core, {all:.1} on {cores} cores (best of 3)");
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = cores;
}

/// The model name of this CPU, from `/proc/cpuinfo`.
fn cpu_model() -> String {
    calibration::cpu_identity()
        .split("; ")
        .filter(|field| !field.starts_with("flags"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    resca_reference::memory::retain_freed_memory();
    ops::single_threaded_blas();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(12).max(1);
    let filter = args.get(1).cloned().unwrap_or_default();
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("a pool");
    let cores = rayon::current_num_threads();
    println!("CPU: {}", cpu_model());
    print_fma_peaks(cores);
    let variants = PanelVariant::candidates();
    println!("\nGFLOP/s, best (median) of {rounds} alternated rounds; {cores} cores = the model's split\n");
    println!("| layer | rows x outputs x inputs | kernel | {cores} cores | 1 core |");
    println!("| --- | --- | --- | ---: | ---: |");
    let mut chosen = Vec::new();
    // (layer, rows, outputs, inputs, whether a token layer: else held in panels whatever the CPU)
    for (layer, rows, outputs, inputs, token_layer) in [
        ("B/2 qkv, CFG pair", 512, 2304, 768, true),
        ("B/2 fc2, CFG pair", 512, 768, 3072, true),
        ("XL/2 qkv", 256, 3456, 1152, true),
        ("XL/2 proj", 256, 1152, 1152, true),
        ("XL/2 fc1", 256, 4608, 1152, true),
        ("XL/2 fc2", 256, 1152, 4608, true),
        ("XL/2 fc1, batch 2", 512, 4608, 1152, true),
        ("B/2 proxies' fc1", 32, 3072, 768, true),
        ("B/2 proxies' fc2", 32, 768, 3072, true),
        ("B/2 adaLN", 2, 4608, 768, false),
        ("XL/2 adaLN", 2, 6912, 1152, false),
    ] {
        if !layer.contains(filter.as_str()) {
            continue;
        }
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
        let mut kernels: Vec<KernelChoice> = variants.iter().map(|&v| KernelChoice::Panels(v)).collect();
        if !lanes.is_empty() {
            kernels.push(KernelChoice::Lanes);
        }
        kernels.push(KernelChoice::OpenBlas);
        let product = |kernel: KernelChoice, c: usize, split: bool| match kernel {
            KernelChoice::Panels(variant) => {
                std::hint::black_box(packed[c].linear_with(variant, x.view(), bias.view()));
            }
            KernelChoice::Lanes => {
                std::hint::black_box(lanes[c].linear(x.view(), bias.view()));
            }
            KernelChoice::OpenBlas if split => {
                std::hint::black_box(blas_split(&x, &weights[c], &bias));
            }
            KernelChoice::OpenBlas => {
                std::hint::black_box(ops::linear(x.view(), weights[c].view(), bias.view()));
            }
        };
        // times[k]: kernel k on all cores, then on one.
        let mut times: Vec<[Vec<f64>; 2]> = vec![Default::default(); kernels.len()];
        for round in 0..rounds {
            // The order of the kernels rotates from round to round.
            for turn in 0..kernels.len() {
                let k = (turn + round) % kernels.len();
                with_workers_awake(|| {
                    times[k][0].push(seconds_per_product(copies, |c| product(kernels[k], c, true)));
                });
                one_core.install(|| {
                    times[k][1].push(seconds_per_product(copies, |c| product(kernels[k], c, false)));
                });
            }
        }
        let gflops = |seconds: f64| 2.0 * (rows * outputs * inputs) as f64 / seconds / 1e9;
        for (kernel, [all, one]) in kernels.iter().zip(times) {
            let cells: Vec<String> = [all, one]
                .into_iter()
                .map(|t| {
                    let (best, median) = best_and_median(t);
                    format!("{:.1} ({:.1})", gflops(best), gflops(median))
                })
                .collect();
            println!(
                "| {layer} | {rows} x {outputs} x {inputs} | {} | {} |",
                kernel.name(),
                cells.join(" | ")
            );
        }
        // What the model runs here: the calibration's choice (measured on first use).
        let calibrator = calibration::global();
        let choice = if token_layer && !calibrator.token_layer_in_panels(weights[0].view()) {
            if rows <= FEW_ROWS && calibrator.few_rows_on_lanes(weights[0].view(), rows) {
                "lanes"
            } else {
                "openblas"
            }
        } else {
            calibrator.panel_variant(&packed[0], rows).name()
        };
        chosen.push(format!("{layer}: {choice}"));
    }
    let calibrator = calibration::global();
    println!(
        "\nThe model's choice ({:?}; {:.2} s measuring {} choices in this process):",
        calibrator.mode(),
        calibrator.seconds_measuring(),
        calibrator.measurements()
    );
    for line in chosen {
        println!("- {line}");
    }
    if let Some(file) = calibrator.cache_file() {
        println!("(cached in {})", file.display());
    }
}
