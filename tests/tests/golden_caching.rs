//! The caching modes no official run covers, against golden outputs of the reference itself
//! (`tests/vectors/golden/`, written by `cargo run -p resca-tests --example record_golden`; see
//! `resca_tests::golden`), and why those outputs can be trusted: where a mode coincides with one
//! the official code ran, the two agree.

use std::sync::Arc;

use ndarray::{Array3, ArrayView3, Axis, s};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::{CachingHook, MethodConfig, MethodKind, ResidualScaling};
use resca_reference::model::{Branch, BranchHook, BranchInput};
use resca_reference::sampler::{StepHook, StepInfo};
use resca_reference::{DitConfig, Trajectory};
use resca_tests::golden::{GoldenCase, SOURCE, cases, golden_path, resca, run, samples};
use resca_tests::{max_rel_to_max, tensor, vectors};

/// Budget of max|x|: float rounding between machines (BLAS builds, vector widths). The reference
/// and the official code differ by ~7e-7 of max|x| on the runs they share; the modes recorded here
/// differ from each other by 5e-4 or more (`golden_modes_are_far_apart`).
const BUDGET: f32 = 1e-5;

fn golden(name: &str) -> ndarray::ArrayD<f32> {
    let file = resca_reference::safetensors_file::SafetensorsFile::open(golden_path(name))
        .unwrap_or_else(|e| panic!("golden output: {e}"));
    tensor(&file, "x")
}

fn case(name: &str) -> GoldenCase {
    cases().into_iter().find(|c| c.name == name).expect("a recorded case")
}

/// Runs the case `name` and returns its error against its golden output, of max|x|.
fn error_against_golden(name: &str) -> f32 {
    let trajectory = run(&case(name).method);
    let err = max_rel_to_max(name, &samples(&trajectory), &golden(name));
    eprintln!("{name}: {err:.2e} of max|x|");
    err
}

#[test]
fn fora_matches_its_golden_output() {
    // Measured 0 (same machine as the recording).
    assert!(error_against_golden("fora_i4") < BUDGET);
}

#[test]
fn clusca_with_drawn_choices_matches_its_golden_output() {
    // Measured 0.
    assert!(error_against_golden("clusca_i4_o2_k4_seed3") < BUDGET);
}

#[test]
fn resca_paper_scaling_matches_its_golden_outputs() {
    // Measured 0 for each solver.
    for name in ["resca_paper_ie", "resca_paper_it3", "resca_paper_bdf2"] {
        assert!(error_against_golden(name) < BUDGET, "{name}");
    }
}

#[test]
fn resca_official_scaling_with_it_and_bdf2_matches_its_golden_outputs() {
    // Measured 0 for each solver.
    for name in ["resca_official_it3", "resca_official_bdf2"] {
        assert!(error_against_golden(name) < BUDGET, "{name}");
    }
}

/// The budget tells every recorded mode from every other: a mutant that turns one mode into
/// another (IT's orders above 1 dropped, paper residuals scaled as the released code's, BDF2 as
/// IE) cannot pass.
#[test]
fn golden_modes_are_far_apart() {
    let all = cases();
    let mut closest = f32::INFINITY;
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            let distance = max_rel_to_max(a.name, &golden(a.name), &golden(b.name));
            eprintln!("{} vs {}: {distance:.2e}", a.name, b.name);
            assert!(
                distance > 10.0 * BUDGET,
                "{} and {} are {distance} apart",
                a.name,
                b.name
            );
            closest = closest.min(distance);
        }
    }
    // Measured: the closest pair (paper and official BDF2) is 5.4e-4 apart; IE and IT3 5.9e-4.
    eprintln!("closest pair: {closest:.2e}");
}

/// The step-input index of DDIM-50 up to which the `paper` and `official` scalings coincide: the
/// full steps 49 and 48, the sparse steps 47-45 (one-step gaps equal the full-step gap, -1) and the
/// full step 44 computed from the same input; x[0..=6]. From the sparse step 43 on, the paper
/// scaling's cache holds one-step residuals of the full steps 48 and 44 (gap -4), the released
/// code's the difference with the simulated step 45 over the same gap.
const COINCIDE_UNTIL: usize = 6;

/// Our `paper` and `official` scalings agree bit for bit while they coincide and differ after, for
/// every solver.
#[test]
fn paper_and_official_scaling_coincide_over_the_first_sparse_steps_only() {
    for solver in [Solver::ImplicitEuler, Solver::ImplicitTaylor(3), Solver::Bdf2] {
        let paper = run(&resca(solver, ResidualScaling::Paper));
        let official = run(&resca(solver, ResidualScaling::Official));
        let head = s![..=COINCIDE_UNTIL, .., .., .., ..];
        assert_eq!(paper.x.slice(head), official.x.slice(head), "{solver:?}");
        let after = max_rel_to_max(
            &format!("{solver:?} paper x[7]"),
            &paper.x.slice(s![COINCIDE_UNTIL + 1, .., .., .., ..]),
            &official.x.slice(s![COINCIDE_UNTIL + 1, .., .., .., ..]),
        );
        // Measured: IE 3.1e-4, IT3 2.4e-4, BDF2 2.2e-4 of max|x| at x[7].
        eprintln!("{solver:?}: paper vs official at x[7]: {after:.2e}");
        assert!(
            after > 10.0 * BUDGET,
            "{solver:?}: the scalings do not differ after the first full step"
        );
    }
}

/// The `paper` IE golden output agrees with the released code's run (official scaling) over the
/// steps where the two scalings coincide.
#[test]
fn paper_golden_agrees_with_the_released_code_where_the_scalings_coincide() {
    let released = tensor(&vectors(SOURCE), "x");
    let released = released.slice(s![..=COINCIDE_UNTIL, ..2, .., .., ..]);
    let ours = golden("resca_paper_ie");
    let ours = ours.slice(s![..=COINCIDE_UNTIL, .., .., .., ..]);
    let err = max_rel_to_max("paper IE x[0..=6]", &ours, &released);
    // Measured 2.4e-7 of max|x| over x[0..=6].
    eprintln!("paper IE vs released code, x[0..=6]: {err:.2e}");
    assert!(err < BUDGET);
}

/// IT of order 1 is IE, bit for bit, in both scalings (the released code's IT formula at M = 1 is
/// its IE formula).
#[test]
fn it_of_order_one_is_ie() {
    for residuals in [ResidualScaling::Paper, ResidualScaling::Official] {
        let it1 = run(&resca(Solver::ImplicitTaylor(1), residuals));
        let ie = run(&resca(Solver::ImplicitEuler, residuals));
        assert_eq!(it1.x, ie.x, "{residuals:?}");
    }
}

/// A hook that records every branch output of a [`CachingHook`] by (step index, block, branch).
struct Recording {
    inner: CachingHook,
    step: i64,
    outputs: Vec<(i64, usize, Branch, Arc<Array3<f32>>)>,
}

impl BranchHook for Recording {
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        let out = self.inner.branch(input);
        self.outputs
            .push((self.step, input.block, input.branch, Arc::new(out.clone())));
        out
    }

    fn after_block(&mut self, block: usize, x: ArrayView3<f32>) {
        self.inner.after_block(block, x);
    }
}

impl StepHook for Recording {
    fn begin_step(&mut self, step: &StepInfo) -> resca_reference::Result<()> {
        self.step = step.index;
        self.inner.begin_step(step)
    }
}

/// FORA's sparse steps reuse the last full step's branch outputs exactly, block by block.
#[test]
fn fora_reuses_the_last_full_steps_branch_outputs() {
    let method = MethodConfig::new(MethodKind::Fora, 4, 0);
    let config = DitConfig::preset("tiny").unwrap();
    let mut hook = Recording {
        inner: CachingHook::new(
            method.clone(),
            &config,
            4,
            resca_reference::sampler::Orientation::CountingDown,
        )
        .unwrap(),
        step: 0,
        outputs: Vec::new(),
    };
    let trajectory: Trajectory = resca_tests::golden::run_with(&method, &mut hook);
    assert_eq!(trajectory.x.len_of(Axis(0)), 51);
    let full_steps: Vec<i64> = method
        .schedule()
        .plan(50)
        .iter()
        .enumerate()
        .filter(|(_, full)| **full)
        .map(|(p, _)| 49 - p as i64)
        .collect();
    let mut checked = 0;
    for (step, block, branch, output) in &hook.outputs {
        if full_steps.contains(step) {
            continue;
        }
        let last_full = full_steps.iter().copied().filter(|f| f > step).min().unwrap();
        let (_, _, _, reused) = hook
            .outputs
            .iter()
            .find(|(s, b, r, _)| *s == last_full && b == block && r == branch)
            .unwrap();
        assert_eq!(output, reused, "step {step}, block {block}, {branch:?}");
        checked += 1;
    }
    // 36 sparse steps, 2 blocks, 2 branches.
    assert_eq!(checked, 36 * 2 * 2);
}
