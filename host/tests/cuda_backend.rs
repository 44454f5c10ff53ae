//! The CUDA backend without a GPU: every launch the pipeline makes packs against the PTX entry
//! points' parameter lists (the bytes `cuLaunchKernel` would pass), and without a driver `resca
//! info` says so while `--backend cuda` fails with that message (never a panic). These run
//! everywhere; `cuda_gpu.rs` runs the kernels on a GPU where one is present.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Output};

use resca_gpu_kernels::ptx::MODULES;
use resca_host::cuda::params::{ParamLayout, layouts, pack};
use resca_host::pipeline::device::{Buffer, Device, DeviceError, Element, Kernel, KernelCall, Slice};
use resca_host::sim::SimDevice;

/// The simulator, with every launch first packed as the CUDA device packs it, against both
/// modules' entry points.
struct PackingSim {
    sim: SimDevice,
    layouts: Vec<HashMap<Kernel, Vec<ParamLayout>>>,
    packed: BTreeSet<&'static str>,
}

impl Device for PackingSim {
    fn name(&self) -> &'static str {
        "sim"
    }
    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
        self.sim.alloc(len)
    }
    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError> {
        self.sim.upload(dst, data)
    }
    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError> {
        self.sim.download(src, out)
    }
    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError> {
        self.sim.copy(src, dst)
    }
    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        self.sim.free(id)
    }
    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
        for layouts in &self.layouts {
            let params = pack(call, &layouts[&call.kernel], |slice, _| {
                Ok(0x7000_0000 + slice.offset as u64)
            })?;
            assert_eq!(params.len(), call.args.len());
        }
        self.packed.insert(call.kernel.name());
        self.sim.launch(call)
    }
    fn synchronize(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

#[test]
fn every_pipeline_launch_packs_against_the_ptx_entry_points() {
    let layouts: Vec<_> = MODULES.iter().map(|m| layouts(m).unwrap()).collect();
    let mut seen = BTreeSet::new();
    for model in [support::tiny_model(), support::odd_model(1)] {
        let dev = PackingSim {
            sim: SimDevice::new(),
            layouts: layouts.clone(),
            packed: BTreeSet::new(),
        };
        let (dev, _) = support::drive(dev, &model);
        seen.extend(dev.packed);
    }
    let all: BTreeSet<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
    let missing: Vec<_> = all.difference(&seen).collect();
    assert!(missing.is_empty(), "the workload never launches {missing:?}");
}

fn resca_without_driver(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resca"))
        .args(args)
        .env("RESCA_CUDA_DISABLE", "1")
        .output()
        .expect("resca runs")
}

const NO_DRIVER: &str = "no CUDA driver found";

#[test]
fn info_reports_a_missing_driver_and_succeeds() {
    let out = resca_without_driver(&["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(NO_DRIVER), "{stdout}");
    assert!(stdout.contains("libcuda"), "{stdout}");
}

#[test]
fn cuda_backend_without_a_driver_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.safetensors");
    let out_arg = out_file.to_str().unwrap();
    let weights = support::vectors("weights.safetensors");
    let input = support::vectors("forward.safetensors");
    let runs: [Vec<&str>; 3] = [
        vec![
            "sample",
            "--backend",
            "cuda",
            "--steps",
            "2",
            "--no-png",
            "--out",
            out_arg,
        ],
        vec![
            "sample",
            "--backend",
            "cuda",
            "--steps",
            "2",
            "--method",
            "resca",
            "--labels",
            "1,2",
        ],
        vec![
            "forward",
            "--backend",
            "cuda",
            "--weights",
            weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out_arg,
        ],
    ];
    for args in runs {
        let out = resca_without_driver(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(NO_DRIVER), "{args:?}: {stderr}");
        assert!(stderr.contains("--backend cuda"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!out_file.exists(), "{args:?} wrote an output");
    }
}

/// Wherever the test runs (with or without a GPU), `probe` and `CudaDevice::open` return, never
/// panic, and agree with each other.
#[test]
fn probe_and_open_agree() {
    let probed = resca_host::cuda::probe();
    let opened = resca_host::cuda::CudaDevice::open(0);
    match (&probed, &opened) {
        (Err(e), Err(open)) => {
            support::skip("probe_and_open_agree (the GPU half)", &e.to_string());
            assert_eq!(open.to_string(), e.to_string());
        }
        (Ok(info), Ok(dev)) => {
            assert!(!info.devices.is_empty());
            eprintln!("cuda: {}", dev.description());
        }
        (Ok(info), Err(e)) => {
            assert!(
                info.devices[0].ptx_arch.is_none(),
                "a driver and an sm_80+ GPU, yet opening failed: {e}"
            );
        }
        (Err(e), Ok(_)) => panic!("probe failed ({e}) but the device opened"),
    }
}
