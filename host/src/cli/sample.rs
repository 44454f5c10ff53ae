//! `resca sample`: sample images with a caching method (the default grid run: full compute and
//! ResCa side by side) and report steps, FLOPs and wall time; optionally the trajectories, a PNG
//! grid and JSON statistics.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use resca_host::evaluation::metrics::{psnr, rmse};
use resca_host::figures::panels::{Panel, panels};
use resca_host::inputs::{check_labels, class_grid, load_noise, seeded_noise};
use resca_host::job::{SampleJob, SampleResult, final_samples};
use resca_host::run::run_method;
use resca_reference::Dit;
use resca_reference::cache::MethodKind;
use resca_host::limits::{check_samples, grid_samples};
use resca_host::outputs::Destination;
use resca_reference::memory::{RunMemory, sampling_estimate};
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors_to};

use super::backend_args::BackendArgs;
use super::method_args::{Method, MethodArgs};
use super::model_args::ModelArgs;
use super::output::{MemoryCheck, check_outputs, print_line, progress_bar};
use super::sampling_args::{Guidance, SamplerKind};
use super::vae_args::{VaeArgs, check_fits};
use super::value_parsers::{sample_count, seed, step_count};

/// Sample images with a caching method and report steps, FLOPs and wall time.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Noise file holding tensor `noise` (B, C, H, W) f32; default: seeded noise.
    #[arg(long, value_name = "N.safetensors", conflicts_with_all = ["seed", "batch"])]
    noise: Option<PathBuf>,
    /// Seed of the Gaussian noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = seed)]
    seed: u64,
    /// Seeds of the default classes x seeds grid (used when none of --noise, --batch, --labels).
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = sample_count)]
    seeds: usize,
    /// Number of samples (default: one per label).
    #[arg(long, allow_negative_numbers = true, value_parser = sample_count)]
    batch: Option<usize>,
    /// Class labels, one per sample, comma separated (default: 0, 1, 2, ... cycling).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    labels: Option<Vec<i64>>,
    #[command(flatten)]
    guidance: Guidance,
    /// Sampling steps.
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = step_count)]
    steps: usize,
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    sampler: SamplerKind,
    /// Time shift of the flow sampler's grid (default 1, uniform; --sampler flow only).
    #[arg(long, allow_hyphen_values = true)]
    flow_shift: Option<f64>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// Write the trajectory `x` (steps+1, B, C, H, W) and `model_out` (steps, B, ..) here.
    #[arg(long, value_name = "OUT.safetensors")]
    out: Option<PathBuf>,
    /// Write a PNG grid of the final samples here (the default grid run writes `sample.png`).
    #[arg(long, value_name = "OUT.png", conflicts_with = "no_png")]
    png: Option<PathBuf>,
    /// Write no PNG, not even the default grid run's `sample.png`.
    #[arg(long, conflicts_with = "vae")]
    no_png: bool,
    /// Decode the final latents with this VAE for the PNG grid (RGB images instead of latents;
    /// default PNG `sample.png`).
    #[command(flatten)]
    vae: VaeArgs,
    /// Print the statistics as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: Args) -> Result<()> {
    args.backend.check()?;
    // Without --noise, --batch or --labels: the classes x seeds grid of the default run.
    let grid = args.noise.is_none() && args.batch.is_none() && args.labels.is_none();
    let png = match args.no_png {
        true => None,
        false => args
            .png
            .clone()
            .or_else(|| (grid || args.vae.vae.is_some()).then(|| PathBuf::from("sample.png"))),
    };
    // Every output is checked before anything is loaded or run.
    let mut inputs = args.model.input_files();
    inputs.extend([
        ("--noise", args.noise.as_deref()),
        ("--replay-clusters", args.method.replay_clusters.as_deref()),
    ]);
    let vae_files = args.vae.input_files();
    inputs.extend(vae_files.iter().map(|(flag, path)| (*flag, path.as_deref())));
    let mut destinations = check_outputs(&[("--out", args.out.as_deref()), ("--png", png.as_deref())], &inputs)?.into_iter();
    let out = args.out.as_ref().and_then(|_| destinations.next());
    let png = png.as_ref().and_then(|_| destinations.next());

    let config = args.model.config_only()?;
    let cfg_scale = args.guidance.scale(&args.model);
    let samples = match (&args.noise, &args.batch, &args.labels) {
        _ if grid => grid_samples(args.seeds, config.num_classes)?,
        (Some(path), _, _) => {
            let file = SafetensorsFile::open(path).with_context(|| format!("reading --noise {}", path.display()))?;
            let rows = file.nonempty_shape("noise")?[0];
            check_samples(rows, &format!("--noise {}", path.display()))?;
            rows
        }
        (None, Some(batch), _) => *batch,
        (None, None, Some(labels)) => {
            check_samples(labels.len(), "--labels")?;
            labels.len()
        }
        (None, None, None) => 1,
    };
    let (sampler, sampler_name) = args.sampler.build(args.steps, args.flow_shift)?;
    let first_enhance = args.sampler.default_first_enhance();
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
    let rows = if cfg_scale > 1.0 { 2 * samples } else { samples };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let needed = methods
        .iter()
        .map(|method| sampling_estimate(&config, method, rows, samples, args.steps, threads))
        .fold(RunMemory::default(), |all, run| RunMemory {
            weights: all.weights.max(run.weights),
            working: all.working.max(run.working),
            // Every run's trajectory is kept until the outputs are written.
            results: all.results.saturating_add(run.results),
        });
    let vae_config = args.vae.config()?;
    let needed = match (&vae_config, &args.vae.vae) {
        (Some(vae), Some(dir)) => {
            check_fits(vae, &config, dir)?;
            let side = config.input_size;
            let decoding = resca_reference::vae::memory_estimate(vae, samples, side, side, threads);
            RunMemory {
                weights: needed.weights.saturating_add(decoding.weights),
                working: needed.working.max(decoding.working),
                results: needed.results.saturating_add(decoding.results),
            }
        }
        _ => needed,
    };
    args.memory.check(&needed, "this sampling run")?;
    let vae = args.vae.load()?;

    let model = args.model.load()?;
    let config = &model.config;
    let (noise, labels) = if grid {
        class_grid(config, args.seeds, args.seed)
    } else {
        let noise = match &args.noise {
            Some(path) => load_noise(path, config)?,
            None => seeded_noise(args.seed, samples, config),
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
        let result = run_method(&model, &job, method, args.backend.backend, args.backend.precision, replay, &mut |done, _| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        results.push(result);
    }
    let decoded = match &vae {
        Some(decoder) => results
            .iter()
            .map(|result| args.vae.decode(decoder, final_samples(result).view()))
            .collect::<Result<Vec<_>>>()
            .context("decoding the final latents with --vae")?,
        None => Vec::new(),
    };
    write_outputs(out.as_ref(), png.as_ref(), &model, &job, &results, &decoded, grid)?;
    let stats: Vec<_> = results.iter().map(|r| &r.stats).collect();
    if args.json {
        let json = if stats.len() == 1 {
            serde_json::to_value(stats[0])?
        } else {
            serde_json::to_value(&stats)?
        };
        print_line(&serde_json::to_string_pretty(&json)?)?;
    } else {
        for s in &stats {
            print_line(&format!("{}\n", s.table()))?;
        }
        if let [full, cached] = &results[..] {
            let (a, b) = (final_samples(full), final_samples(cached));
            print_line(&format!(
                "{} vs full compute: {:.2}x fewer FLOPs, {:.2}x faster, final samples RMSE {:.4}, PSNR {:.1} dB",
                cached.stats.method,
                cached.stats.flops_speedup,
                full.stats.wall_s / cached.stats.wall_s,
                rmse(a.view(), b.view()),
                psnr(a.view(), b.view(), 2.0)
            ))?;
        }
    }
    Ok(())
}

/// `--out`: the last run's trajectory (with the full-compute one as `x_full` when two ran);
/// `--png`: one panel per run, laid out classes x seeds in grid mode: the images `decoded` by the
/// VAE (one per run) if given, else the latents.
fn write_outputs(
    out: Option<&Destination>,
    png: Option<&Destination>,
    model: &Dit,
    job: &SampleJob,
    results: &[SampleResult],
    decoded: &[ndarray::Array4<f32>],
    grid: bool,
) -> Result<()> {
    let last = results.last().expect("at least one run");
    if let Some(out) = out {
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
        out.write(|w| write_safetensors_to(w, &tensors, &metadata))?;
    }
    if let Some(png) = png {
        let cols = if grid { model.config.num_classes } else { 8 };
        let (samples, scale): (Vec<ndarray::Array4<f32>>, usize) = if decoded.is_empty() {
            (results.iter().map(final_samples).collect(), 3)
        } else {
            (decoded.to_vec(), 1)
        };
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
            scale,
        );
        png.write(|w| figure.encode_png(w))?;
    }
    Ok(())
}
