//! The DiT forward pass (facebookresearch/DiT `models.py`, docs/algorithms.md section 1), with
//! every block's attention and MLP branch outputs visible to, and replaceable by, a [`BranchHook`]:
//! the caching methods plug in there.

use std::path::Path;

use ndarray::{Array2, Array3, Array4, ArrayView2, ArrayView3, ArrayView4, Axis, s};
use rayon::prelude::*;

use crate::config::DitConfig;
use crate::error::{Error, Result, check_finite};
use crate::lanes_gemm::LaneRows;
use crate::ops;
use crate::parallel;
use crate::safetensors_file::SafetensorsFile;
use crate::weights::DitWeights;

/// A loaded DiT: its config and parameters.
#[derive(Clone, Debug)]
pub struct Dit {
    pub config: DitConfig,
    pub weights: DitWeights,
}

/// The two branches of a DiT block; every caching method caches their outputs (before the gate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Branch {
    Attention,
    Mlp,
}

/// The per-sample conditioning `c = t_emb + y_emb`, `SiLU(c)`, and the adaLN modulations it
/// feeds. All of it depends on the timestep and label alone, not on `x`, so a sampler computes
/// it for many steps at once ([`Dit::conditioning_steps`]).
#[derive(Clone, Debug)]
pub struct Conditioning {
    pub t_emb: Array2<f32>,
    pub y_emb: Array2<f32>,
    pub silu_c: Array2<f32>,
    /// Every block's `adaLN_modulation(c)` (B, 6D).
    pub block_modulation: Vec<Array2<f32>>,
    /// The final layer's `adaLN_modulation(c)` (B, 2D).
    pub final_modulation: Array2<f32>,
}

impl Conditioning {
    /// Rows `rows` of every tensor (the samples of one step of a stacked conditioning).
    fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let take = |a: &Array2<f32>| a.slice(s![rows.clone(), ..]).to_owned();
        Self {
            t_emb: take(&self.t_emb),
            y_emb: take(&self.y_emb),
            silu_c: take(&self.silu_c),
            block_modulation: self.block_modulation.iter().map(take).collect(),
            final_modulation: take(&self.final_modulation),
        }
    }
}

/// Everything a block branch needs to be evaluated at the current step: the block's running
/// state `x` (B, N, D) and its adaLN modulation (B, 6D). A hook may evaluate the branch for all
/// tokens, for a subset of tokens (MLP only), or not at all.
pub struct BranchInput<'a> {
    model: &'a Dit,
    pub block: usize,
    pub branch: Branch,
    pub x: ArrayView3<'a, f32>,
    pub modulation: ArrayView2<'a, f32>,
}

/// Decides, per block and branch, what the branch contributes. `FullCompute` evaluates it.
/// `Send`: the forward pass runs on a rayon worker ([`crate::parallel::with_workers_awake`]).
pub trait BranchHook: Send {
    /// The branch output (B, N, D) before the gate.
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32>;
    /// Called with each block's output (B, N, D).
    fn after_block(&mut self, _block: usize, _x: ArrayView3<f32>) {}
}

/// The uncached forward pass.
pub struct FullCompute;

impl BranchHook for FullCompute {
    fn branch(&mut self, input: &BranchInput<'_>) -> Array3<f32> {
        input.compute()
    }
}

impl BranchInput<'_> {
    /// Offsets of (shift, scale) of this branch in the 6D modulation vector.
    fn shift_scale(&self, row: usize) -> (ndarray::ArrayView1<'_, f32>, ndarray::ArrayView1<'_, f32>) {
        let d = self.model.config.hidden_size;
        let base = match self.branch {
            Branch::Attention => 0,
            Branch::Mlp => 3 * d,
        };
        let m = self.modulation.row(row);
        (
            m.slice_move(s![base..base + d]),
            self.modulation.row(row).slice_move(s![base + d..base + 2 * d]),
        )
    }

    /// `modulate(LayerNorm(x), shift, scale)` for the given tokens of batch row `row`.
    fn normed_tokens(&self, row: usize, tokens: &[usize]) -> Array2<f32> {
        let x_row = self.x.index_axis(Axis(0), row);
        let (shift, scale) = self.shift_scale(row);
        ops::norm_modulate(ops::gather_rows(x_row, tokens).view(), shift, scale)
    }

    /// The branch output for every token of every batch row (B, N, D).
    pub fn compute(&self) -> Array3<f32> {
        let (b, n, d) = self.x.dim();
        let mut normed = Array3::<f32>::zeros((b, n, d));
        for row in 0..b {
            let (shift, scale) = self.shift_scale(row);
            ops::norm_modulate_into(
                self.x.index_axis(Axis(0), row),
                shift,
                scale,
                normed.index_axis_mut(Axis(0), row),
            );
        }
        let flat = normed.into_shape_with_order((b * n, d)).expect("contiguous");
        let block = &self.model.weights.blocks[self.block];
        let out = match self.branch {
            Branch::Attention => {
                let qkv = block.qkv.forward(flat.view());
                let mut heads = Array2::<f32>::zeros((b * n, d));
                for row in 0..b {
                    let rows = row * n..(row + 1) * n;
                    ops::attention_into(
                        qkv.slice(s![rows.clone(), ..]),
                        self.model.config.num_heads,
                        heads.slice_mut(s![rows, ..]),
                    );
                }
                block.proj.forward(heads.view())
            }
            Branch::Mlp => self.model.mlp(self.block, flat.view()),
        };
        out.into_shape_with_order((b, n, d)).expect("contiguous")
    }

    /// The MLP branch for a subset of tokens per batch row (`tokens[row]`), evaluated as one
    /// batched matrix product; returns one (len, D) matrix per row. Token-wise branches only:
    /// attention mixes tokens, so it has no per-token subset.
    pub fn compute_tokens(&self, tokens: &[Vec<usize>]) -> Vec<Array2<f32>> {
        assert_eq!(self.branch, Branch::Mlp, "only the MLP branch is token-wise");
        let d = self.model.config.hidden_size;
        let total: usize = tokens.iter().map(Vec::len).sum();
        let mut stacked = Array2::<f32>::zeros((total, d));
        let mut start = 0;
        for (row, subset) in tokens.iter().enumerate() {
            stacked
                .slice_mut(s![start..start + subset.len(), ..])
                .assign(&self.normed_tokens(row, subset));
            start += subset.len();
        }
        let out = self.model.mlp(self.block, stacked.view());
        let mut start = 0;
        tokens
            .iter()
            .map(|subset| {
                let part = out.slice(s![start..start + subset.len(), ..]).to_owned();
                start += subset.len();
                part
            })
            .collect()
    }
}

impl Dit {
    /// Builds a model from a config and matching weights.
    pub fn new(config: DitConfig, weights: DitWeights) -> Self {
        Self { config, weights }
    }

    /// Loads a safetensors checkpoint with the official key names. The config is `config` if
    /// given, else inferred from the tensor shapes (heads from `heads` or the file's metadata).
    pub fn load(path: &Path, config: Option<DitConfig>, heads: Option<usize>) -> Result<Self> {
        Self::from_file(&SafetensorsFile::open(path)?, config, heads)
    }

    /// Loads from an open safetensors file (see [`Dit::load`]).
    pub fn from_file(file: &SafetensorsFile, config: Option<DitConfig>, heads: Option<usize>) -> Result<Self> {
        let config = match config {
            Some(c) => c,
            None => DitConfig::infer(file, heads)?,
        };
        let weights = DitWeights::load(file, &config)?;
        Ok(Self::new(config, weights))
    }

    /// A model with seeded random weights.
    pub fn random(config: DitConfig, seed: u64) -> Result<Self> {
        let weights = DitWeights::random(&config, seed)?;
        Ok(Self::new(config, weights))
    }

    /// Checks a batch `x` (B, C, H, W), timesteps and labels against the model.
    pub fn validate_inputs(&self, x: ArrayView4<f32>, timesteps: &[f32], labels: &[usize]) -> Result<()> {
        let c = &self.config;
        let (b, ch, h, w) = x.dim();
        if (ch, h, w) != (c.in_channels, c.input_size, c.input_size) {
            return Err(Error::Input(format!(
                "input has shape {:?}, the model expects (B, {}, {}, {})",
                x.shape(),
                c.in_channels,
                c.input_size,
                c.input_size
            )));
        }
        if timesteps.len() != b || labels.len() != b {
            return Err(Error::Input(format!(
                "batch of {b} inputs with {} timesteps and {} labels",
                timesteps.len(),
                labels.len()
            )));
        }
        if let Some(&t) = timesteps.iter().find(|&&t| !(t.is_finite() && t >= 0.0)) {
            return Err(Error::Input(format!(
                "timestep {t} is negative, NaN or infinite; timesteps are finite numbers >= 0"
            )));
        }
        if let Some(&y) = labels.iter().find(|&&y| y > c.null_label()) {
            return Err(Error::Input(format!(
                "label {y} is out of range: the model has {} classes (0..{}) and null label {}",
                c.num_classes,
                c.num_classes - 1,
                c.null_label()
            )));
        }
        check_finite("input x", x.iter())
    }

    /// The patch embedding (B, N, D) before `pos_embed` is added.
    pub fn patch_embed(&self, x: ArrayView4<f32>) -> Array3<f32> {
        let (b, n, d) = (x.dim().0, self.config.tokens(), self.config.hidden_size);
        let mut out = Array3::<f32>::zeros((b, n, d));
        for row in 0..b {
            let patches = ops::patchify(x.index_axis(Axis(0), row), self.config.patch_size);
            out.index_axis_mut(Axis(0), row)
                .assign(&self.weights.patch_embed.forward(patches.view()));
        }
        out
    }

    /// `c = t_emb + y_emb` for timestep features (B, 256) and labels, with SiLU(c) and every
    /// adaLN modulation.
    pub fn conditioning(&self, timestep_features: ArrayView2<f32>, labels: &[usize]) -> Conditioning {
        let hidden = self.weights.t_mlp_in.forward(timestep_features).mapv(ops::silu);
        let t_emb = self.weights.t_mlp_out.forward(hidden.view());
        let y_emb = self.weights.label_table.select(Axis(0), labels);
        let silu_c = (&t_emb + &y_emb).mapv(ops::silu);
        let block_modulation = self
            .weights
            .blocks
            .iter()
            .map(|block| block.ada_ln.forward(silu_c.view()))
            .collect();
        let final_modulation = self.weights.final_ada_ln.forward(silu_c.view());
        Conditioning {
            t_emb,
            y_emb,
            silu_c,
            block_modulation,
            final_modulation,
        }
    }

    /// The conditioning of several steps of one batch (`timestep_features[k]` (B, 256) for step
    /// k, the same `labels` at every step), computed as ONE batch of `steps x B` rows: each
    /// layer's weights are read once for all the steps instead of once per step, which is most
    /// of a cached step's adaLN cost. Up to [`crate::gemm::SAME_BITS_ROWS`] rows in all, equal
    /// bit for bit to [`Dit::conditioning`] step by step: these layers are stored packed, and the
    /// packed kernel then sums every row alone, in the same order whatever the number of rows.
    pub fn conditioning_steps(&self, timestep_features: &[Array2<f32>], labels: &[usize]) -> Vec<Conditioning> {
        let b = labels.len();
        let views: Vec<_> = timestep_features.iter().map(|f| f.view()).collect();
        let features = ndarray::concatenate(Axis(0), &views).expect("(B, 256) per step");
        let all_labels: Vec<usize> = labels.iter().copied().cycle().take(b * views.len()).collect();
        let stacked = self.conditioning(features.view(), &all_labels);
        (0..views.len()).map(|k| stacked.rows(k * b..(k + 1) * b)).collect()
    }

    /// `mlp.fc2(GELU(mlp.fc1(h)))` of block `block` on token rows `h`.
    pub fn mlp(&self, block: usize, h: ArrayView2<f32>) -> Array2<f32> {
        let weights = &self.weights.blocks[block];
        let rows = h.nrows();
        if let (Some(fc1), Some(fc2)) = (weights.fc1.lane_packed(rows), weights.fc2.lane_packed(rows)) {
            // A few rows (a sparse step's tokens): the hidden activations stay in the kernel's
            // layout between the two products, with the same bits as two separate products.
            let mut hidden = fc1.linear_lanes(&LaneRows::pack(h), weights.fc1.bias.view());
            ops::gelu_tanh_slice(hidden.values_mut());
            return fc2.linear_lanes(&hidden, weights.fc2.bias.view()).unpack();
        }
        let mut hidden = weights.fc1.forward(h);
        ops::gelu_tanh_in_place(&mut hidden);
        weights.fc2.forward(hidden.view())
    }

    /// The blocks, in place on `x` (B, N, D), each branch supplied by `hook`.
    pub fn run_blocks(&self, x: &mut Array3<f32>, cond: &Conditioning, hook: &mut dyn BranchHook) {
        let d = self.config.hidden_size;
        for (l, modulation) in cond.block_modulation.iter().enumerate() {
            for (branch, gate_offset) in [(Branch::Attention, 2 * d), (Branch::Mlp, 5 * d)] {
                let out = hook.branch(&BranchInput {
                    model: self,
                    block: l,
                    branch,
                    x: x.view(),
                    modulation: modulation.view(),
                });
                // One batch row per core (a few ms a step of DiT-B/2's cached runs otherwise).
                let gates = modulation.slice(s![.., gate_offset..gate_offset + d]);
                if ops::row_chunks(x.dim().0, x.len() * 4) > 1 {
                    x.axis_iter_mut(Axis(0))
                        .into_par_iter()
                        .zip(gates.axis_iter(Axis(0)))
                        .zip(out.axis_iter(Axis(0)))
                        .for_each(|((x_row, gate), out_row)| ops::gated_add(x_row, gate, out_row));
                } else {
                    for ((x_row, gate), out_row) in x.axis_iter_mut(Axis(0)).zip(gates.rows()).zip(out.outer_iter()) {
                        ops::gated_add(x_row, gate, out_row);
                    }
                }
            }
            hook.after_block(l, x.view());
        }
    }

    /// The final layer's token outputs (B, N, p*p*out_channels), before unpatchify.
    pub fn final_tokens(&self, x: ArrayView3<f32>, cond: &Conditioning) -> Array3<f32> {
        let d = self.config.hidden_size;
        let modulation = &cond.final_modulation;
        let (b, n, _) = x.dim();
        let out_width = self.weights.final_linear.out_features();
        let mut out = Array3::<f32>::zeros((b, n, out_width));
        for row in 0..b {
            let m = modulation.row(row);
            let h = ops::norm_modulate(x.index_axis(Axis(0), row), m.slice(s![..d]), m.slice(s![d..]));
            out.index_axis_mut(Axis(0), row)
                .assign(&self.weights.final_linear.forward(h.view()));
        }
        out
    }

    /// Unpatchifies final-layer tokens (B, N, p*p*C) into images (B, C, H, W).
    pub fn unpatchify(&self, tokens: ArrayView3<f32>) -> Array4<f32> {
        let c = &self.config;
        let (b, side) = (tokens.dim().0, c.input_size);
        let mut out = Array4::<f32>::zeros((b, c.out_channels(), side, side));
        for row in 0..b {
            let image = ops::unpatchify(tokens.index_axis(Axis(0), row), c.patch_size, c.out_channels());
            out.index_axis_mut(Axis(0), row).assign(&image);
        }
        out
    }

    /// `model(x, t, y)` with the branches supplied by `hook` and explicit timestep features
    /// (B, 256); no input validation (see [`Dit::validate_inputs`]).
    pub fn forward_features(
        &self,
        x: ArrayView4<f32>,
        timestep_features: ArrayView2<f32>,
        labels: &[usize],
        hook: &mut dyn BranchHook,
    ) -> Array4<f32> {
        let cond = self.conditioning(timestep_features, labels);
        self.forward_conditioned(x, &cond, hook)
    }

    /// `model(x, t, y)` with the branches supplied by `hook` and the conditioning of `t` and `y`
    /// already computed; no input validation. The pass runs on a rayon worker with the other
    /// workers kept awake between its parallel parts ([`parallel::with_workers_awake`]).
    pub fn forward_conditioned(
        &self,
        x: ArrayView4<f32>,
        cond: &Conditioning,
        hook: &mut dyn BranchHook,
    ) -> Array4<f32> {
        parallel::with_workers_awake(|| {
            let mut tokens = self.patch_embed(x);
            tokens += &self.weights.pos_embed;
            self.run_blocks(&mut tokens, cond, hook);
            self.unpatchify(self.final_tokens(tokens.view(), cond).view())
        })
    }

    /// `model(x, t, y)` with the branches supplied by `hook`.
    pub fn forward_hooked(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        hook: &mut dyn BranchHook,
    ) -> Result<Array4<f32>> {
        self.validate_inputs(x, timesteps, labels)?;
        let out = self.forward_features(x, ops::timestep_features(timesteps).view(), labels, hook);
        if !out.iter().all(|v| v.is_finite()) {
            return Err(crate::sampler::forward_divergence(self, x, timesteps, labels, None));
        }
        Ok(out)
    }

    /// The uncached `model(x, t, y)`: (B, out_channels, H, W).
    pub fn forward(&self, x: ArrayView4<f32>, timesteps: &[f32], labels: &[usize]) -> Result<Array4<f32>> {
        self.forward_hooked(x, timesteps, labels, &mut FullCompute)
    }

    /// `forward_with_cfg` exactly as upstream: the batch is `[x; x]` with labels `[y; null]`; only
    /// the FIRST half of `x` is used (duplicated), guidance `uncond + scale (cond - uncond)` is
    /// applied to output channels 0..3 only, and the other channels come from each row's own output.
    pub fn forward_with_cfg_hooked(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: f32,
        hook: &mut dyn BranchHook,
    ) -> Result<Array4<f32>> {
        check_cfg_scale(cfg_scale)?;
        let combined = guided_input(x)?;
        self.validate_inputs(combined.view(), timesteps, labels)?;
        let features = ops::timestep_features(timesteps);
        let mut out = self.forward_features(combined.view(), features.view(), labels, hook);
        apply_guidance(&mut out, cfg_scale);
        if !out.iter().all(|v| v.is_finite()) {
            return Err(crate::sampler::forward_divergence(
                self,
                combined.view(),
                timesteps,
                labels,
                Some(cfg_scale),
            ));
        }
        Ok(out)
    }

    /// The uncached `forward_with_cfg`.
    pub fn forward_with_cfg(
        &self,
        x: ArrayView4<f32>,
        timesteps: &[f32],
        labels: &[usize],
        cfg_scale: f32,
    ) -> Result<Array4<f32>> {
        self.forward_with_cfg_hooked(x, timesteps, labels, cfg_scale, &mut FullCompute)
    }
}

/// Fails unless the guidance scale is a finite number.
pub fn check_cfg_scale(cfg_scale: f32) -> Result<()> {
    if !cfg_scale.is_finite() {
        return Err(Error::Input(format!("--cfg-scale {cfg_scale} is not a finite number")));
    }
    Ok(())
}

/// The model input of a guided batch `[x; x]`: the FIRST half of `x`, twice (as upstream's
/// `forward_with_cfg`, which ignores the second half).
pub fn guided_input(x: ArrayView4<f32>) -> Result<Array4<f32>> {
    let b = x.dim().0;
    if !b.is_multiple_of(2) {
        return Err(Error::Input(format!(
            "a guided batch needs an even size ([x; x]), got {b}"
        )));
    }
    let half = x.slice(s![..b / 2, .., .., ..]);
    Ok(ndarray::concatenate(Axis(0), &[half, half]).expect("same shapes"))
}

/// Number of output channels classifier-free guidance mixes: upstream hard-codes `[:, :3]`.
pub const GUIDED_CHANNELS: usize = 3;

/// Mixes a guided model output in place: rows `[cond; uncond]`, channels `0..3` of both halves
/// become `uncond + scale * (cond - uncond)`; the remaining channels stay per row.
pub fn apply_guidance(out: &mut Array4<f32>, cfg_scale: f32) {
    let b = out.dim().0;
    let guided = GUIDED_CHANNELS.min(out.dim().1);
    for row in 0..b / 2 {
        for ch in 0..guided {
            let cond = out.slice(s![row, ch, .., ..]).to_owned();
            let uncond = out.slice(s![row + b / 2, ch, .., ..]).to_owned();
            let mixed = &uncond + &((&cond - &uncond) * cfg_scale);
            out.slice_mut(s![row, ch, .., ..]).assign(&mixed);
            out.slice_mut(s![row + b / 2, ch, .., ..]).assign(&mixed);
        }
    }
}
