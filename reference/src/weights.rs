//! DiT parameters under the official `state_dict` key names (SPEC.md section 1), loaded from
//! safetensors (f32, or f16/bf16 converted) or drawn at random for benchmarks and smoke runs.

use ndarray::{Array1, Array2, ArrayView2, Ix1, Ix2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::DitConfig;
use crate::error::{Result, check_finite};
use crate::ops;
use crate::safetensors_file::{OutTensor, SafetensorsFile};

/// An `nn.Linear`: weight (out, in) and bias (out).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

impl Linear {
    /// `x W^T + b` for token rows `x` (rows, in).
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        ops::linear(x, self.weight.view(), self.bias.view())
    }

    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }

    pub fn out_features(&self) -> usize {
        self.weight.nrows()
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
        let mut linear = |prefix: &str| Linear {
            weight: take(&format!("{prefix}.weight"))
                .into_dimensionality::<Ix2>()
                .expect("2-D by tensor_shapes"),
            bias: take(&format!("{prefix}.bias"))
                .into_dimensionality::<Ix1>()
                .expect("1-D by tensor_shapes"),
        };
        let t_mlp_in = linear("t_embedder.mlp.0");
        let t_mlp_out = linear("t_embedder.mlp.2");
        let blocks = (0..config.depth)
            .map(|l| BlockWeights {
                ada_ln: linear(&format!("blocks.{l}.adaLN_modulation.1")),
                qkv: linear(&format!("blocks.{l}.attn.qkv")),
                proj: linear(&format!("blocks.{l}.attn.proj")),
                fc1: linear(&format!("blocks.{l}.mlp.fc1")),
                fc2: linear(&format!("blocks.{l}.mlp.fc2")),
            })
            .collect();
        let final_ada_ln = linear("final_layer.adaLN_modulation.1");
        let final_linear = linear("final_layer.linear");
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
        let patch_embed = Linear {
            weight: reshaped("x_embedder.proj.weight", d, c * p * p),
            bias: reshaped("x_embedder.proj.bias", 1, d).remove_axis(ndarray::Axis(0)),
        };
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
                OutTensor::F32(linear.weight.clone().into_dyn()),
            ));
            out.push((format!("{prefix}.bias"), OutTensor::F32(linear.bias.clone().into_dyn())));
        };
        let (d, c, p) = (config.hidden_size, config.in_channels, config.patch_size);
        let conv = self
            .patch_embed
            .weight
            .clone()
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
