//! Graph capture and replay on the simulator device, which records the same call list a CUDA
//! stream capture does, so the capture rules are tested on the CPU: captured work runs only when
//! the graph is launched; a replay reads the values the host uploaded into device buffers since
//! (bit for bit the direct launches); a host value baked into the capture that has changed is
//! caught by `Graph::check_replayable`; nothing that needs the host is allowed inside a capture.
//! A sampling run with its sparse steps replayed as graphs gives the bits of the direct run, for
//! every caching method.

mod support;

use resca_host::pipeline::device::{Device, GraphOp, Slice};
use resca_host::pipeline::{GraphMode, Pipeline, SampleOptions, SampleOutput, launch};
use resca_host::sim::SimDevice;
use resca_reference::Sampler;
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{ClusteringSource, MethodConfig, MethodKind, ResidualScaling};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flops::StepWork;
use resca_reference::flow::FlowSchedule;

const ROWS: usize = 6;
const HIDDEN: usize = 40;
const TOKENS: usize = 3;

fn values(seed: u32, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed * 40_503) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The step under test: `x = x0; x += gate * branch` (two samples of 3 tokens, the gates of a
/// (2, 2 HIDDEN) modulation at offset HIDDEN).
fn step<D: Device>(dev: &mut D, x0: Slice<f32>, x: Slice<f32>, branch: Slice<f32>, gate: Slice<f32>) {
    dev.copy(x0, x).unwrap();
    launch::gated_add(dev, x, branch, gate, ROWS, HIDDEN, TOKENS, 2 * HIDDEN, HIDDEN).unwrap();
}

#[test]
fn a_replayed_graph_reads_the_values_uploaded_since_bit_for_bit() {
    let (mut graphed, mut direct) = (SimDevice::new(), SimDevice::new());
    let mut buffers = Vec::new();
    for dev in [&mut graphed, &mut direct] {
        let x0 = dev.upload_new(&values(1, ROWS * HIDDEN)).unwrap();
        let x = dev.alloc::<f32>(ROWS * HIDDEN).unwrap();
        let branch = dev.upload_new(&values(2, ROWS * HIDDEN)).unwrap();
        let gate = dev.alloc::<f32>(2 * 2 * HIDDEN).unwrap();
        buffers.push((x0, x, branch, gate));
    }
    let (x0, x, branch, gate) = buffers[0];
    graphed.begin_capture().unwrap();
    step(&mut graphed, x0.all(), x.all(), branch.all(), gate.all());
    let graph = graphed.end_capture().unwrap();
    assert_eq!(graph.ops.len(), 2, "{:?}", graph.ops);
    assert!(matches!(graph.ops[0], GraphOp::Copy { .. }));
    assert_eq!(
        graphed.download_vec(x.all()).unwrap(),
        vec![0.0; ROWS * HIDDEN],
        "nothing ran yet"
    );

    for s in 0..3 {
        // The step's per-step values: uploaded into the gate buffer, outside the capture.
        let gates = values(10 + s, 2 * 2 * HIDDEN);
        graphed.upload(gate.all(), &gates).unwrap();
        graphed.begin_capture().unwrap();
        step(&mut graphed, x0.all(), x.all(), branch.all(), gate.all());
        let issued = graphed.end_capture().unwrap();
        graph.check_replayable(&issued.ops).unwrap();
        graphed.launch_graph(&graph).unwrap();

        let (dx0, dx, dbranch, dgate) = buffers[1];
        direct.upload(dgate.all(), &gates).unwrap();
        step(&mut direct, dx0.all(), dx.all(), dbranch.all(), dgate.all());
        let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let (ours, expected) = (
            graphed.download_vec(x.all()).unwrap(),
            direct.download_vec(dx.all()).unwrap(),
        );
        assert_ne!(ours, values(1, ROWS * HIDDEN), "step {s}: the gated add ran");
        assert_eq!(bits(ours), bits(expected), "step {s}");
    }
}

#[test]
fn a_host_value_baked_into_a_capture_is_caught() {
    let mut dev = SimDevice::new();
    let out = dev.upload_new(&values(3, 2 * 2 * 4 * 9)).unwrap();
    let capture = |dev: &mut SimDevice, scale: f32| {
        dev.begin_capture().unwrap();
        launch::cfg_mix(dev, out.all(), 1, 4, 9, scale).unwrap();
        dev.end_capture().unwrap()
    };
    let graph = capture(&mut dev, 1.5);
    graph.check_replayable(&capture(&mut dev, 1.5).ops).unwrap();
    let error = graph
        .check_replayable(&capture(&mut dev, 4.0).ops)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("kernel `cfg_mix` parameter 4 `scale`") && error.contains("device buffer"),
        "{error}"
    );
    let error = graph.check_replayable(&[]).unwrap_err().to_string();
    assert!(error.contains("captured 1 operations, the step issues 0"), "{error}");
}

#[test]
fn nothing_that_needs_the_host_is_allowed_inside_a_capture() {
    let mut dev = SimDevice::new();
    let buffer = dev.alloc::<f32>(4).unwrap();
    dev.begin_capture().unwrap();
    let inside = |e: resca_host::pipeline::DeviceError| {
        let text = e.to_string();
        assert!(text.contains("inside a graph capture"), "{text}");
    };
    inside(dev.upload(buffer.all(), &[1.0; 4]).unwrap_err());
    inside(dev.download_vec(buffer.all()).unwrap_err());
    inside(dev.alloc::<f32>(4).unwrap_err());
    inside(dev.free(buffer.id()).unwrap_err());
    inside(dev.synchronize().unwrap_err());
    inside(dev.mark().unwrap_err());
    inside(dev.begin_capture().unwrap_err());
    let graph = dev.end_capture().unwrap();
    assert!(graph.ops.is_empty());
    inside_free_again(&mut dev, buffer.all());
    assert!(dev.end_capture().is_err(), "no capture is open");
}

/// After the capture, the host operations work again.
fn inside_free_again(dev: &mut SimDevice, slice: Slice<f32>) {
    dev.upload(slice, &[1.0; 4]).unwrap();
    assert_eq!(dev.download_vec(slice).unwrap(), vec![1.0; 4]);
}

/// The caching methods at interval 4 (so that sparse steps follow each other, at distances 1 to
/// 3 from the last full step: the Taylor coefficients differ between consecutive replays), with
/// the sampler each runs.
fn graphed_methods() -> Vec<(&'static str, MethodConfig, Sampler)> {
    let ddim = || Sampler::Ddim(DdimSchedule::new(14).unwrap());
    let resca = support::released_resca();
    vec![
        ("fora", MethodConfig::new(MethodKind::Fora, 4, 0), ddim()),
        ("taylorseer o2", MethodConfig::new(MethodKind::TaylorSeer, 4, 2), ddim()),
        (
            "clusca",
            MethodConfig {
                clusters: 4,
                seed: 3,
                ..MethodConfig::new(MethodKind::ClusCa, 4, 1)
            },
            ddim(),
        ),
        ("resca ie official", resca.clone(), ddim()),
        (
            "resca it2 paper feature",
            MethodConfig {
                clustering: ClusteringSource::Feature,
                solver: Solver::ImplicitTaylor(2),
                order: 2,
                residuals: ResidualScaling::Paper,
                ..resca.clone()
            },
            ddim(),
        ),
        (
            "resca bdf2 center-random",
            MethodConfig {
                solver: Solver::Bdf2,
                order: 2,
                proxy: ProxyChoice::CenterRandom,
                seed: 5,
                ..resca.clone()
            },
            ddim(),
        ),
        (
            "flow resca paper",
            MethodConfig {
                residuals: ResidualScaling::Paper,
                ..resca
            },
            Sampler::Flow(FlowSchedule::new(14, 1.0).unwrap()),
        ),
    ]
}

/// A guided run (cfg 1.5) of `method` on the tiny model of `tests/vectors/tiny`.
fn guided_run(method: &MethodConfig, sampler: &Sampler, graphs: GraphMode) -> (SampleOutput, SimDevice) {
    let model = support::tiny_model();
    let (x, y) = support::tiny_guided_inputs(&model);
    let mut pipeline = Pipeline::new(SimDevice::new(), &model).unwrap();
    let options = SampleOptions {
        graphs,
        ..Default::default()
    };
    let out = pipeline
        .sample(x.view(), &y, Some(1.5), sampler, method, options, &mut |_, _| {})
        .unwrap();
    (out, pipeline.dev)
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn sparse_steps_replayed_as_graphs_give_the_direct_runs_bits_for_every_method() {
    for (what, method, sampler) in graphed_methods() {
        let (direct, direct_dev) = guided_run(&method, &sampler, GraphMode::Off);
        let sparse = direct
            .trajectory
            .work
            .iter()
            .filter(|w| **w != StepWork::full(&support::tiny_model().config))
            .count();
        assert!(sparse >= 8, "{what}: {sparse} sparse steps of 14");
        assert_eq!(direct_dev.graph_launches().0, 0, "{what}: no graph without graphs");
        // `Checked`: every sparse step is captured again and compared with the graph it replays
        // (check_replayable on consecutive sparse steps); `On`: captured once per key.
        for mode in [GraphMode::Checked, GraphMode::On] {
            let (graphed, dev) = guided_run(&method, &sampler, mode);
            let (graph_launches, replayed) = dev.graph_launches();
            assert_eq!(
                graph_launches, sparse,
                "{what} {mode:?}: one graph launch per sparse step"
            );
            let captured = dev.graphs_captured() as usize;
            match mode {
                GraphMode::Checked => assert_eq!(captured, sparse, "{what}: every sparse step captured"),
                _ => assert!(
                    captured < sparse,
                    "{what}: {captured} captures for {sparse} sparse steps (the graphs are replayed)"
                ),
            }
            // Every launch of the direct run ran, as many in all (replayed or direct).
            assert_eq!(dev.launches(), direct_dev.launches(), "{what} {mode:?}: launches");
            for (name, ours, expected) in [
                ("x", &graphed.trajectory.x, &direct.trajectory.x),
                ("model_out", &graphed.trajectory.model_out, &direct.trajectory.model_out),
            ] {
                let (ours, expected) = (ours.as_slice().unwrap(), expected.as_slice().unwrap());
                assert!(
                    bits(ours) == bits(expected),
                    "{what} {mode:?}: {name} differs from the direct run (max |diff| {:e})",
                    resca_tests::max_abs_diff(name, ours, expected)
                );
            }
            if mode == GraphMode::On {
                eprintln!(
                    "{what}: {sparse} sparse steps, {captured} graphs captured, {} kernel launches per graph replay",
                    replayed / graph_launches
                );
            }
        }
    }
}

#[test]
fn graph_modes_parse_by_name_and_a_bad_one_is_named() {
    assert_eq!(GraphMode::parse("off").unwrap(), GraphMode::Off);
    assert_eq!(GraphMode::parse("on").unwrap(), GraphMode::On);
    assert_eq!(GraphMode::parse("checked").unwrap(), GraphMode::Checked);
    assert_eq!(GraphMode::parse("auto").unwrap(), GraphMode::Auto);
    let error = GraphMode::parse("sometimes").unwrap_err().to_string();
    assert!(
        error.contains("RESCA_GRAPHS=sometimes") && error.contains("auto, off, on, checked"),
        "{error}"
    );
}
