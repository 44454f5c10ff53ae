//! Writes `gpu-kernels/ptx/manifest.json`: every entry point of the committed PTX modules with its
//! parameters (Rust name and type from the kernel table, `src/table.rs`; PTX type, size and
//! alignment from the module), the toolchain that built them and a hash of the kernel source. Run
//! by `scripts/build-ptx.sh`:
//!
//! `cargo run -p resca-gpu-kernels --example ptx_manifest -- --ptx-dir DIR --out FILE
//!  --rustc VERSION --llvm VERSION --rustflags FLAGS --source-sha256 HASH`

use std::collections::BTreeMap;
use std::path::PathBuf;

use resca_gpu_kernels::Kernel;
use resca_gpu_kernels::ptx::{MODULES, entries, isa_version, target};
use serde::Serialize;

#[derive(Serialize)]
struct Manifest {
    about: &'static str,
    rustc: String,
    llvm: String,
    rustflags: String,
    /// sha256 of `gpu-kernels/Cargo.toml` and `gpu-kernels/src/**` (see `scripts/build-ptx.sh`).
    source_sha256: String,
    modules: Vec<Module>,
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct Module {
    arch: String,
    file: String,
    ptx_isa: String,
    bytes: usize,
}

#[derive(Serialize)]
struct Entry {
    name: String,
    params: Vec<Param>,
}

#[derive(Serialize)]
struct Param {
    name: String,
    rust: String,
    ptx: String,
    size: u32,
    align: u32,
}

fn main() {
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let key = flag
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("unexpected argument {flag}"));
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        args.insert(key.to_string(), value);
    }
    let arg = |key: &str| args.get(key).cloned().unwrap_or_else(|| panic!("--{key} is required"));
    let dir = PathBuf::from(arg("ptx-dir"));

    let mut modules = Vec::new();
    let mut listed: Option<Vec<Entry>> = None;
    for m in MODULES {
        let path = dir.join(m.file);
        let ptx = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(target(&ptx), Some(m.arch), "{}: wrong .target", path.display());
        let mut these = Vec::new();
        for e in entries(&ptx) {
            let declared = Kernel::ALL
                .iter()
                .find(|k| k.name() == e.name)
                .unwrap_or_else(|| panic!("{}: entry {} is not in the kernel table", path.display(), e.name))
                .params();
            let ptx_params: Vec<_> = e
                .params()
                .map(|p| p.unwrap_or_else(|| panic!("{}: unreadable parameter", e.name)))
                .collect();
            assert_eq!(ptx_params.len(), declared.len(), "{}: parameter count", e.name);
            let params = ptx_params
                .iter()
                .zip(declared)
                .map(|(p, declared)| Param {
                    name: declared.name.to_string(),
                    rust: declared.kind.rust_type().to_string(),
                    ptx: if p.ty == ".b8" && p.size > 1 {
                        format!(".align {} .b8[{}]", p.align, p.size)
                    } else {
                        p.ty.to_string()
                    },
                    size: p.size,
                    align: p.align,
                })
                .collect();
            these.push(Entry {
                name: e.name.to_string(),
                params,
            });
        }
        these.sort_by(|a, b| a.name.cmp(&b.name));
        match &listed {
            None => listed = Some(these),
            Some(first) => {
                let same = first.len() == these.len()
                    && first.iter().zip(&these).all(|(a, b)| {
                        a.name == b.name
                            && a.params.len() == b.params.len()
                            && a.params.iter().zip(&b.params).all(|(x, y)| x.ptx == y.ptx)
                    });
                assert!(same, "{}: entry points differ from the first module's", path.display());
            }
        }
        modules.push(Module {
            arch: m.arch.to_string(),
            file: m.file.to_string(),
            ptx_isa: isa_version(&ptx).unwrap_or("?").to_string(),
            bytes: ptx.len(),
        });
    }
    let manifest = Manifest {
        about: "Entry points of the committed PTX (scripts/build-ptx.sh); parameters in launch order. \
                Every module has the same entries.",
        rustc: arg("rustc"),
        llvm: arg("llvm"),
        rustflags: arg("rustflags"),
        source_sha256: arg("source-sha256"),
        modules,
        entries: listed.unwrap_or_default(),
    };
    let out = PathBuf::from(arg("out"));
    let text = serde_json::to_string_pretty(&manifest).expect("serialisable") + "\n";
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
