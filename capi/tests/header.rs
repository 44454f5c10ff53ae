//! `capi/include/resca.h` is what cbindgen generates from the crate now: a change of the
//! interface without its header fails here (and so in CI). `RESCA_BLESS=1` rewrites the header.

use std::path::Path;

#[test]
fn the_committed_header_is_generated_from_the_crate() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("capi/cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8");
    let path = crate_dir.join("include/resca.h");
    if std::env::var_os("RESCA_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).expect("writing capi/include/resca.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || committed.lines().count().min(generated.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "capi/include/resca.h differs from what the crate generates (first at line {line}); \
             run `RESCA_BLESS=1 cargo test -p resca-capi --test header` and commit the header"
        );
    }
    // The declarations a host needs are all there.
    for name in [
        "resca_gpu_open",
        "resca_gpu_launch",
        "resca_sim_launch",
        "resca_forward",
        "resca_sample",
        "resca_last_error",
        "RESCA_API_VERSION",
        "typedef struct RescaArg",
    ] {
        assert!(generated.contains(name), "the header lacks {name}");
    }
}
