//! The DiT forward pass, classifier-free guidance and DDIM sampling executed on the GPU kernels
//! alone, through the simulator: every number of the output is computed by a kernel body; the
//! host only allocates buffers and launches (the role of a CUDA stream).

use std::borrow::Cow;

use ndarray::{Array4, Array5, ArrayView4, Axis, s};
use resca_gpu_kernels::attention::ATTN_MAX_HEAD_DIM;
use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::embed::{MAX_PATCH_FEATURES, TIMESTEP_FEATURES};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flops::StepWork;
use resca_reference::weights::Linear;
use resca_reference::{Dit, DitConfig, Trajectory};

use super::SimError;
use super::kernels::{self, Epilogue};

/// Why a simulated run failed.
#[derive(Debug, thiserror::Error)]
pub enum SimDitError {
    /// A kernel failed a simulator check (a kernel bug, or buffers of the wrong size).
    #[error(transparent)]
    Kernel(#[from] SimError),
    /// Bad inputs (shapes, labels, timesteps), as the reference reports them.
    #[error(transparent)]
    Model(#[from] resca_reference::Error),
    /// A model the kernels do not support.
    #[error("the simulator backend does not support this model: {0}")]
    Unsupported(String),
}

/// Weights as device buffers (borrowed when the arrays are contiguous, as loaded ones are).
struct DeviceLinear<'m> {
    weight: Cow<'m, [f32]>,
    bias: Cow<'m, [f32]>,
    in_features: usize,
    out_features: usize,
}

fn device<'m, D: ndarray::Dimension>(a: &'m ndarray::Array<f32, D>) -> Cow<'m, [f32]> {
    match a.as_slice() {
        Some(slice) => Cow::Borrowed(slice),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

impl<'m> DeviceLinear<'m> {
    fn new(linear: &'m Linear) -> Self {
        Self {
            weight: device(&linear.weight),
            bias: device(&linear.bias),
            in_features: linear.in_features(),
            out_features: linear.out_features(),
        }
    }
}

struct DeviceBlock<'m> {
    ada_ln: DeviceLinear<'m>,
    qkv: DeviceLinear<'m>,
    proj: DeviceLinear<'m>,
    fc1: DeviceLinear<'m>,
    fc2: DeviceLinear<'m>,
}

/// A DiT whose forward pass runs on the simulated kernels.
pub struct SimDit<'m> {
    model: &'m Dit,
    patch_embed: DeviceLinear<'m>,
    pos_embed: Cow<'m, [f32]>,
    t_mlp_in: DeviceLinear<'m>,
    t_mlp_out: DeviceLinear<'m>,
    label_table: Cow<'m, [f32]>,
    blocks: Vec<DeviceBlock<'m>>,
    final_ada_ln: DeviceLinear<'m>,
    final_linear: DeviceLinear<'m>,
}

impl<'m> SimDit<'m> {
    /// Prepares `model` for the kernels; fails for shapes the kernels do not cover (head
    /// dimension above 128, more than 256 pixels per patch).
    pub fn new(model: &'m Dit) -> Result<Self, SimDitError> {
        let c = &model.config;
        if c.head_dim() > ATTN_MAX_HEAD_DIM as usize {
            return Err(SimDitError::Unsupported(format!(
                "head dimension {} exceeds the attention kernel's {ATTN_MAX_HEAD_DIM}",
                c.head_dim()
            )));
        }
        let patch_features = c.in_channels * c.patch_size * c.patch_size;
        if patch_features > MAX_PATCH_FEATURES as usize {
            return Err(SimDitError::Unsupported(format!(
                "C p p = {patch_features} exceeds the patch-embedding kernel's {MAX_PATCH_FEATURES}"
            )));
        }
        let w = &model.weights;
        Ok(Self {
            model,
            patch_embed: DeviceLinear::new(&w.patch_embed),
            pos_embed: device(&w.pos_embed),
            t_mlp_in: DeviceLinear::new(&w.t_mlp_in),
            t_mlp_out: DeviceLinear::new(&w.t_mlp_out),
            label_table: device(&w.label_table),
            blocks: w
                .blocks
                .iter()
                .map(|b| DeviceBlock {
                    ada_ln: DeviceLinear::new(&b.ada_ln),
                    qkv: DeviceLinear::new(&b.qkv),
                    proj: DeviceLinear::new(&b.proj),
                    fc1: DeviceLinear::new(&b.fc1),
                    fc2: DeviceLinear::new(&b.fc2),
                })
                .collect(),
            final_ada_ln: DeviceLinear::new(&w.final_ada_ln),
            final_linear: DeviceLinear::new(&w.final_linear),
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.model.config
    }

    /// `model(x, t, y)`: (B, out_channels, H, W), every value computed by the kernels.
    pub fn forward(&self, x: ArrayView4<f32>, timesteps: &[f32], labels: &[usize]) -> Result<Array4<f32>, SimDitError> {
        self.model.validate_inputs(x, timesteps, labels)?;
        let c = self.config();
        let (b, n, d) = (x.dim().0, c.tokens(), c.hidden_size);
        let (side, p, heads) = (c.input_size, c.patch_size, c.num_heads);
        let rows = b * n;
        let mlp = c.mlp_hidden();

        // Conditioning: timestep features -> t-embedder MLP; + label embedding; SiLU.
        let mut features = vec![0.0f32; b * TIMESTEP_FEATURES as usize];
        kernels::timestep_features(timesteps, &mut features)?;
        let mut t_hidden = vec![0.0f32; b * d];
        self.linear_rows(&features, &self.t_mlp_in, &mut t_hidden, b, true)?;
        let mut t_emb = vec![0.0f32; b * d];
        self.linear_rows(&t_hidden, &self.t_mlp_out, &mut t_emb, b, false)?;
        let labels_u32: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        let mut silu_c = vec![0.0f32; b * d];
        kernels::label_embed_silu(&t_emb, &self.label_table, &labels_u32, &mut silu_c, d)?;

        // Tokens: patch embedding + bias + pos_embed.
        let image = x.as_standard_layout();
        let mut tokens = vec![0.0f32; rows * d];
        kernels::patch_embed(
            image.as_slice().expect("standard layout"),
            &self.patch_embed.weight,
            &self.patch_embed.bias,
            &self.pos_embed,
            &mut tokens,
            b,
            c.in_channels,
            side,
            p,
            d,
        )?;

        let mut modulation = vec![0.0f32; b * 6 * d];
        let mut normed = vec![0.0f32; rows * d];
        let mut qkv = vec![0.0f32; rows * 3 * d];
        let mut heads_out = vec![0.0f32; rows * d];
        let mut hidden = vec![0.0f32; rows * mlp];
        for block in &self.blocks {
            self.linear_rows(&silu_c, &block.ada_ln, &mut modulation, b, false)?;
            // Attention branch: x += gate_msa * proj(attn(modulate(LN(x), shift_msa, scale_msa))).
            kernels::layer_norm_modulate(&tokens, &modulation, &mut normed, rows, d, n, 6 * d, 0, d)?;
            self.gemm(&normed, &block.qkv, &mut qkv, rows, Epilogue::Bias)?;
            kernels::attention(&qkv, &mut heads_out, b, n, heads, c.head_dim())?;
            self.gemm_gated(&heads_out, &block.proj, &mut tokens, &modulation, rows, n, 2 * d)?;
            // MLP branch: x += gate_mlp * fc2(GELU(fc1(modulate(LN(x), shift_mlp, scale_mlp)))).
            kernels::layer_norm_modulate(&tokens, &modulation, &mut normed, rows, d, n, 6 * d, 3 * d, 4 * d)?;
            self.gemm(&normed, &block.fc1, &mut hidden, rows, Epilogue::BiasGelu)?;
            self.gemm_gated(&hidden, &block.fc2, &mut tokens, &modulation, rows, n, 5 * d)?;
        }

        // Final layer: adaLN (shift, scale), LN + modulate, linear, unpatchify.
        let mut final_mod = vec![0.0f32; b * 2 * d];
        self.linear_rows(&silu_c, &self.final_ada_ln, &mut final_mod, b, false)?;
        kernels::layer_norm_modulate(&tokens, &final_mod, &mut normed, rows, d, n, 2 * d, 0, d)?;
        let width = self.final_linear.out_features;
        let mut final_tokens = vec![0.0f32; rows * width];
        self.gemm(&normed, &self.final_linear, &mut final_tokens, rows, Epilogue::Bias)?;
        let oc = c.out_channels();
        let mut out = vec![0.0f32; b * oc * side * side];
        kernels::unpatchify(&final_tokens, &mut out, b, oc, side, p)?;
        Ok(Array4::from_shape_vec((b, oc, side, side), out).expect("sized above"))
    }

    /// `forward_with_cfg` as upstream (and the reference): the batch `[x; x]` from the first half
    /// of `x`, labels `[y; null]` as given, guidance on channels 0..3 by the `cfg_mix` kernel.
    pub fn forward_with_cfg(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: f32,
    ) -> Result<Array4<f32>, SimDitError> {
        let b = x.dim().0;
        if !b.is_multiple_of(2) {
            return Err(
                resca_reference::Error::Input(format!("a guided batch needs an even size ([x; x]), got {b}")).into(),
            );
        }
        let half = x.slice(s![..b / 2, .., .., ..]);
        let combined = ndarray::concatenate(Axis(0), &[half, half]).expect("same shapes");
        let mut out = self.forward(combined.view(), timesteps, labels)?;
        let (oc, side) = (out.dim().1, out.dim().2);
        kernels::cfg_mix(
            out.as_slice_mut().expect("fresh array"),
            b / 2,
            oc,
            side * side,
            cfg_scale,
        )?;
        Ok(out)
    }

    /// One DDIM step from step `s` to `s - 1` on the `ddim_step` kernel, with the coefficients
    /// rounded exactly as `DdimSchedule::step` rounds them.
    pub fn ddim_step(
        &self,
        schedule: &DdimSchedule,
        s: usize,
        x: ArrayView4<f32>,
        model_out: ArrayView4<f32>,
    ) -> Result<Array4<f32>, SimDitError> {
        let (_, channels, h, w) = x.dim();
        let out_channels = model_out.dim().1;
        if model_out.dim().0 != x.dim().0 || out_channels < channels || model_out.dim().2 != h || model_out.dim().3 != w
        {
            return Err(resca_reference::Error::Input(format!(
                "DDIM step: model output {:?} does not cover x {:?}",
                model_out.shape(),
                x.shape()
            ))
            .into());
        }
        let x = x.as_standard_layout();
        let model_out = model_out.as_standard_layout();
        let mut out = Array4::<f32>::zeros(x.raw_dim());
        kernels::ddim_step(
            x.as_slice().expect("standard layout"),
            model_out.as_slice().expect("standard layout"),
            out.as_slice_mut().expect("fresh array"),
            channels,
            out_channels,
            h * w,
            ddim_coefficients(schedule, s),
        )?;
        Ok(out)
    }

    /// A whole DDIM run on the kernels, the loop of `resca_reference::sample` with the full
    /// (uncached) model: with `cfg_scale` the batch must be the guided `[x; x]` with labels
    /// `[y; null]`. `progress(done, total)` after each step.
    pub fn sample_ddim(
        &self,
        noise: ArrayView4<f32>,
        labels: &[usize],
        cfg_scale: Option<f32>,
        schedule: &DdimSchedule,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Trajectory, SimDitError> {
        let steps = schedule.steps();
        let b = noise.dim().0;
        self.model.validate_inputs(noise, &vec![0.0; b], labels)?;
        if let Some(scale) = cfg_scale
            && !scale.is_finite()
        {
            return Err(resca_reference::Error::Input(format!("--cfg-scale {scale} is not finite")).into());
        }
        let c = self.config();
        let (side, oc) = (c.input_size, c.out_channels());
        let mut xs = Array5::<f32>::zeros((steps + 1, b, c.in_channels, side, side));
        let mut outs = Array5::<f32>::zeros((steps, b, oc, side, side));
        xs.index_axis_mut(Axis(0), 0).assign(&noise);
        let mut x = noise.to_owned();
        let mut step_seconds = Vec::with_capacity(steps);
        for position in 0..steps {
            let started = std::time::Instant::now();
            let index = steps - 1 - position;
            let timesteps = vec![schedule.timestep_map[index] as f32; b];
            let out = match cfg_scale {
                Some(scale) => self.forward_with_cfg(x.view(), &timesteps, labels, scale)?,
                None => self.forward(x.view(), &timesteps, labels)?,
            };
            x = self.ddim_step(schedule, index, x.view(), out.view())?;
            xs.index_axis_mut(Axis(0), position + 1).assign(&x);
            outs.index_axis_mut(Axis(0), position).assign(&out);
            step_seconds.push(started.elapsed().as_secs_f64());
            progress(position + 1, steps);
        }
        Ok(Trajectory {
            x: xs,
            model_out: outs,
            work: vec![StepWork::full(c); steps],
            step_seconds,
        })
    }

    fn linear_rows(
        &self,
        x: &[f32],
        layer: &DeviceLinear<'_>,
        out: &mut [f32],
        rows: usize,
        silu_out: bool,
    ) -> Result<(), SimError> {
        kernels::linear_rows(
            x,
            &layer.weight,
            &layer.bias,
            out,
            rows,
            layer.in_features,
            layer.out_features,
            silu_out,
        )
    }

    fn gemm(
        &self,
        a: &[f32],
        layer: &DeviceLinear<'_>,
        out: &mut [f32],
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<(), SimError> {
        kernels::gemm(
            a,
            &layer.weight,
            &layer.bias,
            out,
            rows,
            layer.out_features,
            layer.in_features,
            epilogue,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_gated(
        &self,
        a: &[f32],
        layer: &DeviceLinear<'_>,
        x: &mut [f32],
        modulation: &[f32],
        rows: usize,
        tokens: usize,
        gate_offset: usize,
    ) -> Result<(), SimError> {
        kernels::gemm_gated_residual(
            a,
            &layer.weight,
            &layer.bias,
            x,
            modulation,
            rows,
            layer.out_features,
            layer.in_features,
            tokens,
            6 * self.config().hidden_size,
            gate_offset,
        )
    }
}

/// The float32 coefficients of DDIM step `s`, computed in the reference's operation order.
pub fn ddim_coefficients(schedule: &DdimSchedule, s: usize) -> DdimCoefficients {
    let abar = schedule.alphas_cumprod[s];
    let abar_prev = schedule.alphas_cumprod_prev[s] as f32;
    DdimCoefficients {
        recip: (1.0 / abar).sqrt() as f32,
        recip_m1: (1.0 / abar - 1.0).sqrt() as f32,
        sqrt_prev: abar_prev.sqrt(),
        sqrt_one_minus_prev: (1.0 - abar_prev).sqrt(),
    }
}
