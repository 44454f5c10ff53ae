//! Every caching method and both samplers on the kernels (the device-generic pipeline on every
//! device present: the simulator, and the GPU where there is one) against the reference backend, on the tiny model of `tests/vectors/tiny` with the
//! noise of `ddim.safetensors`, labels 7, 4 and guidance 1.5 (4 model rows).
//!
//! Where a method clusters with K-medoids, its clusterings can differ from the reference's at
//! ties decided by the last bit of a similarity sum (see `tests/tests/vectors_cached.rs`), so the
//! comparison replays clusterings on both sides: the recorded ones of the released code, or the
//! simulator's own (recorded from its run and replayed by the reference), which compares
//! everything else (Taylor caches, PDDS, propagation, samplers) exactly as specified. The
//! simulator's clusterings themselves are checked to be K-medoids fixed points of its own
//! smoothed similarity.
//!
//! Runs: guided DDIM-50 for the settings of the vectors (ResCa official with its own TETC,
//! TaylorSeer order 2, ClusCa), 20 steps for the variants (TaylorSeer order 4, FORA, ResCa IT,
//! BDF2, paper residuals, center-random, feature clustering, flow), which still give 6 full and
//! 14 sparse steps at interval 4. ResCa official with the released clusterings, and `full`, run
//! through the CLI in `cli_sim.rs`.
//!
//! The simulator runs each test with the blocks of every launch in grid order (`sim`) and
//! reversed (`sim_reversed`), but for the two slowest (TaylorSeer and FORA; ResCa IT and BDF2),
//! whose Taylor and PDDS kernels `sim_cache_kernels.rs` checks in both orders: reversed, they
//! would add 45 s to the binary's 60.

mod support;

use std::path::PathBuf;

use ndarray::Ix4;
use resca_host::inputs::guided_batch;
use resca_host::pipeline::{Pipeline, SampleOptions, SampleOutput};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{
    CachingHook, ClusteringRecord, ClusteringSource, MethodConfig, MethodKind, ResidualScaling,
};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, Sampler, Trajectory, sample};
use resca_tests::max_rel_to_max;
use support::{TestDevice, on_every_device, on_every_device_in_every_block_order};

fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/tiny")
        .join(name)
}

fn model() -> Dit {
    Dit::load(&vectors("weights.safetensors"), None, None).unwrap()
}

/// The guided batch `[x; x]`, `[y; null]` of the vectors' noise with labels 7, 4.
fn inputs(model: &Dit) -> (ndarray::Array4<f32>, Vec<usize>) {
    let file = SafetensorsFile::open(vectors("ddim.safetensors")).unwrap();
    let noise = file.read_f32("noise").unwrap().into_dimensionality::<Ix4>().unwrap();
    guided_batch(&noise, &[7, 4], &model.config)
}

fn ddim(steps: usize) -> Sampler {
    Sampler::Ddim(DdimSchedule::new(steps).unwrap())
}

fn flow(steps: usize) -> Sampler {
    Sampler::Flow(FlowSchedule::new(steps, 1.0).unwrap())
}

/// The method on a fresh device `D`, recording its clusterings and replaying `replay`.
fn run_on<D: TestDevice>(
    model: &Dit,
    method: &MethodConfig,
    sampler: &Sampler,
    replay: Vec<ClusteringRecord>,
) -> SampleOutput {
    let (x, y) = inputs(model);
    let mut pipeline = Pipeline::new(D::open(), model).unwrap();
    let options = SampleOptions {
        replay,
        record_clusterings: true,
        ..Default::default()
    };
    pipeline
        .sample(x.view(), &y, Some(1.5), sampler, method, options, &mut |_, _| {})
        .unwrap()
}

/// The method on the reference backend, replaying `replay`; returns the trajectory and the
/// reference's own clusterings.
fn run_reference(
    model: &Dit,
    method: &MethodConfig,
    sampler: &Sampler,
    replay: Vec<ClusteringRecord>,
) -> (Trajectory, Vec<ClusteringRecord>) {
    let (x, y) = inputs(model);
    let mut hook = CachingHook::new(method.clone(), &model.config, 4, sampler.orientation()).unwrap();
    hook.replay_clusterings(replay);
    let trajectory = sample(model, x.view(), &y, Some(1.5), sampler, &mut hook, &mut |_, _| {}).unwrap();
    (trajectory, hook.clustering_history().to_vec())
}

/// Asserts trajectory and model outputs within `budget` of max|.| of the reference's; returns
/// the error of x.
fn assert_close(what: &str, sim: &Trajectory, reference: &Trajectory, budget: f32) -> f32 {
    let err_x = max_rel_to_max(&format!("{what}: x"), &sim.x, &reference.x);
    let err_out = max_rel_to_max(&format!("{what}: model_out"), &sim.model_out, &reference.model_out);
    eprintln!("{what}: x {err_x:.2e}, model_out {err_out:.2e} (of max|.|)");
    assert!(err_x < budget, "{what}: x differs by {err_x} of max|x|");
    assert!(
        err_out < budget,
        "{what}: model_out differs by {err_out} of max|model_out|"
    );
    assert_eq!(sim.work, reference.work, "{what}: the steps computed different work");
    err_x
}

/// The released code's ResCa settings of the vectors.
fn released_resca() -> MethodConfig {
    MethodConfig {
        clusters: 4,
        alpha: 0.6,
        solver: Solver::ImplicitEuler,
        proxy: ProxyChoice::Medoid,
        residuals: ResidualScaling::Official,
        ..MethodConfig::new(MethodKind::ResCa, 4, 1)
    }
}

/// Runs `method` on the simulator, then the reference replaying the simulator's clusterings,
/// and compares. Returns the simulator's run and the clusterings the reference computed on its
/// (replayed, hence nearly identical) states.
fn check_against_replayed_reference<D: TestDevice>(
    what: &str,
    method: &MethodConfig,
    sampler: &Sampler,
    budget: f32,
) -> (SampleOutput, Vec<ClusteringRecord>) {
    let model = model();
    let ours = run_on::<D>(&model, method, sampler, Vec::new());
    assert!(!ours.history.is_empty(), "{what}: no clustering recorded");
    let (reference, theirs) = run_reference(&model, method, sampler, ours.history.clone());
    assert_close(what, &ours.trajectory, &reference, budget);
    assert_eq!(ours.history.len(), theirs.len());
    (ours, theirs)
}

/// The simulator's own TETC (no replay): every clustering is a K-medoids fixed point of the
/// smoothed similarity it computed, exactly (each label picks its most similar medoid, each
/// medoid has the largest similarity sum of its cluster, the first on ties, as the kernels decide
/// them), and of the reference's similarity on the same states up to float rounding (`TIE`); the
/// run agrees with the reference replaying these clusterings.
fn resca_own_clusterings_are_k_medoids_fixed_points_and_the_rest_matches<D: TestDevice>() {
    const TIE: f32 = 1e-5;
    let (ours, theirs) =
        check_against_replayed_reference::<D>("resca official, own TETC", &released_resca(), &ddim(50), 1e-4);
    assert_eq!(ours.history.len(), 14);
    let mut exact = 0;
    for (record, reference) in ours.history.iter().zip(&theirs) {
        assert_eq!(record.step_index, reference.step_index);
        for (row, clusters) in record.rows.iter().enumerate() {
            let here = format!("full step {}, row {row}", record.step_index);
            let medoids = &clusters.proxies;
            for (s, tie) in [(&record.similarity[row], 0.0), (&reference.similarity[row], TIE)] {
                for (token, &label) in clusters.labels.iter().enumerate() {
                    let values: Vec<f32> = medoids.iter().map(|&m| s[[token, m]]).collect();
                    let best = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if tie == 0.0 {
                        let first_best = values.iter().position(|&v| v == best).unwrap();
                        assert_eq!(label, first_best, "{here}: token {token} does not pick its best medoid");
                    } else {
                        assert!(
                            best - values[label] <= tie,
                            "{here}: token {token} is far from its best medoid"
                        );
                    }
                }
                for (cluster, &medoid) in medoids.iter().enumerate() {
                    let members: Vec<usize> = (0..16).filter(|&i| clusters.labels[i] == cluster).collect();
                    if members.is_empty() {
                        continue;
                    }
                    let sum = |i: usize| members.iter().map(|&j| s[[i, j]]).sum::<f32>();
                    let best = members.iter().map(|&i| sum(i)).fold(f32::NEG_INFINITY, f32::max);
                    if tie == 0.0 {
                        let first_best = members.iter().copied().find(|&i| sum(i) == best).unwrap();
                        assert_eq!(
                            medoid, first_best,
                            "{here}: medoid of cluster {cluster} is not the maximiser"
                        );
                    } else {
                        assert!(
                            best - sum(medoid) <= tie,
                            "{here}: medoid {medoid} is far from the maximiser"
                        );
                    }
                }
            }
            exact +=
                usize::from(clusters.labels == reference.rows[row].labels && *medoids == reference.rows[row].proxies);
        }
    }
    // Measured: 39 of the 56 (step, row) clusterings identical to the reference's on the same
    // states; the others differ only by ties. The run: 6.2e-7 (x), 7.4e-7 (model_out).
    eprintln!("{exact} of 56 clusterings identical to the reference's");
    assert!(exact >= 28, "only {exact} clusterings agree with the reference's");
}
on_every_device_in_every_block_order!(resca_own_clusterings_are_k_medoids_fixed_points_and_the_rest_matches);

fn taylorseer_and_fora_match_the_reference<D: TestDevice>() {
    let model = model();
    for (what, method, steps) in [
        ("taylorseer o2", MethodConfig::new(MethodKind::TaylorSeer, 4, 2), 50),
        ("taylorseer o4", MethodConfig::new(MethodKind::TaylorSeer, 3, 4), 20),
        ("fora", MethodConfig::new(MethodKind::Fora, 4, 0), 20),
    ] {
        let ours = run_on::<D>(&model, &method, &ddim(steps), Vec::new());
        let (reference, _) = run_reference(&model, &method, &ddim(steps), Vec::new());
        // Budget 1e-4 of max|.|; measured (x): 9.1e-7 (o2, DDIM-50), 4.0e-7 (o4, interval 3,
        // DDIM-20), 3.9e-7 (fora, DDIM-20).
        assert_close(what, &ours.trajectory, &reference, 1e-4);
    }
}
on_every_device!(taylorseer_and_fora_match_the_reference);

fn clusca_with_a_fixed_seed_matches_the_reference<D: TestDevice>() {
    let model = model();
    let method = MethodConfig {
        clusters: 4,
        seed: 3,
        ..MethodConfig::new(MethodKind::ClusCa, 4, 1)
    };
    // No replay: K-means and the random members consume the same per-row ChaCha8 streams.
    let ours = run_on::<D>(&model, &method, &ddim(50), Vec::new());
    let (reference, theirs) = run_reference(&model, &method, &ddim(50), Vec::new());
    // Measured 7.9e-7 (x), 6.4e-7 (model_out) over guided DDIM-50; identical K-means labels.
    assert_close("clusca seed 3", &ours.trajectory, &reference, 1e-4);
    let labels = |h: &[ClusteringRecord]| -> Vec<Vec<usize>> {
        h.iter()
            .flat_map(|r| r.rows.iter().map(|row| row.labels.clone()))
            .collect()
    };
    assert_eq!(labels(&ours.history), labels(&theirs), "K-means clusterings differ");
}
on_every_device_in_every_block_order!(clusca_with_a_fixed_seed_matches_the_reference);

fn resca_implicit_taylor_and_bdf2_match_the_reference<D: TestDevice>() {
    for (what, solver, residuals) in [
        ("resca it2 paper", Solver::ImplicitTaylor(2), ResidualScaling::Paper),
        (
            "resca it3 official",
            Solver::ImplicitTaylor(3),
            ResidualScaling::Official,
        ),
        ("resca bdf2 paper", Solver::Bdf2, ResidualScaling::Paper),
        ("resca ie paper", Solver::ImplicitEuler, ResidualScaling::Paper),
    ] {
        let method = MethodConfig {
            solver,
            residuals,
            order: solver.order(),
            ..released_resca()
        };
        // Measured over guided DDIM-20 (6 full + 14 sparse steps), x (model_out): it2 paper
        // 3.4e-7 (9.2e-7), it3 official 2.8e-7 (6.0e-7), bdf2 paper 4.0e-7 (5.5e-7), ie paper
        // 2.8e-7 (6.0e-7).
        check_against_replayed_reference::<D>(what, &method, &ddim(20), 1e-4);
    }
}
on_every_device!(resca_implicit_taylor_and_bdf2_match_the_reference);

fn resca_center_random_and_feature_clustering_match_the_reference<D: TestDevice>() {
    let center_random = MethodConfig {
        proxy: ProxyChoice::CenterRandom,
        seed: 5,
        ..released_resca()
    };
    let (ours, theirs) = check_against_replayed_reference::<D>("resca center-random", &center_random, &ddim(20), 1e-4);
    // Every proxy is a member of its cluster. Where the labels agree the proxies agree too unless
    // the medoids (whose similarity row weights the draw) were decided by a tie; the kernel
    // consumes the reference's random stream exactly (`sim_tetc_kernels.rs`).
    let (mut same, mut compared) = (0, 0);
    for (a, b) in ours.history.iter().zip(&theirs) {
        for (x, y) in a.rows.iter().zip(&b.rows) {
            for (cluster, &proxy) in x.proxies.iter().enumerate() {
                let empty = !x.labels.contains(&cluster);
                assert!(
                    empty || x.labels[proxy] == cluster,
                    "proxy {proxy} outside cluster {cluster}"
                );
            }
            if x.labels == y.labels {
                compared += 1;
                same += usize::from(x.proxies == y.proxies);
            }
        }
    }
    // Measured: 16 of the 17 clusterings with equal labels have equal proxies; the run 6.2e-7 (x).
    eprintln!("center-random: {same} of {compared} clusterings with equal labels have equal proxies");
    assert!(
        2 * same >= compared,
        "center-random proxies differ too often: {same} of {compared}"
    );
    let feature = MethodConfig {
        clustering: ClusteringSource::Feature,
        ..released_resca()
    };
    // Measured 3.4e-7 (x), 5.5e-7 (model_out).
    check_against_replayed_reference::<D>("resca feature clustering", &feature, &ddim(20), 1e-4);
}
on_every_device_in_every_block_order!(resca_center_random_and_feature_clustering_match_the_reference);

fn flow_sampler_runs_cached_methods_like_the_reference<D: TestDevice>() {
    let model = model();
    let taylor = MethodConfig {
        first_enhance: 3,
        ..MethodConfig::new(MethodKind::TaylorSeer, 4, 2)
    };
    let ours = run_on::<D>(&model, &taylor, &flow(20), Vec::new());
    let (reference, _) = run_reference(&model, &taylor, &flow(20), Vec::new());
    // Flow-20, first_enhance 3: measured 2.0e-7 (x), 1.7e-6 (model_out).
    assert_close("flow taylorseer", &ours.trajectory, &reference, 1e-4);
    let resca = MethodConfig {
        first_enhance: 3,
        residuals: ResidualScaling::Paper,
        ..released_resca()
    };
    // Paper residuals, sign +1: measured 1.9e-7 (x), 3.8e-6 (model_out).
    check_against_replayed_reference::<D>("flow resca", &resca, &flow(20), 1e-4);
}
on_every_device_in_every_block_order!(flow_sampler_runs_cached_methods_like_the_reference);

fn repeated_runs_on_one_pipeline_free_their_buffers_and_repeat_bit_for_bit<D: TestDevice>() {
    let model = model();
    let (x, y) = inputs(&model);
    let method = MethodConfig {
        clusters: 4,
        ..MethodConfig::new(MethodKind::ResCa, 2, 1)
    };
    let mut pipeline = Pipeline::new(D::open(), &model).unwrap();
    let run = |pipeline: &mut Pipeline<D>| {
        let out = pipeline
            .sample(
                x.view(),
                &y,
                Some(1.5),
                &ddim(5),
                &method,
                SampleOptions::default(),
                &mut |_, _| {},
            )
            .unwrap();
        (out.trajectory.x, pipeline.dev.resident_elements())
    };
    let (first, resident) = run(&mut pipeline);
    let (second, resident_again) = run(&mut pipeline);
    assert_eq!(resident, resident_again, "a run leaves buffers behind");
    assert_eq!(first, second);
}
on_every_device_in_every_block_order!(repeated_runs_on_one_pipeline_free_their_buffers_and_repeat_bit_for_bit);
