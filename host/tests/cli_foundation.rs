//! End-to-end runs of the `resca` binary: the vectors reproduced through the CLI, and every kind
//! of bad input rejected with a clear message, a non-zero exit and no output file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::s;
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn forward_subcommand_reproduces_the_official_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let weights = vectors("weights.safetensors");
    let input = vectors("forward.safetensors");
    let run = resca(&[
        "forward",
        "--weights",
        path(&weights),
        "--input",
        path(&input),
        "--out",
        path(&out),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let ours = SafetensorsFile::open(&out).unwrap().read_f32("out").unwrap();
    let expected = SafetensorsFile::open(&input).unwrap().read_f32("out").unwrap();
    let diff = max_abs_diff("forward out", &ours, &expected);
    // Same budget as the library test: 1e-5 absolute; measured 7.2e-7.
    assert!(diff < 1e-5, "forward via CLI differs by {diff}");
}

#[test]
fn guided_sample_reproduces_the_conditional_rows_of_the_official_ddim_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.safetensors");
    let ddim = vectors("ddim.safetensors");
    let file = SafetensorsFile::open(&ddim).unwrap();
    let labels: Vec<String> = file.read_i64("y").unwrap().iter().map(i64::to_string).collect();
    let run = resca(&[
        "sample",
        "--weights",
        path(&vectors("weights.safetensors")),
        "--noise",
        path(&ddim),
        "--labels",
        &labels.join(","),
        "--cfg-scale",
        "1.5",
        "--out",
        path(&out),
        "--json",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let stats: serde_json::Value = serde_json::from_slice(&run.stdout).expect("--json prints JSON");
    assert_eq!(stats["full_steps"], 50);
    let x = SafetensorsFile::open(&out).unwrap().read_f32("x").unwrap();
    let expected = file.read_f32("cfg.x").unwrap();
    let expected = expected.slice(s![.., ..2, .., .., ..]).to_owned().into_dyn();
    let rel = max_rel_to_max("sample x", &x, &expected);
    // 1e-5 relative to max|x|, as the library test; measured 6.8e-7.
    assert!(rel < 1e-5, "sample via CLI differs by {rel} of max|x|");
}

/// Without `--cfg-scale` the embedded model samples at its own guidance (4.0) and every other
/// model at the papers' 1.5; the run's statistics say which.
#[test]
fn guidance_defaults_to_the_models_own_scale() {
    let cfg_of = |args: &[&str]| -> serde_json::Value {
        let run = resca(args);
        assert!(run.status.success(), "{}", stderr(&run));
        serde_json::from_slice::<serde_json::Value>(&run.stdout).expect("--json prints JSON")["cfg_scale"].clone()
    };
    let common = ["sample", "--steps", "2", "--batch", "1", "--no-png", "--json"];
    assert_eq!(cfg_of(&common), 4.0);
    let weights = vectors("weights.safetensors");
    let tiny: Vec<&str> = common.iter().copied().chain(["--weights", path(&weights)]).collect();
    assert_eq!(cfg_of(&tiny), 1.5);
    let explicit: Vec<&str> = tiny.iter().copied().chain(["--cfg-scale", "2.5"]).collect();
    assert_eq!(cfg_of(&explicit), 2.5);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Copies the tiny weights, letting `edit` change the tensor list, into `dir/name`.
fn edited_weights(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<(String, OutTensor)>)) -> PathBuf {
    let file = SafetensorsFile::open(vectors("weights.safetensors")).unwrap();
    let mut tensors: Vec<(String, OutTensor)> = file
        .names()
        .into_iter()
        .map(|n| (n.clone(), OutTensor::F32(file.read_f32(&n).unwrap())))
        .collect();
    edit(&mut tensors);
    let out = dir.join(name);
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("config".to_string(), file.metadata("config").unwrap().to_string());
    write_safetensors(&out, tensors, metadata).unwrap();
    out
}

/// Runs a sample that must fail, checks the message and that neither output was written.
fn assert_rejected(dir: &Path, args: &[&str], expected: &[&str]) {
    let out = dir.join("never.safetensors");
    let png = dir.join("never.png");
    let mut all = vec!["sample", "--steps", "3"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--out", path(&out), "--png", path(&png)]);
    let run = resca(&all);
    let message = stderr(&run);
    assert!(!run.status.success(), "accepted: {all:?}");
    assert!(!message.contains("panicked"), "panicked: {message}");
    for needle in expected {
        assert!(message.contains(needle), "message {message:?} lacks {needle:?}");
    }
    assert!(!out.exists() && !png.exists(), "an output file was left behind");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        leftovers.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")),
        "temporary files left: {leftovers:?}"
    );
}

#[test]
fn truncated_and_foreign_weight_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(vectors("weights.safetensors")).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_rejected(
        dir.path(),
        &["--weights", path(&truncated)],
        &["truncated.safetensors", "truncated"],
    );
    let text = dir.path().join("notes.safetensors");
    std::fs::write(&text, "these are not tensors").unwrap();
    assert_rejected(
        dir.path(),
        &["--weights", path(&text)],
        &["notes.safetensors", "not a valid safetensors file"],
    );
    let missing = dir.path().join("missing.safetensors");
    assert_rejected(dir.path(), &["--weights", path(&missing)], &["missing.safetensors"]);
}

#[test]
fn missing_misshapen_mistyped_and_nan_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = edited_weights(dir.path(), "w1.safetensors", |t| {
        t.retain(|(n, _)| n != "blocks.1.mlp.fc2.bias")
    });
    assert_rejected(
        dir.path(),
        &["--weights", path(&missing)],
        &["w1.safetensors", "`blocks.1.mlp.fc2.bias` is missing"],
    );
    let misshapen = edited_weights(dir.path(), "w2.safetensors", |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "blocks.0.attn.proj.weight" {
                *tensor = OutTensor::F32(ndarray::ArrayD::zeros(vec![64, 63]));
            }
        }
    });
    assert_rejected(
        dir.path(),
        &["--weights", path(&misshapen)],
        &["`blocks.0.attn.proj.weight` has shape [64, 63], expected [64, 64]"],
    );
    let mistyped = edited_weights(dir.path(), "w3.safetensors", |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "final_layer.linear.bias" {
                *tensor = OutTensor::I64(ndarray::ArrayD::zeros(vec![32]));
            }
        }
    });
    assert_rejected(
        dir.path(),
        &["--weights", path(&mistyped)],
        &["`final_layer.linear.bias` has dtype I64"],
    );
    let nan = edited_weights(dir.path(), "w4.safetensors", |t| {
        for (name, tensor) in t.iter_mut() {
            if let ("blocks.0.mlp.fc1.weight", OutTensor::F32(values)) = (name.as_str(), tensor) {
                values[[3, 5]] = f32::NAN;
            }
        }
    });
    assert_rejected(
        dir.path(),
        &["--weights", path(&nan)],
        &["`blocks.0.mlp.fc1.weight`", "non-finite"],
    );
}

#[test]
fn bad_heads_labels_and_noise_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let weights = vectors("weights.safetensors");
    let w = path(&weights);
    assert_rejected(
        dir.path(),
        &["--weights", w, "--heads", "5"],
        &["num_heads 5 does not divide hidden_size 64"],
    );
    assert_rejected(
        dir.path(),
        &["--weights", w, "--labels", "3,10"],
        &["label 10 is out of range"],
    );
    assert_rejected(
        dir.path(),
        &["--weights", w, "--labels", "-1"],
        &["label -1 is out of range"],
    );
    let write_noise = |name: &str, noise: ndarray::ArrayD<f32>| {
        let p = dir.path().join(name);
        write_safetensors(&p, vec![("noise".into(), OutTensor::F32(noise))], Default::default()).unwrap();
        p
    };
    let wrong = write_noise("n1.safetensors", ndarray::ArrayD::zeros(vec![1, 3, 8, 8]));
    assert_rejected(
        dir.path(),
        &["--weights", w, "--noise", path(&wrong)],
        &["n1.safetensors", "tensor `noise` has shape [1, 3, 8, 8]"],
    );
    let mut values = ndarray::ArrayD::zeros(vec![1, 4, 8, 8]);
    values[[0, 2, 3, 4]] = f32::NAN;
    let nan = write_noise("n2.safetensors", values);
    assert_rejected(
        dir.path(),
        &["--weights", w, "--noise", path(&nan)],
        &["n2.safetensors", "`noise`", "non-finite"],
    );
}

#[test]
fn unknown_flag_values_are_usage_errors() {
    for args in [
        ["sample", "--sampler", "euler"],
        ["sample", "--method", "magic"],
        ["sample", "--backend", "tpu"],
    ] {
        let run = resca(&args);
        assert_eq!(run.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&run).contains(&format!("invalid value '{}'", args[2])),
            "{}",
            stderr(&run)
        );
    }
}
