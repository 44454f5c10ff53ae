//! What a backend must offer the pipeline: typed buffers in device memory, copies to, from and
//! within it, and kernel launches by PTX entry name with the kernel's launch geometry and its
//! parameters in entry-point order. Each backend implements it: the simulator on host vectors,
//! a CUDA driver binding by `cuMemAlloc`/`cuMemcpy*`/`cuLaunchKernel`, passing each [`Arg`] as the
//! entry point's parameter of the same position (see [`ParamKind`] for the layouts). Which kernels exist and what parameters they take comes from the kernel table of
//! `resca-gpu-kernels` ([`Kernel`]); every backend checks a launch with [`KernelCall::check`].

use std::marker::PhantomData;

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{BufferElement, LaunchDims};
/// The kernels' element types, entry points and their parameters, from the kernel table of
/// `resca-gpu-kernels` (its `table` module).
pub use resca_gpu_kernels::{DType, Kernel, Param, ParamKind};

/// A type that device buffers hold (f32, u32, f64: the kernels' [`BufferElement`]s).
pub trait Element: BufferElement + Default + PartialEq + std::fmt::Debug + 'static {}

impl Element for f32 {}
impl Element for u32 {}
impl Element for f64 {}

/// A device buffer of `len` elements of `T`: a handle, valid until the device is dropped.
#[derive(Debug)]
pub struct Buffer<T> {
    id: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T> Clone for Buffer<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Buffer<T> {}

impl<T: Element> Buffer<T> {
    /// A handle for buffer `id` of a device (for [`Device`] implementations).
    pub fn from_id(id: usize, len: usize) -> Self {
        Self {
            id,
            len,
            _element: PhantomData,
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole buffer.
    pub fn all(&self) -> Slice<T> {
        self.range(0, self.len)
    }

    /// Elements `offset .. offset + len` (checked by the device when used).
    pub fn range(&self, offset: usize, len: usize) -> Slice<T> {
        Slice {
            id: self.id,
            offset,
            len,
            _element: PhantomData,
        }
    }
}

/// A contiguous part of a device buffer: what a kernel parameter points to.
#[derive(Debug)]
pub struct Slice<T> {
    pub id: usize,
    pub offset: usize,
    pub len: usize,
    _element: PhantomData<T>,
}

impl<T> Clone for Slice<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Slice<T> {}

impl<T: Element> Slice<T> {
    /// The type-erased form kernel arguments carry.
    pub fn raw(&self) -> RawSlice {
        RawSlice {
            id: self.id,
            dtype: T::DTYPE,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// A slice of some buffer, with its element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSlice {
    pub id: usize,
    pub dtype: DType,
    pub offset: usize,
    pub len: usize,
}

/// One kernel argument, in entry-point order, of the kind of the entry point's parameter
/// ([`ParamKind`], which describes the layouts): `Read` / `Write` a slice for a `Global` /
/// `GlobalMut`, `U32` / `F32` a plain value, `Ddim` / `Taylor` a coefficient struct.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Read(RawSlice),
    Write(RawSlice),
    U32(u32),
    F32(f32),
    Ddim(DdimCoefficients),
    Taylor(TaylorCoefficients),
}

impl Arg {
    pub fn read<T: Element>(slice: Slice<T>) -> Self {
        Arg::Read(slice.raw())
    }

    pub fn write<T: Element>(slice: Slice<T>) -> Self {
        Arg::Write(slice.raw())
    }

    /// Whether the argument can be passed as a parameter of kind `kind`.
    pub fn fits(&self, kind: ParamKind) -> bool {
        match (*self, kind) {
            (Arg::Read(s), ParamKind::Read(dtype)) | (Arg::Write(s), ParamKind::Write(dtype)) => s.dtype == dtype,
            (Arg::U32(_), ParamKind::U32)
            | (Arg::F32(_), ParamKind::F32)
            | (Arg::Ddim(_), ParamKind::Ddim)
            | (Arg::Taylor(_), ParamKind::Taylor) => true,
            _ => false,
        }
    }
}

/// A launch: which entry point, its geometry (from the kernel module's `*_dims`), its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    pub kernel: Kernel,
    pub dims: LaunchDims,
    pub args: Vec<Arg>,
}

impl KernelCall {
    /// Checks the arguments against the entry point's parameters ([`Kernel::params`]): their
    /// number and each one's kind and element type; and the shared memory of the geometry
    /// against the kernel's `.shared` buffer, or the most dynamic shared memory the kernel table
    /// allows it. Slice bounds are the device's to check.
    pub fn check(&self) -> Result<(), DeviceError> {
        let declared = self
            .kernel
            .static_shared_bytes()
            .max(self.kernel.dynamic_shared_bytes());
        if self.dims.shared_bytes > declared {
            return Err(DeviceError::Invalid(format!(
                "kernel `{}`: the launch asks for {} bytes of shared memory, the kernel declares {declared}",
                self.kernel.name(),
                self.dims.shared_bytes
            )));
        }
        check_args(self, self.kernel.params())
    }
}

/// Checks the arguments of `call` against `params` (the entry point's parameters, as
/// [`Kernel::params`] lists them or a backend read them from its module).
pub fn check_args(call: &KernelCall, params: &[Param]) -> Result<(), DeviceError> {
    let name = call.kernel.name();
    let (passed, taken) = (call.args.len(), params.len());
    for (i, param) in params.iter().enumerate() {
        let Some(arg) = call.args.get(i) else {
            return Err(DeviceError::Invalid(format!(
                "kernel `{name}`: parameter {i} `{}` ({:?}) missing: the call passes {passed} arguments for \
                 {taken} parameters",
                param.name, param.kind
            )));
        };
        if !arg.fits(param.kind) {
            return Err(DeviceError::Invalid(format!(
                "kernel `{name}`: parameter {i} `{}` is {:?}, the call passes {arg:?}",
                param.name, param.kind
            )));
        }
    }
    if passed != taken {
        return Err(DeviceError::Invalid(format!(
            "kernel `{name}`: {passed} arguments for {taken} parameters"
        )));
    }
    Ok(())
}

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A kernel failed a check of the backend that ran it (the simulator's bounds, race and
    /// barrier checks); the backend's own error is inside (downcast it to inspect it).
    #[error(transparent)]
    Kernel(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A buffer, slice or parameter that does not fit (a pipeline bug or unsupported sizes).
    #[error("{0}")]
    Invalid(String),
    /// The backend itself failed (driver errors).
    #[error("{0}")]
    Backend(String),
}

/// A GPU (or its simulation): memory and launches, in stream order.
pub trait Device {
    /// A short name for statistics (`sim`, `cuda`).
    fn name(&self) -> &'static str;
    /// A zero-filled buffer of `len` elements.
    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError>;
    /// Host to device; `data.len()` must equal `dst.len`.
    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError>;
    /// Device to host; `out.len()` must equal `src.len`.
    fn download<T: Element>(&mut self, src: Slice<T>, out: &mut [T]) -> Result<(), DeviceError>;
    /// Device to device, `src.len == dst.len`, non-overlapping.
    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError>;
    /// Releases buffer `id` (after the launches using it); a later use is an error.
    fn free(&mut self, id: usize) -> Result<(), DeviceError>;
    /// Launches a kernel (asynchronously on a real GPU).
    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError>;
    /// Waits for every launch and copy issued so far (for timings).
    fn synchronize(&mut self) -> Result<(), DeviceError>;

    /// A buffer holding `data`.
    fn upload_new<T: Element>(&mut self, data: &[T]) -> Result<Buffer<T>, DeviceError> {
        let buffer = self.alloc(data.len())?;
        self.upload(buffer.all(), data)?;
        Ok(buffer)
    }

    /// The contents of `src` as a vector.
    fn download_vec<T: Element>(&mut self, src: Slice<T>) -> Result<Vec<T>, DeviceError> {
        let mut out = vec![T::default(); src.len];
        self.download(src, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use resca_gpu_kernels::tetc::elementwise_dims;

    use super::*;

    fn slice(dtype: DType) -> RawSlice {
        RawSlice {
            id: 0,
            dtype,
            offset: 0,
            len: 4,
        }
    }

    /// A `similarity_ema` call (s, smoothed, total, alpha, has_previous).
    fn ema_call() -> KernelCall {
        KernelCall {
            kernel: Kernel::SimilarityEma,
            dims: elementwise_dims(4),
            args: vec![
                Arg::Read(slice(DType::F32)),
                Arg::Write(slice(DType::F32)),
                Arg::U32(4),
                Arg::F32(0.5),
                Arg::U32(1),
            ],
        }
    }

    fn error(call: &KernelCall) -> String {
        call.check().unwrap_err().to_string()
    }

    #[test]
    fn a_call_is_checked_against_the_kernel_table() {
        assert!(ema_call().check().is_ok());
        let mut call = ema_call();
        call.args[1] = Arg::Read(slice(DType::F32));
        assert!(error(&call).contains("parameter 1 `smoothed`"), "{}", error(&call));
        call = ema_call();
        call.args[0] = Arg::Read(slice(DType::U32));
        assert!(error(&call).contains("parameter 0 `s`"), "{}", error(&call));
        call = ema_call();
        call.args[3] = Arg::U32(0);
        assert!(error(&call).contains("parameter 3 `alpha`"), "{}", error(&call));
        call = ema_call();
        call.args.truncate(4);
        assert!(error(&call).contains("parameter 4 `has_previous`"), "{}", error(&call));
        call = ema_call();
        call.args.push(Arg::U32(0));
        assert!(
            error(&call).contains("6 arguments for 5 parameters"),
            "{}",
            error(&call)
        );
    }

    #[test]
    fn shared_memory_beyond_the_kernels_buffer_is_an_error() {
        let mut call = ema_call();
        call.dims.shared_bytes = 16;
        assert!(error(&call).contains("16 bytes of shared memory"), "{}", error(&call));
        let gemm = Kernel::GemmBias;
        assert_eq!(gemm.static_shared_bytes(), resca_gpu_kernels::gemm::GEMM_SHARED_BYTES);
        assert_eq!(
            resca_gpu_kernels::gemm::gemm_dims(8, 8).shared_bytes,
            gemm.static_shared_bytes()
        );
    }
}
