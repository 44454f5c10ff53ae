//! Golden outputs of the reference itself for the caching modes no official run covers: FORA,
//! ClusCa with its own random draws, and ResCa's `paper` residual scaling and `it` and `bdf2`
//! solvers. Each is the guided DDIM-50 of the released ResCa run (`resca_i4_o1_k4_p0.0_ie_center`:
//! its noise, labels and, for ResCa, its recorded clusterings replayed, so that K-medoids near-ties
//! decided by float rounding cannot change the result), interval 4, K = 4.
//!
//! The files in `tests/vectors/golden/` hold the samples' trajectory `x` (51, 2, 4, 8, 8): the two
//! conditional rows (the unconditional half of the guided batch repeats them). They are written by
//! `cargo run -p resca-tests --example record_golden` and compared by `tests/golden_caching.rs`,
//! which also shows why they can be trusted (their agreement with the official runs where the
//! modes coincide).

use std::collections::HashMap;
use std::path::PathBuf;

use ndarray::{Array5, Ix4, s};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{CachingHook, MethodConfig, MethodKind, ResidualScaling, read_clusterings};
use resca_reference::ddim::DdimSchedule;
use resca_reference::safetensors_file::{OutTensor, write_safetensors};
use resca_reference::sampler::Orientation;
use resca_reference::{Dit, Sampler, StepHook, Trajectory, sample};

use crate::{labels, tensor, vectors, vectors_dir};

/// The official run whose noise, labels and clusterings every golden run reuses.
pub const SOURCE: &str = "resca_i4_o1_k4_p0.0_ie_center.safetensors";

/// The command that rewrites the golden files.
pub const COMMAND: &str = "cargo run -p resca-tests --example record_golden";

/// One recorded mode: the file stem and the method.
pub struct GoldenCase {
    pub name: &'static str,
    pub method: MethodConfig,
}

/// ResCa with the released run's settings (K = 4, alpha 0.6, medoid proxies) and the given
/// solver and residual scaling.
pub fn resca(solver: Solver, residuals: ResidualScaling) -> MethodConfig {
    MethodConfig {
        clusters: 4,
        alpha: 0.6,
        solver,
        proxy: ProxyChoice::Medoid,
        residuals,
        ..MethodConfig::new(MethodKind::ResCa, 4, 1)
    }
}

/// Every recorded mode.
pub fn cases() -> Vec<GoldenCase> {
    use ResidualScaling::{Official, Paper};
    vec![
        GoldenCase {
            name: "fora_i4",
            method: MethodConfig::new(MethodKind::Fora, 4, 0),
        },
        GoldenCase {
            name: "clusca_i4_o2_k4_seed3",
            method: MethodConfig {
                clusters: 4,
                propagation: 0.05,
                seed: 3,
                ..MethodConfig::new(MethodKind::ClusCa, 4, 2)
            },
        },
        GoldenCase {
            name: "resca_paper_ie",
            method: resca(Solver::ImplicitEuler, Paper),
        },
        GoldenCase {
            name: "resca_paper_it3",
            method: resca(Solver::ImplicitTaylor(3), Paper),
        },
        GoldenCase {
            name: "resca_paper_bdf2",
            method: resca(Solver::Bdf2, Paper),
        },
        GoldenCase {
            name: "resca_official_it3",
            method: resca(Solver::ImplicitTaylor(3), Official),
        },
        GoldenCase {
            name: "resca_official_bdf2",
            method: resca(Solver::Bdf2, Official),
        },
    ]
}

/// `tests/vectors/golden/<name>.safetensors`.
pub fn golden_path(name: &str) -> PathBuf {
    vectors_dir()
        .parent()
        .expect("vectors/tiny has a parent")
        .join("golden")
        .join(format!("{name}.safetensors"))
}

/// Runs `method` on the guided DDIM-50 of [`SOURCE`], replaying its clusterings for ResCa.
pub fn run(method: &MethodConfig) -> Trajectory {
    let config = resca_reference::DitConfig::preset("tiny").unwrap();
    let mut hook = CachingHook::new(method.clone(), &config, 4, Orientation::CountingDown).unwrap();
    if method.kind == MethodKind::ResCa {
        hook.replay_clusterings(read_clusterings(&vectors(SOURCE), 4, 16, 4).unwrap());
    }
    run_with(method, &mut hook)
}

/// The guided DDIM-50 of [`SOURCE`] with `hook`.
pub fn run_with(method: &MethodConfig, hook: &mut dyn StepHook) -> Trajectory {
    let model = Dit::load(&vectors_dir().join("weights.safetensors"), None, None).unwrap();
    method.prepare(&model);
    let file = vectors(SOURCE);
    let noise = tensor(&file, "noise").into_dimensionality::<Ix4>().unwrap();
    let sampler = Sampler::Ddim(DdimSchedule::new(50).unwrap());
    sample(
        &model,
        noise.view(),
        &labels(&file, "y"),
        Some(1.5),
        &sampler,
        hook,
        &mut |_, _| {},
    )
    .unwrap()
}

/// The conditional rows of a guided trajectory, as the golden files hold them.
pub fn samples(trajectory: &Trajectory) -> Array5<f32> {
    trajectory.x.slice(s![.., ..2, .., .., ..]).to_owned()
}

/// Writes the golden file of `case` from `trajectory`.
pub fn write(case: &GoldenCase, trajectory: &Trajectory) -> resca_reference::Result<()> {
    let metadata = HashMap::from([
        ("method".to_string(), case.method.name()),
        ("source".to_string(), SOURCE.to_string()),
        ("command".to_string(), COMMAND.to_string()),
    ]);
    write_safetensors(
        &golden_path(case.name),
        vec![("x".to_string(), OutTensor::F32(samples(trajectory).into_dyn()))],
        metadata,
    )
}
