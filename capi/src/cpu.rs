//! The CPU reference for hosts without a GPU: a DiT loaded from a safetensors file (or the
//! embedded default model), its forward pass (plain and guided) and sampling with full compute or
//! a caching method (ResCa with its settings, and TaylorSeer, FORA, ClusCa), on host memory. The
//! same code as `resca sample --backend reference` and `resca forward`.

use std::ffi::c_char;
use std::path::Path;

use ndarray::{ArrayView4, Axis};
use resca_host::job::SampleJob;
use resca_host::pipeline::launch::Precision;
use resca_host::run::{Backend, run_method};
use resca_reference::cache::pdds::Solver;
use resca_reference::cache::tetc::ProxyChoice;
use resca_reference::cache::{ClusteringSource, MethodConfig, MethodKind, ResidualScaling};
use resca_reference::ddim::DdimSchedule;
use resca_reference::flow::FlowSchedule;
use resca_reference::{Dit, Sampler};

use crate::error::{Error, RescaStatus, Result, entry};
use crate::kernels::c_str;

/// A DiT loaded on the host (opaque).
pub struct RescaModel {
    dit: Dit,
}

/// A model's shapes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RescaModelConfig {
    /// Latent side S (images are S x S).
    pub input_size: u32,
    pub patch_size: u32,
    /// C: channels of the input `x` and of the noise.
    pub in_channels: u32,
    /// Channels of the model output: 2 C with a learned sigma, else C.
    pub out_channels: u32,
    pub hidden_size: u32,
    pub depth: u32,
    pub num_heads: u32,
    /// Classes; the label `num_classes` is the null label of guidance.
    pub num_classes: u32,
    /// Tokens per image: (S / patch)².
    pub tokens: u32,
    /// 1 when the output holds a learned sigma.
    pub learn_sigma: u32,
}

/// `RescaSampleOptions.sampler`: DDIM (eta 0), DiT's sampler.
pub const RESCA_SAMPLER_DDIM: u32 = 0;
/// `RescaSampleOptions.sampler`: flow matching, Euler steps.
pub const RESCA_SAMPLER_FLOW: u32 = 1;

/// `RescaSampleOptions.method`: every block of every step.
pub const RESCA_METHOD_FULL: u32 = 0;
/// `RescaSampleOptions.method`: reuse the last full step's branch outputs.
pub const RESCA_METHOD_FORA: u32 = 1;
/// `RescaSampleOptions.method`: Taylor prediction of every branch (order 0-4).
pub const RESCA_METHOD_TAYLORSEER: u32 = 2;
/// `RescaSampleOptions.method`: K-means clusters, one member per cluster recomputed.
pub const RESCA_METHOD_CLUSCA: u32 = 3;
/// `RescaSampleOptions.method`: residual caching: TETC clusters, K proxies, PDDS.
pub const RESCA_METHOD_RESCA: u32 = 4;

/// `RescaSampleOptions.solver`: implicit Euler (ResCa-IE).
pub const RESCA_SOLVER_IE: u32 = 0;
/// `RescaSampleOptions.solver`: implicit Taylor of order `order` (ResCa-IT, 1-4).
pub const RESCA_SOLVER_IT: u32 = 1;
/// `RescaSampleOptions.solver`: BDF2 (ResCa-IB).
pub const RESCA_SOLVER_BDF2: u32 = 2;

/// `RescaSampleOptions.proxy`: the cluster's medoid.
pub const RESCA_PROXY_MEDOID: u32 = 0;
/// `RescaSampleOptions.proxy`: a member drawn around the medoid, weighted by similarity.
pub const RESCA_PROXY_CENTER_RANDOM: u32 = 1;

/// `RescaSampleOptions.residuals`: one-step residuals, as the paper's equations.
pub const RESCA_RESIDUALS_PAPER: u32 = 0;
/// `RescaSampleOptions.residuals`: the released code's scaling by the full-step gap.
pub const RESCA_RESIDUALS_OFFICIAL: u32 = 1;

/// `RescaSampleOptions.clustering`: TETC, the EMA of the similarity over full steps.
pub const RESCA_CLUSTERING_TRAJECTORY: u32 = 0;
/// `RescaSampleOptions.clustering`: the current similarity only (ablation).
pub const RESCA_CLUSTERING_FEATURE: u32 = 1;

/// How `resca_sample` samples: start from `resca_sample_options_default` and change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RescaSampleOptions {
    /// `RESCA_SAMPLER_*`.
    pub sampler: u32,
    pub steps: u32,
    /// Time shift of the flow sampler's grid (1: uniform).
    pub flow_shift: f32,
    /// Classifier-free guidance, used when above 1 as DiT's sample.py does: the batch `[x; x]`
    /// with labels `[y; null]`, every row integrated, the conditional half returned.
    pub cfg_scale: f32,
    /// `RESCA_METHOD_*`.
    pub method: u32,
    /// N: a full step every `interval` steps after the first ones.
    pub interval: u32,
    /// Full steps at the start (DiT 2; FLUX-style flow 3).
    pub first_enhance: u32,
    /// Taylor order (TaylorSeer, ClusCa: 0-4); ResCa's order M with `RESCA_SOLVER_IT` (1-4).
    pub order: u32,
    /// K clusters (ClusCa, ResCa).
    pub clusters: u32,
    /// TETC's EMA weight of the current similarity, in [0, 1].
    pub alpha: f32,
    /// `RESCA_SOLVER_*` (ResCa).
    pub solver: u32,
    /// `RESCA_PROXY_*` (ResCa).
    pub proxy: u32,
    /// `RESCA_RESIDUALS_*` (ResCa).
    pub residuals: u32,
    /// `RESCA_CLUSTERING_*` (ResCa).
    pub clustering: u32,
    /// ClusCa's propagation ratio gamma, in [0, 1].
    pub propagation: f32,
    /// K-medoids iterations at most (ResCa).
    pub kmedoids_iters: u32,
    /// Seed of the method's random choices (center-random proxies, ClusCa's members).
    pub seed: u64,
}

impl Default for RescaSampleOptions {
    /// `resca sample`'s defaults: DDIM, 50 steps, guidance 1.5, full compute; the caching
    /// methods' settings as the CLI's (N = 5, K = 16, alpha 0.5, IE, medoid proxies, the paper's
    /// residuals, trajectory clustering).
    fn default() -> Self {
        let method = MethodConfig::full();
        Self {
            sampler: RESCA_SAMPLER_DDIM,
            steps: 50,
            flow_shift: 1.0,
            cfg_scale: 1.5,
            method: RESCA_METHOD_FULL,
            interval: 5,
            first_enhance: 2,
            order: 1,
            clusters: method.clusters as u32,
            alpha: method.alpha,
            solver: RESCA_SOLVER_IE,
            proxy: RESCA_PROXY_MEDOID,
            residuals: RESCA_RESIDUALS_PAPER,
            clustering: RESCA_CLUSTERING_TRAJECTORY,
            propagation: method.propagation,
            kmedoids_iters: method.kmedoids_iters as u32,
            seed: method.seed,
        }
    }
}

impl RescaSampleOptions {
    fn sampler(&self) -> Result<Sampler> {
        let steps = self.steps as usize;
        let sampler = match self.sampler {
            RESCA_SAMPLER_DDIM => DdimSchedule::new(steps).map(Sampler::Ddim),
            RESCA_SAMPLER_FLOW => FlowSchedule::new(steps, self.flow_shift as f64).map(Sampler::Flow),
            other => return Err(Error::invalid(format!("options.sampler {other} is no RESCA_SAMPLER_*"))),
        };
        sampler.map_err(|e| Error::invalid(format!("options: {e}")))
    }

    /// The method's settings, as the CLI's `--method` flags build them.
    fn method(&self) -> Result<MethodConfig> {
        let choose = |value: u32, field: &str, choices: &[&str]| -> Result<usize> {
            let index = value as usize;
            if index < choices.len() {
                Ok(index)
            } else {
                Err(Error::invalid(format!(
                    "options.{field} {value} is none of {}",
                    choices.join(", ")
                )))
            }
        };
        let kinds = [
            MethodKind::Full,
            MethodKind::Fora,
            MethodKind::TaylorSeer,
            MethodKind::ClusCa,
            MethodKind::ResCa,
        ];
        let kind_names = ["RESCA_METHOD_FULL", "_FORA", "_TAYLORSEER", "_CLUSCA", "_RESCA"];
        let kind = kinds[choose(self.method, "method", &kind_names)?];
        let order = self.order as usize;
        let solver = match choose(self.solver, "solver", &["RESCA_SOLVER_IE", "_IT", "_BDF2"])? {
            0 => Solver::ImplicitEuler,
            1 => Solver::ImplicitTaylor(order),
            _ => Solver::Bdf2,
        };
        let proxy = match choose(self.proxy, "proxy", &["RESCA_PROXY_MEDOID", "_CENTER_RANDOM"])? {
            0 => ProxyChoice::Medoid,
            _ => ProxyChoice::CenterRandom,
        };
        let residuals = match choose(self.residuals, "residuals", &["RESCA_RESIDUALS_PAPER", "_OFFICIAL"])? {
            0 => ResidualScaling::Paper,
            _ => ResidualScaling::Official,
        };
        let clustering = match choose(
            self.clustering,
            "clustering",
            &["RESCA_CLUSTERING_TRAJECTORY", "_FEATURE"],
        )? {
            0 => ClusteringSource::Trajectory,
            _ => ClusteringSource::Feature,
        };
        if kind == MethodKind::ResCa && solver != Solver::ImplicitTaylor(order) && order != 1 {
            return Err(Error::invalid(format!(
                "options.order {order} needs RESCA_SOLVER_IT: the other ResCa solvers are first order"
            )));
        }
        if self.kmedoids_iters == 0 {
            return Err(Error::invalid("options.kmedoids_iters must be at least 1"));
        }
        Ok(MethodConfig {
            kind,
            interval: if kind == MethodKind::Full {
                1
            } else {
                self.interval as usize
            },
            first_enhance: self.first_enhance as usize,
            order: match kind {
                MethodKind::Full | MethodKind::Fora => 0,
                _ => order,
            },
            clusters: self.clusters as usize,
            alpha: self.alpha,
            solver,
            proxy,
            residuals,
            clustering,
            propagation: self.propagation,
            kmedoids_iters: self.kmedoids_iters as usize,
            seed: self.seed,
        })
    }
}

/// A host array argument: `len` elements at `data`, which must be `expected` (null refused
/// unless both are 0).
///
/// # Safety
/// `data` is null or points to `len` readable elements.
unsafe fn host_slice<'a, T>(data: *const T, len: usize, expected: usize, what: &str) -> Result<&'a [T]> {
    if len != expected {
        return Err(Error::invalid(format!(
            "{what}: {len} elements given, {expected} expected"
        )));
    }
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Error::invalid(format!("{what} is a null pointer")));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// As [`host_slice`], writable.
///
/// # Safety
/// `data` is null or points to `len` writable elements.
unsafe fn host_slice_mut<'a, T>(data: *mut T, len: usize, expected: usize, what: &str) -> Result<&'a mut [T]> {
    if len != expected {
        return Err(Error::invalid(format!(
            "{what}: {len} elements given, {expected} expected"
        )));
    }
    if len == 0 {
        return Ok(&mut []);
    }
    if data.is_null() {
        return Err(Error::invalid(format!("{what} is a null pointer")));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(data, len) })
}

fn model_error(e: resca_reference::Error) -> Error {
    Error::invalid(e.to_string())
}

/// Class labels as the model takes them: each in 0..=num_classes (the last is the null label).
fn labels_of(labels: &[i64], num_classes: usize) -> Result<Vec<usize>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            usize::try_from(y).ok().filter(|&y| y <= num_classes).ok_or_else(|| {
                Error::invalid(format!(
                    "labels[{i}] = {y} is not a class label (0..={num_classes}, {num_classes} being the null label)"
                ))
            })
        })
        .collect()
}

/// The shape of one image of `model`: (C, S, S) element count, with `channels`.
fn image_len(model: &Dit, channels: usize) -> usize {
    channels * model.config.input_size * model.config.input_size
}

fn boxed(dit: Dit, out: *mut *mut RescaModel) {
    // SAFETY: checked non-null by the callers.
    unsafe { out.write(Box::into_raw(Box::new(RescaModel { dit }))) };
}

/// Loads a DiT from a safetensors file (the official `state_dict` key names; the config from
/// the file's metadata, else inferred from the shapes).
///
/// # Safety
/// `path` is NUL-terminated; `out` points to writable memory for one pointer (null refused).
///
/// Ownership: `*out` receives a model the host owns: release it with `resca_model_free`. On
/// failure `*out` is set to null. The file is read during the call only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_model_load(path: *const c_char, out: *mut *mut RescaModel) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_model_load: `out` is a null pointer"));
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let path = unsafe { c_str(path, "resca_model_load: `path`") }?;
        let dit = Dit::load(Path::new(path), None, None)
            .map_err(|e| Error::new(RescaStatus::Io, format!("loading {path}: {e}")))?;
        boxed(dit, out);
        Ok(())
    })
}

/// Loads the model built into the library: a class-conditional DiT trained on MNIST digits
/// (32x32x1 latents, patch 2, 256 tokens, 10 classes), the `resca` CLI's default; it needs
/// guidance 4.0 for legible digits.
///
/// # Safety
/// `out` points to writable memory for one pointer (null refused).
///
/// Ownership: as `resca_model_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_model_load_default(out: *mut *mut RescaModel) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_model_load_default: `out` is a null pointer"));
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let dit = resca_host::embedded::default_model().map_err(|e| Error::new(RescaStatus::Io, format!("{e:#}")))?;
        boxed(dit, out);
        Ok(())
    })
}

/// Releases a model (null: nothing to do).
///
/// # Safety
/// `model` is null or a model of `resca_model_load*`, not yet released and not in use by
/// another thread; it is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_model_free(model: *mut RescaModel) {
    if !model.is_null() {
        // SAFETY: the caller's contract; released once. A panic in a drop cannot cross the
        // boundary: `catch_unwind` would hand it back as a status, which this void call lacks.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// The shapes of a model.
///
/// # Safety
/// `model` is a model of `resca_model_load*`; `out` points to writable memory for one
/// `RescaModelConfig`. Null pointers are refused.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_model_config(model: *const RescaModel, out: *mut RescaModelConfig) -> RescaStatus {
    entry(|| {
        // SAFETY: the caller's contract.
        let Some(model) = (unsafe { model.as_ref() }) else {
            return Err(Error::invalid("resca_model_config: `model` is a null pointer"));
        };
        if out.is_null() {
            return Err(Error::invalid("resca_model_config: `out` is a null pointer"));
        }
        let c = &model.dit.config;
        let config = RescaModelConfig {
            input_size: c.input_size as u32,
            patch_size: c.patch_size as u32,
            in_channels: c.in_channels as u32,
            out_channels: c.out_channels() as u32,
            hidden_size: c.hidden_size as u32,
            depth: c.depth as u32,
            num_heads: c.num_heads as u32,
            num_classes: c.num_classes as u32,
            tokens: c.tokens() as u32,
            learn_sigma: u32::from(c.learn_sigma),
        };
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(config) };
        Ok(())
    })
}

/// The checked inputs of a forward pass.
struct ForwardInputs<'a> {
    model: &'a Dit,
    x: ArrayView4<'a, f32>,
    timesteps: &'a [f32],
    labels: Vec<usize>,
    out: &'a mut [f32],
}

/// # Safety
/// As `resca_forward`.
#[allow(clippy::too_many_arguments)] // the C function's arguments
unsafe fn forward_inputs<'a>(
    what: &str,
    model: *const RescaModel,
    batch: usize,
    x: *const f32,
    x_len: usize,
    timesteps: *const f32,
    timesteps_len: usize,
    labels: *const i64,
    labels_len: usize,
    out: *mut f32,
    out_len: usize,
) -> Result<ForwardInputs<'a>> {
    // SAFETY: the caller's contract.
    let Some(model) = (unsafe { model.as_ref() }) else {
        return Err(Error::invalid(format!("{what}: `model` is a null pointer")));
    };
    let model = &model.dit;
    if batch == 0 {
        return Err(Error::invalid(format!("{what}: `batch` is 0")));
    }
    let c = &model.config;
    let shape = (batch, c.in_channels, c.input_size, c.input_size);
    // SAFETY (these four): the caller's contract.
    let x = unsafe {
        host_slice(
            x,
            x_len,
            batch * image_len(model, c.in_channels),
            &format!("{what}: `x`"),
        )
    }?;
    let timesteps = unsafe { host_slice(timesteps, timesteps_len, batch, &format!("{what}: `timesteps`")) }?;
    let labels = unsafe { host_slice(labels, labels_len, batch, &format!("{what}: `labels`")) }?;
    let expected = batch * image_len(model, c.out_channels());
    let out = unsafe { host_slice_mut(out, out_len, expected, &format!("{what}: `out`")) }?;
    Ok(ForwardInputs {
        model,
        x: ArrayView4::from_shape(shape, x).expect("length checked"),
        timesteps,
        labels: labels_of(labels, c.num_classes)?,
        out,
    })
}

/// `model(x, t, y)` on the CPU: `x` (batch, C, S, S), `timesteps` (batch) the model's time
/// inputs (DDIM: 0..999), `labels` (batch) class labels (`num_classes` is the null label); `out`
/// (batch, out_channels, S, S). All arrays are C-contiguous float32 / int64 host memory, lengths
/// in elements.
///
/// # Safety
/// `model` is a model of `resca_model_load*`; each pointer points to its length of elements
/// (`out` writable). Null pointers and lengths that do not match `batch` are refused.
///
/// Ownership: everything stays the caller's; the library keeps no pointer after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_forward(
    model: *const RescaModel,
    batch: usize,
    x: *const f32,
    x_len: usize,
    timesteps: *const f32,
    timesteps_len: usize,
    labels: *const i64,
    labels_len: usize,
    out: *mut f32,
    out_len: usize,
) -> RescaStatus {
    entry(|| {
        let what = "resca_forward";
        // SAFETY: the caller's contract.
        let inputs = unsafe {
            forward_inputs(
                what,
                model,
                batch,
                x,
                x_len,
                timesteps,
                timesteps_len,
                labels,
                labels_len,
                out,
                out_len,
            )
        }?;
        let result = inputs
            .model
            .forward(inputs.x, inputs.timesteps, &inputs.labels)
            .map_err(model_error)?;
        inputs
            .out
            .copy_from_slice(result.as_slice().expect("a standard layout"));
        Ok(())
    })
}

/// DiT's `forward_with_cfg` on the CPU, as upstream: the batch `[x; x]` from the first half of
/// `x`, `labels` as given (`[y; null]`), guidance at `cfg_scale` on the first three channels,
/// every row of `out` written. `batch` must be even; the arrays as for `resca_forward`.
///
/// # Safety
/// As `resca_forward`.
///
/// Ownership: as `resca_forward`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_forward_with_cfg(
    model: *const RescaModel,
    batch: usize,
    x: *const f32,
    x_len: usize,
    timesteps: *const f32,
    timesteps_len: usize,
    labels: *const i64,
    labels_len: usize,
    cfg_scale: f32,
    out: *mut f32,
    out_len: usize,
) -> RescaStatus {
    entry(|| {
        let what = "resca_forward_with_cfg";
        // SAFETY: the caller's contract.
        let inputs = unsafe {
            forward_inputs(
                what,
                model,
                batch,
                x,
                x_len,
                timesteps,
                timesteps_len,
                labels,
                labels_len,
                out,
                out_len,
            )
        }?;
        if !cfg_scale.is_finite() {
            return Err(Error::invalid(format!("{what}: `cfg_scale` {cfg_scale} is not finite")));
        }
        let result = inputs
            .model
            .forward_with_cfg(inputs.x, inputs.timesteps, &inputs.labels, cfg_scale)
            .map_err(model_error)?;
        inputs
            .out
            .copy_from_slice(result.as_slice().expect("a standard layout"));
        Ok(())
    })
}

/// The default sampling options (see `RescaSampleOptions`).
///
/// # Safety
/// `out` is null (nothing is written) or points to writable memory for one `RescaSampleOptions`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_sample_options_default(out: *mut RescaSampleOptions) {
    if !out.is_null() {
        // SAFETY: the caller's contract.
        unsafe { out.write(RescaSampleOptions::default()) };
    }
}

/// Samples `batch` images on the CPU from `noise` (batch, C, S, S) with `labels` (batch) as
/// `options` say, and writes the final samples to `out` (batch, C, S, S); the arrays as for
/// `resca_forward`. The same run as `resca sample --backend reference` with those settings.
///
/// # Safety
/// `model` is a model of `resca_model_load*`; `options` points to one `RescaSampleOptions`; each
/// array points to its length of elements (`out` writable). Null pointers and lengths that do
/// not match `batch` are refused.
///
/// Ownership: everything stays the caller's; the library keeps no pointer after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_sample(
    model: *const RescaModel,
    options: *const RescaSampleOptions,
    batch: usize,
    noise: *const f32,
    noise_len: usize,
    labels: *const i64,
    labels_len: usize,
    out: *mut f32,
    out_len: usize,
) -> RescaStatus {
    entry(|| {
        let what = "resca_sample";
        // SAFETY: the caller's contract.
        let Some(model) = (unsafe { model.as_ref() }) else {
            return Err(Error::invalid(format!("{what}: `model` is a null pointer")));
        };
        // SAFETY: the caller's contract.
        let Some(options) = (unsafe { options.as_ref() }) else {
            return Err(Error::invalid(format!("{what}: `options` is a null pointer")));
        };
        let model = &model.dit;
        if batch == 0 {
            return Err(Error::invalid(format!("{what}: `batch` is 0")));
        }
        let c = &model.config;
        let len = batch * image_len(model, c.in_channels);
        // SAFETY (these three): the caller's contract.
        let noise = unsafe { host_slice(noise, noise_len, len, &format!("{what}: `noise`")) }?;
        let labels = unsafe { host_slice(labels, labels_len, batch, &format!("{what}: `labels`")) }?;
        let out = unsafe { host_slice_mut(out, out_len, len, &format!("{what}: `out`")) }?;
        if !options.cfg_scale.is_finite() || options.cfg_scale < 0.0 {
            return Err(Error::invalid(format!(
                "{what}: options.cfg_scale {} must be a finite number >= 0",
                options.cfg_scale
            )));
        }
        let method = options.method()?;
        method.validate(c.tokens()).map_err(model_error)?;
        let shape = (batch, c.in_channels, c.input_size, c.input_size);
        let job = SampleJob {
            noise: ArrayView4::from_shape(shape, noise).expect("length checked").to_owned(),
            labels: labels_of(labels, c.num_classes)?,
            cfg_scale: options.cfg_scale,
            sampler: options.sampler()?,
            sampler_name: "c-interface".into(),
        };
        let result = run_method(
            model,
            &job,
            &method,
            Backend::Reference,
            Precision::Exact,
            None,
            &mut |_, _| {},
        )
        .map_err(|e| Error::invalid(format!("{what}: {e:#}")))?;
        let last = result.x.index_axis(Axis(0), result.x.dim().0 - 1);
        out.copy_from_slice(last.as_standard_layout().as_slice().expect("a standard layout"));
        Ok(())
    })
}
