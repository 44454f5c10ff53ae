//! Benchmark of 50-step guided DDIM sampling with every caching method on DiT-B/2 shapes (random
//! weights, one sample + its CFG pair): wall-clock speedup over full compute beside the FLOPs
//! speedup, and the supplement's Fig. S2 split (clustering share of dense-step time, simulated
//! denoising share of sparse-step time). Prints a markdown table.
//!
//! `cargo bench -p resca-host --bench sampling_methods -- [PRESET] [STEPS] [FILTER] [ROUNDS]`
//! (default DiT-B/2, 50 steps, every method, 1 round; FILTER keeps the methods whose name
//! contains it, "" for all; full compute always runs as the baseline). A shared 2-core VM's
//! speed drifts by 10-15% over minutes, so with ROUNDS > 1 every round runs full compute then each
//! method, each method's wall speedup is taken against the full run of ITS round, and the table
//! gives the median over the rounds (and the range of wall/FLOPs).

use resca_host::inputs::seeded_noise;
use resca_host::job::SampleJob;
use resca_host::report::RunStats;
use resca_host::run::run_reference;
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::{MethodConfig, MethodKind, build_hook};
use resca_reference::ddim::DdimSchedule;
use resca_reference::{Dit, DitConfig, Sampler};

fn main() {
    resca_reference::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let preset = args.first().map(String::as_str).unwrap_or("DiT-B/2");
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let filter = args.get(2).cloned().unwrap_or_default();
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let config = DitConfig::preset(preset).expect("a known preset");
    let model = Dit::random(config.clone(), 0).expect("valid preset");
    let resca = |solver, interval| MethodConfig {
        solver,
        ..MethodConfig::new(MethodKind::ResCa, interval, 1)
    };
    let methods: Vec<MethodConfig> = vec![
        MethodConfig::full(),
        MethodConfig::new(MethodKind::Fora, 5, 0),
        MethodConfig::new(MethodKind::TaylorSeer, 3, 1),
        MethodConfig::new(MethodKind::TaylorSeer, 5, 1),
        MethodConfig::new(MethodKind::ClusCa, 5, 1),
        resca(Solver::ImplicitEuler, 3),
        resca(Solver::ImplicitEuler, 5),
        resca(Solver::ImplicitTaylor(2), 5),
        resca(Solver::Bdf2, 5),
    ]
    .into_iter()
    .filter(|m| m.kind == MethodKind::Full || m.name().contains(&filter))
    .collect();
    // Packed MLP weights for the sparse steps: made once per model, like loading, untimed.
    for method in &methods {
        method.prepare(&model);
    }
    let run = |method: &MethodConfig| -> RunStats {
        let job = SampleJob {
            noise: seeded_noise(0, 1, &config),
            labels: vec![1],
            cfg_scale: 1.5,
            sampler: Sampler::Ddim(DdimSchedule::new(steps).expect("steps")),
            sampler_name: "ddim".to_string(),
        };
        let mut hook = build_hook(method, &config, 2, job.sampler.orientation()).expect("valid method");
        run_reference(&model, &job, &method.name(), hook.as_mut(), &mut |_, _| {})
            .expect("run")
            .stats
    };
    // runs[m][r]: method m in round r; methods[0] is full compute.
    let mut runs: Vec<Vec<RunStats>> = vec![Vec::new(); methods.len()];
    for round in 0..rounds {
        for (m, method) in methods.iter().enumerate() {
            let stats = run(method);
            eprintln!(
                "round {}/{rounds}: {} {:.2} s (dense steps {:.0} ms each, sparse steps {:.1} ms each)",
                round + 1,
                stats.method,
                stats.wall_s,
                1e3 * stats.dense_steps_s / stats.full_steps.max(1) as f64,
                1e3 * stats.sparse_steps_s / stats.sparse_steps.max(1) as f64,
            );
            runs[m].push(stats);
        }
    }
    println!("{preset}, {steps}-step guided DDIM, 1 sample + CFG pair, random weights, median of {rounds} round(s)\n");
    println!(
        "| method | full/sparse steps | TFLOPs | FLOPs speedup | wall (s) | wall speedup | wall/FLOPs (range) | clustering % of dense | simulated % of sparse |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for method_runs in &runs {
        let speedups: Vec<f64> = method_runs
            .iter()
            .zip(&runs[0])
            .map(|(stats, full)| full.wall_s / stats.wall_s)
            .collect();
        let ratios: Vec<f64> = speedups
            .iter()
            .zip(method_runs)
            .map(|(speedup, stats)| 100.0 * speedup / stats.flops_speedup)
            .collect();
        let stats = &method_runs[0];
        let (low, high) = (
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
        let range = if rounds > 1 {
            format!(" ({low:.0}-{high:.0}%)")
        } else {
            String::new()
        };
        println!(
            "| {} | {}/{} | {:.3} | {:.2}x | {:.2} | {:.2}x | {:.0}%{range} | {:.1}% | {:.1}% |",
            stats.method,
            stats.full_steps,
            stats.sparse_steps,
            stats.tflops,
            stats.flops_speedup,
            median(method_runs.iter().map(|s| s.wall_s).collect()),
            median(speedups),
            median(ratios),
            median(method_runs.iter().map(|s| s.clustering_pct_of_dense).collect()),
            median(method_runs.iter().map(|s| s.simulated_pct_of_sparse).collect()),
        );
    }
}

/// The median (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
