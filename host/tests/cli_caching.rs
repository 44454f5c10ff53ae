//! The caching methods through the CLI: `resca plan`'s FLOPs against the paper, the reference
//! vectors reproduced by `resca sample` flags, and bad method settings rejected.

use std::path::PathBuf;
use std::process::{Command, Output};

use ndarray::s;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_tests::max_rel_to_max;

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

#[test]
fn plan_reproduces_the_papers_flops_for_dit_xl2() {
    // docs/algorithms.md section 7 (the released code's counts), each within 1%.
    let cases: [(&[&str], f64); 4] = [
        (&["--method", "full"], 23.74),
        (&["--method", "resca", "--interval", "3", "--clusters", "16"], 9.20),
        (&["--method", "resca", "--interval", "5", "--clusters", "16"], 5.99),
        (&["--method", "taylorseer", "--interval", "3", "--order", "1"], 8.56),
    ];
    for (method, expected) in cases {
        let mut args = vec![
            "plan",
            "--model",
            "DiT-XL/2",
            "--steps",
            "50",
            "--cfg-scale",
            "1.5",
            "--json",
        ];
        args.extend_from_slice(method);
        let plan = json(&resca(&args));
        let total = plan["total_tflops"].as_f64().unwrap();
        // Measured: 23.724, 9.180, 5.999, 8.572.
        assert!(
            (total - expected).abs() / expected < 0.01,
            "{method:?}: {total} T vs {expected} T"
        );
        let full = plan["full_tflops"].as_f64().unwrap();
        assert!((plan["speedup"].as_f64().unwrap() - full / total).abs() < 1e-9);
        let steps = plan["full_steps"].as_u64().unwrap() + plan["sparse_steps"].as_u64().unwrap();
        assert_eq!(steps, 50);
    }
    let plan = json(&resca(&[
        "plan",
        "--model",
        "DiT-XL/2",
        "--method",
        "resca",
        "--interval",
        "5",
        "--json",
    ]));
    assert_eq!(
        (plan["full_steps"].as_u64(), plan["sparse_steps"].as_u64()),
        (Some(11), Some(39))
    );
}

/// Runs `resca sample` on the vectors' model and noise with `method` flags; returns `x`.
fn sample_tiny(method: &[&str]) -> (serde_json::Value, ndarray::ArrayD<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.safetensors");
    let weights = vectors("weights.safetensors");
    let noise = vectors("ddim.safetensors");
    let mut args: Vec<String> = [
        "sample",
        "--weights",
        weights.to_str().unwrap(),
        "--noise",
        noise.to_str().unwrap(),
        "--labels",
        "7,4",
        "--cfg-scale",
        "1.5",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(method.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let stats = json(&resca(&refs));
    let x = SafetensorsFile::open(&out).unwrap().read_f32("x").unwrap();
    (stats, x)
}

/// Relative error of the conditional rows against a vectors file's `x`.
fn error_against(name: &str, x: &ndarray::ArrayD<f32>) -> f32 {
    let expected = SafetensorsFile::open(vectors(name)).unwrap().read_f32("x").unwrap();
    let expected = expected.slice(s![.., ..2, .., .., ..]).to_owned().into_dyn();
    max_rel_to_max(&format!("x against {name}"), x, &expected)
}

#[test]
fn taylorseer_runs_are_reproduced_through_the_cli() {
    for (order, file) in [
        ("4", "taylorseer_i4_o4.safetensors"),
        ("1", "taylorseer_i4_o1.safetensors"),
    ] {
        let (stats, x) = sample_tiny(&["--method", "taylorseer", "--interval", "4", "--order", order]);
        assert_eq!(
            (stats["full_steps"].as_u64(), stats["sparse_steps"].as_u64()),
            (Some(14), Some(36))
        );
        let err = error_against(file, &x);
        eprintln!("{file} through the CLI: {err:.2e} of max|x|");
        // Budget 1e-4 of max|x|; measured 6.2e-7 (order 4) and 5.7e-7 (order 1).
        assert!(err < 1e-4, "{file}: {err}");
    }
}

#[test]
fn released_resca_run_is_reproduced_through_the_cli_with_replayed_clusters() {
    let recorded = vectors("resca_i4_o1_k4_p0.0_ie_center.safetensors");
    let flags = [
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
    ];
    let mut replay = flags.to_vec();
    replay.extend_from_slice(&["--replay-clusters", recorded.to_str().unwrap()]);
    let (stats, x) = sample_tiny(&replay);
    let err = error_against("resca_i4_o1_k4_p0.0_ie_center.safetensors", &x);
    eprintln!("replayed ResCa through the CLI: {err:.2e} of max|x|");
    // Budget 1e-4 of max|x|; measured 6.8e-7.
    assert!(err < 1e-4, "replayed ResCa run differs by {err}");
    for key in [
        "true_denoising_s",
        "clustering_s",
        "simulated_denoising_s",
        "tflops",
        "flops_speedup",
    ] {
        assert!(stats[key].as_f64().unwrap() > 0.0, "{key} missing from the statistics");
    }
    // With our own TETC, K-medoids ties on two-token clusters are decided by the last bit of
    // S_ii (see tests/tests/vectors_cached.rs), so the run follows other proxies for a few tokens
    // and is close to, but not within 1e-4 of, the released one: measured 5.1e-4 and 2.0e-3 of
    // max|x| in two builds whose forward passes differ in the last bits, 1.7e-3 with the packed
    // few-rows kernel. Budget 1e-2.
    let (_, own) = sample_tiny(&flags);
    let err = error_against("resca_i4_o1_k4_p0.0_ie_center.safetensors", &own);
    eprintln!("ResCa with our own clusters through the CLI: {err:.2e} of max|x|");
    assert!(err < 1e-2, "ResCa with our own clusters differs by {err}");
}

#[test]
fn bad_method_settings_are_rejected_with_the_flag_named() {
    let cases: [(&[&str], &str); 9] = [
        (&["--method", "resca", "--clusters", "0"], "--clusters"),
        (
            &["--method", "resca", "--clusters", "17"],
            "--clusters 17 must be between 1 and the token count N = 16",
        ),
        (
            &["--method", "taylorseer", "--interval", "0"],
            "0 is not a positive integer",
        ),
        (&["--method", "taylorseer", "--order", "5"], "--order 5 is out of range"),
        (
            &["--method", "resca", "--alpha", "1.5"],
            "--alpha 1.5 must be in [0, 1]",
        ),
        (
            &["--method", "resca", "--alpha", "-0.1"],
            "--alpha -0.1 must be in [0, 1]",
        ),
        (&["--method", "fora", "--solver", "ie"], "--method fora has no solver"),
        (
            &["--method", "taylorseer", "--clusters", "4"],
            "--clusters does not apply to --method taylorseer",
        ),
        (
            &["--method", "resca", "--solver", "ie", "--order", "3"],
            "--order 3 needs --solver it",
        ),
    ];
    let weights = vectors("weights.safetensors");
    for (flags, needle) in cases {
        let mut args = vec!["sample", "--weights", weights.to_str().unwrap(), "--steps", "3"];
        args.extend_from_slice(flags);
        let run = resca(&args);
        let message = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{flags:?} accepted");
        assert!(message.contains(needle), "{flags:?}: {message:?} lacks {needle:?}");
    }
}

#[test]
fn every_method_runs_on_both_samplers_and_reports_its_flops() {
    let weights = vectors("weights.safetensors");
    for sampler in ["ddim", "flow"] {
        for method in [
            &["--method", "fora"][..],
            &["--method", "clusca", "--clusters", "4"],
            &["--method", "resca", "--clusters", "4", "--solver", "bdf2"],
            &["--method", "resca", "--clusters", "4", "--solver", "it", "--order", "3"],
        ] {
            let mut args = vec![
                "sample",
                "--weights",
                weights.to_str().unwrap(),
                "--sampler",
                sampler,
                "--steps",
                "12",
                "--json",
                "--no-png",
            ];
            args.extend_from_slice(method);
            let stats = json(&resca(&args));
            assert!(
                stats["flops_speedup"].as_f64().unwrap() > 1.0,
                "{sampler} {method:?}: {stats}"
            );
            assert!(stats["sparse_steps"].as_u64().unwrap() > 0);
        }
    }
}
