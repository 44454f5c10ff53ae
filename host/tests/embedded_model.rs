//! The embedded MNIST model under every method: the cached runs stay close to full compute.

use resca_host::embedded;
use resca_host::evaluation::trajectories::record;
use resca_host::inputs::seeded_noise;
use resca_host::job::SampleJob;
use resca_reference::Sampler;
use resca_reference::cache::{MethodConfig, MethodKind, ResidualScaling};
use resca_reference::ddim::DdimSchedule;

/// RMSE over the run of the final block's token states against full compute's, for one guided
/// sample (label 3, seed 0, DDIM-50).
fn state_rmse(methods: &[MethodConfig]) -> Vec<f64> {
    let model = embedded::default_model().unwrap();
    let job = SampleJob {
        noise: seeded_noise(0, 1, &model.config),
        labels: vec![3],
        cfg_scale: 1.5,
        sampler: Sampler::Ddim(DdimSchedule::new(50).unwrap()),
        sampler_name: "ddim".into(),
    };
    let full = record(&model, &job, &MethodConfig::full()).unwrap();
    methods
        .iter()
        .map(|m| {
            let run = record(&model, &job, m).unwrap();
            let diff = &run.states - &full.states;
            (diff.mapv(|v| f64::from(v * v)).sum() / diff.len() as f64).sqrt()
        })
        .collect()
}

/// ResCa's paper scaling re-anchors the MLP residuals on computed outputs at every full step.
/// Differencing a full step's output against the simulated one before it instead (the literal
/// one-step residual) extrapolates the simulation's correction and diverged: state RMSE 26.1, the
/// MLP outputs growing by ~35 per sparse step.
///
/// What holds on the trained model (16000 steps), measured: FORA 0.159, ResCa paper 0.149, ResCa
/// official 0.144, TaylorSeer 0.132. ResCa (K = 16 of 256 tokens computed on sparse steps) stays
/// closer to full compute than FORA's reuse and within 1.25x of TaylorSeer, which computes no token
/// on those steps either but extrapolates every token from its own history. (On the model at 8000
/// training steps ResCa was the closest of the three: 0.28 against TaylorSeer's 0.43; the ordering
/// against TaylorSeer is model-dependent, so it is not asserted.)
#[test]
fn resca_token_states_stay_close_to_full_compute() {
    let resca = MethodConfig::new(MethodKind::ResCa, 5, 1);
    let official = MethodConfig {
        residuals: ResidualScaling::Official,
        ..resca.clone()
    };
    let errors = state_rmse(&[
        MethodConfig::new(MethodKind::TaylorSeer, 5, 1),
        resca,
        official,
        MethodConfig::new(MethodKind::Fora, 5, 0),
    ]);
    let [taylorseer, paper, official, fora] = [errors[0], errors[1], errors[2], errors[3]];
    eprintln!(
        "state RMSE vs full: taylorseer {taylorseer:.3}, resca paper {paper:.3}, resca official {official:.3}, fora {fora:.3}"
    );
    for (name, error) in [("paper", paper), ("official", official)] {
        assert!(error < fora, "ResCa ({name}) {error} is not closer than FORA {fora}");
        assert!(
            error < 1.25 * taylorseer,
            "ResCa ({name}) {error} is more than 1.25x TaylorSeer's {taylorseer}"
        );
    }
}
