//! A proptest-driven fuzz corpus over the `resca` command line: random subcommands, flags and
//! values (negative, huge, NaN, empty, special files). Every invocation ends by itself with
//! status 0, 1 or 2, never a panic or a signal, says why when it fails, and leaves no file
//! behind. Each case names an output that is refused up front (`/dev/null`), so no case runs a
//! model for long: what is fuzzed is the parsing and the checks before a run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proptest::prelude::*;

/// Values given to flags: ordinary, boundary, absurd and malformed.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..20).prop_map(|v| v.to_string()),
        Just("-1".to_string()),
        Just("-0".to_string()),
        Just("0".to_string()),
        Just("1.5".to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e300".to_string()),
        Just("18446744073709551616".to_string()),
        Just("4294967296".to_string()),
        Just("".to_string()),
        Just("tiny".to_string()),
        Just("DiT-XL/2".to_string()),
        Just("resca".to_string()),
        Just("flow".to_string()),
        Just("/dev/null".to_string()),
        Just("fifo".to_string()),
        Just("missing/x".to_string()),
        Just(".".to_string()),
        Just("1,2,-3".to_string()),
    ]
}

fn flag() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("--weights"),
        Just("--config"),
        Just("--heads"),
        Just("--model"),
        Just("--weights-seed"),
        Just("--noise"),
        Just("--seed"),
        Just("--seeds"),
        Just("--batch"),
        Just("--labels"),
        Just("--cfg-scale"),
        Just("--steps"),
        Just("--sampler"),
        Just("--flow-shift"),
        Just("--backend"),
        Just("--method"),
        Just("--interval"),
        Just("--first-enhance"),
        Just("--order"),
        Just("--clusters"),
        Just("--alpha"),
        Just("--solver"),
        Just("--gamma"),
        Just("--kmedoids-iters"),
        Just("--method-seed"),
        Just("--replay-clusters"),
        Just("--input"),
        Just("--scheme"),
        Just("--label"),
        Just("--tokens"),
        Just("--json"),
        Just("--no-png"),
        Just("--no-memory-check"),
        Just("--vae"),
        Just("--latent-scale"),
    ]
}

/// A subcommand and the flag that, given `/dev/null`, refuses the run before it starts.
fn subcommand() -> impl Strategy<Value = (&'static str, Option<&'static str>)> {
    prop_oneof![
        Just(("sample", Some("--png"))),
        Just(("forward", Some("--out"))),
        Just(("plan", None)),
        Just(("compare", Some("--png"))),
        Just(("trajectories", Some("--png"))),
        Just(("stability", Some("--png"))),
        Just(("info", None)),
        Just(("decode", Some("--png"))),
        Just(("no-such-command", None)),
    ]
}

fn run(folder: &Path, args: &[String]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .current_dir(folder)
        .env("RESCA_CUDA_DISABLE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("resca {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

proptest! {
    #![proptest_config(resca_tests::proptest_config(150))]

    #[test]
    fn any_command_line_ends_with_a_status_and_a_reason(
        (command, refused_output) in subcommand(),
        flags in prop::collection::vec((flag(), value()), 0..5),
    ) {
        let folder = tempfile::tempdir().unwrap();
        assert!(Command::new("mkfifo").arg(folder.path().join("fifo")).status().unwrap().success());
        let mut args = vec![command.to_string()];
        for (flag, value) in flags {
            args.push(flag.to_string());
            if !matches!(flag, "--json" | "--no-png" | "--no-memory-check") {
                args.push(value);
            }
        }
        if let Some(output_flag) = refused_output {
            args.extend([output_flag.to_string(), "/dev/null".to_string()]);
        }
        let (status, message) = run(folder.path(), &args);
        prop_assert!(matches!(status, Some(0..=2)), "{args:?}: status {status:?}: {message}");
        prop_assert!(!message.contains("panicked"), "{args:?}: {message}");
        if status != Some(0) {
            prop_assert!(message.contains("error"), "{args:?}: {message}");
        }
        let left: Vec<_> = std::fs::read_dir(folder.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|name| name != "fifo")
            .collect();
        prop_assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// Command lines the fuzzer found crashing, hanging or silently misread, kept as regressions.
#[test]
fn command_lines_found_by_the_fuzzer() {
    let folder = tempfile::tempdir().unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(folder.path().join("fifo"))
            .status()
            .unwrap()
            .success()
    );
    for args in [
        // Read a FIFO as the weights: blocked in open() before.
        &["plan", "--weights", "fifo"][..],
        // Negative numbers taken for flags ("unexpected argument").
        &["sample", "--seed", "-1", "--png", "/dev/null"][..],
        &["trajectories", "--tokens", "-3", "--png", "/dev/null"][..],
        // seeds x classes wrapped around.
        &["sample", "--seeds", "18446744073709551615", "--png", "/dev/null"][..],
        // A NaN guidance scale went through `forward` unchecked.
        &["forward", "--cfg-scale", "NaN", "--input", "fifo", "--out", "/dev/null"][..],
    ] {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (status, message) = run(folder.path(), &args);
        assert!(matches!(status, Some(1 | 2)), "{args:?}: {status:?} {message}");
        assert!(
            message.contains("error") && !message.contains("panicked"),
            "{args:?}: {message}"
        );
        assert!(!message.contains("unexpected argument '-"), "{args:?}: {message}");
    }
}
