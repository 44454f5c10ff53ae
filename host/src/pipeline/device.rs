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
/// Shared memory a block may declare statically (`.shared` buffers): 48 KiB on every CUDA GPU;
/// more needs dynamic shared memory with the function's limit raised.
pub const MAX_STATIC_SHARED_BYTES: u32 = 48 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct KernelCall {
    pub kernel: Kernel,
    pub dims: LaunchDims,
    pub args: Vec<Arg>,
}

impl KernelCall {
    /// Checks the arguments against the entry point's parameters ([`Kernel::params`]): their
    /// number and each one's kind and element type; the kernel's `.shared` buffer against the
    /// static limit (a larger one does not load on a GPU); and the shared memory of the geometry
    /// against that buffer, or the most dynamic shared memory the kernel table allows it. Slice
    /// bounds are the device's to check.
    pub fn check(&self) -> Result<(), DeviceError> {
        if self.kernel.static_shared_bytes() > MAX_STATIC_SHARED_BYTES {
            return Err(DeviceError::Invalid(format!(
                "kernel `{}`: its `.shared` buffer of {} bytes exceeds the {MAX_STATIC_SHARED_BYTES} bytes \
                 a block may declare statically",
                self.kernel.name(),
                self.kernel.static_shared_bytes()
            )));
        }
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

/// One operation of a captured graph ([`Device::begin_capture`]).
#[derive(Clone, Debug, PartialEq)]
pub enum GraphOp {
    Launch(KernelCall),
    /// A device-to-device copy.
    Copy {
        src: RawSlice,
        dst: RawSlice,
    },
}

/// Device work captured once and replayed as a whole ([`Device::launch_graph`]): a sparse step's
/// launches without a host round trip per launch. The captured values are fixed: a value that
/// changes between replays must be read by the kernels from a device buffer, which the host
/// updates (by an upload, outside the capture) before each replay.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// The device's handle of the graph.
    pub id: u64,
    /// The operations in capture order (the CUDA graph's nodes, in stream order).
    pub ops: Vec<GraphOp>,
}

impl Graph {
    /// Checks that `issued`, the operations a step would issue now (captured again, not run),
    /// are the graph's: the same kernels with the same arguments. A host value baked into the
    /// capture that has changed since (a coefficient passed by value, say) is an error naming
    /// the kernel and the parameter, so that replaying the graph cannot silently use a stale one.
    pub fn check_replayable(&self, issued: &[GraphOp]) -> Result<(), DeviceError> {
        if self.ops.len() != issued.len() {
            return Err(DeviceError::Invalid(format!(
                "graph {}: captured {} operations, the step issues {}",
                self.id,
                self.ops.len(),
                issued.len()
            )));
        }
        for (i, (captured, now)) in self.ops.iter().zip(issued).enumerate() {
            if captured == now {
                continue;
            }
            let detail = match (captured, now) {
                (GraphOp::Launch(a), GraphOp::Launch(b)) if a.kernel == b.kernel => {
                    let params = a.kernel.params();
                    match a.args.iter().zip(&b.args).position(|(x, y)| x != y) {
                        Some(j) => format!(
                            "kernel `{}` parameter {j} `{}`: captured {:?}, now {:?} (a host value that changes \
                             between steps must come from a device buffer)",
                            a.kernel.name(),
                            params.get(j).map_or("?", |p| p.name),
                            a.args[j],
                            b.args[j]
                        ),
                        None => format!("kernel `{}`: the launch geometry differs", a.kernel.name()),
                    }
                }
                _ => format!("captured {captured:?}, now {now:?}"),
            };
            return Err(DeviceError::Invalid(format!(
                "graph {}: operation {i}: {detail}",
                self.id
            )));
        }
        Ok(())
    }
}

/// A point in a device's work, for timing spans of it without a host synchronize
/// ([`Device::mark`], [`Device::seconds_between`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// The host clock once the work issued before the mark had finished (a device that runs
    /// every launch to completion, or one without events).
    Host(std::time::Instant),
    /// An event recorded in stream order: the device's handle for it.
    Event(u64),
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
    /// Waits for every launch and copy issued so far.
    fn synchronize(&mut self) -> Result<(), DeviceError>;

    /// Marks the point after the work issued so far, to time the work between two marks. The
    /// default waits for that work and reads the host clock (right for a device whose launches
    /// have finished when they return, the simulator); a GPU records an event in stream order
    /// instead and does not wait.
    fn mark(&mut self) -> Result<Mark, DeviceError> {
        self.synchronize()?;
        Ok(Mark::Host(std::time::Instant::now()))
    }

    /// Seconds of work from `start` to `end` (marks of this device, `start` first), waiting for
    /// the work before `end`; each mark is used once.
    fn seconds_between(&mut self, start: Mark, end: Mark) -> Result<f64, DeviceError> {
        match (start, end) {
            (Mark::Host(start), Mark::Host(end)) => Ok(end.saturating_duration_since(start).as_secs_f64()),
            _ => Err(DeviceError::Invalid(format!(
                "{}: the marks {start:?} and {end:?} are not this device's",
                self.name()
            ))),
        }
    }

    /// Whether replaying a step's launches as a graph saves time here (a GPU, where each launch
    /// costs host time; not the simulator, whose launches run when issued): what
    /// `GraphMode::Auto` of a sampling run follows.
    fn graphs_pay_off(&self) -> bool {
        false
    }

    /// Starts capturing the launches and device-to-device copies issued from now on into a graph
    /// instead of running them ([`Device::end_capture`]). Inside a capture, allocations, frees,
    /// uploads, downloads, synchronizes and marks are errors (a captured step must not need the
    /// host). The default: this device captures nothing.
    fn begin_capture(&mut self) -> Result<(), DeviceError> {
        Err(DeviceError::Invalid(format!(
            "{}: no graph capture on this device",
            self.name()
        )))
    }

    /// Ends the capture begun by [`Device::begin_capture`]: the graph of what was issued.
    fn end_capture(&mut self) -> Result<Graph, DeviceError> {
        Err(DeviceError::Invalid(format!(
            "{}: no graph capture on this device",
            self.name()
        )))
    }

    /// Runs a graph of [`Device::end_capture`], in stream order after the work issued so far.
    fn launch_graph(&mut self, graph: &Graph) -> Result<(), DeviceError> {
        Err(DeviceError::Invalid(format!(
            "{}: graph {}: no graphs on this device",
            self.name(),
            graph.id
        )))
    }

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
    fn every_kernel_declares_at_most_the_static_shared_memory_a_block_may_have() {
        // The check refuses a launch of a kernel past the limit (a GPU would not load it), so
        // no kernel of the table may be one; attention's 49152 bytes are exactly at it.
        for &kernel in Kernel::ALL {
            assert!(
                kernel.static_shared_bytes() <= MAX_STATIC_SHARED_BYTES,
                "{}",
                kernel.name()
            );
        }
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
