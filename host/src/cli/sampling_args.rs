//! The sampler and guidance flags shared by the subcommands that run (or plan) a sampler:
//! `--sampler` with its defaults, and `--cfg-scale` with the selected model's default.

use anyhow::{Result, bail};
use clap::ValueEnum;
use resca_reference::Sampler;
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;

use super::model_args::ModelArgs;
use super::value_parsers::cfg_scale;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerKind {
    Ddim,
    Flow,
}

impl SamplerKind {
    /// The sampler of `steps` steps (`flow_shift`: the flow grid's time shift, which only the
    /// flow sampler has) and its name.
    pub fn build(self, steps: usize, flow_shift: Option<f64>) -> Result<(Sampler, &'static str)> {
        Ok(match self {
            SamplerKind::Ddim => {
                if let Some(shift) = flow_shift {
                    bail!(
                        "--flow-shift {shift} does not apply to --sampler ddim (only the flow sampler shifts its grid)"
                    );
                }
                (Sampler::Ddim(DdimSchedule::new(steps)?), "ddim")
            }
            SamplerKind::Flow => {
                let shift = flow_shift.unwrap_or(1.0);
                if !(shift.is_finite() && shift > 0.0) {
                    bail!("--flow-shift {shift} must be a positive finite number");
                }
                (Sampler::Flow(FlowSchedule::new(steps, shift)?), "flow")
            }
        })
    }

    /// Dense steps at the start when `--first-enhance` is not given: DiT uses 2, FLUX-style
    /// flow 3.
    pub fn default_first_enhance(self) -> usize {
        match self {
            SamplerKind::Ddim => 2,
            SamplerKind::Flow => 3,
        }
    }
}

/// `--cfg-scale` of the commands that run the sampler.
#[derive(clap::Args)]
pub struct Guidance {
    /// Classifier-free guidance scale, used when above 1 (default: 4.0 for the embedded model,
    /// which needs it for legible digits; 1.5, the papers' value, for --weights and --model).
    #[arg(long, allow_hyphen_values = true, value_parser = cfg_scale)]
    cfg_scale: Option<f32>,
}

impl Guidance {
    /// The scale given (a finite number >= 0, checked when parsed), else the selected model's
    /// default.
    pub fn scale(&self, model: &ModelArgs) -> f32 {
        self.cfg_scale.unwrap_or_else(|| model.default_cfg_scale())
    }
}
