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
//!   bit for bit against the cudarc backend (same PTX, same launches);
//! * sparse steps replayed as CUDA graphs against the same runs launched directly, bit for bit;
//! * the tensor-core numerics probe: `mma.sync` on random fragments against the simulator's model
//!   (`sim::mma`), the mismatching bits counted and bounded.
//!
//! `RESCA_PRECISION` (exact, tf32x3, tf32, bf16; default exact) sets the precision mode of the
//! model runs: `exact` compares with the simulator bit for bit (budgets of rounding noise), a fast
//! mode within the budgets of docs/gpu.md "Precision modes", replaying the simulator's
//! clusterings (its tensor cores may differ from the simulator's model in the last bits, and a
//! discrete decision downstream with them).
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
use resca_host::pipeline::launch::{self, Epilogue, GemmWeight, Precision};
use resca_host::pipeline::{Device, GraphMode, Kernel, Pipeline, SampleOptions, SampleOutput};
use resca_host::sim::SimDevice;
use resca_reference::cache::{CachingHook, ClusteringRecord, MethodConfig, MethodKind};
use resca_reference::ddim::DdimSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, FullCompute, Sampler, Trajectory, sample};
use resca_tests::{max_abs_diff, max_rel_to_max};

fn gpu() -> CudaDevice {
    CudaDevice::open_default().unwrap()
}

/// The precision mode of the model runs: `RESCA_PRECISION`, default `exact`.
fn precision() -> Precision {
    match std::env::var("RESCA_PRECISION") {
        Err(_) => Precision::Exact,
        Ok(name) => Precision::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("RESCA_PRECISION={name}: not a precision mode (exact, tf32x3, tf32, bf16)")),
    }
}

/// The budgets of a precision mode: (forward vs the FP32 reference, relative L2; a guided DDIM-50
/// run vs the reference or the simulator in the same mode, of max|.|).
fn budgets(p: Precision) -> (f32, f32) {
    match p {
        // Forward: 1e-5 (measured on an H100 7.2e-7 absolute); runs: 1e-4 (measured 6.2e-7).
        Precision::Exact => (1e-5, 1e-4),
        // docs/gpu.md "Precision modes": forward 1e-6 (simulator 2.55e-7); runs at the exact
        // budget (3xTF32 stays at the FP32 level).
        Precision::Tf32x3 => (1e-6, 1e-4),
        // Forward 1e-3 (simulator 2.82e-4); guided runs 1e-3 (simulator, DDIM-10: 2.3e-4).
        Precision::Tf32 => (1e-3, 1e-3),
        // Forward 1e-2 (simulator 2.24e-3); runs 1e-2 (4x the forward's error).
        Precision::Bf16 => (1e-2, 1e-2),
    }
}

/// `|a - b|_2 / |b|_2`.
fn relative_l2(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        diff += ((x - y) as f64).powi(2);
        norm += (*y as f64).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt() as f32
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
    let mode = precision();
    let mut pipeline = Pipeline::with_precision(gpu(), &model, mode).unwrap();
    let ours = pipeline.forward(x.view(), &t, &y).unwrap().into_dyn();
    let reference = model.forward(x.view(), &t, &y).unwrap().into_dyn();
    let official = file.read_f32("out").unwrap();
    let sim = Pipeline::with_precision(SimDevice::new(), &model, mode)
        .unwrap()
        .forward(x.view(), &t, &y)
        .unwrap()
        .into_dyn();
    if mode != Precision::Exact {
        let (budget, _) = budgets(mode);
        let vs_reference = relative_l2(&ours, &reference);
        let vs_sim = relative_l2(&ours, &sim);
        eprintln!(
            "gpu forward ({}): relative L2 vs reference {vs_reference:.2e}, vs sim {vs_sim:.2e} (budget {budget:.0e})",
            mode.name()
        );
        assert!(
            vs_reference < budget,
            "{}: gpu vs reference {vs_reference}",
            mode.name()
        );
        assert!(vs_sim < budget, "{}: gpu vs sim {vs_sim}", mode.name());
        return;
    }
    let vs_reference = max_abs_diff("gpu forward vs reference", &ours, &reference);
    let vs_official = max_abs_diff("gpu forward vs official", &ours, &official);
    eprintln!("gpu forward: max |gpu - reference| {vs_reference:.2e}, max |gpu - official| {vs_official:.2e}");
    // Budget 1e-5 absolute, as the simulator's (measured there 7.2e-7).
    assert!(vs_reference < 1e-5, "gpu vs reference {vs_reference}");
    assert!(vs_official < 1e-5, "gpu vs official {vs_official}");
    let vs_sim = max_abs_diff("gpu forward vs sim", &ours, &sim);
    eprintln!("gpu forward: max |gpu - sim| {vs_sim:.2e}");
    assert!(vs_sim < 1e-6, "gpu vs sim {vs_sim}");
}

/// A guided DDIM-50 run of `method` in the mode of [`precision`] (graphs as the device decides).
fn run<D: Device>(model: &Dit, dev: D, method: &MethodConfig, replay: Vec<ClusteringRecord>) -> SampleOutput {
    run_with_graphs(model, dev, method, replay, GraphMode::Auto)
}

fn run_with_graphs<D: Device>(
    model: &Dit,
    dev: D,
    method: &MethodConfig,
    replay: Vec<ClusteringRecord>,
    graphs: GraphMode,
) -> SampleOutput {
    let (x, y) = support::tiny_guided_inputs(model);
    let mut pipeline = Pipeline::with_precision(dev, model, precision()).unwrap();
    let options = SampleOptions {
        replay,
        record_clusterings: true,
        graphs,
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
    let mode = precision();
    let (_, budget) = budgets(mode);

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
    trajectories_close("full: gpu vs reference", &full.trajectory, &reference, budget);
    let mut sim = Pipeline::with_precision(SimDevice::new(), &model, mode).unwrap();
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
    trajectories_close("full: gpu vs sim", &full.trajectory, &sim_full.trajectory, budget);

    // ResCa official: the simulator's clusterings replayed on the GPU and by the reference.
    let method = support::released_resca();
    let options = SampleOptions {
        replay: Vec::new(),
        record_clusterings: true,
        ..Default::default()
    };
    let sim_resca = sim
        .sample(x.view(), &y, Some(1.5), &sampler, &method, options, &mut |_, _| {})
        .unwrap();
    let ours = run(&model, gpu(), &method, sim_resca.history.clone());
    trajectories_close("resca: gpu vs sim", &ours.trajectory, &sim_resca.trajectory, budget);
    let mut hook = CachingHook::new(method.clone(), &model.config, 4, sampler.orientation()).unwrap();
    hook.replay_clusterings(sim_resca.history.clone());
    let reference = sample(&model, x.view(), &y, Some(1.5), &sampler, &mut hook, &mut |_, _| {}).unwrap();
    trajectories_close("resca: gpu vs reference", &ours.trajectory, &reference, budget);
    if mode != Precision::Exact {
        // The tensor cores may round differently from the simulator's model: a clustering of
        // its own may differ at a tie, which the exact mode alone rules out.
        return;
    }
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
            .args(match backend {
                "cuda" => vec!["--precision", precision().name()],
                _ => Vec::new(),
            })
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
    let (_, budget) = budgets(precision());
    eprintln!(
        "resca sample --backend cuda --precision {} vs reference: {err:.2e} of max|x| (budget {budget:.0e})",
        precision().name()
    );
    assert!(err < budget);
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

/// Sparse steps replayed as CUDA graphs (captured once per key, launched on the device's
/// stream) give the bits of the same run launched directly, for every caching method; the
/// clusterings of the direct run are replayed so that both runs take the same decisions.
#[test]
fn sparse_steps_as_cuda_graphs_give_the_direct_runs_bits() {
    if !support::gpu_or_skip("sparse_steps_as_cuda_graphs_give_the_direct_runs_bits") {
        return;
    }
    let model = support::tiny_model();
    let resca = support::released_resca();
    let clusca = MethodConfig {
        clusters: 4,
        seed: 3,
        ..MethodConfig::new(MethodKind::ClusCa, 4, 1)
    };
    for (what, method) in [
        ("fora", MethodConfig::new(MethodKind::Fora, 4, 0)),
        ("taylorseer o2", MethodConfig::new(MethodKind::TaylorSeer, 4, 2)),
        ("clusca", clusca),
        ("resca official", resca),
    ] {
        let direct = run_with_graphs(&model, gpu(), &method, Vec::new(), GraphMode::Off);
        let graphed = run_with_graphs(&model, gpu(), &method, direct.history.clone(), GraphMode::On);
        let bits = |a: &ndarray::Array5<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let x = max_abs_diff(what, &graphed.trajectory.x, &direct.trajectory.x);
        eprintln!("{what} ({}): graphs vs direct, max |diff| {x:.2e}", precision().name());
        assert!(
            bits(&graphed.trajectory.x) == bits(&direct.trajectory.x),
            "{what}: x differs by {x}"
        );
        assert!(
            bits(&graphed.trajectory.model_out) == bits(&direct.trajectory.model_out),
            "{what}: model_out differs"
        );
    }
}

/// The tensor-core numerics probe: the tensor-core GEMM of each fast mode with K = 16 (one
/// BF16 `mma.sync` m16n8k16 per output, two TF32 m16n8k8, six for 3xTF32; zero bias, so the
/// output is the instructions' result) on random operands spanning 2^-8 .. 2^8, on the GPU and
/// on the simulator, whose `mma.sync` is a model (`sim::mma`: exact products, summed in f64 and
/// rounded once). Counts the outputs that are not bit-identical and the mismatching bits, and
/// asserts the model's bound, (k + 1) 2^-23 (|c| + sum |a_k b_k|) per instruction of k products,
/// summed over an output's instructions with |c| <= sum_k |a_k w_k|:
/// |gpu - sim| <= instructions (k + 1) 2^-23 2 sum_k |a_k w_k|.
#[test]
fn tensor_core_mma_matches_the_simulators_model_within_its_bound() {
    if !support::gpu_or_skip("tensor_core_mma_matches_the_simulators_model_within_its_bound") {
        return;
    }
    let (m, n, k) = (64, 64, 16);
    let operand = |seed: u64, len: usize| -> Vec<f32> {
        let unit = support::values(seed, len);
        let scale = support::values(seed ^ 0x5eed, len);
        unit.iter()
            .zip(&scale)
            .map(|(u, e)| u * (8.0 * e).round().exp2())
            .collect()
    };
    let (a, w, bias) = (operand(31, m * k), operand(32, n * k), vec![0.0f32; n]);
    // (instructions per output, products per instruction) at K = 16.
    for (mode, instructions, per_instruction) in [
        (Precision::Tf32x3, 6, 8),
        (Precision::Tf32, 2, 8),
        (Precision::Bf16, 1, 16),
    ] {
        let ours = gemm_once(gpu(), mode, &a, &w, &bias, m, n, k);
        let model = gemm_once(SimDevice::new(), mode, &a, &w, &bias, m, n, k);
        let bound_factor = (instructions * (per_instruction + 1) * 2) as f64 * 2f64.powi(-23);
        let (mut differing, mut bits, mut worst) = (0usize, 0u32, 0.0f64);
        for row in 0..m {
            for col in 0..n {
                let i = row * n + col;
                let scale: f64 = (0..k)
                    .map(|kk| (a[row * k + kk] as f64 * w[col * k + kk] as f64).abs())
                    .sum();
                let diff = (ours[i] as f64 - model[i] as f64).abs();
                let xor = ours[i].to_bits() ^ model[i].to_bits();
                differing += (xor != 0) as usize;
                bits += xor.count_ones();
                worst = worst.max(diff / (scale * bound_factor).max(f64::MIN_POSITIVE));
            }
        }
        eprintln!(
            "tensor-core probe {}: {differing} of {} outputs not bit-identical, {bits} mismatching bits, worst \
             |gpu - sim| {worst:.3} of the bound",
            mode.name(),
            m * n
        );
        assert!(
            worst <= 1.0,
            "{}: |gpu - sim| is {worst} times the model's bound",
            mode.name()
        );
    }
}

/// `A W^T + 0` on `dev`'s tensor cores in `mode`, read back.
#[allow(clippy::too_many_arguments)]
fn gemm_once<D: Device>(
    mut dev: D,
    mode: Precision,
    a: &[f32],
    w: &[f32],
    bias: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let ga = dev.upload_new(a).unwrap();
    let gw = match mode {
        Precision::Bf16 => GemmWeight::Bf16(dev.upload_new(&launch::pack_bf16_weight(w, n, k)).unwrap().all()),
        _ => GemmWeight::F32(dev.upload_new(w).unwrap().all()),
    };
    let gb = dev.upload_new(bias).unwrap();
    let out = dev.alloc::<f32>(m * n).unwrap();
    launch::gemm_tc(
        &mut dev,
        mode,
        ga.all(),
        gw,
        gb.all(),
        out.all(),
        m,
        n,
        k,
        Epilogue::Bias,
    )
    .unwrap();
    dev.download_vec(out.all()).unwrap()
}
