//! The committed PTX (`scripts/build-ptx.sh`, nightly only) and its manifest must describe exactly
//! the entry points of the kernel table (`src/table.rs`): a kernel added, renamed or given other
//! parameters or shared memory without rebuilding the PTX fails here, on stable. (Whether the PTX
//! bodies are what the current source builds is checked by `scripts/build-ptx.sh --check`, which
//! needs the nightly.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::ptx::{MODULES, entries, isa_version, target};
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{Global, GlobalMut, KERNELS, Kernel};
use serde_json::Value;

fn manifest() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ptx/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table entry named `name`.
fn kernel(name: &str) -> Kernel {
    *Kernel::ALL
        .iter()
        .find(|k| k.name() == name)
        .unwrap_or_else(|| panic!("{name} is not in the kernel table"))
}

#[test]
fn committed_ptx_has_exactly_the_declared_entries_and_no_externals() {
    let declared: BTreeSet<&str> = KERNELS.iter().copied().collect();
    assert_eq!(declared.len(), KERNELS.len(), "the kernel table lists a name twice");
    let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names, KERNELS, "Kernel::ALL and KERNELS differ");
    for m in MODULES {
        assert_eq!(target(m.ptx), Some(m.arch), "{}: not an {} module", m.file, m.arch);
        let entries: BTreeSet<&str> = entries(m.ptx).map(|e| e.name).collect();
        assert_eq!(
            entries, declared,
            "{}: rebuild the PTX with scripts/build-ptx.sh",
            m.file
        );
        // Unresolved functions (panic paths, calls into other crates) would fail to load.
        assert!(
            // The dynamic shared memory is the one `.extern` allowed.
            !m.ptx
                .lines()
                .any(|l| l.contains(".extern") && !l.starts_with(".extern .shared")),
            "{}: the PTX references external symbols",
            m.file
        );
        // Kernel state stays in registers.
        assert!(!m.ptx.contains(".local"), "{}: a kernel uses local memory", m.file);
    }
    // ptxas 11.8 (CI's validator) reads PTX ISA up to 7.8.
    assert_eq!(isa_version(MODULES[0].ptx), Some("7.0"));
    assert_eq!(isa_version(MODULES[1].ptx), Some("7.8"));
}

/// The size a Rust parameter type, as the manifest records it, has as a PTX parameter.
fn rust_size(ty: &str) -> usize {
    match ty {
        "u32" => size_of::<u32>(),
        "f32" => size_of::<f32>(),
        "DdimCoefficients" => size_of::<DdimCoefficients>(),
        "TaylorCoefficients" => size_of::<TaylorCoefficients>(),
        t if t.starts_with("Global<") => size_of::<Global<'_, f32>>(),
        t if t.starts_with("GlobalMut<") => size_of::<GlobalMut<'_, f32>>(),
        t => panic!("no size for parameter type {t}"),
    }
}

#[test]
fn manifest_matches_the_ptx_and_the_table() {
    let manifest = manifest();
    let listed = manifest["entries"].as_array().expect("entries");
    assert_eq!(listed.len(), KERNELS.len());
    let modules = manifest["modules"].as_array().expect("modules");
    assert_eq!(modules.len(), MODULES.len());
    for (m, listed_module) in MODULES.iter().zip(modules) {
        assert_eq!(listed_module["arch"], m.arch);
        assert_eq!(listed_module["file"], m.file);
        assert_eq!(listed_module["bytes"].as_u64(), Some(m.ptx.len() as u64), "{}", m.file);
        assert_eq!(listed_module["ptx_isa"].as_str(), isa_version(m.ptx));
        for e in entries(m.ptx) {
            let entry = listed
                .iter()
                .find(|v| v["name"] == e.name)
                .unwrap_or_else(|| panic!("{}: {} is not in the manifest", m.file, e.name));
            let declared = kernel(e.name).params();
            let params = entry["params"].as_array().expect("params");
            let ptx_params: Vec<_> = e.params().map(|p| p.expect("a readable parameter")).collect();
            assert_eq!(params.len(), ptx_params.len(), "{}: parameter count", e.name);
            assert_eq!(params.len(), declared.len(), "{}: parameter count", e.name);
            for ((listed, ptx), param) in params.iter().zip(&ptx_params).zip(declared) {
                let what = format!("{} ({}) parameter {}", e.name, m.arch, param.name);
                let ty = param.kind.rust_type();
                assert_eq!(listed["name"], param.name, "{what}");
                assert_eq!(listed["rust"], ty, "{what}");
                assert_eq!(listed["size"].as_u64(), Some(ptx.size as u64), "{what}");
                assert_eq!(listed["align"].as_u64(), Some(ptx.align as u64), "{what}");
                // The launch packs each parameter as its Rust type: the layouts must agree.
                assert_eq!(rust_size(ty), ptx.size as usize, "{what}: Rust and PTX sizes differ");
                assert_eq!(
                    param.kind.size(),
                    ptx.size as usize,
                    "{what}: table and PTX sizes differ"
                );
            }
        }
    }
}

/// Every `.shared` buffer of the PTX is the one its table entry declares (`<entry>_smem`, of the
/// entry's `shared` size), and an entry without one declares none.
#[test]
fn shared_buffers_are_those_of_the_table() {
    let declared: BTreeSet<(String, u32)> = Kernel::ALL
        .iter()
        .filter(|k| k.static_shared_bytes() > 0)
        .map(|k| (format!("{}_smem", k.name()), k.static_shared_bytes()))
        .collect();
    assert!(!declared.is_empty());
    for m in MODULES {
        let in_ptx: BTreeSet<(String, u32)> = m
            .ptx
            .lines()
            .filter_map(|line| line.trim().strip_prefix(".shared .align 16 .b8 "))
            .map(|decl| {
                let (name, bytes) = decl.split_once('[').expect("an array declaration");
                let bytes = bytes.strip_suffix("];").expect("`[N];`").parse().expect("a size");
                (name.to_string(), bytes)
            })
            .collect();
        assert_eq!(
            in_ptx, declared,
            "{}: rebuild the PTX with scripts/build-ptx.sh",
            m.file
        );
    }
}

/// The Rust-CUDA entry points (feature `nvvm`) are expanded from the same table, so either PTX
/// launches the same way.
#[cfg(feature = "nvvm")]
#[test]
fn nvvm_entry_points_are_the_tables() {
    assert_eq!(resca_gpu_kernels::nvvm::ENTRY_POINTS, KERNELS);
}
