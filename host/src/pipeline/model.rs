//! The DiT on a [`Device`]: weights uploaded once ([`DeviceDit`]), the activations of a batch
//! ([`Activations`]) and the forward pass as a launch sequence ([`forward`]), with every block
//! branch either computed (and handed to a [`BranchHook`], which a caching method uses to fill
//! its Taylor caches) or supplied by the hook at sparse steps.

use ndarray::Array;
use resca_gpu_kernels::attention::ATTN_MAX_HEAD_DIM;
use resca_gpu_kernels::embed::{MAX_PATCH_FEATURES, TIMESTEP_FEATURES};
use resca_reference::model::Branch;
use resca_reference::weights::Linear;
use resca_reference::{Dit, DitConfig};

use super::device::{Buffer, Device, DeviceError, Slice};
use super::error::PipelineError;
use super::gemm_plan::{self, GemmOutput};
use super::launch::{self, Epilogue, GemmWeight, Precision};

/// What the forward pass asks of a caching method, the device twin of
/// `resca_reference::model::BranchHook`: whether the step computes every branch; at such a full
/// step each computed branch output, to keep; at a sparse step each branch, gated into the
/// hidden state.
pub trait BranchHook<D: Device> {
    /// Whether the current step computes every branch (else [`BranchHook::supply_gated_add`]
    /// supplies them).
    fn is_full(&self) -> bool;

    /// At a full step: the `branch` output (rows N, D) of block `l`, just computed, before the
    /// forward pass adds it to the hidden state.
    fn store(&mut self, dev: &mut D, l: usize, branch: Branch, output: Slice<f32>) -> Result<(), PipelineError>;

    /// At a sparse step: `x += gate * branch` for the `branch` of block `l` (its layers
    /// `block`), the branch as the method supplies it; the gate of each row is in `modulation`
    /// (rows, 6D) at `2D` (attention) or `5D` (MLP).
    fn supply_gated_add(
        &mut self,
        dev: &mut D,
        block: &DeviceBlock,
        l: usize,
        branch: Branch,
        x: Slice<f32>,
        modulation: Slice<f32>,
    ) -> Result<(), PipelineError>;

    /// After block `l`, with its output `x` (rows N, D).
    fn after_block(&mut self, dev: &mut D, l: usize, x: Slice<f32>) -> Result<(), PipelineError>;
}

/// An `nn.Linear` in device memory, with the precision its token-wise GEMMs run in.
pub struct DeviceLinear {
    pub weight: Buffer<f32>,
    pub bias: Buffer<f32>,
    pub in_features: usize,
    pub out_features: usize,
    pub precision: Precision,
    /// The weight packed for the BF16 kernels (converted once, at upload), in BF16 precision.
    pub weight_bf16: Option<Buffer<u32>>,
    /// The split-K partial products of the model's GEMMs, one buffer shared by every layer of
    /// the model (launches run in stream order: a GEMM's partials are reduced before the next
    /// GEMM writes its own).
    workspace: Buffer<f32>,
}

fn upload_array<D: Device, Dim: ndarray::Dimension>(
    dev: &mut D,
    a: &Array<f32, Dim>,
) -> Result<Buffer<f32>, DeviceError> {
    match a.as_slice() {
        Some(slice) => dev.upload_new(slice),
        None => dev.upload_new(&a.iter().copied().collect::<Vec<_>>()),
    }
}

impl DeviceLinear {
    fn upload<D: Device>(
        dev: &mut D,
        linear: &Linear,
        workspace: Buffer<f32>,
        precision: Precision,
    ) -> Result<Self, DeviceError> {
        let weight = linear.weight();
        let (n, k) = (linear.out_features(), linear.in_features());
        let weight_bf16 = match precision {
            Precision::Bf16 => {
                let w: Vec<f32> = weight.iter().copied().collect();
                Some(dev.upload_new(&launch::pack_bf16_weight(&w, n, k))?)
            }
            _ => None,
        };
        Ok(Self {
            weight: upload_array(dev, &weight)?,
            bias: upload_array(dev, &linear.bias)?,
            in_features: k,
            out_features: n,
            precision,
            weight_bf16,
            workspace,
        })
    }

    /// The weight as the tensor-core kernels of a fast precision read it.
    fn fast_weight(&self) -> GemmWeight {
        match self.weight_bf16 {
            Some(packed) => GemmWeight::Bf16(packed.all()),
            None => GemmWeight::F32(self.weight.all()),
        }
    }

    /// `out (rows, out_f) = x W^T + b` as a GEMV per output feature (the small layers).
    fn rows<D: Device>(
        &self,
        dev: &mut D,
        x: Slice<f32>,
        out: Slice<f32>,
        rows: usize,
        silu: bool,
    ) -> Result<(), DeviceError> {
        launch::linear_rows(
            dev,
            x,
            self.weight.all(),
            self.bias.all(),
            out,
            rows,
            self.in_features,
            self.out_features,
            silu,
        )
    }

    /// `out (rows, out_f) = epilogue(x W^T + b)` on the exact GEMM chosen for the shape
    /// ([`gemm_plan::choose_gemm`]; the token-wise layers).
    pub fn gemm<D: Device>(
        &self,
        dev: &mut D,
        x: Slice<f32>,
        out: Slice<f32>,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<(), DeviceError> {
        if self.precision != Precision::Exact {
            return launch::gemm_tc(
                dev,
                self.precision,
                x,
                self.fast_weight(),
                self.bias.all(),
                out,
                rows,
                self.out_features,
                self.in_features,
                epilogue,
            );
        }
        gemm_plan::linear(
            dev,
            x,
            self.weight.all(),
            self.bias.all(),
            GemmOutput::Store { out, epilogue },
            self.workspace.all(),
            rows,
            self.out_features,
            self.in_features,
        )
    }

    /// `x += gate * (a W^T + b)` with the gate of the sample of each row.
    #[allow(clippy::too_many_arguments)] // the kernel's parameters
    fn gemm_gated<D: Device>(
        &self,
        dev: &mut D,
        a: Slice<f32>,
        x: Slice<f32>,
        modulation: Slice<f32>,
        rows: usize,
        tokens: usize,
        gate_offset: usize,
    ) -> Result<(), DeviceError> {
        if self.precision != Precision::Exact {
            return launch::gemm_tc_gated_residual(
                dev,
                self.precision,
                a,
                self.fast_weight(),
                self.bias.all(),
                x,
                modulation,
                rows,
                self.out_features,
                self.in_features,
                tokens,
                6 * self.out_features,
                gate_offset,
            );
        }
        let output = GemmOutput::GatedResidual {
            x,
            gate: modulation,
            tokens,
            gate_stride: 6 * self.out_features,
            gate_offset,
        };
        gemm_plan::linear(
            dev,
            a,
            self.weight.all(),
            self.bias.all(),
            output,
            self.workspace.all(),
            rows,
            self.out_features,
            self.in_features,
        )
    }
}

/// The linear layers of one DiT block.
pub struct DeviceBlock {
    pub ada_ln: DeviceLinear,
    pub qkv: DeviceLinear,
    pub proj: DeviceLinear,
    pub fc1: DeviceLinear,
    pub fc2: DeviceLinear,
}

/// A DiT's parameters in device memory.
pub struct DeviceDit {
    pub config: DitConfig,
    patch_embed: DeviceLinear,
    pos_embed: Buffer<f32>,
    t_mlp_in: DeviceLinear,
    t_mlp_out: DeviceLinear,
    label_table: Buffer<f32>,
    pub blocks: Vec<DeviceBlock>,
    final_ada_ln: DeviceLinear,
    final_linear: DeviceLinear,
}

impl DeviceDit {
    /// Uploads `model` for the exact kernels; fails for shapes the kernels do not cover (head
    /// dimension above 128, more than 256 pixels per patch).
    pub fn upload<D: Device>(dev: &mut D, model: &Dit) -> Result<Self, PipelineError> {
        Self::upload_with_precision(dev, model, Precision::Exact)
    }

    /// Uploads `model` with its token-wise linear layers (qkv, proj, fc1, fc2, final linear)
    /// in `precision`; the small layers (embeddings, adaLN) stay exact.
    pub fn upload_with_precision<D: Device>(
        dev: &mut D,
        model: &Dit,
        precision: Precision,
    ) -> Result<Self, PipelineError> {
        let c = &model.config;
        if c.head_dim() > ATTN_MAX_HEAD_DIM as usize {
            return Err(PipelineError::Unsupported(format!(
                "head dimension {} exceeds the attention kernel's {ATTN_MAX_HEAD_DIM}",
                c.head_dim()
            )));
        }
        let patch_features = c.in_channels * c.patch_size * c.patch_size;
        if patch_features > MAX_PATCH_FEATURES as usize {
            return Err(PipelineError::Unsupported(format!(
                "C p p = {patch_features} exceeds the patch-embedding kernel's {MAX_PATCH_FEATURES}"
            )));
        }
        let w = &model.weights;
        // The widest token-wise layer (qkv, fc1 or the final linear) sizes the split-K workspace.
        let widest = [3 * c.hidden_size, c.mlp_hidden(), w.final_linear.out_features()]
            .into_iter()
            .max()
            .unwrap_or(0);
        let workspace = dev.alloc::<f32>(gemm_plan::splitk_workspace_len(widest))?;
        let exact = |dev: &mut D, linear: &Linear| DeviceLinear::upload(dev, linear, workspace, Precision::Exact);
        let upload = |dev: &mut D, linear: &Linear| DeviceLinear::upload(dev, linear, workspace, precision);
        let mut blocks = Vec::with_capacity(w.blocks.len());
        for b in &w.blocks {
            blocks.push(DeviceBlock {
                ada_ln: exact(dev, &b.ada_ln)?,
                qkv: upload(dev, &b.qkv)?,
                proj: upload(dev, &b.proj)?,
                fc1: upload(dev, &b.fc1)?,
                fc2: upload(dev, &b.fc2)?,
            });
        }
        Ok(Self {
            config: c.clone(),
            patch_embed: exact(dev, &w.patch_embed)?,
            pos_embed: upload_array(dev, &w.pos_embed)?,
            t_mlp_in: exact(dev, &w.t_mlp_in)?,
            t_mlp_out: exact(dev, &w.t_mlp_out)?,
            label_table: upload_array(dev, &w.label_table)?,
            blocks,
            final_ada_ln: exact(dev, &w.final_ada_ln)?,
            final_linear: upload(dev, &w.final_linear)?,
        })
    }
}

/// The device buffers of a forward pass over `rows` model rows.
pub struct Activations {
    pub rows: usize,
    /// Model input (rows, C, S, S).
    pub image: Buffer<f32>,
    pub t: Buffer<f32>,
    pub labels: Buffer<u32>,
    features: Buffer<f32>,
    t_hidden: Buffer<f32>,
    t_emb: Buffer<f32>,
    silu_c: Buffer<f32>,
    /// Hidden state (rows N, D).
    pub tokens: Buffer<f32>,
    /// adaLN modulation of the current block (rows, 6D).
    pub modulation: Buffer<f32>,
    normed: Buffer<f32>,
    qkv: Buffer<f32>,
    heads: Buffer<f32>,
    hidden: Buffer<f32>,
    /// A branch output (rows N, D).
    branch: Buffer<f32>,
    final_mod: Buffer<f32>,
    final_tokens: Buffer<f32>,
    /// Model output (rows, C_out, S, S).
    pub out: Buffer<f32>,
    /// Every buffer above.
    owned: Vec<usize>,
}

impl Activations {
    pub fn new<D: Device>(dev: &mut D, config: &DitConfig, rows: usize) -> Result<Self, DeviceError> {
        let (n, d, side) = (config.tokens(), config.hidden_size, config.input_size);
        let tokens = rows * n;
        let width = config.patch_size * config.patch_size * config.out_channels();
        let labels: Buffer<u32> = dev.alloc(rows)?;
        let mut owned = vec![labels.id()];
        let mut alloc = |len: usize| -> Result<Buffer<f32>, DeviceError> {
            let buffer = dev.alloc(len)?;
            owned.push(buffer.id());
            Ok(buffer)
        };
        Ok(Self {
            rows,
            image: alloc(rows * config.in_channels * side * side)?,
            t: alloc(rows)?,
            labels,
            features: alloc(rows * TIMESTEP_FEATURES as usize)?,
            t_hidden: alloc(rows * d)?,
            t_emb: alloc(rows * d)?,
            silu_c: alloc(rows * d)?,
            tokens: alloc(tokens * d)?,
            modulation: alloc(rows * 6 * d)?,
            normed: alloc(tokens * d)?,
            qkv: alloc(tokens * 3 * d)?,
            heads: alloc(tokens * d)?,
            hidden: alloc(tokens * config.mlp_hidden())?,
            branch: alloc(tokens * d)?,
            final_mod: alloc(rows * 2 * d)?,
            final_tokens: alloc(tokens * width)?,
            out: alloc(rows * config.out_channels() * side * side)?,
            owned: Vec::new(),
        }
        .with_owned(owned))
    }

    fn with_owned(mut self, owned: Vec<usize>) -> Self {
        self.owned = owned;
        self
    }

    /// Frees every buffer.
    pub fn release<D: Device>(self, dev: &mut D) -> Result<(), DeviceError> {
        self.owned.iter().try_for_each(|&id| dev.free(id))
    }
}

/// The adaLN modulations of every step of a sampling run, computed once at its start: they
/// depend only on the step's timestep and the labels, so a step needs no conditioning launch
/// and none of the adaLN weight reads. Each block's modulations are one batched `linear_rows`
/// launch over all steps' rows (the kernel computes each row on its own, so the values are the
/// bits a per-step launch gives).
pub struct RunModulations {
    /// Model rows per step.
    rows: usize,
    steps: usize,
    /// Per block: (steps rows, 6D), step s at rows `s rows ..`; then one more step's rows, the
    /// staging slot ([`RunModulations::staged`]).
    blocks: Vec<Buffer<f32>>,
    /// The final layer's (shift, scale): (steps rows, 2D).
    final_layer: Buffer<f32>,
    /// Every buffer above.
    owned: Vec<usize>,
}

/// The modulations of one step of a [`RunModulations`].
#[derive(Clone, Copy)]
pub struct StepModulations<'a> {
    run: &'a RunModulations,
    step: usize,
}

impl StepModulations<'_> {
    /// Block `l`'s modulation (rows, 6D).
    fn block(&self, l: usize) -> Slice<f32> {
        let len = self.run.blocks[l].len() / (self.run.steps + 1);
        self.run.blocks[l].range(self.step * len, len)
    }

    /// The final layer's (rows, 2D).
    fn final_layer(&self) -> Slice<f32> {
        let len = self.run.final_layer.len() / (self.run.steps + 1);
        self.run.final_layer.range(self.step * len, len)
    }
}

impl RunModulations {
    /// The modulations of `rows` model rows with `labels` (rows) at each of `timesteps` (one
    /// per step).
    pub fn new<D: Device>(
        dev: &mut D,
        model: &DeviceDit,
        timesteps: &[f32],
        labels: &[u32],
    ) -> Result<Self, PipelineError> {
        let (rows, steps, d) = (labels.len(), timesteps.len(), model.config.hidden_size);
        let all = rows * steps;
        let mut owned = Vec::new();
        let mut alloc = |dev: &mut D, len: usize| -> Result<Buffer<f32>, DeviceError> {
            let buffer = dev.alloc(len)?;
            owned.push(buffer.id());
            Ok(buffer)
        };
        let mut blocks = Vec::with_capacity(model.blocks.len());
        for _ in &model.blocks {
            blocks.push(alloc(dev, (all + rows) * 6 * d)?);
        }
        let final_layer = alloc(dev, (all + rows) * 2 * d)?;
        let t: Vec<f32> = timesteps.iter().flat_map(|&t| std::iter::repeat_n(t, rows)).collect();
        let all_labels: Vec<u32> = (0..steps).flat_map(|_| labels.iter().copied()).collect();
        let t = dev.upload_new(&t)?;
        let all_labels = dev.upload_new(&all_labels)?;
        let features = dev.alloc(all * TIMESTEP_FEATURES as usize)?;
        let (t_hidden, t_emb, silu_c) = (dev.alloc(all * d)?, dev.alloc(all * d)?, dev.alloc(all * d)?);
        let silu = conditioning(
            dev,
            model,
            t.all(),
            all_labels.all(),
            features,
            t_hidden,
            t_emb,
            silu_c,
            all,
        )?;
        for (block, out) in model.blocks.iter().zip(&blocks) {
            block.ada_ln.rows(dev, silu, out.range(0, all * 6 * d), all, false)?;
        }
        model
            .final_ada_ln
            .rows(dev, silu, final_layer.range(0, all * 2 * d), all, false)?;
        for id in [
            t.id(),
            all_labels.id(),
            features.id(),
            t_hidden.id(),
            t_emb.id(),
            silu_c.id(),
        ] {
            dev.free(id)?;
        }
        Ok(Self {
            rows,
            steps,
            blocks,
            final_layer,
            owned,
        })
    }

    /// The modulations of step `step` (0-based, in the order of the timesteps given).
    pub fn step(&self, step: usize) -> Result<StepModulations<'_>, PipelineError> {
        if step >= self.steps {
            return Err(PipelineError::Unsupported(format!(
                "step {step} of a run of {} steps",
                self.steps
            )));
        }
        Ok(StepModulations { run: self, step })
    }

    /// Step `step`'s modulations copied into the staging slot (device-to-device copies, one per
    /// block and one for the final layer), and that slot: the same buffers at every step, so that
    /// a step captured as a graph reads the modulations staged for the step it is replayed at.
    pub fn staged<D: Device>(&self, dev: &mut D, step: usize) -> Result<StepModulations<'_>, PipelineError> {
        let from = self.step(step)?;
        let staging = StepModulations {
            run: self,
            step: self.steps,
        };
        for l in 0..self.blocks.len() {
            dev.copy(from.block(l), staging.block(l))?;
        }
        dev.copy(from.final_layer(), staging.final_layer())?;
        Ok(staging)
    }

    /// Model rows per step.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Frees every buffer.
    pub fn release<D: Device>(self, dev: &mut D) -> Result<(), DeviceError> {
        self.owned.iter().try_for_each(|&id| dev.free(id))
    }
}

/// The conditioning `SiLU(t_embedder(t) + table[labels])` of `rows` rows into `silu_c`
/// (rows, D), through the scratch `features` (rows, 256), `t_hidden` and `t_emb` (rows, D).
#[allow(clippy::too_many_arguments)] // the buffers of four kernels
fn conditioning<D: Device>(
    dev: &mut D,
    model: &DeviceDit,
    t: Slice<f32>,
    labels: Slice<u32>,
    features: Buffer<f32>,
    t_hidden: Buffer<f32>,
    t_emb: Buffer<f32>,
    silu_c: Buffer<f32>,
    rows: usize,
) -> Result<Slice<f32>, DeviceError> {
    launch::timestep_features(dev, t, features.all())?;
    model.t_mlp_in.rows(dev, features.all(), t_hidden.all(), rows, true)?;
    model.t_mlp_out.rows(dev, t_hidden.all(), t_emb.all(), rows, false)?;
    launch::label_embed_silu(
        dev,
        t_emb.all(),
        model.label_table.all(),
        labels,
        silu_c.all(),
        model.config.hidden_size,
    )?;
    Ok(silu_c.all())
}

/// The MLP branch `fc2(GELU(fc1(modulate(LN(x)))))` of `rows` token rows `x` whose samples hold
/// `tokens` rows each, into `out` (rows, D); `normed` (rows, D) and `hidden` (rows, 4D) are
/// scratch.
#[allow(clippy::too_many_arguments)] // the buffers of three kernels
pub fn mlp_branch<D: Device>(
    dev: &mut D,
    block: &DeviceBlock,
    x: Slice<f32>,
    modulation: Slice<f32>,
    normed: Slice<f32>,
    hidden: Slice<f32>,
    out: Slice<f32>,
    rows: usize,
    tokens: usize,
) -> Result<(), DeviceError> {
    let d = block.fc2.out_features;
    launch::layer_norm_modulate(dev, x, modulation, normed, rows, d, tokens, 6 * d, 3 * d, 4 * d)?;
    block.fc1.gemm(dev, normed, hidden, rows, Epilogue::BiasGelu)?;
    block.fc2.gemm(dev, hidden, out, rows, Epilogue::Bias)
}

/// Where a forward pass takes its timesteps' conditioning from.
#[derive(Clone, Copy)]
pub enum Conditioning<'a> {
    /// The timesteps (one per row): uploaded, the conditioning and every adaLN computed.
    Timesteps(&'a [f32]),
    /// The run's precomputed modulations of the step.
    Precomputed(StepModulations<'a>),
}

/// `model(image, t, labels)` into `act.out`: `act.image` and `act.labels` hold the inputs, the
/// conditioning is computed from the timesteps or precomputed for the run. Without a hook every
/// branch is computed (the gated residual fused into the GEMM); with one, each branch is
/// computed and handed to the hook at full steps and supplied by the hook at sparse steps.
pub fn forward<D: Device>(
    dev: &mut D,
    model: &DeviceDit,
    act: &Activations,
    mut hook: Option<&mut dyn BranchHook<D>>,
    conditioning: Conditioning<'_>,
) -> Result<(), PipelineError> {
    let c = &model.config;
    let (b, n, d) = (act.rows, c.tokens(), c.hidden_size);
    let (side, p) = (c.input_size, c.patch_size);
    let rows = b * n;

    // Conditioning: timestep features -> t-embedder MLP; + label embedding; SiLU.
    if let Conditioning::Timesteps(timesteps) = conditioning {
        dev.upload(act.t.all(), timesteps)?;
        self::conditioning(
            dev,
            model,
            act.t.all(),
            act.labels.all(),
            act.features,
            act.t_hidden,
            act.t_emb,
            act.silu_c,
            b,
        )?;
    }
    // Tokens: patch embedding + bias + pos_embed.
    launch::patch_embed(
        dev,
        act.image.all(),
        model.patch_embed.weight.all(),
        model.patch_embed.bias.all(),
        model.pos_embed.all(),
        act.tokens.all(),
        b,
        c.in_channels,
        side,
        p,
        d,
    )?;

    let x = act.tokens.all();
    for (l, block) in model.blocks.iter().enumerate() {
        let m = match conditioning {
            Conditioning::Timesteps(_) => {
                block
                    .ada_ln
                    .rows(dev, act.silu_c.all(), act.modulation.all(), b, false)?;
                act.modulation.all()
            }
            Conditioning::Precomputed(step) => step.block(l),
        };
        let full = hook.as_ref().is_none_or(|h| h.is_full());

        // Attention: x += gate_msa * proj(attn(modulate(LN(x), shift_msa, scale_msa))).
        if full {
            launch::layer_norm_modulate(dev, x, m, act.normed.all(), rows, d, n, 6 * d, 0, d)?;
            block
                .qkv
                .gemm(dev, act.normed.all(), act.qkv.all(), rows, Epilogue::Bias)?;
            let precision = block.qkv.precision;
            launch::attention_in(
                dev,
                precision,
                act.qkv.all(),
                act.heads.all(),
                b,
                n,
                c.num_heads,
                c.head_dim(),
            )?;
            match hook.as_deref_mut() {
                Some(h) => {
                    block
                        .proj
                        .gemm(dev, act.heads.all(), act.branch.all(), rows, Epilogue::Bias)?;
                    h.store(dev, l, Branch::Attention, act.branch.all())?;
                    launch::gated_add(dev, x, act.branch.all(), m, rows, d, n, 6 * d, 2 * d)?;
                }
                None => block.proj.gemm_gated(dev, act.heads.all(), x, m, rows, n, 2 * d)?,
            }
        } else if let Some(h) = hook.as_deref_mut() {
            h.supply_gated_add(dev, block, l, Branch::Attention, x, m)?;
        }

        // MLP: x += gate_mlp * fc2(GELU(fc1(modulate(LN(x), shift_mlp, scale_mlp)))).
        if full {
            launch::layer_norm_modulate(dev, x, m, act.normed.all(), rows, d, n, 6 * d, 3 * d, 4 * d)?;
            block
                .fc1
                .gemm(dev, act.normed.all(), act.hidden.all(), rows, Epilogue::BiasGelu)?;
            match hook.as_deref_mut() {
                Some(h) => {
                    block
                        .fc2
                        .gemm(dev, act.hidden.all(), act.branch.all(), rows, Epilogue::Bias)?;
                    h.store(dev, l, Branch::Mlp, act.branch.all())?;
                    launch::gated_add(dev, x, act.branch.all(), m, rows, d, n, 6 * d, 5 * d)?;
                }
                None => block.fc2.gemm_gated(dev, act.hidden.all(), x, m, rows, n, 5 * d)?,
            }
        } else if let Some(h) = hook.as_deref_mut() {
            h.supply_gated_add(dev, block, l, Branch::Mlp, x, m)?;
        }

        if let Some(h) = hook.as_deref_mut() {
            h.after_block(dev, l, x)?;
        }
    }

    // Final layer: adaLN (shift, scale), LN + modulate, linear, unpatchify.
    let final_mod = match conditioning {
        Conditioning::Timesteps(_) => {
            model
                .final_ada_ln
                .rows(dev, act.silu_c.all(), act.final_mod.all(), b, false)?;
            act.final_mod.all()
        }
        Conditioning::Precomputed(step) => step.final_layer(),
    };
    launch::layer_norm_modulate(dev, x, final_mod, act.normed.all(), rows, d, n, 2 * d, 0, d)?;
    model
        .final_linear
        .gemm(dev, act.normed.all(), act.final_tokens.all(), rows, Epilogue::Bias)?;
    launch::unpatchify(dev, act.final_tokens.all(), act.out.all(), b, c.out_channels(), side, p)?;
    Ok(())
}
