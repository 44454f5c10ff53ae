//! The device pipeline checks every step's results before returning them: on the simulator, a
//! diverging run is an error naming the step, the block and branch (located by the reference's
//! forward of the same input) and the weights; a non-finite guidance scale is refused.

use ndarray::Array4;
use resca_host::pipeline::{Pipeline, SampleOptions};
use resca_host::sim::SimDevice;
use resca_reference::cache::MethodConfig;
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler};

fn diverging_model() -> Dit {
    let mut model = Dit::random(DitConfig::preset("tiny").unwrap(), 7).unwrap();
    // Query and key biases of 1e30: scores of ~1e61 overflow, the softmax gives NaN.
    model.weights.blocks[1].qkv.bias.fill(1e30);
    model
}

fn noise() -> Array4<f32> {
    Array4::from_shape_fn((2, 4, 8, 8), |(b, c, h, w)| {
        ((b + 3 * c + 5 * h + 7 * w) % 11) as f32 / 5.0 - 1.0
    })
}

#[test]
fn a_diverging_sim_run_names_the_step_block_and_branch() {
    let model = diverging_model();
    let mut pipeline = Pipeline::new(SimDevice::new(), &model).unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(1).unwrap());
    let error = pipeline
        .sample(
            noise().view(),
            &[3, 4],
            None,
            &sampler,
            &MethodConfig::full(),
            SampleOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("DDIM step 1 of 1"), "{error}");
    assert!(error.contains("first in block 1's attention branch"), "{error}");
    assert!(error.contains("check the weights file"), "{error}");
    let error = pipeline
        .forward(noise().view(), &[10.0, 10.0], &[3, 4])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("forward pass") && error.contains("block 1's attention branch"),
        "{error}"
    );
}

#[test]
fn non_finite_guidance_scales_and_timesteps_are_refused_by_the_pipeline() {
    let model = Dit::random(DitConfig::preset("tiny").unwrap(), 7).unwrap();
    let mut pipeline = Pipeline::new(SimDevice::new(), &model).unwrap();
    let null = model.config.null_label();
    for scale in [f32::NAN, f32::INFINITY] {
        let error = pipeline
            .forward_with_cfg(noise().view(), &[5.0, 5.0], &[1, null], scale)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a finite number"), "{error}");
    }
    let error = pipeline
        .forward(noise().view(), &[f32::INFINITY, 5.0], &[1, 2])
        .unwrap_err()
        .to_string();
    assert!(error.contains("timestep inf"), "{error}");
}
