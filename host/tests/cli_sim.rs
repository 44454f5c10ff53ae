//! `--backend sim` through the CLI: `resca sample` on the vectors' model and noise (labels 7, 4,
//! guidance 1.5) against `--backend reference`, `resca forward` against the official output, and
//! the tensor-core `--precision` modes against the exact one.

use std::path::PathBuf;
use std::process::{Command, Output};

use ndarray::ArrayD;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_tests::{max_abs_diff, max_rel_to_max};

fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/tiny")
        .join(name)
}

fn resca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .output()
        .expect("resca runs")
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// `resca sample` on `backend` with `method` flags: the statistics, `x` and `model_out`.
fn sample(backend: &str, method: &[&str]) -> (serde_json::Value, ArrayD<f32>, ArrayD<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.safetensors");
    let (weights, noise) = (vectors("weights.safetensors"), vectors("ddim.safetensors"));
    let mut args = vec![
        "sample",
        "--weights",
        weights.to_str().unwrap(),
        "--noise",
        noise.to_str().unwrap(),
        "--labels",
        "7,4",
        "--cfg-scale",
        "1.5",
        "--backend",
        backend,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(method);
    let stats = json(&resca(&args));
    let file = SafetensorsFile::open(&out).unwrap();
    (stats, file.read_f32("x").unwrap(), file.read_f32("model_out").unwrap())
}

#[test]
fn sampling_on_the_sim_backend_matches_the_reference_backend() {
    let replay = vectors("resca_i4_o1_k4_p0.0_ie_center.safetensors");
    let resca_flags = [
        "--method",
        "resca",
        "--interval",
        "4",
        "--order",
        "1",
        "--clusters",
        "4",
        "--solver",
        "ie",
        "--proxy",
        "medoid",
        "--alpha",
        "0.6",
        "--residuals",
        "official",
        "--replay-clusters",
        replay.to_str().unwrap(),
    ];
    for (what, flags) in [
        ("full", &["--method", "full"][..]),
        ("resca official", &resca_flags[..]),
    ] {
        let (sim_stats, sim_x, sim_out) = sample("sim", flags);
        let (ref_stats, ref_x, ref_out) = sample("reference", flags);
        let err = max_rel_to_max(&format!("{what} x"), &sim_x, &ref_x);
        let err_out = max_rel_to_max(&format!("{what} model_out"), &sim_out, &ref_out);
        eprintln!("{what}: sim vs reference {err:.2e} (x), {err_out:.2e} (model_out) of max|.|");
        // Budget 1e-4 of max|.| (guided DDIM-50); measured x 7.3e-7 (full) and 6.8e-7 (resca
        // official), model_out 6.7e-7 and 6.9e-7.
        assert!(err < 1e-4, "{what}: x {err}");
        assert!(err_out < 1e-4, "{what}: model_out {err_out}");
        assert_eq!(sim_stats["backend"], "sim");
        for key in [
            "method",
            "full_steps",
            "sparse_steps",
            "tflops",
            "flops_speedup",
            "model_rows",
        ] {
            assert_eq!(sim_stats[key], ref_stats[key], "{what}: {key}");
        }
        if what == "resca official" {
            for key in ["clustering_s", "simulated_denoising_s", "true_denoising_s"] {
                assert!(
                    sim_stats[key].as_f64().unwrap() > 0.0,
                    "{key} missing from the statistics"
                );
            }
        }
    }
}

#[test]
fn forward_on_the_sim_backend_matches_the_official_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (weights, input) = (vectors("weights.safetensors"), vectors("forward.safetensors"));
    let output = resca(&[
        "forward",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "sim",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ours = SafetensorsFile::open(&out).unwrap().read_f32("out").unwrap();
    let official = SafetensorsFile::open(&input).unwrap().read_f32("out").unwrap();
    let err = max_abs_diff("sim forward out", &ours, &official);
    // Budget 1e-5 absolute; measured 7.2e-7.
    assert!(err < 1e-5, "sim forward vs official: {err}");
}

/// `resca forward --backend sim --precision <precision>` on the vectors' input: the output `out`.
fn sim_forward(precision: &str) -> ArrayD<f32> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let (weights, input) = (vectors("weights.safetensors"), vectors("forward.safetensors"));
    let output = resca(&[
        "forward",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--backend",
        "sim",
        "--precision",
        precision,
    ]);
    assert!(
        output.status.success(),
        "{precision}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    SafetensorsFile::open(&out).unwrap().read_f32("out").unwrap()
}

fn rel_l2(actual: &ArrayD<f32>, expected: &ArrayD<f32>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, e) in actual.iter().zip(expected) {
        num += (*a as f64 - *e as f64).powi(2);
        den += (*e as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn forward_in_a_tensor_core_precision_differs_from_exact_within_its_budget() {
    let exact = sim_forward("exact");
    // The budgets of host/tests/sim_precision.rs (relative L2 error of the forward output).
    for (precision, budget) in [("tf32x3", 1e-6), ("tf32", 1e-3), ("bf16", 1e-2)] {
        let fast = sim_forward(precision);
        let error = rel_l2(&fast, &exact);
        eprintln!("forward --precision {precision} vs exact: relative L2 {error:.2e}");
        // Measured 2.1e-7 (tf32x3), 2.9e-4 (tf32), 2.3e-3 (bf16).
        assert!(error < budget, "{precision}: {error}");
        assert!(
            error > 0.0,
            "{precision}: the same bits as exact, so no tensor cores ran"
        );
    }
}

#[test]
fn sampling_in_tf32_records_its_precision_and_stays_near_exact() {
    let run = |precision: &str| {
        let (stats, x, _) = sample("sim", &["--method", "full", "--steps", "10", "--precision", precision]);
        assert_eq!(stats["precision"], precision);
        x
    };
    let (exact, tf32) = (run("exact"), run("tf32"));
    let error = max_rel_to_max("tf32 against exact samples", &tf32, &exact);
    eprintln!("guided DDIM-10, --precision tf32 vs exact: {error:.2e} of max|x|");
    // Budget 1e-3 of max|x|; measured 2.0e-4 (guided DDIM-10, 10 TF32 forwards of 4 rows).
    assert!(error < 1e-3, "tf32 vs exact: {error}");
    assert!(error > 0.0, "tf32 gave the same bits as exact");
}
