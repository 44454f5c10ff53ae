//! The fast precision modes (tensor-core GEMMs and attention: TF32, 3xTF32, BF16) on the
//! simulator: each GEMM epilogue against an f64 product, the DiT forward of the tiny model and of
//! an odd-shaped one against the FP32 reference, and a guided-free DDIM-50 run's final sample
//! (tiny model) against the exact kernels' run (relative RMSE), each within a budget set at
//! about 4x the error measured here (docs/gpu.md, "Precision modes"); and which attention kernel
//! each mode launches.

mod support;

use ndarray::{Array4, Axis, Ix4};
use resca_gpu_kernels::Kernel;
use resca_host::cuda::replay::Recorder;
use resca_host::pipeline::device::{Device, Slice};
use resca_host::pipeline::launch::{self, Epilogue, GemmWeight, Precision};
use resca_host::pipeline::{Pipeline, SampleOptions};
use resca_host::sim::SimDevice;
use resca_reference::Sampler;
use resca_reference::cache::MethodConfig;
use resca_reference::ddim::DdimSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use support::{noise, odd_model, tiny_model, values, vectors};

const FAST: [Precision; 3] = [Precision::Tf32x3, Precision::Tf32, Precision::Bf16];

/// Budgets of the GEMM test: the largest |error| / (|b| + sum_k |a_k w_k|) of an output.
fn gemm_budget(p: Precision) -> f64 {
    match p {
        // Measured 1.25e-7 (M = 70, K = 40), 1.08e-7 (K = 37), 1.56e-7 (M = 300, K = 200):
        // f32 accumulation.
        Precision::Tf32x3 => 5e-7,
        // Measured 2.37e-4 / 2.06e-4 / 9.86e-5: two TF32 roundings (2^-11 each) per product.
        Precision::Tf32 => 1e-3,
        // Measured 1.88e-3 / 1.71e-3 / 9.40e-4: two BF16 roundings (2^-8 each) per product.
        Precision::Bf16 => 8e-3,
        Precision::Exact => unreachable!(),
    }
}

fn upload<T: resca_host::pipeline::Element>(dev: &mut SimDevice, data: &[T]) -> Slice<T> {
    dev.upload_new(data).unwrap().all()
}

/// Runs the three epilogues of `precision` with N = 136 (two column tiles, a partial one) and
/// the given M and K, and returns the worst relative error.
fn gemm_error(precision: Precision, m: usize, k: usize) -> f64 {
    let (n, tokens) = (136, 35);
    let (a, w, bias) = (values(21, m * k), values(22, n * k), values(23, n));
    let gate = values(24, m.div_ceil(tokens) * 3 * n);
    let x0 = values(25, m * n);
    let dev = &mut SimDevice::new();
    let (ga, gb, gg) = (upload(dev, &a), upload(dev, &bias), upload(dev, &gate));
    let weight = match precision {
        Precision::Bf16 => GemmWeight::Bf16(upload(dev, &launch::pack_bf16_weight(&w, n, k))),
        _ => GemmWeight::F32(upload(dev, &w)),
    };
    let (out_bias, out_gelu, x) = (
        upload(dev, &vec![0.0; m * n]),
        upload(dev, &vec![0.0; m * n]),
        upload(dev, &x0),
    );
    launch::gemm_tc(dev, precision, ga, weight, gb, out_bias, m, n, k, Epilogue::Bias).unwrap();
    launch::gemm_tc(dev, precision, ga, weight, gb, out_gelu, m, n, k, Epilogue::BiasGelu).unwrap();
    launch::gemm_tc_gated_residual(dev, precision, ga, weight, gb, x, gg, m, n, k, tokens, 3 * n, n).unwrap();
    let read = |dev: &mut SimDevice, s: Slice<f32>| {
        let mut v = vec![0.0; m * n];
        dev.download(s, &mut v).unwrap();
        v
    };
    let (got_bias, got_gelu, got_x) = (read(dev, out_bias), read(dev, out_gelu), read(dev, x));
    let mut worst = 0.0f64;
    for row in 0..m {
        for col in 0..n {
            let (mut dot, mut scale) = (bias[col] as f64, bias[col].abs() as f64);
            for kk in 0..k {
                let p = a[row * k + kk] as f64 * w[col * k + kk] as f64;
                dot += p;
                scale += p.abs();
            }
            let i = row * n + col;
            let g = gate[(row / tokens) * 3 * n + n + col] as f64;
            let gelu =
                0.5 * dot * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (dot + 0.044715 * dot.powi(3))).tanh());
            worst = worst
                .max((got_bias[i] as f64 - dot).abs() / scale)
                .max((got_gelu[i] as f64 - gelu).abs() / scale)
                .max((got_x[i] as f64 - x0[i] as f64 - g * dot).abs() / (g.abs() * scale + x0[i].abs() as f64));
        }
    }
    worst
}

#[test]
fn tensor_core_gemms_match_the_f64_product_within_their_budgets() {
    for precision in FAST {
        // K = 40: 16-byte copies; K = 37: 4-byte copies and a partial k tile; both within the
        // copies the pipeline's prologue issues. M = 300, K = 200: three row tiles (a partial
        // one) and seven k tiles, so that the main loop refills the three-stage ring.
        for (m, k) in [(70, 40), (70, 37), (300, 200)] {
            let error = gemm_error(precision, m, k);
            eprintln!(
                "{} GEMM, M = {m}, K = {k}: worst relative error {error:.2e}",
                precision.name()
            );
            assert!(error < gemm_budget(precision), "{}: {error}", precision.name());
            assert!(error > 0.0 || precision == Precision::Tf32x3, "no rounding at all?");
        }
    }
}

fn rel_l2(actual: &Array4<f32>, expected: &Array4<f32>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, e) in actual.iter().zip(expected) {
        num += (*a as f64 - *e as f64).powi(2);
        den += (*e as f64).powi(2);
    }
    (num / den).sqrt()
}

/// Budgets of the forward pass: relative L2 error of the output against the FP32 reference.
fn forward_budget(p: Precision) -> f64 {
    match p {
        // Measured 2.57e-7 (tiny) and 2.42e-7 (odd): FP32 level.
        Precision::Tf32x3 => 1e-6,
        // Measured 2.86e-4 (tiny) and 2.75e-4 (odd).
        Precision::Tf32 => 1e-3,
        // Measured 2.28e-3 (tiny) and 2.17e-3 (odd).
        Precision::Bf16 => 1e-2,
        Precision::Exact => unreachable!(),
    }
}

#[test]
fn forward_in_each_fast_mode_stays_within_its_budget() {
    let file = SafetensorsFile::open(vectors("forward.safetensors")).unwrap();
    let x = file.read_f32("x").unwrap().into_dimensionality::<Ix4>().unwrap();
    let t: Vec<f32> = file.read_i64("t").unwrap().iter().map(|&v| v as f32).collect();
    let y: Vec<usize> = file.read_i64("y").unwrap().iter().map(|&v| v as usize).collect();
    let tiny = tiny_model();
    let odd = odd_model(5);
    let odd_x = noise(&odd, 2, 6);
    let cases = [
        ("tiny", &tiny, x, t, y),
        ("odd", &odd, odd_x, vec![10.0, 900.0], vec![1, 6]),
    ];
    for (name, model, x, t, y) in &cases {
        let reference = model.forward(x.view(), t, y).unwrap();
        for precision in FAST {
            let mut pipeline = Pipeline::with_precision(SimDevice::new(), model, precision).unwrap();
            let ours = pipeline.forward(x.view(), t, y).unwrap();
            let error = rel_l2(&ours, &reference);
            eprintln!("{name} forward, {}: relative L2 error {error:.2e}", precision.name());
            assert!(
                error < forward_budget(precision),
                "{name} {}: {error}",
                precision.name()
            );
        }
    }
}

#[test]
fn ddim_final_sample_in_each_fast_mode_stays_within_its_budget() {
    // The tiny model: DDIM-50 of DiT-XL/2 on the simulator would take hours.
    let model = tiny_model();
    let x = noise(&model, 2, 7);
    let labels = [3, 8];
    let schedule = DdimSchedule::new(50).unwrap();
    let run = |precision: Precision| {
        let mut pipeline = Pipeline::with_precision(SimDevice::new(), &model, precision).unwrap();
        let sampler = Sampler::Ddim(schedule.clone());
        let output = pipeline.sample(
            x.view(),
            &labels,
            None,
            &sampler,
            &MethodConfig::full(),
            SampleOptions::default(),
            &mut |_, _| {},
        );
        let x = output.unwrap().trajectory.x;
        x.index_axis(Axis(0), x.shape()[0] - 1).to_owned()
    };
    let exact = run(Precision::Exact);
    let rms = (exact.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / exact.len() as f64).sqrt();
    for precision in FAST {
        let fast = run(precision);
        let rmse = (fast
            .iter()
            .zip(&exact)
            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
            .sum::<f64>()
            / exact.len() as f64)
            .sqrt();
        let relative = rmse / rms;
        eprintln!(
            "DDIM-50 final sample, {}: RMSE {rmse:.2e}, relative to the sample's RMS {rms:.1}: {relative:.2e}",
            precision.name()
        );
        let budget = match precision {
            // Relative RMSE measured 2.14e-7 (RMSE 4.45e-5 on a sample of RMS 207.9).
            Precision::Tf32x3 => 1e-6,
            // Measured 1.02e-4 (RMSE 2.13e-2).
            Precision::Tf32 => 4e-4,
            // Measured 7.69e-4 (RMSE 1.60e-1).
            _ => 3e-3,
        };
        assert!(relative < budget, "{}: {relative}", precision.name());
    }
}

#[test]
fn each_fast_mode_runs_attention_on_its_tensor_cores() {
    let model = tiny_model();
    let x = noise(&model, 1, 3);
    for (precision, kernel) in [
        (Precision::Exact, Kernel::FlashAttention),
        (Precision::Tf32x3, Kernel::FlashAttentionTf32X3),
        (Precision::Tf32, Kernel::FlashAttentionTf32),
        (Precision::Bf16, Kernel::FlashAttentionBf16),
    ] {
        let recorder = Recorder::new(SimDevice::new(), 1);
        let mut pipeline = Pipeline::with_precision(recorder, &model, precision).unwrap();
        pipeline.forward(x.view(), &[500.0], &[2]).unwrap();
        let attention: Vec<Kernel> = pipeline
            .dev
            .kernels()
            .into_iter()
            .filter(|k| k.name().starts_with("flash_attention"))
            .collect();
        assert_eq!(attention, vec![kernel], "{}", precision.name());
    }
}
