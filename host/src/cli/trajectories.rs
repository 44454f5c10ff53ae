//! `resca trajectories`: the supplement's trajectory views (Fig. S3/S4) of one sample: how far
//! cached runs' token states end from full compute's, and feature- vs trajectory-based clusters.

use std::path::PathBuf;

use anyhow::{Result, bail};
use resca_host::evaluation::metrics::rmse;
use resca_host::evaluation::trajectories::{clustering_view, most_moving_tokens, record};
use resca_host::figures::trajectory_plot::figure;
use resca_host::inputs::{check_labels, seeded_noise};
use resca_host::job::SampleJob;
use resca_reference::Sampler;
use resca_reference::cache::{MethodConfig, MethodKind, ResidualScaling};
use resca_reference::ddim::DdimSchedule;
use resca_reference::memory::{RunMemory, sampling_estimate};

use super::model_args::ModelArgs;
use super::output::{MemoryCheck, check_outputs, print_line, progress_bar};
use super::sampling_args::Guidance;
use super::value_parsers::{non_negative, positive, seed, step_count};

/// Token trajectories of full compute, TaylorSeer and ResCa, and feature- vs
/// trajectory-based clusters (the supplement's Fig. S3/S4).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Class of the one sample traced.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    label: i64,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = seed)]
    seed: u64,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = step_count)]
    steps: usize,
    #[command(flatten)]
    guidance: Guidance,
    /// Caching interval N of TaylorSeer and ResCa (and of the clustering schedule).
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = positive)]
    interval: usize,
    /// K clusters.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = positive)]
    clusters: usize,
    /// Tokens to plot (default: the four that move furthest).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = non_negative)]
    tokens: Option<Vec<usize>>,
    #[arg(long, value_name = "FILE.png", default_value = "trajectories.png")]
    png: PathBuf,
    /// Print the measured numbers as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: Args) -> Result<()> {
    let png = check_outputs(&[("--png", Some(args.png.as_path()))], &args.model.input_files())?.remove(0);
    let config = args.model.config_only()?;
    let cfg_scale = args.guidance.scale(&args.model);
    let sampler = Sampler::Ddim(DdimSchedule::new(args.steps)?);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let rows = if cfg_scale > 1.0 { 2 } else { 1 };
    let resca = MethodConfig::new(MethodKind::ResCa, args.interval, 1);
    let one = sampling_estimate(&config, &resca, rows, 1, args.steps, threads);
    // Four runs, each keeping its final block's token states at every step.
    let states = (args.steps as u64 + 1) * 4 * (rows * config.tokens() * config.hidden_size) as u64 * 4;
    let needed = RunMemory {
        results: one.results.saturating_mul(4).saturating_add(states),
        ..one
    };
    args.memory.check(&needed, "tracing the trajectories")?;
    let model = args.model.load()?;
    let config = &model.config;
    let labels = check_labels(&[args.label], config)?;
    let job = SampleJob {
        noise: seeded_noise(args.seed, 1, config),
        labels,
        cfg_scale,
        sampler,
        sampler_name: "ddim".to_string(),
    };
    let resca = MethodConfig {
        clusters: args.clusters,
        ..MethodConfig::new(MethodKind::ResCa, args.interval, 1)
    };
    // ResCa twice: with the paper's one-step residuals and with the released code's scaling.
    let official = MethodConfig {
        residuals: ResidualScaling::Official,
        ..resca.clone()
    };
    let methods = [
        MethodConfig::full(),
        MethodConfig::new(MethodKind::TaylorSeer, args.interval, 1),
        resca.clone(),
        official,
    ];
    let bar = progress_bar(methods.len() as u64, "tracing");
    let mut runs = Vec::new();
    for method in &methods {
        bar.set_message(method.name());
        runs.push(record(&model, &job, method)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let tokens = match &args.tokens {
        Some(tokens) => {
            if let Some(bad) = tokens.iter().find(|&&t| t >= config.tokens()) {
                bail!(
                    "--tokens: token {bad} is out of range; the model has {} tokens",
                    config.tokens()
                );
            }
            tokens.clone()
        }
        None => most_moving_tokens(&runs[0].states, 4),
    };
    let view = clustering_view(
        &runs[0].states,
        resca.schedule(),
        args.clusters.min(config.tokens()),
        resca.alpha,
    )?;
    let plot = figure(&runs, &tokens, &view, config.grid())?;
    png.write(|w| plot.encode_png(w))?;
    // How far each cached run's token states end from full compute's.
    let deviation: Vec<(String, f64)> = runs[1..]
        .iter()
        .map(|r| (r.name.clone(), rmse(r.states.view(), runs[0].states.view())))
        .collect();
    if args.json {
        let json = serde_json::json!({
            "tokens": tokens,
            "state_rmse_vs_full": deviation.iter().map(|(n, d)| serde_json::json!({"method": n, "rmse": d})).collect::<Vec<_>>(),
            "feature_clusters_residual_spread": view.feature_spread,
            "trajectory_clusters_residual_spread": view.trajectory_spread,
        });
        print_line(&serde_json::to_string_pretty(&json)?)?;
    } else {
        for (name, d) in &deviation {
            print_line(&format!(
                "{name}: final-block token states differ from full compute by RMSE {d:.4} over the run"
            ))?;
        }
        print_line(&format!(
            "mean intra-cluster residual distance (Eq. S3): feature-based {:.4}, trajectory-based {:.4}",
            view.feature_spread, view.trajectory_spread
        ))?;
        print_line(&format!("wrote {}", args.png.display()))?;
    }
    Ok(())
}
