//! `resca forward`: one forward pass of the model on the tensors of a file, on any backend.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::Ix4;
use resca_host::run::{Backend, forward};
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors};

use super::model_args::ModelArgs;

/// One forward pass: reads `x`, `t`, `y` from --input, writes `out` to --out.
#[derive(clap::Args)]
pub struct Args {
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

pub fn run(args: Args) -> Result<()> {
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
    let out = forward(&model, x.view(), &t, &y, args.cfg_scale, args.backend)
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
