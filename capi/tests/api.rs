//! The C interface called as a C host calls it (the `extern "C"` functions): versions, errors
//! and the per-thread message, refused null pointers and sizes, the CPU forward and sampling
//! against the vectors of the official PyTorch code (`tests/vectors/tiny`), and kernel launches
//! on the simulator and their geometry.

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use ndarray::{Ix5, s};
use resca::RescaStatus;
use resca::cpu::*;
use resca::error::resca_last_error;
use resca::kernels::*;
use resca::{RESCA_API_VERSION, resca_api_version, resca_kernel_count, resca_kernel_name, resca_version};
use resca_gpu_kernels::gemm::gemm_dims;
use resca_tests::{max_abs_diff, max_rel_to_max, tensor, vectors, vectors_dir};

fn last_error() -> String {
    // SAFETY: the library's NUL-terminated message.
    unsafe { CStr::from_ptr(resca_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a failure with `status` whose message contains `needle`.
fn assert_fails(status: RescaStatus, expected: RescaStatus, needle: &str) {
    assert_eq!(status, expected, "message: {}", last_error());
    let message = last_error();
    assert!(message.contains(needle), "`{message}` lacks `{needle}`");
}

fn tiny_model() -> *mut RescaModel {
    let path = CString::new(vectors_dir().join("weights.safetensors").to_str().unwrap()).unwrap();
    let mut model = null_mut();
    // SAFETY: a NUL-terminated path and a place for the handle.
    let status = unsafe { resca_model_load(path.as_ptr(), &mut model) };
    assert_eq!(status, RescaStatus::Ok, "{}", last_error());
    model
}

#[test]
fn versions_agree_and_name_the_kernels() {
    assert_eq!(resca_api_version(), RESCA_API_VERSION);
    // SAFETY: a static string.
    let version = unsafe { CStr::from_ptr(resca_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(resca_kernel_count(), resca_host::pipeline::Kernel::ALL.len());
    // SAFETY: a static string.
    let first = unsafe { CStr::from_ptr(resca_kernel_name(0)) }.to_str().unwrap();
    assert_eq!(first, resca_host::pipeline::Kernel::ALL[0].name());
    assert!(resca_kernel_name(resca_kernel_count()).is_null());
}

#[test]
fn the_error_message_belongs_to_the_failing_thread_and_survives_successes() {
    let mut config = RescaModelConfig::default();
    // SAFETY: a null model is refused, `config` is writable.
    let status = unsafe { resca_model_config(null(), &mut config) };
    assert_fails(status, RescaStatus::InvalidArgument, "`model` is a null pointer");
    // Another thread has its own (empty) message, and its failure does not change ours.
    std::thread::spawn(|| {
        assert_eq!(last_error(), "");
        let path = CString::new("/nonexistent/weights.safetensors").unwrap();
        let mut model = null_mut();
        // SAFETY: as in `tiny_model`.
        let status = unsafe { resca_model_load(path.as_ptr(), &mut model) };
        assert_fails(status, RescaStatus::Io, "/nonexistent/weights.safetensors");
        assert!(model.is_null());
    })
    .join()
    .unwrap();
    assert!(last_error().contains("`model` is a null pointer"), "{}", last_error());
    // A successful call leaves the message.
    let model = tiny_model();
    assert!(last_error().contains("`model` is a null pointer"));
    // SAFETY: a model of `resca_model_load`, released once.
    unsafe { resca_model_free(model) };
}

#[test]
fn null_pointers_are_refused_with_a_message() {
    let mut model = null_mut();
    // SAFETY (every call here): null pointers are refused before anything is read.
    unsafe {
        assert_fails(
            resca_model_load(null(), &mut model),
            RescaStatus::InvalidArgument,
            "`path` is a null pointer",
        );
        let path = CString::new("x").unwrap();
        assert_fails(
            resca_model_load(path.as_ptr(), null_mut()),
            RescaStatus::InvalidArgument,
            "`out` is a null pointer",
        );
        assert_fails(
            resca_model_load_default(null_mut()),
            RescaStatus::InvalidArgument,
            "`out` is a null pointer",
        );
        let mut out = [0f32; 4];
        assert_fails(
            resca_forward(null(), 1, null(), 0, null(), 0, null(), 0, out.as_mut_ptr(), 4),
            RescaStatus::InvalidArgument,
            "`model` is a null pointer",
        );
        let mut dims = RescaLaunchDims::default();
        assert_fails(
            resca_launch_dims(null(), null(), 0, &mut dims),
            RescaStatus::InvalidArgument,
            "the kernel name is a null pointer",
        );
        let kernel = CString::new("gemm_bias").unwrap();
        assert_fails(
            resca_launch_dims(kernel.as_ptr(), null(), 7, &mut dims),
            RescaStatus::InvalidArgument,
            "the arguments are a null pointer",
        );
        assert_fails(
            resca_launch_dims(kernel.as_ptr(), null(), 0, null_mut()),
            RescaStatus::InvalidArgument,
            "`out` is a null pointer",
        );
        assert_fails(
            resca_sample(null(), null(), 1, null(), 0, null(), 0, null_mut(), 0),
            RescaStatus::InvalidArgument,
            "`model` is a null pointer",
        );
        assert_fails(
            resca_taylor_coefficients(1.0, null_mut()),
            RescaStatus::InvalidArgument,
            "`out` is a null pointer",
        );
        // Releasing nothing is allowed.
        resca_model_free(null_mut());
        assert_eq!(resca::gpu::resca_gpu_close(null_mut()), RescaStatus::Ok);
        assert!(resca::gpu::resca_gpu_describe(null()).is_null());
    }
}

#[test]
fn the_cpu_forward_matches_the_official_output_within_its_budget() {
    let file = vectors("forward.safetensors");
    let x = tensor(&file, "x");
    let t: Vec<f32> = file.read_i64("t").unwrap().iter().map(|&v| v as f32).collect();
    let y: Vec<i64> = file.read_i64("y").unwrap().iter().copied().collect();
    let expected = tensor(&file, "out");
    let model = tiny_model();
    let mut config = RescaModelConfig::default();
    // SAFETY: a live model and a writable config.
    assert_eq!(unsafe { resca_model_config(model, &mut config) }, RescaStatus::Ok);
    assert_eq!(
        (
            config.input_size,
            config.in_channels,
            config.out_channels,
            config.tokens
        ),
        (8, 4, 8, 16)
    );
    let batch = t.len();
    let mut out = vec![0f32; expected.len()];
    let x = x.as_standard_layout();
    let x = x.as_slice().unwrap();
    // SAFETY: every array has the length passed with it.
    let status = unsafe {
        resca_forward(
            model,
            batch,
            x.as_ptr(),
            x.len(),
            t.as_ptr(),
            t.len(),
            y.as_ptr(),
            y.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(status, RescaStatus::Ok, "{}", last_error());
    let out = ndarray::ArrayD::from_shape_vec(expected.shape(), out).unwrap();
    let diff = max_abs_diff("resca_forward out", &out, &expected);
    eprintln!("resca_forward vs forward.safetensors `out`: max |diff| {diff:.2e}");
    // Budget 1e-5 (tests/vectors/tiny: float32 vs float64 of the same code differ by ~5e-7);
    // measured 7.15e-7 (AMD EPYC Zen 4, OpenBLAS).
    assert!(diff < 1e-5, "max |diff| {diff}");

    // Guided: forward_with_cfg at 1.5 against `cfg.out`.
    let cx = tensor(&file, "cfg.x");
    let ct: Vec<f32> = file.read_i64("cfg.t").unwrap().iter().map(|&v| v as f32).collect();
    let cy: Vec<i64> = file.read_i64("cfg.y").unwrap().iter().copied().collect();
    let expected = tensor(&file, "cfg.out");
    let mut out = vec![0f32; expected.len()];
    let cx = cx.as_standard_layout();
    let cx = cx.as_slice().unwrap();
    // SAFETY: as above.
    let status = unsafe {
        resca_forward_with_cfg(
            model,
            ct.len(),
            cx.as_ptr(),
            cx.len(),
            ct.as_ptr(),
            ct.len(),
            cy.as_ptr(),
            cy.len(),
            1.5,
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(status, RescaStatus::Ok, "{}", last_error());
    let out = ndarray::ArrayD::from_shape_vec(expected.shape(), out).unwrap();
    let diff = max_abs_diff("resca_forward_with_cfg out", &out, &expected);
    eprintln!("resca_forward_with_cfg vs `cfg.out`: max |diff| {diff:.2e}");
    // Budget 1e-4 as the reference's test; measured 9.5e-7.
    assert!(diff < 1e-4, "max |diff| {diff}");

    // Wrong sizes and labels are refused, `out` untouched.
    let mut out = vec![7f32; batch * 8 * 64];
    // SAFETY (both calls): the lengths passed are those of the arrays, or shorter.
    unsafe {
        let status = resca_forward(
            model,
            batch,
            x.as_ptr(),
            x.len() - 1,
            t.as_ptr(),
            t.len(),
            y.as_ptr(),
            y.len(),
            out.as_mut_ptr(),
            out.len(),
        );
        assert_fails(
            status,
            RescaStatus::InvalidArgument,
            "`x`: 1023 elements given, 1024 expected",
        );
        let bad_labels = [0i64, 1, 11, 2];
        let status = resca_forward(
            model,
            batch,
            x.as_ptr(),
            x.len(),
            t.as_ptr(),
            t.len(),
            bad_labels.as_ptr(),
            4,
            out.as_mut_ptr(),
            out.len(),
        );
        assert_fails(
            status,
            RescaStatus::InvalidArgument,
            "labels[2] = 11 is not a class label",
        );
    }
    assert!(out.iter().all(|&v| v == 7.0));
    // SAFETY: released once.
    unsafe { resca_model_free(model) };
}

/// Runs `resca_sample` from the vectors' DDIM noise and labels.
fn sample(model: *mut RescaModel, options: &RescaSampleOptions) -> ndarray::Array4<f32> {
    let file = vectors("ddim.safetensors");
    let noise = tensor(&file, "noise");
    let y: Vec<i64> = file.read_i64("y").unwrap().iter().copied().collect();
    let noise = noise.as_standard_layout();
    let noise = noise.as_slice().unwrap();
    let mut out = vec![0f32; noise.len()];
    // SAFETY: every array has the length passed with it.
    let status = unsafe {
        resca_sample(
            model,
            options,
            y.len(),
            noise.as_ptr(),
            noise.len(),
            y.as_ptr(),
            y.len(),
            out.as_mut_ptr(),
            out.len(),
        )
    };
    assert_eq!(status, RescaStatus::Ok, "{}", last_error());
    ndarray::Array4::from_shape_vec((y.len(), 4, 8, 8), out).unwrap()
}

#[test]
fn cpu_sampling_matches_the_official_guided_ddim_run_and_resca_stays_close() {
    let model = tiny_model();
    let mut options = RescaSampleOptions::default();
    // SAFETY: a writable options struct.
    unsafe { resca_sample_options_default(&mut options) };
    assert_eq!(options, RescaSampleOptions::default());
    let full = sample(model, &options);
    let file = vectors("ddim.safetensors");
    let expected = tensor(&file, "cfg.x").into_dimensionality::<Ix5>().unwrap();
    let expected = expected.slice(s![50, ..2, .., .., ..]).to_owned();
    let err = max_rel_to_max("full x", &full, &expected);
    eprintln!("resca_sample full, guided DDIM-50: max |diff| / max|x| {err:.2e}");
    // Budget 1e-5 of max|x| as the reference's trajectory test; measured 5.6e-7.
    assert!(err < 1e-5, "relative error {err}");

    // ResCa as the released code runs it (N = 4, K = 4, alpha 0.6, IE, medoids, official
    // residuals), with its own clusterings: near the official ResCa run, whose clusterings
    // differ through near ties (tests/tests/vectors_cached.rs).
    options.method = RESCA_METHOD_RESCA;
    options.interval = 4;
    options.clusters = 4;
    options.alpha = 0.6;
    options.residuals = RESCA_RESIDUALS_OFFICIAL;
    let resca = sample(model, &options);
    let official = vectors("resca_i4_o1_k4_p0.0_ie_center.safetensors");
    let official = tensor(&official, "x").into_dimensionality::<Ix5>().unwrap();
    let official = official.slice(s![50, ..2, .., .., ..]).to_owned();
    let err = max_rel_to_max("resca x", &resca, &official);
    let from_full = max_rel_to_max("resca x vs full", &resca, &full);
    eprintln!("resca_sample ResCa: {err:.2e} of max|x| from the official ResCa run, {from_full:.2e} from full");
    // Measured 1.7e-3 of max|x| from the official run (6.3e-3 from full compute).
    assert!(err < 1e-2, "ResCa relative error {err}");
    assert!(
        from_full > 1e-4,
        "the ResCa run equals full compute: were sparse steps skipped?"
    );

    // Settings out of range are refused.
    options.clusters = 17;
    let noise = vec![0f32; 2 * 256];
    let y = [0i64, 1];
    let mut out = vec![0f32; 2 * 256];
    // SAFETY: every array has the length passed with it.
    let status = unsafe {
        resca_sample(
            model,
            &options,
            2,
            noise.as_ptr(),
            512,
            y.as_ptr(),
            2,
            out.as_mut_ptr(),
            512,
        )
    };
    assert_fails(
        status,
        RescaStatus::InvalidArgument,
        "--clusters 17 must be between 1 and the token count N = 16",
    );
    options.clusters = 4;
    options.method = 9;
    // SAFETY: as above.
    let status = unsafe {
        resca_sample(
            model,
            &options,
            2,
            noise.as_ptr(),
            512,
            y.as_ptr(),
            2,
            out.as_mut_ptr(),
            512,
        )
    };
    assert_fails(
        status,
        RescaStatus::InvalidArgument,
        "options.method 9 is none of RESCA_METHOD_FULL",
    );
    // SAFETY: released once.
    unsafe { resca_model_free(model) };
}

#[test]
fn the_embedded_model_loads() {
    let mut model = null_mut();
    // SAFETY: a place for the handle.
    assert_eq!(unsafe { resca_model_load_default(&mut model) }, RescaStatus::Ok);
    let mut config = RescaModelConfig::default();
    // SAFETY: a live model.
    assert_eq!(unsafe { resca_model_config(model, &mut config) }, RescaStatus::Ok);
    assert_eq!(
        (config.input_size, config.in_channels, config.tokens, config.num_classes),
        (32, 1, 256, 10)
    );
    // SAFETY: released once.
    unsafe { resca_model_free(model) };
}

/// Argument builders, as a C host fills `RescaArg`.
struct Args {
    names: Vec<CString>,
    args: Vec<RescaArg>,
}

impl Args {
    fn new() -> Self {
        Self {
            names: Vec::new(),
            args: Vec::new(),
        }
    }

    fn push(mut self, name: &str, kind: u32) -> Self {
        self.names.push(CString::new(name).unwrap());
        self.args.push(RescaArg {
            name: self.names.last().unwrap().as_ptr(),
            kind,
            address: 0,
            len: 0,
            value_u32: 0,
            value_f32: 0.0,
            coefficients: [0.0; 8],
        });
        self
    }

    fn f32s(self, name: &str, data: &[f32]) -> Self {
        let mut s = self.push(name, RESCA_ARG_BUFFER_F32);
        let arg = s.args.last_mut().unwrap();
        arg.address = data.as_ptr() as u64;
        arg.len = data.len() as u64;
        s
    }

    fn u32(self, name: &str, value: u32) -> Self {
        let mut s = self.push(name, RESCA_ARG_U32);
        s.args.last_mut().unwrap().value_u32 = value;
        s
    }

    fn coefficients(self, name: &str, kind: u32, values: &[f32]) -> Self {
        let mut s = self.push(name, kind);
        s.args.last_mut().unwrap().coefficients[..values.len()].copy_from_slice(values);
        s
    }

    fn sim(&self, kernel: &str) -> RescaStatus {
        let kernel = CString::new(kernel).unwrap();
        // SAFETY: names NUL-terminated, buffers alive with their lengths.
        unsafe { resca_sim_launch(kernel.as_ptr(), self.args.as_ptr(), self.args.len()) }
    }

    fn dims(&self, kernel: &str) -> (RescaStatus, RescaLaunchDims) {
        let kernel = CString::new(kernel).unwrap();
        let mut dims = RescaLaunchDims::default();
        // SAFETY: as for `sim`.
        let status = unsafe { resca_launch_dims(kernel.as_ptr(), self.args.as_ptr(), self.args.len(), &mut dims) };
        (status, dims)
    }
}

fn gemm_args<'a>(a: &'a [f32], w: &'a [f32], bias: &'a [f32], out: &'a [f32], m: u32, n: u32, k: u32) -> Args {
    Args::new()
        .f32s("a", a)
        .f32s("w", w)
        .f32s("bias", bias)
        .f32s("out", out)
        .u32("m", m)
        .u32("n", n)
        .u32("k", k)
}

#[test]
fn a_gemm_runs_on_the_simulator_through_the_interface() {
    let (m, n, k) = (70usize, 3usize, 5usize);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.5).collect();
    let bias = [1.0f32, -1.0, 0.25];
    let out = vec![0f32; m * n];
    let args = gemm_args(&a, &w, &bias, &out, m as u32, n as u32, k as u32);
    assert_eq!(args.sim("gemm_bias"), RescaStatus::Ok, "{}", last_error());
    for (row, col) in [(0, 0), (33, 1), (69, 2)] {
        let dot: f32 = (0..k).map(|j| a[row * k + j] * w[col * k + j]).sum();
        assert_eq!(out[row * n + col], dot + bias[col], "out[{row}, {col}]");
    }
    // The geometry is gemm_dims(m, n), the pipeline's.
    let (status, dims) = args.dims("gemm_bias");
    assert_eq!(status, RescaStatus::Ok);
    assert_eq!(dims, RescaLaunchDims::from(gemm_dims(m as u32, n as u32)));
    assert_eq!((dims.grid, dims.block, dims.launched), ([1, 2, 1], [16, 16, 1], 1));
    // An empty launch launches nothing.
    let empty = gemm_args(&a, &w, &bias, &out, 0, n as u32, k as u32);
    assert_eq!(empty.dims("gemm_bias").1.launched, 0);
}

#[test]
fn wrong_launches_are_refused_with_the_parameter_named() {
    let (a, w, bias) = (vec![1f32; 12], vec![1f32; 6], vec![0f32; 2]);
    let out = vec![0f32; 8];
    let ok = || gemm_args(&a, &w, &bias, &out, 4, 2, 3);
    assert_eq!(ok().dims("gemm_bias").0, RescaStatus::Ok);
    let (status, _) = ok().dims("gemm_biass");
    assert_fails(status, RescaStatus::InvalidArgument, "no kernel `gemm_biass`");
    // Too few arguments, a wrong name, a wrong kind.
    let mut short = ok();
    short.args.pop();
    assert_fails(
        short.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "takes 7 parameters (a, w, bias, out, m, n, k), 6",
    );
    let mut renamed = ok();
    renamed.names[2] = CString::new("b").unwrap();
    renamed.args[2].name = renamed.names[2].as_ptr();
    assert_fails(
        renamed.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "argument 2 is named `b`, the parameter is `bias`",
    );
    let mut wrong_kind = ok();
    wrong_kind.args[4].kind = RESCA_ARG_F32;
    assert_fails(
        wrong_kind.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "argument 4 `m` is RESCA_ARG_F32, the parameter is u32 (RESCA_ARG_U32)",
    );
    let mut wrong_type = ok();
    wrong_type.args[0].kind = RESCA_ARG_BUFFER_U32;
    assert_fails(
        wrong_type.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "`a` is RESCA_ARG_BUFFER_U32",
    );
    // A buffer too short for the sizes, a null buffer.
    let short_out = gemm_args(&a, &w, &bias, &out[..7], 4, 2, 3);
    assert_fails(
        short_out.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "`out` holds 7 elements, m n = 8 needed",
    );
    assert_fails(
        short_out.sim("gemm_bias"),
        RescaStatus::InvalidArgument,
        "`out` holds 7 elements",
    );
    let mut null_a = ok();
    null_a.args[0].address = 0;
    assert_fails(
        null_a.dims("gemm_bias").0,
        RescaStatus::InvalidArgument,
        "`a`: a null address with 12 elements",
    );
    // A value the launch function computes otherwise: attention's scale.
    let qkv = vec![0.5f32; 2 * 3 * 4 * 16];
    let heads = vec![0f32; 2 * 4 * 16];
    let attention = || {
        Args::new()
            .f32s("qkv", &qkv)
            .f32s("out", &heads)
            .u32("tokens", 4)
            .u32("heads", 1)
            .u32("head_dim", 16)
            .push("scale", RESCA_ARG_F32)
    };
    let mut args = attention();
    args.args[5].value_f32 = 0.25;
    let (status, dims) = args.dims("flash_attention");
    assert_eq!(status, RescaStatus::Ok, "{}", last_error());
    assert_eq!(dims.grid, [1, 1, 2], "batch 2 from qkv's length");
    args.args[5].value_f32 = 0.3;
    assert_fails(
        args.dims("flash_attention").0,
        RescaStatus::InvalidArgument,
        "parameter `scale` is 3e-1, the launch for these sizes passes 2.5e-1",
    );
    // A length that is no whole batch.
    let args = Args::new()
        .f32s("qkv", &qkv[1..])
        .f32s("out", &heads)
        .u32("tokens", 4)
        .u32("heads", 1)
        .u32("head_dim", 16)
        .push("scale", RESCA_ARG_F32);
    assert_fails(
        args.dims("flash_attention").0,
        RescaStatus::InvalidArgument,
        "not a whole number of 3 tokens heads head_dim = 192",
    );
}

#[test]
fn an_in_place_ddim_step_aliases_on_the_simulator_as_on_a_gpu() {
    // x (1, 4, 2x2) updated in place from a model output of 8 channels.
    let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    let model_out: Vec<f32> = (0..32).map(|i| 1.0 - i as f32 * 0.05).collect();
    let mut coef = [0f32; 4];
    // SAFETY: 4 writable floats.
    assert_eq!(
        unsafe { resca_ddim_coefficients(50, 10, coef.as_mut_ptr()) },
        RescaStatus::Ok
    );
    let schedule = resca_reference::ddim::DdimSchedule::new(50).unwrap();
    let c = resca_host::pipeline::ddim_coefficients(&schedule, 10);
    assert_eq!(coef, [c.recip, c.recip_m1, c.sqrt_prev, c.sqrt_one_minus_prev]);
    let state = x.clone();
    let args = Args::new()
        .f32s("x", &state)
        .f32s("model_out", &model_out)
        .f32s("out", &state)
        .u32("total", 16)
        .u32("channels", 4)
        .u32("out_channels", 8)
        .u32("pixels", 4)
        .coefficients("coef", RESCA_ARG_DDIM, &coef);
    assert_eq!(args.sim("ddim_step"), RescaStatus::Ok, "{}", last_error());
    let x4 = ndarray::Array4::from_shape_vec((1, 4, 2, 2), x).unwrap();
    let eps = ndarray::Array4::from_shape_vec((1, 8, 2, 2), model_out).unwrap();
    let expected = schedule.step(10, x4.view(), eps.slice(s![.., ..4, .., ..]));
    let diff = max_abs_diff(
        "ddim_step x",
        &ndarray::ArrayView4::from_shape((1, 4, 2, 2), &state).unwrap(),
        &expected,
    );
    // The kernel's float32 operations in the reference's order: measured 0.
    assert!(diff <= 1e-6, "max |diff| {diff}");
}
