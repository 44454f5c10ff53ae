//! `resca forward`: one forward pass of the model on the tensors of a file, on any backend.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ndarray::Ix4;
use resca_host::run::forward;
use resca_host::limits::check_samples;
use resca_reference::memory::forward_estimate;
use resca_reference::safetensors_file::{OutTensor, SafetensorsFile, write_safetensors_to};

use super::backend_args::BackendArgs;
use super::model_args::ModelArgs;
use super::output::{MemoryCheck, check_outputs};
use super::value_parsers::cfg_scale;

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
    #[arg(long, allow_hyphen_values = true, value_parser = cfg_scale)]
    cfg_scale: Option<f32>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    memory: MemoryCheck,
}

pub fn run(args: Args) -> Result<()> {
    args.backend.check()?;
    let mut inputs = args.model.input_files();
    inputs.push(("--input", Some(args.input.as_path())));
    let out_file = check_outputs(&[("--out", Some(args.out.as_path()))], &inputs)?.remove(0);
    let input = SafetensorsFile::open(&args.input).with_context(|| format!("reading --input {}", args.input.display()))?;
    let config = args.model.config_only()?;
    let rows = input.nonempty_shape("x")?[0];
    check_samples(rows, &format!("--input {} (tensor `x`)", args.input.display()))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    args.memory.check(&forward_estimate(&config, rows, threads), "this forward pass")?;
    let model = args.model.load()?;
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
    if let Some(&bad) = t.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        bail!(
            "{}: tensor `t` holds timestep {bad}; timesteps are finite numbers >= 0",
            args.input.display()
        );
    }
    let y = input.read_i64("y")?;
    if let Some(&bad) = y.iter().find(|&&v| v < 0 || v as usize > model.config.null_label()) {
        bail!(
            "{}: tensor `y` holds label {bad}, outside 0..={} (the last is the null label)",
            args.input.display(),
            model.config.null_label()
        );
    }
    let y: Vec<usize> = y.iter().map(|&v| v as usize).collect();
    let out = forward(&model, x.view(), &t, &y, args.cfg_scale, args.backend.backend, args.backend.precision)
        .with_context(|| format!("running the model on {}", args.input.display()))?;
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), serde_json::to_string(&model.config)?);
    let tensors = [("out".to_string(), OutTensor::F32(out.into_dyn()))];
    out_file.write(|w| write_safetensors_to(w, &tensors, &metadata))
}

/// Timesteps as the model's f32 time input, from an integer or a float tensor.
fn read_timesteps(file: &SafetensorsFile, name: &str) -> Result<Vec<f32>> {
    match file.read_i64(name) {
        Ok(t) => Ok(t.iter().map(|&v| v as f32).collect()),
        Err(resca_reference::Error::WrongDtype { .. }) => Ok(file.read_f32(name)?.iter().copied().collect()),
        Err(e) => Err(e.into()),
    }
}
