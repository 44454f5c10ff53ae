//! The kernels on a real GPU (the committed PTX through `CudaDevice`) against the simulator and
//! the reference. Each test first looks for a CUDA driver and a GPU of sm_80 or later; without one
//! it prints `SKIP: <test>: no CUDA driver/GPU (<reason>)` to stderr and returns (the project's
//! convention for GPU tests: `cargo test` passes on machines without a GPU, visibly skipping).
//!
//! * every kernel, on the launches the pipeline really makes for two models of different shapes
//!   (recorded on the simulator with their inputs, replayed on the GPU), against the simulator;
//! * the forward pass against the reference and the official PyTorch output of `vectors/tiny`;
//! * whole guided DDIM-50 runs (full compute, ResCa official with replayed clusterings) against
//!   the reference and the simulator, and `resca sample --backend cuda` against the reference;
//! * with the feature `cust`: the same forward and ResCa run through Rust-CUDA's `cust` backend,
//!   bit for bit against the cudarc backend (same PTX, same launches).
//!
//! The PTX multiplies and adds with explicit `.rn` rounding (no FMA contraction by ptxas) and
//! the kernels do their own transcendental math, so GPU and simulator are expected to agree to
//! the last bit; the budgets below allow float-rounding noise and report how many values were
//! not bit-identical.

mod support;

use std::process::Command;

use ndarray::Ix4;
use resca_host::cuda::CudaDevice;
use resca_host::cuda::replay::{Recorder, compare, replay};
use resca_host::pipeline::{Device, Kernel, Pipeline, SampleOptions, SampleOutput};
use resca_host::sim::SimDevice;
use resca_reference::cache::{CachingHook, ClusteringRecord, MethodConfig};
use resca_reference::ddim::DdimSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, FullCompute, Sampler, Trajectory, sample};
use resca_tests::{max_abs_diff, max_rel_to_max};

fn gpu() -> CudaDevice {
    CudaDevice::open_default().unwrap()
}

fn trajectories_close(what: &str, ours: &Trajectory, theirs: &Trajectory, budget: f32) {
    let x = max_rel_to_max(&format!("{what}: x"), &ours.x, &theirs.x);
    let out = max_rel_to_max(&format!("{what}: model_out"), &ours.model_out, &theirs.model_out);
    eprintln!("{what}: x {x:.2e}, model_out {out:.2e} (of max|.|)");
    assert!(x < budget, "{what}: x differs by {x} of max|x|");
    assert!(out < budget, "{what}: model_out differs by {out} of max|model_out|");
    assert_eq!(ours.work, theirs.work, "{what}: different work per step");
}

#[test]
fn every_kernel_matches_the_simulator_on_the_pipelines_launches() {
    if !support::gpu_or_skip("every_kernel_matches_the_simulator_on_the_pipelines_launches") {
        return;
    }
    let mut dev = gpu();
    eprintln!("GPU: {}", dev.description());
    let mut covered = std::collections::BTreeSet::new();
    for (name, model) in [("tiny", support::tiny_model()), ("odd", support::odd_model(2))] {
        let (recorder, _) = support::drive(Recorder::new(SimDevice::new(), 3), &model);
        covered.extend(recorder.kernels().iter().map(|k| k.name()));
        for launch in &recorder.launches {
            let ours = replay(&mut dev, launch).unwrap_or_else(|e| panic!("{name}: {:?}: {e}", launch.call.kernel));
            dev.synchronize_checked();
            let d = compare(&launch.after, &ours);
            let kernel = launch.call.kernel.name();
            eprintln!(
                "{name} {kernel}: {} values, {} not bit-identical, max |gpu - sim| {:.2e} (max |value| {:.2e})",
                d.elements, d.not_identical, d.max_abs, d.max_value
            );
            // Budget: 1e-6 of max(1, max|value|) (rounding noise; expected 0).
            assert!(
                d.max_abs <= 1e-6 * d.max_value.max(1.0),
                "{name} {kernel}: GPU and simulator differ by {}",
                d.max_abs
            );
        }
    }
    assert_eq!(covered.len(), Kernel::ALL.len(), "not every kernel was checked");
    assert_eq!(dev.resident_elements(), 0);
}

trait SyncChecked {
    fn synchronize_checked(&mut self);
}

impl SyncChecked for CudaDevice {
    /// Surfaces asynchronous faults at the launch that caused them.
    fn synchronize_checked(&mut self) {
        self.synchronize().unwrap();
    }
}

/// The inputs of `forward.safetensors`: latents, timesteps and labels.
fn forward_inputs(file: &SafetensorsFile) -> (ndarray::Array4<f32>, Vec<f32>, Vec<usize>) {
    let x = file.read_f32("x").unwrap().into_dimensionality::<Ix4>().unwrap();
    let t = file.read_i64("t").unwrap().iter().map(|&v| v as f32).collect();
    let y = file.read_i64("y").unwrap().iter().map(|&v| v as usize).collect();
    (x, t, y)
}

#[test]
fn forward_matches_the_reference_and_the_official_output() {
    if !support::gpu_or_skip("forward_matches_the_reference_and_the_official_output") {
        return;
    }
    let file = SafetensorsFile::open(support::vectors("forward.safetensors")).unwrap();
    let model = support::tiny_model();
    let (x, t, y) = forward_inputs(&file);
    let mut pipeline = Pipeline::new(gpu(), &model).unwrap();
    let ours = pipeline.forward(x.view(), &t, &y).unwrap().into_dyn();
    let reference = model.forward(x.view(), &t, &y).unwrap().into_dyn();
    let official = file.read_f32("out").unwrap();
    let vs_reference = max_abs_diff("gpu forward vs reference", &ours, &reference);
    let vs_official = max_abs_diff("gpu forward vs official", &ours, &official);
    eprintln!("gpu forward: max |gpu - reference| {vs_reference:.2e}, max |gpu - official| {vs_official:.2e}");
    // Budget 1e-5 absolute, as the simulator's (measured there 7.2e-7).
    assert!(vs_reference < 1e-5, "gpu vs reference {vs_reference}");
    assert!(vs_official < 1e-5, "gpu vs official {vs_official}");
    let sim = Pipeline::new(SimDevice::new(), &model)
        .unwrap()
        .forward(x.view(), &t, &y)
        .unwrap()
        .into_dyn();
    let vs_sim = max_abs_diff("gpu forward vs sim", &ours, &sim);
    eprintln!("gpu forward: max |gpu - sim| {vs_sim:.2e}");
    assert!(vs_sim < 1e-6, "gpu vs sim {vs_sim}");
}

fn run<D: Device>(model: &Dit, dev: D, method: &MethodConfig, replay: Vec<ClusteringRecord>) -> SampleOutput {
    let (x, y) = support::tiny_guided_inputs(model);
    let mut pipeline = Pipeline::new(dev, model).unwrap();
    let options = SampleOptions {
        replay,
        record_clusterings: true,
    };
    let sampler = Sampler::Ddim(DdimSchedule::new(50).unwrap());
    pipeline
        .sample(x.view(), &y, Some(1.5), &sampler, method, options, &mut |_, _| {})
        .unwrap()
}

#[test]
fn guided_ddim_50_full_and_resca_match_the_reference_and_the_simulator() {
    if !support::gpu_or_skip("guided_ddim_50_full_and_resca_match_the_reference_and_the_simulator") {
        return;
    }
    let model = support::tiny_model();
    let (x, y) = support::tiny_guided_inputs(&model);
    let sampler = Sampler::Ddim(DdimSchedule::new(50).unwrap());

    // Full compute.
    let full = run(&model, gpu(), &MethodConfig::full(), Vec::new());
    let reference = sample(
        &model,
        x.view(),
        &y,
        Some(1.5),
        &sampler,
        &mut FullCompute,
        &mut |_, _| {},
    )
    .unwrap();
    trajectories_close("full: gpu vs reference", &full.trajectory, &reference, 1e-4);
    let mut sim = Pipeline::new(SimDevice::new(), &model).unwrap();
    let sim_full = sim
        .sample(
            x.view(),
            &y,
            Some(1.5),
            &sampler,
            &MethodConfig::full(),
            SampleOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
    trajectories_close("full: gpu vs sim", &full.trajectory, &sim_full.trajectory, 1e-4);

    // ResCa official: the simulator's clusterings replayed on the GPU and by the reference.
    let method = support::released_resca();
    let options = SampleOptions {
        replay: Vec::new(),
        record_clusterings: true,
    };
    let sim_resca = sim
        .sample(x.view(), &y, Some(1.5), &sampler, &method, options, &mut |_, _| {})
        .unwrap();
    let ours = run(&model, gpu(), &method, sim_resca.history.clone());
    trajectories_close("resca: gpu vs sim", &ours.trajectory, &sim_resca.trajectory, 1e-4);
    let mut hook = CachingHook::new(method.clone(), &model.config, 4, sampler.orientation()).unwrap();
    hook.replay_clusterings(sim_resca.history.clone());
    let reference = sample(&model, x.view(), &y, Some(1.5), &sampler, &mut hook, &mut |_, _| {}).unwrap();
    trajectories_close("resca: gpu vs reference", &ours.trajectory, &reference, 1e-4);
    // Its own clusterings (no replay): every kernel computes the simulator's bits (the first
    // test), so similarities, ties and all, and hence every clustering, are the simulator's.
    let own = run(&model, gpu(), &method, Vec::new());
    let (same, total) = identical_clusterings(&own.history, &sim_resca.history);
    eprintln!("resca own TETC: {same} of {total} clusterings identical to the simulator's");
    // Measured on an H100: 56 of 56.
    assert_eq!(same, total, "the GPU's TETC clustered differently from the simulator");
}

/// How many of two runs' clusterings (one per batch row and clustering step) have the same
/// labels and proxies, of how many; the runs must have clustered at the same steps.
fn identical_clusterings(a: &[ClusteringRecord], b: &[ClusteringRecord]) -> (usize, usize) {
    assert_eq!(a.len(), b.len(), "clustering steps");
    let pairs: Vec<_> = a.iter().zip(b).flat_map(|(a, b)| a.rows.iter().zip(&b.rows)).collect();
    let same = pairs
        .iter()
        .filter(|(a, b)| a.labels == b.labels && a.proxies == b.proxies)
        .count();
    (same, pairs.len())
}

#[test]
fn cli_sample_on_cuda_matches_the_reference_backend() {
    if !support::gpu_or_skip("cli_sample_on_cuda_matches_the_reference_backend") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |backend: &str| {
        let out = dir.path().join(format!("{backend}.safetensors"));
        let (weights, noise) = (
            support::vectors("weights.safetensors"),
            support::vectors("ddim.safetensors"),
        );
        let status = Command::new(env!("CARGO_BIN_EXE_resca"))
            .args([
                "sample",
                "--weights",
                weights.to_str().unwrap(),
                "--noise",
                noise.to_str().unwrap(),
            ])
            .args(["--labels", "7,4", "--cfg-scale", "1.5", "--backend", backend, "--json"])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let stats: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(stats["backend"], backend);
        SafetensorsFile::open(&out).unwrap().read_f32("x").unwrap()
    };
    let (cuda, reference) = (run("cuda"), run("reference"));
    let err = max_rel_to_max("cuda vs reference", &cuda, &reference);
    eprintln!("resca sample --backend cuda vs reference: {err:.2e} of max|x|");
    assert!(err < 1e-4);
    let info = Command::new(env!("CARGO_BIN_EXE_resca")).arg("info").output().unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("CUDA driver"));
}

/// Rust-CUDA's `cust` backend loads the same PTX and makes the same launches as the cudarc one,
/// so every value must be bit-identical; only the driver bindings differ.
#[cfg(feature = "cust")]
#[test]
fn cust_backend_gives_the_cudarc_backends_results_bit_for_bit() {
    use resca_host::cuda::cust_driver::CustDevice;
    if !support::gpu_or_skip("cust_backend_gives_the_cudarc_backends_results_bit_for_bit") {
        return;
    }
    let cust = || CustDevice::open(0).unwrap();
    let model = support::tiny_model();
    let (x, t, y) = forward_inputs(&SafetensorsFile::open(support::vectors("forward.safetensors")).unwrap());
    let via_cust = Pipeline::new(cust(), &model).unwrap().forward(x.view(), &t, &y);
    let via_cudarc = Pipeline::new(gpu(), &model).unwrap().forward(x.view(), &t, &y);
    let (via_cust, via_cudarc) = (via_cust.unwrap(), via_cudarc.unwrap());
    assert_eq!(via_cust, via_cudarc, "forward: cust and cudarc differ");

    // ResCa official with its own clusterings: the GPU's TETC too, so any difference in a launch
    // would change the clusterings and the whole trajectory.
    let method = support::released_resca();
    let (via_cust, via_cudarc) = (
        run(&model, cust(), &method, Vec::new()),
        run(&model, gpu(), &method, Vec::new()),
    );
    assert_eq!(via_cust.trajectory.x, via_cudarc.trajectory.x, "resca: x differs");
    assert_eq!(via_cust.trajectory.model_out, via_cudarc.trajectory.model_out);
    let (same, total) = identical_clusterings(&via_cust.history, &via_cudarc.history);
    assert_eq!(same, total, "cust and cudarc clustered differently");
    eprintln!("cust vs cudarc: forward and guided DDIM-50 ResCa ({total} clusterings) bit-identical");
}
