//! Shared by the host's tests: models, inputs, a workload that drives every kernel through the
//! pipeline (forwards, guidance, both samplers, every caching method) on any device,
//! [`on_every_device!`] (one test body on the simulator and, where there is one, the GPU), the
//! project's SKIP line, and slice-in, slice-out kernel launches ([`kernels`]).

#![allow(dead_code)] // each test file uses a part

pub mod kernels;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;

use ndarray::{Array2, Array4, ArrayView2, Ix4, s};
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_host::cuda::CudaDevice;
use resca_host::inputs::guided_batch;
use resca_host::pipeline::{Device, Pipeline, SampleOptions, SampleOutput, launch};
use resca_host::sim::{BlockOrder, SimDevice, with_block_order};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{ClusteringSource, MethodConfig, MethodKind, ResidualScaling};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;
use resca_reference::safetensors_file::SafetensorsFile;
use resca_reference::{Dit, DitConfig, Sampler};

/// Deterministic uniform values in [-scale, scale] (xorshift64*), as a (rows, cols) matrix.
pub fn seeded_matrix(seed: u64, rows: usize, cols: usize, scale: f32) -> Array2<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    })
}

/// The reference's attention of each sample of `qkv` (batch tokens, 3D), concatenated.
pub fn attention_reference(qkv: &Array2<f32>, batch: usize, tokens: usize, heads: usize) -> Vec<f32> {
    let mut expected = Vec::new();
    for row in 0..batch {
        let part: ArrayView2<f32> = qkv.slice(s![row * tokens..(row + 1) * tokens, ..]);
        expected.extend(resca_reference::ops::attention(part, heads).iter().copied());
    }
    expected
}

pub fn vectors(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/vectors/tiny")
        .join(name)
}

/// The model of `tests/vectors/tiny` (8x8x4 latents, 16 tokens, hidden 64, 4 heads, depth 2).
pub fn tiny_model() -> Dit {
    Dit::load(&vectors("weights.safetensors"), None, None).unwrap()
}

/// Shapes unlike the tiny model's: 36 tokens, 3 channels without learned sigma, hidden 96 in 3
/// heads of 32, 7 classes (sizes that are not multiples of the kernels' tiles and blocks).
pub fn odd_model(seed: u64) -> Dit {
    let config = DitConfig {
        input_size: 12,
        patch_size: 2,
        in_channels: 3,
        hidden_size: 96,
        depth: 1,
        num_heads: 3,
        mlp_ratio: 4.0,
        num_classes: 7,
        learn_sigma: false,
    };
    Dit::random(config, seed).unwrap()
}

/// The guided batch `[x; x]`, `[y; null]` of the vectors' noise with labels 7, 4.
pub fn tiny_guided_inputs(model: &Dit) -> (Array4<f32>, Vec<usize>) {
    let file = SafetensorsFile::open(vectors("ddim.safetensors")).unwrap();
    let noise = file.read_f32("noise").unwrap().into_dimensionality::<Ix4>().unwrap();
    guided_batch(&noise, &[7, 4], &model.config)
}

/// Deterministic values in [-2, 2] (xorshift).
pub fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// Deterministic noise (B, C, H, W).
pub fn noise(model: &Dit, batch: usize, seed: u64) -> Array4<f32> {
    let c = &model.config;
    let shape = (batch, c.in_channels, c.input_size, c.input_size);
    Array4::from_shape_vec(shape, values(seed, batch * c.in_channels * c.input_size * c.input_size)).unwrap()
}

/// ResCa as the released code runs it on the vectors.
pub fn released_resca() -> MethodConfig {
    MethodConfig {
        clusters: 4,
        alpha: 0.6,
        solver: Solver::ImplicitEuler,
        proxy: ProxyChoice::Medoid,
        residuals: ResidualScaling::Official,
        ..MethodConfig::new(MethodKind::ResCa, 4, 1)
    }
}

/// The caching methods and sampler settings the workload runs (interval 2, so that 6 steps hold
/// full and cached ones), together covering every kernel.
pub fn workload_methods() -> Vec<(&'static str, MethodConfig, bool)> {
    let resca = MethodConfig {
        interval: 2,
        ..released_resca()
    };
    vec![
        ("full", MethodConfig::full(), false),
        ("taylorseer o2", MethodConfig::new(MethodKind::TaylorSeer, 2, 2), false),
        ("fora", MethodConfig::new(MethodKind::Fora, 2, 0), false),
        ("resca ie official", resca.clone(), false),
        (
            "resca center-random",
            MethodConfig {
                proxy: ProxyChoice::CenterRandom,
                seed: 5,
                ..resca.clone()
            },
            false,
        ),
        (
            "resca feature it2 paper",
            MethodConfig {
                clustering: ClusteringSource::Feature,
                solver: Solver::ImplicitTaylor(2),
                order: 2,
                residuals: ResidualScaling::Paper,
                ..resca.clone()
            },
            false,
        ),
        (
            "resca bdf2",
            MethodConfig {
                solver: Solver::Bdf2,
                order: 2,
                ..resca.clone()
            },
            false,
        ),
        (
            "clusca",
            MethodConfig {
                clusters: 4,
                seed: 3,
                ..MethodConfig::new(MethodKind::ClusCa, 2, 1)
            },
            false,
        ),
        (
            "flow resca paper",
            MethodConfig {
                first_enhance: 3,
                residuals: ResidualScaling::Paper,
                ..resca
            },
            true,
        ),
    ]
}

/// Runs the workload on `dev`: a forward (B = 3), a guided forward (B = 4) and 6-step guided
/// runs of every method of [`workload_methods`] (DDIM, or flow where marked). Returns the
/// device and the runs' outputs.
pub fn drive<D: Device>(dev: D, model: &Dit) -> (D, Vec<SampleOutput>) {
    let mut pipeline = Pipeline::new(dev, model).unwrap();
    let c = model.config.clone();
    let x = noise(model, 3, 11);
    let labels: Vec<usize> = (0..3).map(|i| (2 * i + 1) % c.num_classes).collect();
    pipeline.forward(x.view(), &[999.0, 500.0, 1.0], &labels).unwrap();
    let (guided, guided_labels) = guided_batch(&noise(model, 2, 12), &[1, 2], &c);
    pipeline
        .forward_with_cfg(guided.view(), &[300.0; 4], &guided_labels, 1.5)
        .unwrap();
    let mut outputs = Vec::new();
    for (what, method, use_flow) in workload_methods() {
        let sampler = if use_flow {
            Sampler::Flow(FlowSchedule::new(6, 1.0).unwrap())
        } else {
            Sampler::Ddim(DdimSchedule::new(6).unwrap())
        };
        let options = SampleOptions::default();
        let out = pipeline
            .sample(
                guided.view(),
                &guided_labels,
                Some(1.5),
                &sampler,
                &method,
                options,
                &mut |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        outputs.push(out);
    }
    // The unfused Taylor prediction (the pipeline launches the fused one): 3 factors of 777.
    let dev = &mut pipeline.dev;
    let factors = dev.upload_new(&values(13, 3 * 777)).unwrap();
    let out = dev.alloc::<f32>(777).unwrap();
    let coef = TaylorCoefficients {
        scale1: 1.0,
        power1: -2.0,
        scale2: 0.5,
        power2: 4.0,
        scale3: 1.0 / 6.0,
        power3: -8.0,
        scale4: 1.0 / 24.0,
        power4: 16.0,
    };
    launch::taylor_predict(dev, factors.all(), out.all(), 777, 3, coef).unwrap();
    // The scatter of fresh rows (pdds_update writes the proxies' rows itself): 2 rows of 3
    // tokens, 2 indices each, 5 features.
    let rows = dev.upload_new(&values(14, 2 * 2 * 5)).unwrap();
    let indices = dev.upload_new(&[2u32, 0, 1, 1]).unwrap();
    launch::scatter_rows(dev, rows.all(), indices.all(), out.range(0, 2 * 3 * 5), 2, 3, 2, 5).unwrap();
    dev.free(rows.id()).unwrap();
    dev.free(indices.id()).unwrap();
    dev.free(factors.id()).unwrap();
    dev.free(out.id()).unwrap();
    gemms_the_shapes_do_not_choose(dev, &c);
    attention_on_tensor_cores(dev, &c);
    (pipeline.dev, outputs)
}

/// The tensor-core attention kernels of the fast precisions (the workload's pipeline runs the
/// exact ones), each once on a batch of 2 with the model's tokens and heads.
fn attention_on_tensor_cores<D: Device>(dev: &mut D, c: &DitConfig) {
    use launch::Precision;
    let (batch, tokens, d) = (2, c.tokens(), c.hidden_size);
    let qkv = dev.upload_new(&values(18, batch * tokens * 3 * d)).unwrap();
    let out = dev.alloc::<f32>(batch * tokens * d).unwrap();
    for precision in [Precision::Tf32, Precision::Tf32x3, Precision::Bf16] {
        launch::attention_tc(
            dev,
            precision,
            qkv.all(),
            out.all(),
            batch,
            tokens,
            c.num_heads,
            c.head_dim(),
        )
        .unwrap();
    }
    dev.free(qkv.id()).unwrap();
    dev.free(out.id()).unwrap();
}

#[allow(unused_imports)] // named by the docs and failure messages
pub use resca_tests::PROPTEST_SEED;

/// The kernel properties' configuration: 24 cases from [`PROPTEST_SEED`]
/// (`resca_tests::proptest_config`; `PROPTEST_CASES`, `PROPTEST_RNG_SEED` run others), and no
/// failure files: a failing case is found again from the seed, and printed with its inputs.
pub fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..resca_tests::proptest_config(24)
    }
}

/// The block orders every kernel test runs the simulator in: grid order and its reverse. A GPU
/// runs a grid's blocks in any order, so a kernel whose result depends on the order (one block
/// reading what another wrote, or two blocks writing one element) is wrong in at least one.
pub const BLOCK_ORDERS: [BlockOrder; 2] = [BlockOrder::InOrder, BlockOrder::Reversed];

/// Runs a property's body once in each of [`BLOCK_ORDERS`]; a failure names the order.
pub fn in_every_block_order(body: impl Fn() -> Result<(), TestCaseError>) -> Result<(), TestCaseError> {
    for order in BLOCK_ORDERS {
        let outcome = catch_unwind(AssertUnwindSafe(|| with_block_order(order, &body)));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(TestCaseError::Fail(why))) => {
                return Err(TestCaseError::fail(format!("{why} (blocks {order:?})")));
            }
            Ok(Err(other)) => return Err(other),
            Err(panic) => {
                eprintln!("(the panic above happened with the blocks {order:?})");
                resume_unwind(panic);
            }
        }
    }
    Ok(())
}

/// The GEMM kernels the shape choice never makes for small models: the classic mul + add GEMMs
/// (the C interface's), the 128 x 128 FMA tiles and the split-K GELU reduction, and the
/// tensor-core GEMMs of the fast precisions, each once on (130, D) x (D, D) with the model's
/// hidden size D.
fn gemms_the_shapes_do_not_choose<D: Device>(dev: &mut D, c: &DitConfig) {
    use launch::{Epilogue, GemmTile, GemmWeight, Precision};
    let (m, d) = (130, c.hidden_size);
    let a = dev.upload_new(&values(14, m * d)).unwrap();
    let w = dev.upload_new(&values(15, d * d)).unwrap();
    let bias = dev.upload_new(&values(16, d)).unwrap();
    let gate = dev.upload_new(&values(17, 6 * d)).unwrap();
    let out = dev.alloc::<f32>(m * d).unwrap();
    let partials = dev.alloc::<f32>(2 * m * d).unwrap();
    let (a, w, bias, gate, out_all) = (a.all(), w.all(), bias.all(), gate.all(), out.all());
    for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
        launch::gemm(dev, a, w, bias, out_all, m, d, d, epilogue).unwrap();
        launch::gemm_tiled(dev, GemmTile::Tile128, a, w, bias, out_all, m, d, d, epilogue).unwrap();
    }
    launch::gemm_gated_residual(dev, a, w, bias, out_all, gate, m, d, d, m, 6 * d, 5 * d).unwrap();
    launch::gemm_tiled_gated_residual(
        dev,
        GemmTile::Tile128,
        a,
        w,
        bias,
        out_all,
        gate,
        m,
        d,
        d,
        m,
        6 * d,
        5 * d,
    )
    .unwrap();
    launch::gemm_splitk_partial(dev, a, w, partials.all(), m, d, d, d.div_ceil(2)).unwrap();
    launch::gemm_splitk_reduce(dev, partials.all(), bias, out_all, m, d, 2, Epilogue::BiasGelu).unwrap();
    let w_bf16 = dev
        .upload_new(&launch::pack_bf16_weight(&values(15, d * d), d, d))
        .unwrap();
    for precision in [Precision::Tf32, Precision::Tf32x3, Precision::Bf16] {
        let weight = match precision {
            Precision::Bf16 => GemmWeight::Bf16(w_bf16.all()),
            _ => GemmWeight::F32(w),
        };
        for epilogue in [Epilogue::Bias, Epilogue::BiasGelu] {
            launch::gemm_tc(dev, precision, a, weight, bias, out_all, m, d, d, epilogue).unwrap();
        }
        launch::gemm_tc_gated_residual(dev, precision, a, weight, bias, out_all, gate, m, d, d, m, 6 * d, 5 * d)
            .unwrap();
    }
    dev.free(w_bf16.id()).unwrap();
    for buffer in [a.id, w.id, bias.id, gate.id, out.id(), partials.id()] {
        dev.free(buffer).unwrap();
    }
}

/// Prints the project's SKIP line on the process's stderr (not the test harness's captured
/// output, so that it shows in a plain `cargo test`).
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: {test}: no CUDA driver/GPU ({reason})");
}

/// Whether a GPU can run the tests; prints the SKIP line when not.
pub fn gpu_or_skip(test: &str) -> bool {
    match resca_host::cuda::probe() {
        Ok(info) if info.devices.iter().any(|d| d.ptx_arch.is_some()) => true,
        Ok(_) => {
            skip(test, "no GPU of sm_80 or later");
            false
        }
        Err(e) => {
            skip(test, &e.to_string());
            false
        }
    }
}

/// A device a test opens afresh: the simulator, or the GPU.
pub trait TestDevice: Device + Sized {
    /// A fresh device (the GPU: the one `RESCA_CUDA_DEVICE` names, default 0).
    fn open() -> Self;
    /// Elements held by live buffers.
    fn resident_elements(&self) -> usize;
}

impl TestDevice for SimDevice {
    fn open() -> Self {
        SimDevice::new()
    }
    fn resident_elements(&self) -> usize {
        SimDevice::resident_elements(self)
    }
}

impl TestDevice for CudaDevice {
    fn open() -> Self {
        CudaDevice::open_default().unwrap()
    }
    fn resident_elements(&self) -> usize {
        CudaDevice::resident_elements(self)
    }
}

/// Runs a test function, generic over its device type, on every device present, each device its
/// own test: `<test>::sim` on the simulator always, `<test>::cuda` on the GPU where there is one,
/// else printing `SKIP: <test> on cuda: no CUDA driver/GPU (<why>)`. The function opens the
/// devices it needs with `D::open()`:
///
/// ```ignore
/// fn forward_matches_the_reference<D: TestDevice>() {
///     let mut pipeline = Pipeline::new(D::open(), &model).unwrap();
///     ...
/// }
/// on_every_device!(forward_matches_the_reference);
/// ```
#[allow(unused_macros)] // each test file uses a part
macro_rules! on_every_device {
    // The module of one test: `sim`, the `extra` tests, then `cuda`.
    (@module $test:ident { $($extra:item)* }) => {
        mod $test {
            #[test]
            fn sim() {
                super::$test::<resca_host::sim::SimDevice>();
            }

            $($extra)*

            #[test]
            fn cuda() {
                if $crate::support::gpu_or_skip(concat!(stringify!($test), " on cuda")) {
                    super::$test::<resca_host::cuda::CudaDevice>();
                }
            }
        }
    };
    ($($test:ident),+ $(,)?) => {$(
        $crate::support::on_every_device!(@module $test {});
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_every_device;

/// [`on_every_device!`] with the simulator run in each of [`BLOCK_ORDERS`]: `sim` in grid order,
/// `sim_reversed` with the blocks of every launch reversed (a GPU runs them in any order), as
/// separate tests so that the harness runs them side by side.
#[allow(unused_macros)]
macro_rules! on_every_device_in_every_block_order {
    ($($test:ident),+ $(,)?) => {$(
        $crate::support::on_every_device!(@module $test {
            #[test]
            fn sim_reversed() {
                resca_host::sim::with_block_order(
                    resca_host::sim::BlockOrder::Reversed,
                    super::$test::<resca_host::sim::SimDevice>,
                );
            }
        });
    )+};
}
#[allow(unused_imports)]
pub(crate) use on_every_device_in_every_block_order;
