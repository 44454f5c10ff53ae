//! [`SimDevice`]: the pipeline's [`Device`] on the simulator. Buffers are host vectors; a launch
//! checks its parameters against the entry point's signature (kind, element type and bounds of
//! every slice), then runs the kernel body with [`launch`]. Slices passed to one launch may alias
//! (as device pointers do), which is why parameters are built from raw pointers.

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{
    Global, GlobalMut, attention, clusca, clusters, ddim, embed, final_layer, flow, gather, gemm, guidance, norm, pdds,
    residual, taylor, tetc,
};

use super::{SimError, launch};
use crate::pipeline::device::{Arg, Buffer, DType, Device, DeviceError, Element, Kernel, KernelCall, RawSlice, Slice};

/// A kernel that failed a simulator check, as the pipeline's device error (the [`SimError`]
/// itself is inside: `DeviceError::Kernel(e)` with `e.downcast_ref::<SimError>()`).
impl From<SimError> for DeviceError {
    fn from(error: SimError) -> Self {
        DeviceError::Kernel(Box::new(error))
    }
}

enum Storage {
    F32(Vec<f32>),
    U32(Vec<u32>),
    F64(Vec<f64>),
}

impl Storage {
    fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::U32(_) => DType::U32,
            Storage::F64(_) => DType::F64,
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::U32(v) => v.len(),
            Storage::F64(v) => v.len(),
        }
    }

    /// The first element, as a raw pointer that may coexist with others into the same vector.
    fn base(&mut self) -> *mut u8 {
        match self {
            Storage::F32(v) => v.as_mut_ptr().cast(),
            Storage::U32(v) => v.as_mut_ptr().cast(),
            Storage::F64(v) => v.as_mut_ptr().cast(),
        }
    }
}

fn storage_for<T: Element>(len: usize) -> Storage {
    match T::DTYPE {
        DType::F32 => Storage::F32(vec![0.0; len]),
        DType::U32 => Storage::U32(vec![0; len]),
        DType::F64 => Storage::F64(vec![0.0; len]),
    }
}

/// The simulated GPU: device memory as host vectors, kernels run by the simulator.
#[derive(Default)]
pub struct SimDevice {
    buffers: Vec<Storage>,
    launches: usize,
}

impl SimDevice {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Elements held by live buffers (freed ones hold none).
    pub fn resident_elements(&self) -> usize {
        self.buffers.iter().map(Storage::len).sum()
    }

    /// Checks `slice` against its buffer and returns a pointer to its first element.
    fn pointer(&mut self, slice: RawSlice, what: &str) -> Result<*mut u8, DeviceError> {
        let storage = self
            .buffers
            .get_mut(slice.id)
            .ok_or_else(|| DeviceError::Invalid(format!("{what}: no buffer {}", slice.id)))?;
        if storage.dtype() != slice.dtype {
            return Err(DeviceError::Invalid(format!(
                "{what}: buffer {} holds {:?}, the slice is {:?}",
                slice.id,
                storage.dtype(),
                slice.dtype
            )));
        }
        let end = slice.offset.checked_add(slice.len);
        if end.is_none_or(|end| end > storage.len()) {
            return Err(DeviceError::Invalid(format!(
                "{what}: elements {}..{} of buffer {} of {} elements",
                slice.offset,
                slice.offset.saturating_add(slice.len),
                slice.id,
                storage.len()
            )));
        }
        let size = match slice.dtype {
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
        };
        // SAFETY: the offset is within the vector (checked above).
        Ok(unsafe { storage.base().add(slice.offset * size) })
    }

    fn slice_mut<T: Element>(&mut self, slice: Slice<T>, what: &str) -> Result<&mut [T], DeviceError> {
        let ptr = self.pointer(slice.raw(), what)?;
        // SAFETY: in bounds and of element type T (checked by `pointer`); the borrow of `self`
        // keeps the vector alive and unaliased for the slice's lifetime.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<T>(), slice.len) })
    }
}

impl Device for SimDevice {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
        self.buffers.push(storage_for::<T>(len));
        Ok(Buffer::from_id(self.buffers.len() - 1, len))
    }

    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError> {
        if data.len() != dst.len {
            return Err(DeviceError::Invalid(format!(
                "upload of {} elements into a slice of {}",
                data.len(),
                dst.len
            )));
        }
        self.slice_mut(dst, "upload")?.copy_from_slice(data);
        Ok(())
    }

    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError> {
        if out.len() != src.len {
            return Err(DeviceError::Invalid(format!(
                "download of a slice of {} elements into {}",
                src.len,
                out.len()
            )));
        }
        out.copy_from_slice(self.slice_mut(src, "download")?);
        Ok(())
    }

    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError> {
        if src.len != dst.len {
            return Err(DeviceError::Invalid(format!(
                "copy of {} elements into a slice of {}",
                src.len, dst.len
            )));
        }
        let data = self.slice_mut(src, "copy")?.to_vec();
        self.slice_mut(dst, "copy")?.copy_from_slice(&data);
        Ok(())
    }

    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        let storage = self
            .buffers
            .get_mut(id)
            .ok_or_else(|| DeviceError::Invalid(format!("free: no buffer {id}")))?;
        // An empty vector: any later slice of it is out of bounds.
        *storage = match storage.dtype() {
            DType::F32 => Storage::F32(Vec::new()),
            DType::U32 => Storage::U32(Vec::new()),
            DType::F64 => Storage::F64(Vec::new()),
        };
        Ok(())
    }

    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
        self.launches += 1;
        let mut p = Params { device: self, call };
        p.dispatch()
    }

    fn synchronize(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// The parameters of one launch, read in entry-point order.
struct Params<'d> {
    device: &'d mut SimDevice,
    call: &'d KernelCall,
}

impl Params<'_> {
    fn arg(&self, i: usize) -> Result<Arg, DeviceError> {
        self.call.args.get(i).copied().ok_or_else(|| self.error(i, "missing"))
    }

    fn error(&self, i: usize, what: &str) -> DeviceError {
        DeviceError::Invalid(format!(
            "kernel `{}`: parameter {i}: {what} (the call has {} parameters)",
            self.call.kernel.name(),
            self.call.args.len()
        ))
    }

    fn slice<T: Element>(&mut self, i: usize, write: bool) -> Result<(*mut T, usize), DeviceError> {
        let slice = match (self.arg(i)?, write) {
            (Arg::Read(s), false) | (Arg::Write(s), true) => s,
            (other, _) => {
                let want = if write { "a writable slice" } else { "a read-only slice" };
                return Err(self.error(i, &format!("{other:?} where the kernel takes {want}")));
            }
        };
        if slice.dtype != T::DTYPE {
            return Err(self.error(
                i,
                &format!("{:?} slice where the kernel takes {:?}", slice.dtype, T::DTYPE),
            ));
        }
        let what = format!("kernel `{}` parameter {i}", self.call.kernel.name());
        Ok((self.device.pointer(slice, &what)?.cast::<T>(), slice.len))
    }

    fn read<T: Element>(&mut self, i: usize) -> Result<Global<'static, T>, DeviceError> {
        let (ptr, len) = self.slice::<T>(i, false)?;
        // SAFETY: a checked slice of a device vector, which outlives the launch (the simulator
        // runs it to completion before `dispatch` returns).
        Ok(unsafe { Global::from_raw(ptr, len) })
    }

    fn write<T: Element>(&mut self, i: usize) -> Result<GlobalMut<'static, T>, DeviceError> {
        let (ptr, len) = self.slice::<T>(i, true)?;
        // SAFETY: as for `read`.
        Ok(unsafe { GlobalMut::from_raw(ptr, len) })
    }

    fn u32(&self, i: usize) -> Result<u32, DeviceError> {
        match self.arg(i)? {
            Arg::U32(v) => Ok(v),
            other => Err(self.error(i, &format!("{other:?} where the kernel takes a u32"))),
        }
    }

    fn f32(&self, i: usize) -> Result<f32, DeviceError> {
        match self.arg(i)? {
            Arg::F32(v) => Ok(v),
            other => Err(self.error(i, &format!("{other:?} where the kernel takes an f32"))),
        }
    }

    fn ddim(&self, i: usize) -> Result<DdimCoefficients, DeviceError> {
        match self.arg(i)? {
            Arg::Ddim(v) => Ok(v),
            other => Err(self.error(i, &format!("{other:?} where the kernel takes DDIM coefficients"))),
        }
    }

    fn taylor(&self, i: usize) -> Result<TaylorCoefficients, DeviceError> {
        match self.arg(i)? {
            Arg::Taylor(v) => Ok(v),
            other => Err(self.error(i, &format!("{other:?} where the kernel takes Taylor coefficients"))),
        }
    }

    /// Checks the parameter count (after the typed reads checked every parameter's kind).
    fn count(&self, expected: usize) -> Result<(), DeviceError> {
        if self.call.args.len() != expected {
            return Err(self.error(expected, &format!("the kernel takes {expected} parameters")));
        }
        Ok(())
    }

    fn dispatch(&mut self) -> Result<(), DeviceError> {
        let name = self.call.kernel.name();
        let dims = self.call.dims;
        let result = match self.call.kernel {
            Kernel::TimestepFeatures => {
                let (t, out) = (self.read(0)?, self.write(1)?);
                self.count(2)?;
                launch(name, dims, |ctx| embed::timestep_features(ctx, t, out))
            }
            Kernel::LinearRows | Kernel::LinearRowsSilu => {
                let (x, w, b, out) = (self.read(0)?, self.read(1)?, self.read(2)?, self.write(3)?);
                let (rows, inf, outf) = (self.u32(4)?, self.u32(5)?, self.u32(6)?);
                self.count(7)?;
                if self.call.kernel == Kernel::LinearRowsSilu {
                    launch(name, dims, |ctx| {
                        embed::linear_rows::<_, true>(ctx, x, w, b, out, rows, inf, outf)
                    })
                } else {
                    launch(name, dims, |ctx| {
                        embed::linear_rows::<_, false>(ctx, x, w, b, out, rows, inf, outf)
                    })
                }
            }
            Kernel::LabelEmbedSilu => {
                let (t_emb, table, labels, out) = (self.read(0)?, self.read(1)?, self.read(2)?, self.write(3)?);
                let hidden = self.u32(4)?;
                self.count(5)?;
                launch(name, dims, |ctx| {
                    embed::label_embed_silu(ctx, t_emb, table, labels, out, hidden)
                })
            }
            Kernel::PatchEmbed => {
                let (x, w, b, pos, out) = (
                    self.read(0)?,
                    self.read(1)?,
                    self.read(2)?,
                    self.read(3)?,
                    self.write(4)?,
                );
                let (c, s, p, d) = (self.u32(5)?, self.u32(6)?, self.u32(7)?, self.u32(8)?);
                self.count(9)?;
                launch(name, dims, |ctx| embed::patch_embed(ctx, x, w, b, pos, out, c, s, p, d))
            }
            Kernel::LayerNormModulate => {
                let (x, m, out) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (r, d, t) = (self.u32(3)?, self.u32(4)?, self.u32(5)?);
                let (stride, shift, scale) = (self.u32(6)?, self.u32(7)?, self.u32(8)?);
                self.count(9)?;
                launch(name, dims, |ctx| {
                    norm::layer_norm_modulate(ctx, x, m, out, r, d, t, stride, shift, scale)
                })
            }
            Kernel::GemmBias | Kernel::GemmBiasGelu => {
                let (a, w, b, out) = (self.read(0)?, self.read(1)?, self.read(2)?, self.write(3)?);
                let (m, n, k) = (self.u32(4)?, self.u32(5)?, self.u32(6)?);
                self.count(7)?;
                if self.call.kernel == Kernel::GemmBias {
                    launch(name, dims, |ctx| gemm::gemm_bias(ctx, a, w, b, out, m, n, k))
                } else {
                    launch(name, dims, |ctx| gemm::gemm_bias_gelu(ctx, a, w, b, out, m, n, k))
                }
            }
            Kernel::GemmBiasGatedResidual => {
                let (a, w, b, x, gate) = (
                    self.read(0)?,
                    self.read(1)?,
                    self.read(2)?,
                    self.write(3)?,
                    self.read(4)?,
                );
                let (m, n, k) = (self.u32(5)?, self.u32(6)?, self.u32(7)?);
                let (t, gs, go) = (self.u32(8)?, self.u32(9)?, self.u32(10)?);
                self.count(11)?;
                launch(name, dims, |ctx| {
                    gemm::gemm_bias_gated_residual(ctx, a, w, b, x, gate, m, n, k, t, gs, go)
                })
            }
            Kernel::Attention => {
                let (qkv, out) = (self.read(0)?, self.write(1)?);
                let (n, h, hd, scale) = (self.u32(2)?, self.u32(3)?, self.u32(4)?, self.f32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| attention::attention(ctx, qkv, out, n, h, hd, scale))
            }
            Kernel::Unpatchify => {
                let (tokens, out) = (self.read(0)?, self.write(1)?);
                let (b, oc, s, p) = (self.u32(2)?, self.u32(3)?, self.u32(4)?, self.u32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| final_layer::unpatchify(ctx, tokens, out, b, oc, s, p))
            }
            Kernel::CfgMix => {
                let out = self.write(0)?;
                let (p, oc, hw, scale) = (self.u32(1)?, self.u32(2)?, self.u32(3)?, self.f32(4)?);
                self.count(5)?;
                launch(name, dims, |ctx| guidance::cfg_mix(ctx, out, p, oc, hw, scale))
            }
            Kernel::DdimStep => {
                let (x, mo, out) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (total, c, oc, hw) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?);
                let coef = self.ddim(7)?;
                self.count(8)?;
                launch(name, dims, |ctx| {
                    ddim::ddim_step(ctx, x, mo, out, total, c, oc, hw, coef)
                })
            }
            Kernel::GatedAdd => {
                let (x, branch, gate) = (self.write(0)?, self.read(1)?, self.read(2)?);
                let (r, d, t, gs, go) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?, self.u32(7)?);
                self.count(8)?;
                launch(name, dims, |ctx| {
                    residual::gated_add(ctx, x, branch, gate, r, d, t, gs, go)
                })
            }
            Kernel::FlowEulerStep => {
                let (x, mo, out) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (total, c, oc, hw) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?);
                let dt = self.f32(7)?;
                self.count(8)?;
                launch(name, dims, |ctx| {
                    flow::flow_euler_step(ctx, x, mo, out, total, c, oc, hw, dt)
                })
            }
            Kernel::TaylorUpdate => {
                let (factors, new) = (self.write(0)?, self.read(1)?);
                let (len, stored, max_order, gap) = (self.u32(2)?, self.u32(3)?, self.u32(4)?, self.f32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| {
                    taylor::taylor_update(ctx, factors, new, len, stored, max_order, gap)
                })
            }
            Kernel::TaylorPredict => {
                let (factors, out) = (self.read(0)?, self.write(1)?);
                let (len, stored, coef) = (self.u32(2)?, self.u32(3)?, self.taylor(4)?);
                self.count(5)?;
                launch(name, dims, |ctx| {
                    taylor::taylor_predict(ctx, factors, out, len, stored, coef)
                })
            }
            Kernel::TaylorPredictGatedAdd => {
                let (x, factors, gate) = (self.write(0)?, self.read(1)?, self.read(2)?);
                let (r, d, t, gs, go) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?, self.u32(7)?);
                let (stored, coef) = (self.u32(8)?, self.taylor(9)?);
                self.count(10)?;
                launch(name, dims, |ctx| {
                    taylor::taylor_predict_gated_add(ctx, x, factors, gate, r, d, t, gs, go, stored, coef)
                })
            }
            Kernel::RowNormalize => {
                let (x, out, rows, dim) = (self.read(0)?, self.write(1)?, self.u32(2)?, self.u32(3)?);
                self.count(4)?;
                launch(name, dims, |ctx| tetc::row_normalize(ctx, x, out, rows, dim))
            }
            Kernel::Similarity => {
                let (xn, s, n, d) = (self.read(0)?, self.write(1)?, self.u32(2)?, self.u32(3)?);
                self.count(4)?;
                launch(name, dims, |ctx| tetc::similarity(ctx, xn, s, n, d))
            }
            Kernel::SimilarityEma => {
                let (s, smoothed) = (self.read(0)?, self.write(1)?);
                let (total, alpha, has_previous) = (self.u32(2)?, self.f32(3)?, self.u32(4)?);
                self.count(5)?;
                launch(name, dims, |ctx| {
                    tetc::similarity_ema(ctx, s, smoothed, total, alpha, has_previous)
                })
            }
            Kernel::KmedoidsAssign => {
                let (s, medoids, labels) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (b, n, k) = (self.u32(3)?, self.u32(4)?, self.u32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| {
                    tetc::kmedoids_assign(ctx, s, medoids, labels, b, n, k)
                })
            }
            Kernel::KmedoidsUpdate => {
                let (s, labels, medoids, next) = (self.read(0)?, self.read(1)?, self.read(2)?, self.write(3)?);
                let (n, k) = (self.u32(4)?, self.u32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| {
                    tetc::kmedoids_update(ctx, s, labels, medoids, next, n, k)
                })
            }
            Kernel::CenterRandomProxies => {
                let (s, labels, medoids) = (self.read(0)?, self.read(1)?, self.read(2)?);
                let (uniforms, proxies) = (self.read(3)?, self.write(4)?);
                let (b, n, k) = (self.u32(5)?, self.u32(6)?, self.u32(7)?);
                self.count(8)?;
                launch(name, dims, |ctx| {
                    tetc::center_random_proxies(ctx, s, labels, medoids, uniforms, proxies, b, n, k)
                })
            }
            Kernel::ClusterCounts => {
                let (labels, counts) = (self.read(0)?, self.write(1)?);
                let (b, n, k) = (self.u32(2)?, self.u32(3)?, self.u32(4)?);
                self.count(5)?;
                launch(name, dims, |ctx| clusters::cluster_counts(ctx, labels, counts, b, n, k))
            }
            Kernel::ClusterMembers => {
                let (labels, ranks, members) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (b, n, k) = (self.u32(3)?, self.u32(4)?, self.u32(5)?);
                self.count(6)?;
                launch(name, dims, |ctx| {
                    clusters::cluster_members(ctx, labels, ranks, members, b, n, k)
                })
            }
            Kernel::KmeansAssignL1 => {
                let (x, centroids, labels) = (self.read(0)?, self.read(1)?, self.write(2)?);
                let (b, n, k, d) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?);
                self.count(7)?;
                launch(name, dims, |ctx| {
                    clusca::kmeans_assign_l1(ctx, x, centroids, labels, b, n, k, d)
                })
            }
            Kernel::KmeansUpdate => {
                let (x, labels, centroids) = (self.read(0)?, self.read(1)?, self.read(2)?);
                let (next, moved) = (self.write(3)?, self.write(4)?);
                let (n, k, d) = (self.u32(5)?, self.u32(6)?, self.u32(7)?);
                self.count(8)?;
                launch(name, dims, |ctx| {
                    clusca::kmeans_update(ctx, x, labels, centroids, next, moved, n, k, d)
                })
            }
            Kernel::CommitRows => {
                let (src, dst, mask) = (self.read(0)?, self.write(1)?, self.read(2)?);
                let (total, row_len) = (self.u32(3)?, self.u32(4)?);
                self.count(5)?;
                launch(name, dims, |ctx| {
                    clusca::commit_rows(ctx, src, dst, mask, total, row_len)
                })
            }
            Kernel::CluscaPropagate => {
                let (cache0, fresh, labels) = (self.write(0)?, self.read(1)?, self.read(2)?);
                let (picks, ranks) = (self.read(3)?, self.read(4)?);
                let (b, n, k, d, gamma) = (self.u32(5)?, self.u32(6)?, self.u32(7)?, self.u32(8)?, self.f32(9)?);
                self.count(10)?;
                launch(name, dims, |ctx| {
                    clusca::clusca_propagate(ctx, cache0, fresh, labels, picks, ranks, b, n, k, d, gamma)
                })
            }
            Kernel::GatherRows | Kernel::ScatterRows => {
                let gather = self.call.kernel == Kernel::GatherRows;
                let (b, n, k, d) = (self.u32(3)?, self.u32(4)?, self.u32(5)?, self.u32(6)?);
                self.count(7)?;
                if gather {
                    let (src, indices, out) = (self.read(0)?, self.read(1)?, self.write(2)?);
                    launch(name, dims, |ctx| {
                        gather::gather_rows(ctx, src, indices, out, b, n, k, d)
                    })
                } else {
                    let (rows, indices, dst) = (self.read(0)?, self.read(1)?, self.write(2)?);
                    launch(name, dims, |ctx| {
                        gather::scatter_rows(ctx, rows, indices, dst, b, n, k, d)
                    })
                }
            }
            Kernel::PddsProxyResiduals => {
                let (fresh, cache, proxies, residuals) = (self.read(0)?, self.read(1)?, self.read(2)?, self.write(3)?);
                let (b, n, k, d) = (self.u32(4)?, self.u32(5)?, self.u32(6)?, self.u32(7)?);
                let (order, stored, sign) = (self.u32(8)?, self.u32(9)?, self.f32(10)?);
                self.count(11)?;
                launch(name, dims, |ctx| {
                    pdds::proxy_residuals(ctx, fresh, cache, proxies, residuals, b, n, k, d, order, stored, sign)
                })
            }
            Kernel::PddsUpdate => {
                let (cache, labels, proxies, residuals) = (self.read(0)?, self.read(1)?, self.read(2)?, self.read(3)?);
                let out = self.write(4)?;
                let (b, n, k, d) = (self.u32(5)?, self.u32(6)?, self.u32(7)?, self.u32(8)?);
                let (order, stored, sign, solver) = (self.u32(9)?, self.u32(10)?, self.f32(11)?, self.u32(12)?);
                self.count(13)?;
                launch(name, dims, |ctx| {
                    pdds::pdds_update(
                        ctx, cache, labels, proxies, residuals, out, b, n, k, d, order, stored, sign, solver,
                    )
                })
            }
        };
        result.map_err(DeviceError::from)
    }
}

#[cfg(test)]
mod tests {
    use resca_gpu_kernels::embed::TIMESTEP_FEATURES;

    use super::*;
    use crate::pipeline::launch;
    use crate::sim::Access;

    /// A kernel that fails a simulator check reaches the pipeline as `DeviceError::Kernel`, with
    /// the simulator's typed error inside.
    #[test]
    fn a_failed_check_is_a_kernel_error_holding_the_sim_error() {
        let mut dev = SimDevice::new();
        let t = dev.upload_new(&[1.0f32, 2.0]).unwrap();
        // Room for one row of timestep features where the kernel writes two.
        let out = dev.alloc::<f32>(TIMESTEP_FEATURES as usize).unwrap();
        let err = launch::timestep_features(&mut dev, t.all(), out.all()).unwrap_err();
        let DeviceError::Kernel(inner) = &err else {
            panic!("not a kernel error: {err}");
        };
        let sim = inner.downcast_ref::<SimError>().expect("the simulator's error");
        let out_of_bounds_store = matches!(
            sim,
            SimError::OutOfBounds {
                access: Access::Store,
                ..
            }
        );
        assert!(out_of_bounds_store, "{sim}");
        assert_eq!(err.to_string(), sim.to_string());
    }
}
