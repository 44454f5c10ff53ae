//! The whole DiT forward, guided forward and a guided DDIM-50 run on the kernels, on every device
//! present (the simulator, and the GPU where there is one), against the reference backend and the
//! official PyTorch tensors of `vectors/tiny`. The simulator runs each with the blocks of every
//! launch in grid order (`sim`) and reversed (`sim_reversed`).

mod support;

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, ArrayView4, Ix4};
use resca_host::pipeline::{Device, Pipeline, SampleOptions};
use resca_reference::cache::MethodConfig;
use resca_reference::ddim::DdimSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, FullCompute, Sampler, Trajectory, sample};
use resca_tests::{max_abs_diff, max_rel_to_max};
use support::{TestDevice, on_every_device, on_every_device_in_every_block_order};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/tiny")
}

fn vectors(name: &str) -> SafetensorsFile {
    SafetensorsFile::open(vectors_dir().join(name)).unwrap()
}

fn tensor(file: &SafetensorsFile, name: &str) -> ArrayD<f32> {
    file.read_f32(name).unwrap()
}

fn ints(file: &SafetensorsFile, name: &str) -> Vec<i64> {
    file.read_i64(name).unwrap().iter().copied().collect()
}

fn tiny_model() -> Dit {
    Dit::load(&vectors_dir().join("weights.safetensors"), None, None).unwrap()
}

/// A whole DDIM run of the full (uncached) model on `pipeline`.
fn sample_ddim<D: Device>(
    pipeline: &mut Pipeline<D>,
    noise: ArrayView4<f32>,
    labels: &[usize],
    cfg_scale: Option<f32>,
    schedule: &DdimSchedule,
) -> Trajectory {
    let sampler = Sampler::Ddim(schedule.clone());
    let options = SampleOptions::default();
    let full = MethodConfig::full();
    let output = pipeline.sample(noise, labels, cfg_scale, &sampler, &full, options, &mut |_, _| {});
    output.unwrap().trajectory
}

fn forward_matches_reference_and_official_output<D: TestDevice>() {
    let file = vectors("forward.safetensors");
    let model = tiny_model();
    let mut sim = Pipeline::new(D::open(), &model).unwrap();
    let x = tensor(&file, "x").into_dimensionality::<Ix4>().unwrap();
    let t: Vec<f32> = ints(&file, "t").iter().map(|&v| v as f32).collect();
    let y: Vec<usize> = ints(&file, "y").iter().map(|&v| v as usize).collect();
    let start = Instant::now();
    let ours = sim.forward(x.view(), &t, &y).unwrap().into_dyn();
    eprintln!("sim forward (B = 4): {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
    let reference = model.forward(x.view(), &t, &y).unwrap().into_dyn();
    let official = tensor(&file, "out");
    let vs_reference = max_abs_diff("forward out vs reference", &ours, &reference);
    let vs_official = max_abs_diff("forward out vs official", &ours, &official);
    eprintln!("forward: max |sim - reference| {vs_reference:.2e}, max |sim - official| {vs_official:.2e}");
    // Budget 1e-5 absolute (README.md, "Correctness"); measured 7.2e-7 vs the reference and vs
    // torch.
    assert!(vs_reference < 1e-5, "sim vs reference {vs_reference}");
    assert!(vs_official < 1e-5, "sim vs official {vs_official}");
}
on_every_device_in_every_block_order!(forward_matches_reference_and_official_output);

fn guided_forward_matches_reference_and_official_output<D: TestDevice>() {
    let file = vectors("forward.safetensors");
    let model = tiny_model();
    let mut sim = Pipeline::new(D::open(), &model).unwrap();
    let x = tensor(&file, "cfg.x").into_dimensionality::<Ix4>().unwrap();
    let t: Vec<f32> = ints(&file, "cfg.t").iter().map(|&v| v as f32).collect();
    let y: Vec<usize> = ints(&file, "cfg.y").iter().map(|&v| v as usize).collect();
    let ours = sim.forward_with_cfg(x.view(), &t, &y, 1.5).unwrap().into_dyn();
    let reference = model.forward_with_cfg(x.view(), &t, &y, 1.5).unwrap().into_dyn();
    let vs_reference = max_abs_diff("cfg out vs reference", &ours, &reference);
    let vs_official = max_abs_diff("cfg out vs official", &ours, &tensor(&file, "cfg.out"));
    eprintln!("cfg forward: max |sim - reference| {vs_reference:.2e}, max |sim - official| {vs_official:.2e}");
    // Budget 1e-5 absolute; measured 1.1e-6 vs the reference, 9.5e-7 vs torch.
    assert!(vs_reference < 1e-5, "sim vs reference {vs_reference}");
    assert!(vs_official < 1e-5, "sim vs official {vs_official}");
}
on_every_device_in_every_block_order!(guided_forward_matches_reference_and_official_output);

fn forward_is_bit_for_bit_deterministic<D: TestDevice>() {
    let file = vectors("forward.safetensors");
    let model = tiny_model();
    let mut sim = Pipeline::new(D::open(), &model).unwrap();
    let x = tensor(&file, "x").into_dimensionality::<Ix4>().unwrap();
    let t: Vec<f32> = ints(&file, "t").iter().map(|&v| v as f32).collect();
    let y: Vec<usize> = ints(&file, "y").iter().map(|&v| v as usize).collect();
    let bits = |a: ndarray::Array4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let first = bits(sim.forward(x.view(), &t, &y).unwrap());
    assert_eq!(first, bits(sim.forward(x.view(), &t, &y).unwrap()));
}
on_every_device_in_every_block_order!(forward_is_bit_for_bit_deterministic);

/// A sampling run takes its adaLN modulations from one batched computation at its start; a
/// forward pass computes them itself. Both give the same bits: each step's model output is the
/// guided forward of the step's input at the step's timestep.
fn a_sampled_step_is_the_forward_of_its_input<D: TestDevice>() {
    let file = vectors("ddim.safetensors");
    let model = tiny_model();
    let mut pipeline = Pipeline::new(D::open(), &model).unwrap();
    let noise = tensor(&file, "cfg.noise").into_dimensionality::<Ix4>().unwrap();
    let y: Vec<usize> = ints(&file, "cfg.y").iter().map(|&v| v as usize).collect();
    let schedule = DdimSchedule::new(4).unwrap();
    let run = sample_ddim(&mut pipeline, noise.view(), &y, Some(1.5), &schedule);
    let sampler = Sampler::Ddim(schedule);
    let bits = |a: ndarray::ArrayView4<f32>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for step in 0..4 {
        let x = run.x.index_axis(ndarray::Axis(0), step);
        let t = vec![sampler.step_info(step).timestep; x.dim().0];
        let forward = pipeline.forward_with_cfg(x, &t, &y, 1.5).unwrap();
        let sampled = run.model_out.index_axis(ndarray::Axis(0), step);
        assert!(
            bits(forward.view()) == bits(sampled),
            "step {step}: the sampled output differs"
        );
    }
}
on_every_device_in_every_block_order!(a_sampled_step_is_the_forward_of_its_input);

fn odd_guided_batch_and_bad_labels_are_errors_not_panics<D: TestDevice>() {
    let model = tiny_model();
    let mut sim = Pipeline::new(D::open(), &model).unwrap();
    let x = ndarray::Array4::<f32>::zeros((3, 4, 8, 8));
    let err = sim.forward_with_cfg(x.view(), &[0.0; 3], &[0, 1, 10], 1.5).unwrap_err();
    assert!(err.to_string().contains("even size"), "{err}");
    let err = sim.forward(x.view(), &[0.0; 3], &[0, 1, 11]).unwrap_err();
    assert!(err.to_string().contains("label 11"), "{err}");
}
on_every_device!(odd_guided_batch_and_bad_labels_are_errors_not_panics);

fn guided_ddim_50_run_matches_reference_and_official_trajectory<D: TestDevice>() {
    let file = vectors("ddim.safetensors");
    let model = tiny_model();
    let mut sim = Pipeline::new(D::open(), &model).unwrap();
    let noise = tensor(&file, "cfg.noise").into_dimensionality::<Ix4>().unwrap();
    let y: Vec<usize> = ints(&file, "cfg.y").iter().map(|&v| v as usize).collect();
    let schedule = DdimSchedule::new(50).unwrap();
    let start = Instant::now();
    let ours = sample_ddim(&mut sim, noise.view(), &y, Some(1.5), &schedule);
    eprintln!("sim guided DDIM-50 (B = 4): {:.2} s", start.elapsed().as_secs_f64());
    let reference = sample(
        &model,
        noise.view(),
        &y,
        Some(1.5),
        &Sampler::Ddim(schedule),
        &mut FullCompute,
        &mut |_, _| {},
    )
    .unwrap();
    let x = ours.x.into_dyn();
    let vs_reference = max_rel_to_max("x vs reference", &x, &reference.x);
    let vs_official = max_rel_to_max("x vs official", &x, &tensor(&file, "cfg.x"));
    let out_vs_reference = max_rel_to_max("model_out vs reference", &ours.model_out, &reference.model_out);
    eprintln!(
        "cfg DDIM-50: x rel. to max|x|: {vs_reference:.2e} vs reference, {vs_official:.2e} vs official; \
         model_out {out_vs_reference:.2e} vs reference"
    );
    // Budget 1e-4 relative to max|x| (README.md, "Correctness"); measured 6.2e-7 vs the reference
    // and vs torch, model_out 6.4e-7. All 50 steps, 4 rows: about 5 s in the simulator.
    assert!(vs_reference < 1e-4, "x vs reference {vs_reference}");
    assert!(vs_official < 1e-4, "x vs official {vs_official}");
    assert!(out_vs_reference < 1e-4, "model_out vs reference {out_vs_reference}");
}
on_every_device_in_every_block_order!(guided_ddim_50_run_matches_reference_and_official_trajectory);

#[test]
fn a_cli_job_on_the_sim_backend_matches_the_reference_backend() {
    use resca_host::job::SampleJob;
    use resca_host::pipeline::launch::Precision;
    use resca_host::run::{Backend, run_method, run_reference};
    use resca_reference::FullCompute;
    let file = vectors("ddim.safetensors");
    let model = tiny_model();
    let noise = tensor(&file, "noise").into_dimensionality::<Ix4>().unwrap();
    let job = SampleJob {
        noise,
        labels: ints(&file, "y").iter().map(|&v| v as usize).collect(),
        cfg_scale: 1.5,
        sampler: Sampler::Ddim(DdimSchedule::new(10).unwrap()),
        sampler_name: "ddim".to_string(),
    };
    let method = resca_reference::cache::MethodConfig::full();
    let ours = run_method(
        &model,
        &job,
        &method,
        Backend::Sim,
        Precision::Exact,
        None,
        &mut |_, _| {},
    )
    .unwrap();
    let reference = run_reference(&model, &job, "full", &mut FullCompute, &mut |_, _| {}).unwrap();
    assert_eq!(ours.stats.backend, "sim");
    assert_eq!(ours.stats.tflops, reference.stats.tflops);
    let err = max_rel_to_max("job x", &ours.x, &reference.x);
    eprintln!("sim job vs reference job: {err:.2e}");
    // Guided DDIM-10 (2 samples, 4 model rows); budget 1e-4 relative; measured 3.4e-7.
    assert!(err < 1e-4, "{err}");
}
