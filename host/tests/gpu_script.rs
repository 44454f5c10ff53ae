//! `scripts/gpu-bench.sh`, the one-command GPU run, as far as it can be checked without a GPU:
//! its dry run lists every part with its time limit, within the 8-minute budget, and a real run
//! without a GPU stops at once with a message and exit status 2.

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/gpu-bench.sh")
}

#[test]
fn the_dry_run_lists_every_part_within_the_budget() {
    let out = Command::new("bash").arg(script()).arg("--dry-run").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for part in [
        "info",
        "tests-exact",
        "tests-sm80",
        "tensor-core-probe",
        "bench",
        "sanitizer-memcheck",
        "sanitizer-racecheck",
        "sanitizer-synccheck",
    ] {
        assert!(
            text.lines().any(|l| l.split_whitespace().next() == Some(part)),
            "part {part} missing:\n{text}"
        );
    }
    assert!(text.contains("gpu_bench DiT-XL/2 50"), "{text}");
    // The GPU tests once per precision mode, the mode passed as RESCA_PRECISION (which
    // host/tests/cuda_gpu.rs reads), and the probe by its test name.
    assert!(
        text.contains("RESCA_PRECISION=exact") && text.contains("RESCA_PRECISION=<mode>"),
        "{text}"
    );
    assert!(text.contains("cuda_gpu tensor_core"), "{text}");
    let budget: u32 = text
        .split("budget ")
        .nth(1)
        .and_then(|rest| rest.split('s').next())
        .and_then(|n| n.parse().ok())
        .expect("the budget in the header");
    assert!(budget < 8 * 60, "the parts run within {budget} s, under 8 minutes");
}

#[test]
fn without_a_gpu_it_stops_with_a_message() {
    let has_smi = Command::new("sh")
        .args(["-c", "command -v nvidia-smi && nvidia-smi -L"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_smi {
        eprintln!("SKIP: without_a_gpu_it_stops_with_a_message: this machine has a GPU");
        return;
    }
    let out = Command::new("bash").arg(script()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no GPU here") && err.contains("--dry-run"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing runs: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
