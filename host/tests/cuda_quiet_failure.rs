//! A libcuda that lacks a function the backend needs (cudarc panics on the first call of a
//! missing symbol): `resca info` and `--backend cuda` report it in one line, with no panic
//! message or backtrace before it. The broken driver is a stub built here with the C compiler,
//! exporting `cuInit` alone.

use std::path::Path;
use std::process::Command;

/// Builds the stub in `folder` (as libcuda.so and libcuda.so.1); false where no C compiler runs.
fn build_stub(folder: &Path) -> bool {
    let source = folder.join("stub.c");
    std::fs::write(&source, "int cuInit(unsigned int flags) { (void)flags; return 0; }\n").unwrap();
    let library = folder.join("libcuda.so");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .is_ok_and(|s| s.success());
    built && std::fs::copy(&library, folder.join("libcuda.so.1")).is_ok()
}

#[test]
fn a_libcuda_missing_functions_is_reported_without_a_panic_message() {
    let folder = tempfile::tempdir().unwrap();
    if !build_stub(folder.path()) {
        eprintln!("SKIP: no C compiler (cc) to build the stub libcuda");
        return;
    }
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/tiny");
    let weights = vectors.join("weights.safetensors");
    let input = vectors.join("forward.safetensors");
    let forward = [
        "forward",
        "--backend",
        "cuda",
        "--weights",
        weights.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        "o.safetensors",
    ];
    for args in [&["info"][..], &forward[..]] {
        let output = Command::new(env!("CARGO_BIN_EXE_resca"))
            .args(args)
            .env("LD_LIBRARY_PATH", folder.path())
            .env_remove("RESCA_CUDA_DISABLE")
            .env("RUST_BACKTRACE", "1")
            .current_dir(folder.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains("panicked") && !text.contains("stack backtrace"),
            "{args:?}: {text}"
        );
        assert!(
            text.contains("the driver lacks a function cudarc needs"),
            "{args:?}: {text}"
        );
        if args[0] == "forward" {
            assert!(!output.status.success(), "{text}");
            assert!(!folder.path().join("o.safetensors").exists());
        }
    }
}
