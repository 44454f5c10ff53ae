//! Runs whose values leave float32's range: every output is checked before it is returned, and
//! the error names the step, the block and branch where the first non-finite value appears,
//! and what to check (the weights, the guidance scale). Guidance scales and timesteps that are
//! not finite are refused up front.

use ndarray::Array4;
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;
use resca_reference::{Dit, DitConfig, FullCompute, Sampler, sample};

/// The tiny preset with seeded weights, its block 0 attention made to overflow: a query and key
/// bias of 1e30 gives scores of ~1e61, infinite in f32, and the softmax of an infinite row is NaN.
fn diverging_model() -> Dit {
    let mut model = Dit::random(DitConfig::preset("tiny").unwrap(), 7).unwrap();
    model.weights.blocks[0].qkv.bias.fill(1e30);
    model
}

fn noise(batch: usize) -> Array4<f32> {
    Array4::from_shape_fn((batch, 4, 8, 8), |(b, c, h, w)| {
        ((b + 3 * c + 5 * h + 7 * w) % 11) as f32 / 5.0 - 1.0
    })
}

#[test]
fn a_diverging_last_step_is_an_error_naming_the_step_block_and_branch() {
    let model = diverging_model();
    for sampler in [
        Sampler::Ddim(DdimSchedule::new(1).unwrap()),
        Sampler::Flow(FlowSchedule::new(1, 1.0).unwrap()),
    ] {
        let name = match sampler {
            Sampler::Ddim(_) => "DDIM",
            Sampler::Flow(_) => "flow",
        };
        let error = sample(
            &model,
            noise(2).view(),
            &[1, 2],
            None,
            &sampler,
            &mut FullCompute,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains(&format!("{name} step 1 of 1")), "{error}");
        assert!(error.contains("first in block 0's attention branch"), "{error}");
        assert!(error.contains("check the weights file"), "{error}");
    }
}

#[test]
fn a_guided_diverging_run_also_points_at_the_guidance_scale() {
    let model = diverging_model();
    let sampler = Sampler::Ddim(DdimSchedule::new(3).unwrap());
    let null = model.config.null_label();
    let error = sample(
        &model,
        noise(2).view(),
        &[4, null],
        Some(1.5),
        &sampler,
        &mut FullCompute,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("step 1 of 3") && error.contains("block 0's attention branch"),
        "{error}"
    );
    assert!(error.contains("lower --cfg-scale (now 1.5)"), "{error}");
}

#[test]
fn a_diverging_forward_pass_is_an_error_naming_the_block_and_branch() {
    let model = diverging_model();
    let error = model
        .forward(noise(2).view(), &[10.0, 500.0], &[1, 2])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the forward pass produced a non-finite value"),
        "{error}"
    );
    assert!(error.contains("block 0's attention branch"), "{error}");
    let error = model
        .forward_with_cfg(noise(2).view(), &[10.0, 10.0], &[1, 10], 4.0)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("block 0's attention branch") && error.contains("(now 4)"),
        "{error}"
    );
}

#[test]
fn guidance_scales_and_timesteps_that_are_not_finite_are_refused() {
    let model = Dit::random(DitConfig::preset("tiny").unwrap(), 7).unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(2).unwrap());
    for scale in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let error = sample(
            &model,
            noise(2).view(),
            &[1, 10],
            Some(scale),
            &sampler,
            &mut FullCompute,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains(&format!("--cfg-scale {scale} is not a finite number")),
            "{error}"
        );
        let error = model
            .forward_with_cfg(noise(2).view(), &[5.0, 5.0], &[1, 10], scale)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--cfg-scale") && error.contains("not a finite number"),
            "{error}"
        );
    }
    for t in [f32::INFINITY, f32::NAN, -1.0] {
        let error = model
            .forward(noise(2).view(), &[t, 5.0], &[1, 2])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("timestep {t} is negative, NaN or infinite")),
            "{error}"
        );
    }
}

/// The checks leave finite runs as they were: a finite run returns its trajectory.
#[test]
fn finite_runs_are_unchanged_by_the_checks() {
    let model = Dit::random(DitConfig::preset("tiny").unwrap(), 7).unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(4).unwrap());
    let run = sample(
        &model,
        noise(2).view(),
        &[1, 2],
        None,
        &sampler,
        &mut FullCompute,
        &mut |_, _| {},
    )
    .unwrap();
    assert!(run.x.iter().all(|v| v.is_finite()) && run.model_out.iter().all(|v| v.is_finite()));
    let direct = model
        .forward(run.x.slice(ndarray::s![0, .., .., .., ..]), &[999.0, 999.0], &[1, 2])
        .unwrap();
    let recorded = run.model_out.slice(ndarray::s![0, .., .., .., ..]);
    // The same forward pass, bit for bit: measured max |diff| 0.
    assert_eq!(direct.view(), recorded);
}
