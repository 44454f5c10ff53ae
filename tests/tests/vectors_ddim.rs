//! The DDIM-50 sampler against `vectors/tiny/ddim.safetensors` (guided-diffusion's
//! `ddim_sample_loop_progressive`, eta 0, no clipping, float32, torch 2.15 CPU).

use ndarray::{Ix1, Ix4};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, FullCompute, Sampler, sample};
use resca_tests::{labels, max_rel_to_max, tensor, vectors, vectors_dir};

#[test]
fn schedule_matches_the_respaced_official_schedule_exactly() {
    let file = vectors("ddim.safetensors");
    let schedule = DdimSchedule::new(50).unwrap();
    let map: Vec<i64> = file.read_i64("sched.timestep_map").unwrap().iter().copied().collect();
    assert_eq!(schedule.timestep_map, map);
    for (ours, name) in [
        (&schedule.alphas_cumprod, "sched.alphas_cumprod"),
        (&schedule.alphas_cumprod_prev, "sched.alphas_cumprod_prev"),
    ] {
        let expected = file.read_f64(name).unwrap().into_dimensionality::<Ix1>().unwrap();
        for (a, b) in ours.iter().zip(expected.iter()) {
            // Same float64 operations in the same order as numpy: measured 0 ulp apart.
            assert!((a - b).abs() <= 1e-15 * b.abs(), "{name}: {a} vs {b}");
        }
    }
}

fn run(noise_name: &str, y_name: &str, cfg_scale: Option<f32>) -> resca_reference::Trajectory {
    let file = vectors("ddim.safetensors");
    let model = Dit::load(&vectors_dir().join("weights.safetensors"), None, None).unwrap();
    let noise = tensor(&file, noise_name).into_dimensionality::<Ix4>().unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(50).unwrap());
    sample(
        &model,
        noise.view(),
        &labels(&file, y_name),
        cfg_scale,
        &sampler,
        &mut FullCompute,
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn plain_ddim_trajectory_matches_all_51_states() {
    let file = vectors("ddim.safetensors");
    let trajectory = run("noise", "y", None);
    let err = max_rel_to_max("plain.x", &trajectory.x, &tensor(&file, "plain.x"));
    eprintln!("plain.x: max |diff| / max|x| = {err:.2e}");
    // Budget 1e-5 relative to max|x| (|x| grows to ~800 with random weights); measured 6.8e-7.
    assert!(err < 1e-5, "plain.x relative error {err}");
    let err = max_rel_to_max(
        "plain.model_out",
        &trajectory.model_out,
        &tensor(&file, "plain.model_out"),
    );
    eprintln!("plain.model_out: max |diff| / max = {err:.2e}");
    // Measured 4.9e-7.
    assert!(err < 1e-5, "plain.model_out relative error {err}");
}

#[test]
fn guided_ddim_trajectory_matches_all_51_states_and_rows() {
    let file = vectors("ddim.safetensors");
    let trajectory = run("cfg.noise", "cfg.y", Some(1.5));
    let err = max_rel_to_max("cfg.x", &trajectory.x, &tensor(&file, "cfg.x"));
    eprintln!("cfg.x: max |diff| / max|x| = {err:.2e}");
    // Measured 6.8e-7 (all four rows: the unconditional half evolves as upstream's does).
    assert!(err < 1e-5, "cfg.x relative error {err}");
    let err = max_rel_to_max("cfg.model_out", &trajectory.model_out, &tensor(&file, "cfg.model_out"));
    eprintln!("cfg.model_out: max |diff| / max = {err:.2e}");
    // Measured 7.4e-7.
    assert!(err < 1e-5, "cfg.model_out relative error {err}");
}
