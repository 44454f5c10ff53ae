//! DiT parameters under the official `state_dict` key names (docs/algorithms.md section 1), loaded
//! from safetensors (f32, or f16/bf16 converted) or drawn at random for benchmarks and smoke runs.

use std::borrow::Cow;
use std::sync::OnceLock;

use ndarray::{Array1, Array2, ArrayView2, Ix1, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::DitConfig;
use crate::error::{Result, check_finite};
use crate::gemm::{Kernel, PackedWeights};
use crate::lanes_gemm::LanePackedWeights;
use crate::ops;
use crate::safetensors_file::{OutTensor, SafetensorsFile};

/// Where token layers are held plain for BLAS (CPUs without AVX-512), at most this many rows take
/// a packed few-rows kernel instead: the tokens a cached method computes on a sparse step (ResCa's
/// K proxies, ClusCa's K picks, per batch row, [`crate::lanes_gemm`]). BLAS packs the whole
/// weight matrix on every call, which for a few rows costs about as much as the product; for
/// many rows it is as fast as the AVX2 packed kernel or faster (`cargo bench -p
/// resca-reference --bench linear_kernels`). adaLN and the timestep MLP (one row per batch row)
/// are always packed ([`crate::gemm`]), and on AVX-512 CPUs every layer is.
pub const FEW_ROWS: usize = 64;

/// An `nn.Linear`: weight (out, in) and bias (out).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: WeightStorage,
    pub bias: Array1<f32>,
}

/// How a layer holds its weight: the layout its products read.
#[derive(Clone, Debug)]
enum WeightStorage {
    /// Token layers on CPUs where BLAS multiplies many rows fastest (AVX2): the plain (out, in)
    /// matrix for BLAS, and a packed copy made the first time a product of [`FEW_ROWS`] or fewer
    /// rows needs it (only cached methods' sparse steps do), for the kernel that holds those
    /// rows in its SIMD lanes.
    Plain {
        weight: Array2<f32>,
        packed: OnceLock<LanePackedWeights>,
    },
    /// Packed only, in the panel kernel's layout ([`crate::gemm`]): layers only ever applied to
    /// a few rows (adaLN, the timestep MLP), and every token layer on CPUs where the panel
    /// kernel multiplies many rows faster than BLAS (AVX-512). There it is as fast as the AVX2
    /// lanes kernel on a sparse step's few rows too, with the same bits, so no second copy is
    /// made.
    Packed(PackedWeights),
}

impl Linear {
    /// A token layer: stored for the fastest product of many rows on this CPU, plain for BLAS
    /// or packed for the panel kernel (see [`WeightStorage`]).
    pub fn new(weight: Array2<f32>, bias: Array1<f32>) -> Self {
        Self::token_layer(weight, bias, Kernel::detect().beats_blas_on_many_rows())
    }

    /// A token layer held in panels or plain (the two storages [`Self::new`] chooses between).
    fn token_layer(weight: Array2<f32>, bias: Array1<f32>, in_panels: bool) -> Self {
        assert_eq!(weight.nrows(), bias.len(), "one bias per output");
        let weight = if in_panels {
            WeightStorage::Packed(PackedWeights::pack(weight.view()))
        } else {
            WeightStorage::Plain {
                weight,
                packed: OnceLock::new(),
            }
        };
        Self { weight, bias }
    }

    /// A layer only ever applied to a few rows: stored packed only.
    pub fn new_few_rows(weight: ArrayView2<f32>, bias: Array1<f32>) -> Self {
        assert_eq!(weight.nrows(), bias.len(), "one bias per output");
        Self {
            weight: WeightStorage::Packed(PackedWeights::pack(weight)),
            bias,
        }
    }

    /// `x W^T + b` for token rows `x` (rows, in).
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        if let Some(lanes) = self.lane_packed(x.nrows()) {
            return lanes.linear(x, self.bias.view());
        }
        match &self.weight {
            WeightStorage::Packed(packed) => packed.linear(x, self.bias.view()),
            WeightStorage::Plain { weight, .. } => ops::linear(x, weight.view(), self.bias.view()),
        }
    }

    /// The packed copy a product of `rows` rows reads, for a token layer held plain and at most
    /// [`FEW_ROWS`] rows (which [`Self::forward`] multiplies by it): to chain products in its
    /// layout ([`crate::lanes_gemm::LaneRows`]). None for a layer held in panels: its own
    /// kernel multiplies few rows too.
    pub fn lane_packed(&self, rows: usize) -> Option<&LanePackedWeights> {
        if rows > FEW_ROWS {
            return None;
        }
        match &self.weight {
            WeightStorage::Plain { weight, packed } => {
                Some(packed.get_or_init(|| LanePackedWeights::pack(weight.view())))
            }
            WeightStorage::Packed(_) => None,
        }
    }

    /// Makes a token layer's packed copy for a few rows now, instead of in its first product of
    /// a few rows (nothing to make for a layer held in panels).
    pub fn pack_for_few_rows(&self) {
        self.lane_packed(1);
    }

    /// The weight matrix (out, in), e.g. to save it or upload it to a GPU.
    pub fn weight(&self) -> Cow<'_, Array2<f32>> {
        match &self.weight {
            WeightStorage::Plain { weight, .. } => Cow::Borrowed(weight),
            WeightStorage::Packed(packed) => Cow::Owned(packed.unpack()),
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.weight {
            WeightStorage::Plain { weight, .. } => weight.ncols(),
            WeightStorage::Packed(packed) => packed.inputs(),
        }
    }

    pub fn out_features(&self) -> usize {
        self.bias.len()
    }
}

/// One DiT block's parameters (`blocks.{l}.*`).
#[derive(Clone, Debug)]
pub struct BlockWeights {
    /// `adaLN_modulation.1`: D -> 6D (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
    pub ada_ln: Linear,
    pub qkv: Linear,
    pub proj: Linear,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// Every parameter of a DiT.
#[derive(Clone, Debug)]
pub struct DitWeights {
    /// `x_embedder.proj`, the Conv2d weight flattened to (D, C*p*p).
    pub patch_embed: Linear,
    /// `pos_embed` (N, D).
    pub pos_embed: Array2<f32>,
    /// `t_embedder.mlp.0` (256 -> D) and `t_embedder.mlp.2` (D -> D).
    pub t_mlp_in: Linear,
    pub t_mlp_out: Linear,
    /// `y_embedder.embedding_table` (num_classes + 1, D); the last row is the null label.
    pub label_table: Array2<f32>,
    pub blocks: Vec<BlockWeights>,
    /// `final_layer.adaLN_modulation.1` (D -> 2D: shift, scale) and `final_layer.linear`.
    pub final_ada_ln: Linear,
    pub final_linear: Linear,
}

/// The official key and expected shape of every tensor of a DiT with `config`.
pub fn tensor_shapes(config: &DitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, c, p) = (config.hidden_size, config.in_channels, config.patch_size);
    let (m, out) = (config.mlp_hidden(), p * p * config.out_channels());
    let mut shapes = vec![
        ("x_embedder.proj.weight".to_string(), vec![d, c, p, p]),
        ("x_embedder.proj.bias".to_string(), vec![d]),
        ("pos_embed".to_string(), vec![1, config.tokens(), d]),
        ("t_embedder.mlp.0.weight".to_string(), vec![d, ops::TIMESTEP_FEATURES]),
        ("t_embedder.mlp.0.bias".to_string(), vec![d]),
        ("t_embedder.mlp.2.weight".to_string(), vec![d, d]),
        ("t_embedder.mlp.2.bias".to_string(), vec![d]),
        (
            "y_embedder.embedding_table.weight".to_string(),
            vec![config.num_classes + 1, d],
        ),
    ];
    for l in 0..config.depth {
        for (name, rows, cols) in [
            ("adaLN_modulation.1", 6 * d, d),
            ("attn.qkv", 3 * d, d),
            ("attn.proj", d, d),
            ("mlp.fc1", m, d),
            ("mlp.fc2", d, m),
        ] {
            shapes.push((format!("blocks.{l}.{name}.weight"), vec![rows, cols]));
            shapes.push((format!("blocks.{l}.{name}.bias"), vec![rows]));
        }
    }
    for (name, rows) in [("final_layer.adaLN_modulation.1", 2 * d), ("final_layer.linear", out)] {
        shapes.push((format!("{name}.weight"), vec![rows, d]));
        shapes.push((format!("{name}.bias"), vec![rows]));
    }
    shapes
}

impl DitWeights {
    /// Loads every tensor of `config` from `file`, checking names, shapes, dtypes and finiteness.
    pub fn load(file: &SafetensorsFile, config: &DitConfig) -> Result<Self> {
        config.validate()?;
        let mut tensors = TensorsByName::new();
        for (name, shape) in tensor_shapes(config) {
            let values = file.read_f32_shaped(&name, &shape)?;
            check_finite(&format!("{}: tensor `{name}`", file.path().display()), values.iter())?;
            tensors.insert(name, values);
        }
        file.check_unchanged()?;
        Ok(Self::from_tensors(config, tensors))
    }

    /// Seeded random weights (normal, std `1/sqrt(fan_in)`, biases and adaLN scaled down so that
    /// activations stay O(1)) with the fixed sin-cos `pos_embed`: for benchmarks and smoke runs.
    pub fn random(config: &DitConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = TensorsByName::new();
        for (name, shape) in tensor_shapes(config) {
            let values = if name == "pos_embed" {
                ops::pos_embed_2d(config.hidden_size, config.grid()).into_dyn()
            } else {
                let fan_in: usize = if shape.len() > 1 {
                    shape[1..].iter().product()
                } else {
                    1
                };
                let mut std = 1.0 / (fan_in as f32).sqrt();
                if shape.len() == 1 || name.contains("adaLN") {
                    std *= 0.1;
                }
                let normal = Normal::new(0.0, std).expect("positive std");
                ndarray::ArrayD::from_shape_simple_fn(shape, || normal.sample(&mut rng))
            };
            tensors.insert(name, values);
        }
        Ok(Self::from_tensors(config, tensors))
    }

    /// Builds the structure from tensors in the official layout, by name (all present: the
    /// callers fill the map from [`tensor_shapes`]).
    fn from_tensors(config: &DitConfig, mut tensors: TensorsByName) -> Self {
        let mut take = |name: &str| tensors.remove(name).expect("every name of tensor_shapes is present");
        let mut weight_and_bias = |prefix: &str| {
            let weight = take(&format!("{prefix}.weight"));
            let bias = take(&format!("{prefix}.bias"));
            (
                weight.into_dimensionality::<Ix2>().expect("2-D by tensor_shapes"),
                bias.into_dimensionality::<Ix1>().expect("1-D by tensor_shapes"),
            )
        };
        let tokens = |(weight, bias)| Linear::new(weight, bias);
        let few_rows = |(weight, bias): (Array2<f32>, Array1<f32>)| Linear::new_few_rows(weight.view(), bias);
        let t_mlp_in = few_rows(weight_and_bias("t_embedder.mlp.0"));
        let t_mlp_out = few_rows(weight_and_bias("t_embedder.mlp.2"));
        let blocks = (0..config.depth)
            .map(|l| BlockWeights {
                ada_ln: few_rows(weight_and_bias(&format!("blocks.{l}.adaLN_modulation.1"))),
                qkv: tokens(weight_and_bias(&format!("blocks.{l}.attn.qkv"))),
                proj: tokens(weight_and_bias(&format!("blocks.{l}.attn.proj"))),
                fc1: tokens(weight_and_bias(&format!("blocks.{l}.mlp.fc1"))),
                fc2: tokens(weight_and_bias(&format!("blocks.{l}.mlp.fc2"))),
            })
            .collect();
        let final_ada_ln = few_rows(weight_and_bias("final_layer.adaLN_modulation.1"));
        let final_linear = tokens(weight_and_bias("final_layer.linear"));
        let (d, c, p, n) = (
            config.hidden_size,
            config.in_channels,
            config.patch_size,
            config.tokens(),
        );
        let mut reshaped = |name: &str, rows: usize, cols: usize| {
            take(name)
                .into_shape_with_order((rows, cols))
                .expect("contiguous, sized by tensor_shapes")
        };
        let patch_embed = Linear::new(
            reshaped("x_embedder.proj.weight", d, c * p * p),
            reshaped("x_embedder.proj.bias", 1, d).remove_axis(ndarray::Axis(0)),
        );
        let pos_embed = reshaped("pos_embed", n, d);
        let label_table = reshaped("y_embedder.embedding_table.weight", config.num_classes + 1, d);
        DitWeights {
            patch_embed,
            pos_embed,
            t_mlp_in,
            t_mlp_out,
            label_table,
            blocks,
            final_ada_ln,
            final_linear,
        }
    }

    /// Every tensor under its official key and shape, ready for `write_safetensors`.
    pub fn to_tensors(&self, config: &DitConfig) -> Vec<(String, OutTensor)> {
        let mut out = Vec::new();
        let push_linear = |out: &mut Vec<(String, OutTensor)>, prefix: &str, linear: &Linear| {
            out.push((
                format!("{prefix}.weight"),
                OutTensor::F32(linear.weight().into_owned().into_dyn()),
            ));
            out.push((format!("{prefix}.bias"), OutTensor::F32(linear.bias.clone().into_dyn())));
        };
        let (d, c, p) = (config.hidden_size, config.in_channels, config.patch_size);
        let conv = self
            .patch_embed
            .weight()
            .into_owned()
            .into_shape_with_order((d, c, p, p))
            .expect("contiguous");
        out.push(("x_embedder.proj.weight".into(), OutTensor::F32(conv.into_dyn())));
        out.push((
            "x_embedder.proj.bias".into(),
            OutTensor::F32(self.patch_embed.bias.clone().into_dyn()),
        ));
        let pos = self.pos_embed.clone().insert_axis(ndarray::Axis(0));
        out.push(("pos_embed".into(), OutTensor::F32(pos.into_dyn())));
        push_linear(&mut out, "t_embedder.mlp.0", &self.t_mlp_in);
        push_linear(&mut out, "t_embedder.mlp.2", &self.t_mlp_out);
        out.push((
            "y_embedder.embedding_table.weight".into(),
            OutTensor::F32(self.label_table.clone().into_dyn()),
        ));
        for (l, block) in self.blocks.iter().enumerate() {
            push_linear(&mut out, &format!("blocks.{l}.adaLN_modulation.1"), &block.ada_ln);
            push_linear(&mut out, &format!("blocks.{l}.attn.qkv"), &block.qkv);
            push_linear(&mut out, &format!("blocks.{l}.attn.proj"), &block.proj);
            push_linear(&mut out, &format!("blocks.{l}.mlp.fc1"), &block.fc1);
            push_linear(&mut out, &format!("blocks.{l}.mlp.fc2"), &block.fc2);
        }
        push_linear(&mut out, "final_layer.adaLN_modulation.1", &self.final_ada_ln);
        push_linear(&mut out, "final_layer.linear", &self.final_linear);
        out
    }
}

type TensorsByName = std::collections::HashMap<String, ndarray::ArrayD<f32>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every storage (a token layer plain or in panels, whichever this CPU picks; a few-rows
    /// layer) and both sides of [`FEW_ROWS`] give the plain-layout product, and the weight comes
    /// back exactly. Measured: at most ~2e-7 relative to the output's scale (the kernels sum the
    /// 200 terms in different orders). Up to [`FEW_ROWS`] rows the plain layer's lanes kernel and
    /// the panel kernel give the same bits, so the storage a CPU picks changes no cached run.
    #[test]
    fn every_storage_and_row_count_gives_the_same_product() {
        let weight = Array2::from_shape_fn((40, 200), |(i, j)| ((i * 7 + j * 13) % 23) as f32 / 11.0 - 1.0);
        let bias = Array1::from_shape_fn(40, |j| j as f32 * 0.05);
        let plain = Linear::token_layer(weight.clone(), bias.clone(), false);
        let panels = Linear::token_layer(weight.clone(), bias.clone(), true);
        let few_rows = Linear::new_few_rows(weight.view(), bias.clone());
        assert!(plain.lane_packed(FEW_ROWS).is_some() && panels.lane_packed(FEW_ROWS).is_none());
        for rows in [1, 7, FEW_ROWS] {
            let x = Array2::from_shape_fn((rows, 200), |(i, j)| ((i * 3 + j * 5) % 19) as f32 / 9.0 - 1.0);
            assert_eq!(plain.forward(x.view()), panels.forward(x.view()), "{rows} rows");
        }
        for layer in [&plain, &panels, &few_rows] {
            assert_eq!(*layer.weight(), weight);
            assert_eq!((layer.in_features(), layer.out_features()), (200, 40));
        }
        for rows in [1, FEW_ROWS, FEW_ROWS + 1, 150] {
            let x = Array2::from_shape_fn((rows, 200), |(i, j)| ((i * 5 + j * 3) % 17) as f32 / 8.0 - 1.0);
            let expected = ops::linear(x.view(), weight.view(), bias.view());
            let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for layer in [&plain, &panels, &few_rows] {
                let error = (&layer.forward(x.view()) - &expected)
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()))
                    / scale;
                assert!(error < 1e-6, "{rows} rows: relative error {error:e}");
            }
        }
    }
}
