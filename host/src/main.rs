//! `resca`: run DiT with residual caching on the CPU reference, the GPU simulator or a CUDA GPU.
//! `resca --help` lists the subcommands; README.md ("The `resca` CLI") describes them.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ndarray::Ix4;
use resca_host::cuda::job::forward_cuda;
use resca_host::embedded;
use resca_host::figures::{Panel, panel_column, panels};
use resca_host::inputs::{check_labels, class_grid, load_noise, seeded_noise};
use resca_host::method_args::{Method, MethodArgs, positive};
use resca_host::metrics::{psnr, rmse};
use resca_host::model_source::ModelArgs;
use resca_host::plan::Plan;
use resca_host::run::{Backend, SampleJob, SampleResult, final_samples, run_method};
use resca_host::sim::job::forward_sim;
use resca_reference::cache::MethodKind;
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};
use resca_reference::{Dit, Sampler};

#[derive(Parser)]
#[command(
    name = "resca",
    version,
    about = "Residual caching (ResCa) for diffusion transformers: CPU reference runs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample images with a caching method and report steps, FLOPs and wall time.
    Sample(SampleArgs),
    /// One forward pass: reads `x`, `t`, `y` from --input, writes `out` to --out.
    Forward(ForwardArgs),
    /// Print a method's step schedule and FLOPs without running the model.
    Plan(PlanArgs),
    /// Stability of the explicit/implicit Taylor and BDF2 updates on y' = lambda y.
    Stability(StabilityArgs),
    /// Every caching method at matched FLOPs on the same samples: speed, error, quality.
    Compare(CompareArgs),
    /// Token trajectories of full compute, TaylorSeer and ResCa, and feature- vs
    /// trajectory-based clusters (the supplement's Fig. S3/S4).
    Trajectories(TrajectoriesArgs),
    /// The CUDA driver and GPUs the `cuda` backend would use (or why there are none).
    Info,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SamplerKind {
    Ddim,
    Flow,
}

#[derive(clap::Args)]
struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Noise file holding tensor `noise` (B, C, H, W) f32; default: seeded noise.
    #[arg(long, value_name = "N.safetensors", conflicts_with_all = ["seed", "batch"])]
    noise: Option<PathBuf>,
    /// Seed of the Gaussian noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seeds of the default classes x seeds grid (used when none of --noise, --batch, --labels).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = positive)]
    seeds: usize,
    /// Number of samples (default: one per label).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    batch: Option<usize>,
    /// Class labels, one per sample, comma separated (default: 0, 1, 2, ... cycling).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    labels: Option<Vec<i64>>,
    #[command(flatten)]
    guidance: Guidance,
    /// Sampling steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = positive)]
    steps: usize,
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    sampler: SamplerKind,
    /// Time shift of the flow sampler's grid (1 = uniform).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    flow_shift: f64,
    #[arg(long, value_enum, default_value_t = Backend::Reference)]
    backend: Backend,
    #[command(flatten)]
    method: MethodArgs,
    /// Write the trajectory `x` (steps+1, B, C, H, W) and `model_out` (steps, B, ..) here.
    #[arg(long, value_name = "OUT.safetensors")]
    out: Option<PathBuf>,
    /// Write a PNG grid of the final samples here (the default grid run writes `sample.png`).
    #[arg(long, value_name = "OUT.png", conflicts_with = "no_png")]
    png: Option<PathBuf>,
    /// Write no PNG, not even the default grid run's `sample.png`.
    #[arg(long)]
    no_png: bool,
    /// Print the statistics as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input file with tensors `x` (B, C, H, W), `t` (B) and `y` (B).
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Output file; receives tensor `out` (B, out_channels, H, W).
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
    /// Run `forward_with_cfg` at this scale (the batch must be [x; x] with labels [y; null]).
    #[arg(long)]
    cfg_scale: Option<f32>,
    #[arg(long, value_enum, default_value_t = Backend::Reference)]
    backend: Backend,
}

#[derive(clap::Args)]
struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = positive)]
    steps: usize,
    /// Guidance doubles the model rows per sample when above 1.
    #[arg(long, default_value_t = 1.5, allow_negative_numbers = true)]
    cfg_scale: f32,
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    sampler: SamplerKind,
    #[command(flatten)]
    method: MethodArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StabilityArgs {
    /// explicit-taylor, implicit-taylor or bdf2.
    #[arg(long)]
    scheme: resca_proofs::Scheme,
    /// Order M (1-4 for the Taylor schemes, 2 for BDF2).
    #[arg(long, default_value_t = 1)]
    order: u32,
    /// Draw the stability region (|G| <= 1) into this PNG.
    #[arg(long, value_name = "FILE.png")]
    png: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Seeds per class (samples = classes x seeds).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = positive)]
    seeds: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = positive)]
    steps: usize,
    #[command(flatten)]
    guidance: Guidance,
    /// Write the table as JSON here.
    #[arg(long, value_name = "FILE.json")]
    json: Option<PathBuf>,
    /// Write the markdown table here (it is printed either way).
    #[arg(long, value_name = "FILE.md")]
    markdown: Option<PathBuf>,
    /// The same seeds across methods, one row per method.
    #[arg(long, value_name = "FILE.png", default_value = "compare.png")]
    png: PathBuf,
}

#[derive(clap::Args)]
struct TrajectoriesArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Class of the one sample traced.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    label: i64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = positive)]
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
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<usize>>,
    #[arg(long, value_name = "FILE.png", default_value = "trajectories.png")]
    png: PathBuf,
    /// Print the measured numbers as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    resca_reference::memory::retain_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => sample(args),
        Command::Forward(args) => forward(args),
        Command::Plan(args) => plan(args),
        Command::Stability(args) => stability(args),
        Command::Compare(args) => compare(args),
        Command::Trajectories(args) => trajectories(args),
        Command::Info => {
            print!("{}", resca_host::cuda::info_text());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn sample(args: SampleArgs) -> Result<()> {
    let model = args.model.load()?;
    let config = &model.config;
    let cfg_scale = args.guidance.scale(&args.model)?;
    // Without --noise, --batch or --labels: the classes x seeds grid of the default run.
    let grid = args.noise.is_none() && args.batch.is_none() && args.labels.is_none();
    let (noise, labels) = if grid {
        class_grid(config, args.seeds, args.seed)
    } else {
        let noise = match &args.noise {
            Some(path) => load_noise(path, config)?,
            None => seeded_noise(
                args.seed,
                args.batch.or(args.labels.as_ref().map(Vec::len)).unwrap_or(1),
                config,
            ),
        };
        let batch = noise.dim().0;
        let labels = match &args.labels {
            Some(labels) if labels.len() != batch => {
                bail!("--labels gives {} labels for a batch of {batch} samples", labels.len())
            }
            Some(labels) => check_labels(labels, config)?,
            None => (0..batch).map(|i| i % config.num_classes).collect(),
        };
        (noise, labels)
    };
    let (sampler, sampler_name) = build_sampler(args.sampler, args.steps, args.flow_shift)?;
    let first_enhance = default_first_enhance(args.sampler);
    // The default grid run without --method shows full compute and ResCa (its defaults) side by
    // side; otherwise one run of --method (full compute by default).
    let methods = match (args.method.method, grid) {
        (None, true) => {
            let resca = MethodArgs {
                method: Some(Method::Resca),
                ..args.method.clone()
            };
            vec![
                MethodArgs::default().to_config(first_enhance)?,
                resca.to_config(first_enhance)?,
            ]
        }
        _ => vec![args.method.to_config(first_enhance)?],
    };
    for method in &methods {
        method.validate(config.tokens())?;
    }
    let job = SampleJob {
        noise,
        labels,
        cfg_scale,
        sampler,
        sampler_name: sampler_name.to_string(),
    };
    let mut results = Vec::new();
    for method in &methods {
        let bar = progress_bar(args.steps as u64, &method.name());
        let replay = args
            .method
            .replay_clusters
            .as_deref()
            .filter(|_| method.kind == MethodKind::ResCa);
        let result = run_method(&model, &job, method, args.backend, replay, &mut |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        results.push(result);
    }
    write_outputs(&args, &model, &job, &results, grid)?;
    let stats: Vec<_> = results.iter().map(|r| &r.stats).collect();
    if args.json {
        let json = if stats.len() == 1 {
            serde_json::to_value(stats[0])?
        } else {
            serde_json::to_value(&stats)?
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for s in &stats {
            println!("{}\n", s.table());
        }
        if let [full, cached] = &results[..] {
            let (a, b) = (final_samples(full), final_samples(cached));
            println!(
                "{} vs full compute: {:.2}x fewer FLOPs, {:.2}x faster, final samples RMSE {:.4}, PSNR {:.1} dB",
                cached.stats.method,
                cached.stats.flops_speedup,
                full.stats.wall_s / cached.stats.wall_s,
                rmse(a.view(), b.view()),
                psnr(a.view(), b.view(), 2.0)
            );
        }
    }
    Ok(())
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// `--out`: the last run's trajectory (with the full-compute one as `x_full` when two ran);
/// `--png`: one panel per run, laid out classes x seeds in grid mode.
fn write_outputs(args: &SampleArgs, model: &Dit, job: &SampleJob, results: &[SampleResult], grid: bool) -> Result<()> {
    let last = results.last().expect("at least one run");
    if let Some(path) = &args.out {
        let mut metadata = HashMap::new();
        metadata.insert("config".to_string(), serde_json::to_string(&model.config)?);
        metadata.insert("stats".to_string(), serde_json::to_string(&last.stats)?);
        metadata.insert("cfg_scale".to_string(), job.cfg_scale.to_string());
        let labels = ndarray::Array1::from_iter(job.labels.iter().map(|&y| y as i64)).into_dyn();
        let mut tensors = vec![
            ("x".to_string(), OutTensor::F32(last.x.clone().into_dyn())),
            (
                "model_out".to_string(),
                OutTensor::F32(last.model_out.clone().into_dyn()),
            ),
            ("y".to_string(), OutTensor::I64(labels)),
        ];
        if results.len() > 1 {
            tensors.push(("x_full".to_string(), OutTensor::F32(results[0].x.clone().into_dyn())));
        }
        write_safetensors(path, tensors, metadata).with_context(|| format!("writing --out {}", path.display()))?;
    }
    let png = if args.no_png {
        None
    } else {
        args.png.clone().or_else(|| grid.then(|| PathBuf::from("sample.png")))
    };
    if let Some(path) = &png {
        let cols = if grid { model.config.num_classes } else { 8 };
        let samples: Vec<_> = results.iter().map(final_samples).collect();
        let figure = panels(
            &results
                .iter()
                .zip(&samples)
                .map(|(r, s)| Panel {
                    title: r.stats.method.clone(),
                    images: s.view(),
                    cols,
                })
                .collect::<Vec<_>>(),
            3,
        );
        figure
            .write_png(path)
            .with_context(|| format!("writing --png {}", path.display()))?;
    }
    Ok(())
}

/// `--cfg-scale` of the commands that run the sampler.
#[derive(clap::Args)]
struct Guidance {
    /// Classifier-free guidance scale, used when above 1 (default: 4.0 for the embedded model,
    /// which needs it for legible digits; 1.5, the papers' value, for --weights and --model).
    #[arg(long, allow_negative_numbers = true)]
    cfg_scale: Option<f32>,
}

impl Guidance {
    /// The scale given (checked), else the selected model's default.
    fn scale(&self, model: &ModelArgs) -> Result<f32> {
        match self.cfg_scale {
            Some(scale) if !scale.is_finite() || scale < 0.0 => {
                bail!("--cfg-scale {scale} must be a finite number >= 0")
            }
            Some(scale) => Ok(scale),
            None => Ok(model.default_cfg_scale()),
        }
    }
}

/// DiT uses 2 dense steps at the start, FLUX-style flow 3.
fn default_first_enhance(sampler: SamplerKind) -> usize {
    match sampler {
        SamplerKind::Ddim => 2,
        SamplerKind::Flow => 3,
    }
}

fn build_sampler(kind: SamplerKind, steps: usize, flow_shift: f64) -> Result<(Sampler, &'static str)> {
    Ok(match kind {
        SamplerKind::Ddim => (Sampler::Ddim(DdimSchedule::new(steps)?), "ddim"),
        SamplerKind::Flow => (Sampler::Flow(FlowSchedule::new(steps, flow_shift)?), "flow"),
    })
}

fn plan(args: PlanArgs) -> Result<()> {
    let config = args.model.config_only()?;
    let method = args.method.to_config(default_first_enhance(args.sampler))?;
    method.validate(config.tokens())?;
    let plan = Plan::new(&config, &method, args.steps, args.cfg_scale > 1.0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        println!("{}", plan.table());
    }
    Ok(())
}

fn compare(args: CompareArgs) -> Result<()> {
    let model = args.model.load()?;
    let cfg_scale = args.guidance.scale(&args.model)?;
    let (noise, labels) = class_grid(&model.config, args.seeds, args.seed);
    // The digit classifier measures quality only for the model it was trained with.
    let embedded = args.model.is_embedded();
    let classifier = if embedded { Some(embedded::classifier()?) } else { None };
    let bar = progress_bar(resca_host::compare::contenders(args.steps).len() as u64, "compare");
    let comparison = resca_host::compare::compare(
        &model,
        noise,
        labels,
        cfg_scale,
        args.steps,
        classifier.as_ref(),
        &mut |name, done, total| {
            if done == total {
                bar.inc(1);
            }
            bar.set_message(name.to_string());
        },
    )?;
    bar.finish_and_clear();
    let table = resca_host::compare::markdown(&comparison.rows);
    let columns = model.config.num_classes;
    let samples = resca_host::compare::samples(&comparison);
    let shown: Vec<_> = samples
        .iter()
        .map(|(name, s)| (name, resca_host::compare::first(s, columns)))
        .collect();
    let figure = panel_column(
        &shown
            .iter()
            .map(|(name, s)| Panel {
                title: name.to_string(),
                images: s.view(),
                cols: columns,
            })
            .collect::<Vec<_>>(),
        2,
    );
    figure
        .write_png(&args.png)
        .with_context(|| format!("writing --png {}", args.png.display()))?;
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "cfg_scale": cfg_scale,
            "steps": args.steps,
            "note": comparison.real_data_frechet_note,
            "rows": comparison.rows,
        });
        write_text(path, &serde_json::to_string_pretty(&json)?)?;
    }
    if let Some(path) = &args.markdown {
        write_text(path, &table)?;
    }
    println!(
        "guided DDIM-{}, guidance scale {cfg_scale}\n\n{table}\n{}",
        args.steps, comparison.real_data_frechet_note
    );
    Ok(())
}

fn trajectories(args: TrajectoriesArgs) -> Result<()> {
    use resca_host::trajectories::{clustering_view, figure, most_moving_tokens, record};
    use resca_reference::cache::{MethodConfig, MethodKind, ResidualScaling};
    let model = args.model.load()?;
    let config = &model.config;
    let labels = check_labels(&[args.label], config)?;
    let job = SampleJob {
        noise: seeded_noise(args.seed, 1, config),
        labels,
        cfg_scale: args.guidance.scale(&args.model)?,
        sampler: Sampler::Ddim(DdimSchedule::new(args.steps)?),
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
    figure(&runs, &tokens, &view, config.grid())?
        .write_png(&args.png)
        .with_context(|| format!("writing --png {}", args.png.display()))?;
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
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        for (name, d) in &deviation {
            println!("{name}: final-block token states differ from full compute by RMSE {d:.4} over the run");
        }
        println!(
            "mean intra-cluster residual distance (Eq. S3): feature-based {:.4}, trajectory-based {:.4}",
            view.feature_spread, view.trajectory_spread
        );
        println!("wrote {}", args.png.display());
    }
    Ok(())
}

/// Writes a text file through the safe writer (temporary name, then rename).
fn write_text(path: &std::path::Path, text: &str) -> Result<()> {
    resca_host::outputs::check_destinations(&[("output", path)], &[])?
        .remove(0)
        .write_text(text)
}

fn stability(args: StabilityArgs) -> Result<()> {
    let report = resca_proofs::analyse(args.scheme, args.order)?;
    if let Some(path) = &args.png {
        resca_proofs::render_stability_png(args.scheme, args.order, path, 500, 400)
            .with_context(|| format!("writing --png {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} order {}: A-stable: {}; max |G| on the imaginary axis: {}",
            args.scheme,
            args.order,
            report.a_stable,
            if report.max_gain_on_imaginary_axis.is_finite() {
                format!("{:.6}", report.max_gain_on_imaginary_axis)
            } else {
                "unbounded".to_string()
            }
        );
        if let Some(c) = report.counterexample {
            println!("counterexample: z = {:.6} {:+.6}i, |G| = {:.6}", c.re, c.im, c.gain);
        }
    }
    Ok(())
}

fn forward(args: ForwardArgs) -> Result<()> {
    let model = args.model.load()?;
    let input = SafetensorsFile::open(&args.input)?;
    let x = input.read_f32("x")?;
    let side = model.config.input_size;
    let shape_ok = matches!(x.shape(), [_, c, h, w] if (*c, *h, *w) == (model.config.in_channels, side, side));
    if !shape_ok {
        bail!(
            "{}: tensor `x` has shape {:?}, the model expects (B, {}, {side}, {side})",
            args.input.display(),
            x.shape(),
            model.config.in_channels
        );
    }
    let x = x.into_dimensionality::<Ix4>()?;
    let t = read_timesteps(&input, "t")?;
    let y = input.read_i64("y")?;
    if let Some(&bad) = y.iter().find(|&&v| v < 0 || v as usize > model.config.null_label()) {
        bail!(
            "{}: tensor `y` holds label {bad}, outside 0..={} (the last is the null label)",
            args.input.display(),
            model.config.null_label()
        );
    }
    let y: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    let out = match (args.backend, args.cfg_scale) {
        (Backend::Sim, scale) => forward_sim(&model, x.view(), &t, &y, scale),
        (Backend::Cuda, scale) => forward_cuda(&model, x.view(), &t, &y, scale),
        (Backend::Reference, Some(scale)) => Ok(model.forward_with_cfg(x.view(), &t, &y, scale)?),
        (Backend::Reference, None) => Ok(model.forward(x.view(), &t, &y)?),
    }
    .with_context(|| format!("running the model on {}", args.input.display()))?;
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), serde_json::to_string(&model.config)?);
    write_safetensors(
        &args.out,
        vec![("out".to_string(), OutTensor::F32(out.into_dyn()))],
        metadata,
    )
    .with_context(|| format!("writing --out {}", args.out.display()))?;
    Ok(())
}

/// Timesteps as the model's f32 time input, from an integer or a float tensor.
fn read_timesteps(file: &SafetensorsFile, name: &str) -> Result<Vec<f32>> {
    match file.read_i64(name) {
        Ok(t) => Ok(t.iter().map(|&v| v as f32).collect()),
        Err(resca_reference::Error::WrongDtype { .. }) => Ok(file.read_f32(name)?.iter().copied().collect()),
        Err(e) => Err(e.into()),
    }
}
