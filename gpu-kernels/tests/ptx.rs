//! The committed PTX (`scripts/build-ptx.sh`, nightly only) must hold exactly the entry points
//! the crate declares: a kernel added or renamed without rebuilding the PTX fails here, on stable.

use std::collections::BTreeSet;
use std::path::PathBuf;

#[test]
fn committed_ptx_has_exactly_the_declared_entries_and_no_externals() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ptx/resca_kernels.sm_80.ptx");
    let ptx = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(ptx.contains(".target sm_80"), "not an sm_80 module");
    let entries: BTreeSet<&str> = ptx
        .lines()
        .filter_map(|line| line.strip_prefix(".visible .entry "))
        .map(|rest| rest.trim_end_matches('('))
        .collect();
    let declared: BTreeSet<&str> = resca_gpu_kernels::KERNELS.iter().copied().collect();
    assert_eq!(entries, declared, "rebuild the PTX with scripts/build-ptx.sh");
    // Unresolved functions (panic paths, calls into other crates) would fail to load.
    assert!(!ptx.contains(".extern"), "the PTX references external symbols");
    // Kernel state stays in registers.
    assert!(!ptx.contains(".local"), "a kernel spills to local memory");
}
