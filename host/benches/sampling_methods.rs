//! Benchmark of 50-step guided DDIM sampling with every caching method on DiT-B/2 shapes (random
//! weights, one sample + its CFG pair): wall-clock speedup over full compute beside the FLOPs
//! speedup, and the supplement's Fig. S2 split (clustering share of dense-step time, simulated
//! denoising share of sparse-step time). Prints a markdown table.
//!
//! `cargo bench -p resca-host --bench sampling_methods -- [PRESET] [STEPS] [FILTER]` (default
//! DiT-B/2, 50 steps, every method; FILTER keeps the methods whose name contains it, full compute
//! always runs first as the baseline).

use resca_host::inputs::seeded_noise;
use resca_host::run::{SampleJob, run_reference};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::{MethodConfig, MethodKind, build_hook};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let preset = args.first().map(String::as_str).unwrap_or("DiT-B/2");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let filter = args.get(2).cloned().unwrap_or_default();
    let config = DitConfig::preset(preset).expect("a known preset");
    let model = Dit::random(config.clone(), 0).expect("valid preset");
    let resca = |solver, interval| MethodConfig {
        solver,
        ..MethodConfig::new(MethodKind::ResCa, interval, 1)
    };
    let methods = vec![
        MethodConfig::full(),
        MethodConfig::new(MethodKind::Fora, 5, 0),
        MethodConfig::new(MethodKind::TaylorSeer, 3, 1),
        MethodConfig::new(MethodKind::TaylorSeer, 5, 1),
        MethodConfig::new(MethodKind::ClusCa, 5, 1),
        resca(Solver::ImplicitEuler, 3),
        resca(Solver::ImplicitEuler, 5),
        resca(Solver::ImplicitTaylor(2), 5),
        resca(Solver::Bdf2, 5),
    ];
    println!("{preset}, {steps}-step guided DDIM, 1 sample + CFG pair, random weights\n");
    println!(
        "| method | full/sparse steps | TFLOPs | FLOPs speedup | wall (s) | wall speedup | wall/FLOPs | clustering % of dense | simulated % of sparse |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut full_wall = None;
    for method in methods
        .into_iter()
        .filter(|m| m.kind == MethodKind::Full || m.name().contains(&filter))
    {
        let job = SampleJob {
            noise: seeded_noise(0, 1, &config),
            labels: vec![1],
            cfg_scale: 1.5,
            sampler: Sampler::Ddim(DdimSchedule::new(steps).expect("steps")),
            sampler_name: "ddim".to_string(),
        };
        let mut hook = build_hook(&method, &config, 2, job.sampler.orientation()).expect("valid method");
        let result = run_reference(&model, &job, &method.name(), hook.as_mut(), &mut |_, _| {}).expect("run");
        let stats = result.stats;
        let full = *full_wall.get_or_insert(stats.wall_s);
        let wall_speedup = full / stats.wall_s;
        println!(
            "| {} | {}/{} | {:.3} | {:.2}x | {:.2} | {:.2}x | {:.0}% | {:.1}% | {:.1}% |",
            stats.method,
            stats.full_steps,
            stats.sparse_steps,
            stats.tflops,
            stats.flops_speedup,
            stats.wall_s,
            wall_speedup,
            100.0 * wall_speedup / stats.flops_speedup,
            stats.clustering_pct_of_dense,
            stats.simulated_pct_of_sparse,
        );
    }
}
