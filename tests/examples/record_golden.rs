//! Rewrites the golden outputs of the reference's caching modes (`tests/vectors/golden/`; see
//! `resca_tests::golden`). Run after a deliberate change of a caching method, then review the
//! differences `cargo test -p resca-tests --test golden_caching` reported before.

use resca_tests::golden::{cases, golden_path, run, write};

fn main() {
    for case in cases() {
        let trajectory = run(&case.method);
        if let Err(error) = write(&case, &trajectory) {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
        println!(
            "{} ({}): {}",
            case.name,
            case.method.name(),
            golden_path(case.name).display()
        );
    }
}
