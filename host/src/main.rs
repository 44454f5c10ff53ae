//! `resca`: run DiT with residual caching on the CPU reference (and, in time, the simulator and
//! CUDA backends). `resca --help` lists the subcommands; DESIGN.md holds the CLI contract.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ndarray::Ix4;
use resca_host::figures::{Panel, panels};
use resca_host::inputs::{check_labels, load_noise, seeded_noise};
use resca_host::method_args::{MethodArgs, positive};
use resca_host::model_source::ModelArgs;
use resca_host::plan::Plan;
use resca_host::run::{SampleJob, SampleResult, final_samples, run_reference};
use resca_host::sim::job::{forward_sim, run_sim};
use resca_reference::cache::{CachingHook, build_hook, read_clusterings};
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SamplerKind {
    Ddim,
    Flow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The pure-ndarray CPU reference.
    Reference,
    /// The GPU kernels, run by the CPU simulator (slow; checks every kernel like compute-sanitizer).
    Sim,
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
    /// Number of samples (default: one per label).
    #[arg(long, allow_negative_numbers = true, value_parser = positive)]
    batch: Option<usize>,
    /// Class labels, one per sample, comma separated (default: 0, 1, 2, ... cycling).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    labels: Option<Vec<i64>>,
    /// Classifier-free guidance scale (used when above 1; the papers use 1.5).
    #[arg(long, default_value_t = 1.5, allow_negative_numbers = true)]
    cfg_scale: f32,
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
    /// Write a PNG grid of the final samples here.
    #[arg(long, value_name = "OUT.png")]
    png: Option<PathBuf>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sample(args) => sample(args),
        Command::Forward(args) => forward(args),
        Command::Plan(args) => plan(args),
        Command::Stability(args) => stability(args),
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
    let noise = match &args.noise {
        Some(path) => load_noise(path, config)?,
        None => {
            let batch = args
                .batch
                .or(args.labels.as_ref().map(Vec::len))
                .unwrap_or(config.num_classes.min(8));
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            seeded_noise(args.seed, batch, config)
        }
    };
    let batch = noise.dim().0;
    let labels = match &args.labels {
        Some(labels) if labels.len() != batch => {
            bail!("--labels gives {} labels for a batch of {batch} samples", labels.len())
        }
        Some(labels) => check_labels(labels, config)?,
        None => (0..batch).map(|i| i % config.num_classes).collect(),
    };
    if !args.cfg_scale.is_finite() || args.cfg_scale < 0.0 {
        bail!("--cfg-scale {} must be a finite number >= 0", args.cfg_scale);
    }
    let (sampler, sampler_name) = build_sampler(args.sampler, args.steps, args.flow_shift)?;
    let method = args.method.to_config(default_first_enhance(args.sampler))?;
    method.validate(config.tokens())?;
    let job = SampleJob {
        noise,
        labels,
        cfg_scale: args.cfg_scale,
        sampler,
        sampler_name: sampler_name.to_string(),
    };
    let rows = if job.guided() { 2 * batch } else { batch };
    let mut hook = build_hook(&method, config, rows, job.sampler.orientation())?;
    let mut replay = Vec::new();
    if let Some(path) = &args.method.replay_clusters {
        let file = SafetensorsFile::open(path)?;
        let records = read_clusterings(&file, rows, config.tokens(), method.clusters)
            .with_context(|| format!("--replay-clusters {}", path.display()))?;
        let mut caching = CachingHook::new(method.clone(), config, rows, job.sampler.orientation())?;
        caching.replay_clusterings(records.clone());
        hook = Box::new(caching);
        replay = records;
    }
    let bar = progress_bar(args.steps as u64, "sampling");
    let mut progress = |done: usize, _: usize| bar.set_position(done as u64);
    let result = match args.backend {
        Backend::Reference => run_reference(&model, &job, &method.name(), hook.as_mut(), &mut progress)?,
        Backend::Sim => run_sim(&model, &job, &method, replay, &mut progress)?,
    };
    bar.finish_and_clear();
    write_outputs(&args, &model, &job, &result)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result.stats)?);
    } else {
        println!("{}", result.stats.table());
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

fn write_outputs(args: &SampleArgs, model: &Dit, job: &SampleJob, result: &SampleResult) -> Result<()> {
    if let Some(path) = &args.out {
        let mut metadata = HashMap::new();
        metadata.insert("config".to_string(), serde_json::to_string(&model.config)?);
        metadata.insert("stats".to_string(), serde_json::to_string(&result.stats)?);
        metadata.insert("cfg_scale".to_string(), job.cfg_scale.to_string());
        let labels = ndarray::Array1::from_iter(job.labels.iter().map(|&y| y as i64)).into_dyn();
        let tensors = vec![
            ("x".to_string(), OutTensor::F32(result.x.clone().into_dyn())),
            (
                "model_out".to_string(),
                OutTensor::F32(result.model_out.clone().into_dyn()),
            ),
            ("y".to_string(), OutTensor::I64(labels)),
        ];
        write_safetensors(path, tensors, metadata).with_context(|| format!("writing --out {}", path.display()))?;
    }
    if let Some(path) = &args.png {
        let samples = final_samples(result);
        let figure = panels(
            &[Panel {
                title: result.stats.method.clone(),
                images: samples.view(),
                cols: 8,
            }],
            4,
        );
        figure
            .write_png(path)
            .with_context(|| format!("writing --png {}", path.display()))?;
    }
    Ok(())
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
