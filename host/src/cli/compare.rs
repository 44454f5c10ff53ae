//! `resca compare`: every caching method at matched FLOPs on the same samples, as a markdown
//! table (and JSON), with one row of samples per method in a PNG.

use std::path::PathBuf;

use anyhow::Result;
use resca_host::embedded;
use resca_host::evaluation::compare::{compare, contenders, first, markdown, samples};
use resca_host::figures::panels::{Panel, panel_column};
use resca_host::inputs::class_grid;
use resca_host::limits::grid_samples;
use resca_reference::cache::{MethodConfig, MethodKind};
use resca_reference::memory::{RunMemory, sampling_estimate};

use super::backend_args::BackendArgs;
use super::model_args::ModelArgs;
use super::output::{MemoryCheck, check_outputs, print_line, progress_bar};
use super::sampling_args::Guidance;
use super::value_parsers::{sample_count, seed, step_count};

/// Every caching method at matched FLOPs on the same samples: speed, error, quality.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Seeds per class (samples = classes x seeds).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = sample_count)]
    seeds: usize,
    /// First seed.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = seed)]
    seed: u64,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = step_count)]
    steps: usize,
    #[command(flatten)]
    guidance: Guidance,
    #[command(flatten)]
    backend: BackendArgs,
    /// Write the table as JSON here.
    #[arg(long, value_name = "FILE.json")]
    json: Option<PathBuf>,
    /// Write the markdown table here (it is printed either way).
    #[arg(long, value_name = "FILE.md")]
    markdown: Option<PathBuf>,
    /// The same seeds across methods, one row per method.
    #[arg(long, value_name = "FILE.png", default_value = "compare.png")]
    png: PathBuf,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: Args) -> Result<()> {
    args.backend.check()?;
    let destinations = check_outputs(
        &[
            ("--png", Some(args.png.as_path())),
            ("--json", args.json.as_deref()),
            ("--markdown", args.markdown.as_deref()),
        ],
        &args.model.input_files(),
    )?;
    let mut destinations = destinations.into_iter();
    let png = destinations.next().expect("--png has a default");
    let (json, markdown_file) = (
        args.json.as_ref().and_then(|_| destinations.next()),
        args.markdown.as_ref().and_then(|_| destinations.next()),
    );
    let config = args.model.config_only()?;
    let cfg_scale = args.guidance.scale(&args.model);
    let count = grid_samples(args.seeds, config.num_classes)?;
    let rows = if cfg_scale > 1.0 { 2 * count } else { count };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    // Every contender's trajectory is kept for the table; the largest caches are ResCa's.
    let one = sampling_estimate(&config, &MethodConfig::new(MethodKind::ResCa, 5, 1), rows, count, args.steps, threads);
    let runs = contenders(args.steps).len() as u64 + 1;
    let needed = RunMemory {
        results: one.results.saturating_mul(runs),
        ..one
    };
    args.memory.check(&needed, "this comparison")?;
    let model = args.model.load()?;
    let grid = class_grid(&model.config, args.seeds, args.seed);
    // The digit classifier measures quality only for the model it was trained with.
    let embedded = args.model.is_embedded();
    let classifier = if embedded { Some(embedded::classifier()?) } else { None };
    let bar = progress_bar(contenders(args.steps).len() as u64, "compare");
    let comparison = compare(
        &model,
        (args.backend.backend, args.backend.precision),
        grid,
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
    let first_run = &comparison.results.first().expect("at least one contender").stats;
    let (backend, precision) = (first_run.backend.as_str(), first_run.precision.as_str());
    let table = markdown(&comparison.rows);
    let columns = model.config.num_classes;
    let samples = samples(&comparison);
    let shown: Vec<_> = samples.iter().map(|(name, s)| (name, first(s, columns))).collect();
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
    png.write(|w| figure.encode_png(w))?;
    if let Some(destination) = &json {
        let json = serde_json::json!({
            "cfg_scale": cfg_scale,
            "steps": args.steps,
            "backend": backend,
            "precision": precision,
            "note": comparison.real_data_frechet_note,
            "rows": comparison.rows,
        });
        destination.write_text(&serde_json::to_string_pretty(&json)?)?;
    }
    if let Some(destination) = &markdown_file {
        destination.write_text(&table)?;
    }
    print_line(&format!(
        "guided DDIM-{}, guidance scale {cfg_scale}, {backend} backend{}\n\n{table}\n{}",
        args.steps,
        match precision {
            "exact" => String::new(),
            fast => format!(" in {fast}"),
        },
        comparison.real_data_frechet_note
    ))
}
