//! `resca plan`: a method's step schedule and FLOPs for a model, without running it.

use anyhow::Result;
use resca_host::plan::Plan;

use super::method_args::MethodArgs;
use super::model_args::ModelArgs;
use super::sampling_args::SamplerKind;
use super::output::print_line;
use super::value_parsers::{cfg_scale, step_count};

/// Print a method's step schedule and FLOPs without running the model.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value_t = 50, allow_negative_numbers = true, value_parser = step_count)]
    steps: usize,
    /// Guidance doubles the model rows per sample when above 1.
    #[arg(long, default_value_t = 1.5, allow_hyphen_values = true, value_parser = cfg_scale)]
    cfg_scale: f32,
    #[arg(long, value_enum, default_value_t = SamplerKind::Ddim)]
    sampler: SamplerKind,
    #[command(flatten)]
    method: MethodArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = args.model.config_only()?;
    let method = args.method.to_config(args.sampler.default_first_enhance())?;
    method.validate(config.tokens())?;
    let plan = Plan::new(&config, &method, args.steps, args.cfg_scale > 1.0);
    if args.json {
        print_line(&serde_json::to_string_pretty(&plan)?)
    } else {
        print_line(&plan.table())
    }
}
