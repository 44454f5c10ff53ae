//! The `resca` binary given bad input, one test per class: every case gets a message naming
//! the file, tensor or flag, a non-zero exit (no panic, no signal, no hang), no output file
//! (partial or temporary) and no changed input. docs/bad-input.md summarises the behaviour.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};

fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/tiny")
        .join(name)
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs `resca` in `folder` with a deadline: a hang is a failure, not a stuck test.
fn resca_in(folder: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .current_dir(folder)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("resca runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("resca {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Asserts a refusal: exit status 1 or 2 (no signal), every `expected` text in the message, no
/// panic, and nothing but `allowed` in `folder` afterwards (no output, no temporary file).
fn refused(folder: &Path, args: &[&str], expected: &[&str], allowed: &[&str]) -> String {
    let output = resca_in(folder, args);
    let message = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{args:?}: status {:?}, {message}",
        output.status
    );
    assert!(!message.contains("panicked"), "{args:?}: {message}");
    for part in expected {
        assert!(message.contains(part), "{args:?}: `{part}` not in: {message}");
    }
    let mut left: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    allowed.sort();
    assert_eq!(left, allowed, "{args:?} left files behind");
    message
}

/// The tiny weights with block 0's query/key biases set to 1e30: its attention overflows.
fn diverging_weights(path: &Path) {
    let file = SafetensorsFile::open(vectors("weights.safetensors")).unwrap();
    let tensors = file
        .names()
        .into_iter()
        .map(|name| {
            let mut values = file.read_f32(&name).unwrap();
            if name == "blocks.0.attn.qkv.bias" {
                values.fill(1e30);
            }
            (name, OutTensor::F32(values))
        })
        .collect();
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), file.metadata("config").unwrap().to_string());
    write_safetensors(path, tensors, metadata).unwrap();
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let folder = tempfile::tempdir().unwrap();
    let input = folder.path().join("in.safetensors");
    std::fs::copy(vectors("forward.safetensors"), &input).unwrap();
    let weights = folder.path().join("w.safetensors");
    std::fs::copy(vectors("weights.safetensors"), &weights).unwrap();
    let (input_bytes, weight_bytes) = (digest(&input), digest(&weights));
    let both = ["in.safetensors", "w.safetensors"];
    for (out_flag, out) in [("--out", "in.safetensors"), ("--out", "w.safetensors")] {
        refused(
            folder.path(),
            &[
                "forward",
                "--weights",
                "w.safetensors",
                "--input",
                "in.safetensors",
                out_flag,
                out,
            ],
            &["is the same file as"],
            &both,
        );
    }
    refused(
        folder.path(),
        &[
            "sample",
            "--weights",
            "w.safetensors",
            "--steps",
            "2",
            "--batch",
            "1",
            "--png",
            "w.safetensors",
        ],
        &["--png w.safetensors is the same file as --weights"],
        &both,
    );
    assert_eq!(digest(&input), input_bytes);
    assert_eq!(digest(&weights), weight_bytes);
}

#[test]
fn special_destinations_are_refused_before_the_run() {
    let folder = tempfile::tempdir().unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(folder.path().join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    std::os::unix::fs::symlink("/tmp/elsewhere.png", folder.path().join("link.png")).unwrap();
    let leave = ["fifo", "link.png"];
    for (flag, destination, kind) in [
        ("--out", "/dev/null", "a character device"),
        ("--out", "fifo", "a FIFO"),
        ("--png", "link.png", "a symbolic link"),
        ("--png", "missing/x.png", "does not exist"),
    ] {
        let started = Instant::now();
        refused(
            folder.path(),
            &[
                "sample",
                "--model",
                "tiny",
                "--steps",
                "50",
                "--batch",
                "2",
                flag,
                destination,
            ],
            &[flag, kind],
            &leave,
        );
        // Refused up front: the 50-step run never starts.
        assert!(started.elapsed() < Duration::from_secs(20), "{destination}");
    }
}

#[test]
fn a_replaced_output_keeps_mode_600() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("out.safetensors");
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = resca_in(
        folder.path(),
        &[
            "forward",
            "--weights",
            text(&vectors("weights.safetensors")),
            "--input",
            text(&vectors("forward.safetensors")),
            "--out",
            "out.safetensors",
        ],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(SafetensorsFile::open(&out).unwrap().read_f32("out").is_ok());
}

#[test]
fn a_run_diverging_at_its_last_step_writes_nothing_and_names_the_step() {
    let folder = tempfile::tempdir().unwrap();
    diverging_weights(&folder.path().join("w.safetensors"));
    for sampler in ["ddim", "flow"] {
        refused(
            folder.path(),
            &[
                "sample",
                "--weights",
                "w.safetensors",
                "--steps",
                "1",
                "--batch",
                "2",
                "--sampler",
                sampler,
                "--out",
                "o.safetensors",
                "--png",
                "o.png",
            ],
            &["step 1 of 1", "block 0's attention branch", "weights"],
            &["w.safetensors"],
        );
    }
    refused(
        folder.path(),
        &[
            "forward",
            "--weights",
            "w.safetensors",
            "--input",
            text(&vectors("forward.safetensors")),
            "--out",
            "o.safetensors",
        ],
        &["forward pass", "block 0's attention branch"],
        &["w.safetensors"],
    );
}

#[test]
fn non_finite_guidance_scales_and_timesteps_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    let weights = vectors("weights.safetensors");
    let input = vectors("forward.safetensors");
    for scale in ["NaN", "inf", "-inf"] {
        refused(
            folder.path(),
            &[
                "forward",
                "--weights",
                text(&weights),
                "--input",
                text(&input),
                "--out",
                "o.safetensors",
                "--cfg-scale",
                scale,
            ],
            &["--cfg-scale"],
            &[],
        );
        refused(
            folder.path(),
            &[
                "sample",
                "--model",
                "tiny",
                "--steps",
                "2",
                "--batch",
                "2",
                "--cfg-scale",
                scale,
                "--out",
                "o.safetensors",
            ],
            &["--cfg-scale"],
            &[],
        );
    }
    // A forward input whose timesteps hold +inf.
    let file = SafetensorsFile::open(&input).unwrap();
    let mut t = file.read_i64("t").unwrap().mapv(|v| v as f32);
    t[0] = f32::INFINITY;
    write_safetensors(
        &folder.path().join("in.safetensors"),
        vec![
            ("x".into(), OutTensor::F32(file.read_f32("x").unwrap())),
            ("t".into(), OutTensor::F32(t)),
            ("y".into(), OutTensor::I64(file.read_i64("y").unwrap())),
        ],
        HashMap::new(),
    )
    .unwrap();
    refused(
        folder.path(),
        &[
            "forward",
            "--weights",
            text(&weights),
            "--input",
            "in.safetensors",
            "--out",
            "o.safetensors",
        ],
        &["timestep inf"],
        &["in.safetensors"],
    );
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let folder = tempfile::tempdir().unwrap();
    let config = folder.path().join("c.json");
    std::fs::write(
        &config,
        r#"{"input_size": 4294967296, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 1000000, "num_heads": 4, "mlp_ratio": 1e300, "num_classes": 10, "learn_sigma": true}"#,
    )
    .unwrap();
    for (args, expected) in [
        (
            &["sample", "--model", "tiny", "--batch", "10000000"][..],
            "above the limit of 65536",
        ),
        (
            &["sample", "--model", "tiny", "--seeds", "18446744073709551615"][..],
            "above the limit of 65536",
        ),
        (
            &[
                "sample",
                "--model",
                "tiny",
                "--sampler",
                "flow",
                "--steps",
                "1000000000000",
            ][..],
            "above the limit",
        ),
        (
            &["sample", "--model", "tiny", "--config", "c.json", "--steps", "2"][..],
            "input_size 4294967296",
        ),
        (&["plan", "--config", "c.json"][..], "input_size 4294967296"),
        (
            &[
                "sample",
                "--model",
                "DiT-XL/2",
                "--batch",
                "65536",
                "--sampler",
                "flow",
                "--steps",
                "100000",
                "--no-png",
            ][..],
            "--no-memory-check",
        ),
    ] {
        let started = Instant::now();
        refused(folder.path(), args, &[expected], &["c.json"]);
        // measured: well under a second each (the DiT-XL/2 run is refused before its weights).
        assert!(started.elapsed() < Duration::from_secs(20), "{args:?}");
    }
}

#[test]
fn negative_seeds_and_flags_that_do_not_apply_are_named() {
    let folder = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["sample", "--model", "tiny", "--seed", "-1"][..], "-1 is negative"),
        (&["sample", "--model", "tiny", "--flow-shift", "3"][..], "--flow-shift"),
        (&["plan", "--heads", "-4"][..], "-4"),
    ] {
        let message = refused(folder.path(), args, &[expected], &[]);
        assert!(!message.contains("unexpected argument"), "{args:?}: {message}");
    }
}

#[test]
fn a_tensor_core_precision_on_the_reference_backend_is_refused() {
    let folder = tempfile::tempdir().unwrap();
    let input = vectors("forward.safetensors");
    let out = folder.path().join("out.safetensors");
    for (mode, args) in [
        (
            "tf32",
            &[
                "sample",
                "--model",
                "tiny",
                "--steps",
                "2",
                "--precision",
                "tf32",
                "--no-png",
            ][..],
        ),
        (
            "bf16",
            &[
                "forward",
                "--input",
                text(&input),
                "--out",
                text(&out),
                "--precision",
                "bf16",
            ][..],
        ),
        (
            "tf32x3",
            &["compare", "--seeds", "1", "--steps", "2", "--precision", "tf32x3"][..],
        ),
    ] {
        refused(
            folder.path(),
            args,
            &[
                &format!("--precision {mode}"),
                "reference backend computes in FP32 only",
                "--backend sim",
            ],
            &[],
        );
    }
    // An unknown mode is named with the ones that exist.
    let message = refused(folder.path(), &["sample", "--precision", "fp16"], &["fp16"], &[]);
    assert!(message.contains("tf32x3") && message.contains("bf16"), "{message}");
}

#[test]
fn a_fifo_or_a_folder_as_input_is_refused_without_hanging() {
    let folder = tempfile::tempdir().unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(folder.path().join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    std::fs::create_dir(folder.path().join("sub")).unwrap();
    for input in ["fifo", "sub"] {
        for flag in ["--weights", "--config"] {
            refused(folder.path(), &["plan", flag, input], &[input], &["fifo", "sub"]);
        }
        refused(
            folder.path(),
            &["forward", "--input", input, "--out", "o.safetensors"],
            &[input, "not a regular file"],
            &["fifo", "sub"],
        );
    }
}

#[test]
fn duplicate_header_keys_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    let header = r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(folder.path().join("d.safetensors"), bytes).unwrap();
    refused(
        folder.path(),
        &["forward", "--input", "d.safetensors", "--out", "o.safetensors"],
        &["d.safetensors", "names `x` twice"],
        &["d.safetensors"],
    );
}

#[test]
fn invalid_replay_files_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    // Tiny model, guided batch of 1 (2 rows), 16 tokens, K = 4.
    let ints = |shape: &[usize], values: Vec<i64>| {
        OutTensor::I64(ndarray::ArrayD::from_shape_vec(shape.to_vec(), values).unwrap())
    };
    let labels: Vec<i64> = (0..2 * 16).map(|i| (i % 4) as i64).collect();
    let write = |name: &str, steps: Vec<i64>, proxies: Vec<i64>| {
        write_safetensors(
            &folder.path().join(name),
            vec![
                ("clus.cluster_step".into(), ints(&[1], steps)),
                ("clus.cluster_indices".into(), ints(&[1, 2, 16], labels.clone())),
                ("clus.proxy_indices".into(), ints(&[1, 2, 4], proxies)),
            ],
            HashMap::new(),
        )
        .unwrap();
    };
    write("wrong_proxy.safetensors", vec![9], vec![1, 1, 2, 3, 0, 1, 2, 3]);
    // DDIM-10 with 2 first full steps and interval 4: full at steps 9, 8, 4 and 0.
    write("no_step.safetensors", vec![5], vec![0, 1, 2, 3, 0, 1, 2, 3]);
    let files = ["no_step.safetensors", "wrong_proxy.safetensors"];
    let weights = vectors("weights.safetensors");
    for (replay, expected) in [
        ("wrong_proxy.safetensors", "names token 1 as the proxy of cluster 0"),
        ("no_step.safetensors", "step 5 matches no full step"),
    ] {
        let args = [
            "sample",
            "--weights",
            text(&weights),
            "--steps",
            "10",
            "--batch",
            "1",
            "--cfg-scale",
            "1.5",
            "--method",
            "resca",
            "--clusters",
            "4",
            "--interval",
            "4",
            "--replay-clusters",
            replay,
            "--out",
            "o.safetensors",
        ];
        refused(folder.path(), &args, &[replay, expected], &files);
    }
}

#[test]
fn closed_or_full_standard_output_does_not_panic() {
    let output = Command::new("bash")
        .arg("-c")
        .arg("\"$0\" plan --json | true; echo \"status ${PIPESTATUS[0]}\" >&2")
        .arg(env!("CARGO_BIN_EXE_resca"))
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        message.contains("status 0") || message.contains("status 141"),
        "{message}"
    );
    let full = Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(["plan", "--json"])
        .stdout(std::fs::File::options().write(true).open("/dev/full").unwrap())
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&full.stderr);
    assert_eq!(full.status.code(), Some(1), "{message}");
    assert!(
        message.contains("cannot write to standard output") && !message.contains("panicked"),
        "{message}"
    );
}

#[test]
fn an_interrupted_write_leaves_nothing() {
    let folder = tempfile::tempdir().unwrap();
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_resca"))
            .args([
                "forward",
                "--weights",
                text(&vectors("weights.safetensors")),
                "--input",
                text(&vectors("forward.safetensors")),
                "--out",
                "out.safetensors",
            ])
            .env(resca_host::outputs::WRITE_PAUSE_ENV, "30000")
            .current_dir(folder.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let temporary = loop {
            let found = std::fs::read_dir(folder.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .find(|name| name.starts_with(".resca-") && name.ends_with(".tmp"));
            if let Some(name) = found {
                break name;
            }
            assert!(Instant::now() < deadline, "no temporary file appeared");
            std::thread::sleep(Duration::from_millis(10));
        };
        // SAFETY: signals the child started above.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(signal), "{status:?}");
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 0, "{temporary} left");
    }
}
