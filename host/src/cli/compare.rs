//! `resca compare`: every caching method at matched FLOPs on the same samples, as a markdown
//! table (and JSON), with one row of samples per method in a PNG.

use std::path::PathBuf;

use anyhow::{Context, Result};
use resca_host::embedded;
use resca_host::evaluation::compare::{compare, contenders, first, markdown, samples};
use resca_host::figures::panels::{Panel, panel_column};
use resca_host::inputs::class_grid;

use super::model_args::ModelArgs;
use super::output::{progress_bar, write_text};
use super::sampling_args::Guidance;
use super::value_parsers::positive;

/// Every caching method at matched FLOPs on the same samples: speed, error, quality.
#[derive(clap::Args)]
pub struct Args {
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

pub fn run(args: Args) -> Result<()> {
    let model = args.model.load()?;
    let cfg_scale = args.guidance.scale(&args.model)?;
    let (noise, labels) = class_grid(&model.config, args.seeds, args.seed);
    // The digit classifier measures quality only for the model it was trained with.
    let embedded = args.model.is_embedded();
    let classifier = if embedded { Some(embedded::classifier()?) } else { None };
    let bar = progress_bar(contenders(args.steps).len() as u64, "compare");
    let comparison = compare(
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
