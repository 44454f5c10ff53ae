//! [`SimDevice`]: the pipeline's [`Device`] on the simulator. Buffers are host vectors; a launch
//! checks its arguments against the entry point's parameters ([`KernelCall::check`]: kind and
//! element type) and every slice against its buffer, binds them to the kernel body
//! ([`resca_gpu_kernels::Kernel::bind`], expanded from the kernel table) and runs it with
//! [`run_grid`](super::run_grid). Slices passed to one launch may alias (as device pointers do), which is why
//! parameters are built from raw pointers.

use resca_gpu_kernels::ddim::DdimCoefficients;
use resca_gpu_kernels::taylor::TaylorCoefficients;
use resca_gpu_kernels::{ArgSource, BufferElement, Global, GlobalMut};

use super::{BufferName, SimError, run_grid_with_buffer_names};
use crate::pipeline::device::{
    Arg, Buffer, DType, Device, DeviceError, Element, Graph, GraphOp, KernelCall, Mark, RawSlice, Slice,
};

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
    /// The operations of the graph being captured ([`Device::begin_capture`]).
    capture: Option<Vec<GraphOp>>,
    /// Graphs captured so far (their ids).
    graphs: u64,
    /// Graph launches so far, and the kernel launches they ran.
    graph_launches: usize,
    replayed_launches: usize,
}

impl SimDevice {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Graphs captured so far.
    pub fn graphs_captured(&self) -> u64 {
        self.graphs
    }

    /// Graph launches so far ([`Device::launch_graph`]) and the kernel launches they ran.
    pub fn graph_launches(&self) -> (usize, usize) {
        (self.graph_launches, self.replayed_launches)
    }

    /// Elements held by live buffers (freed ones hold none).
    pub fn resident_elements(&self) -> usize {
        self.buffers.iter().map(Storage::len).sum()
    }

    /// An error for `what`, an operation that a graph capture cannot hold, inside one.
    fn outside_capture(&self, what: &str) -> Result<(), DeviceError> {
        match self.capture {
            Some(_) => Err(DeviceError::Invalid(format!(
                "sim: {what} inside a graph capture (a captured step must not need the host)"
            ))),
            None => Ok(()),
        }
    }

    /// A device-to-device copy of `src` into `dst`, by element type.
    fn copy_raw(&mut self, src: RawSlice, dst: RawSlice) -> Result<(), DeviceError> {
        fn typed<T: Element>(dev: &mut SimDevice, src: RawSlice, dst: RawSlice) -> Result<(), DeviceError> {
            let data = dev
                .slice_mut(Buffer::<T>::from_id(src.id, 0).range(src.offset, src.len), "copy")?
                .to_vec();
            dev.slice_mut(Buffer::<T>::from_id(dst.id, 0).range(dst.offset, dst.len), "copy")?
                .copy_from_slice(&data);
            Ok(())
        }
        if src.len != dst.len || src.dtype != dst.dtype {
            return Err(DeviceError::Invalid(format!("copy of {src:?} into {dst:?}")));
        }
        match src.dtype {
            DType::F32 => typed::<f32>(self, src, dst),
            DType::U32 => typed::<u32>(self, src, dst),
            DType::F64 => typed::<f64>(self, src, dst),
        }
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
        self.outside_capture("an allocation")?;
        self.buffers.push(storage_for::<T>(len));
        Ok(Buffer::from_id(self.buffers.len() - 1, len))
    }

    fn upload<T: Element>(&mut self, dst: Slice<T>, data: &[T]) -> Result<(), DeviceError> {
        self.outside_capture("an upload")?;
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
        self.outside_capture("a download")?;
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
        if let Some(ops) = self.capture.as_mut() {
            ops.push(GraphOp::Copy {
                src: src.raw(),
                dst: dst.raw(),
            });
            return Ok(());
        }
        self.copy_raw(src.raw(), dst.raw())
    }

    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        self.outside_capture("a free")?;
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
        call.check()?;
        if let Some(ops) = self.capture.as_mut() {
            ops.push(GraphOp::Launch(call.clone()));
            return Ok(());
        }
        self.launches += 1;
        let mut args = SimArgs {
            device: self,
            call,
            next: 0,
            written: Vec::new(),
        };
        let kernel = call.kernel.bind(&mut args)?;
        let names = args.written;
        run_grid_with_buffer_names(call.kernel.name(), call.dims, &names, |ctx| kernel.run(ctx))
            .map_err(DeviceError::from)
    }

    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.outside_capture("a synchronize")
    }

    fn mark(&mut self) -> Result<Mark, DeviceError> {
        self.outside_capture("a timing mark")?;
        Ok(Mark::Host(std::time::Instant::now()))
    }

    fn begin_capture(&mut self) -> Result<(), DeviceError> {
        self.outside_capture("a capture")?;
        self.capture = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&mut self) -> Result<Graph, DeviceError> {
        let ops = self
            .capture
            .take()
            .ok_or_else(|| DeviceError::Invalid("sim: end_capture without begin_capture".into()))?;
        self.graphs += 1;
        Ok(Graph { id: self.graphs, ops })
    }

    /// Runs the graph's operations in order, each checked as a direct launch or copy is.
    fn launch_graph(&mut self, graph: &Graph) -> Result<(), DeviceError> {
        self.outside_capture("a graph launch")?;
        self.graph_launches += 1;
        for op in &graph.ops {
            match op {
                GraphOp::Launch(call) => {
                    self.launch(call)?;
                    self.replayed_launches += 1;
                }
                GraphOp::Copy { src, dst } => self.copy_raw(*src, *dst)?,
            }
        }
        Ok(())
    }
}

/// The arguments of one launch as the kernel body's parameters, in entry-point order: each
/// slice resolved to a pointer into its (checked) device vector.
struct SimArgs<'d> {
    device: &'d mut SimDevice,
    call: &'d KernelCall,
    next: usize,
    /// The writable parameters bound so far, for the simulator's error messages.
    written: Vec<BufferName>,
}

impl SimArgs<'_> {
    /// The next argument and its position.
    fn next(&mut self) -> Result<(usize, Arg), DeviceError> {
        let i = self.next;
        self.next += 1;
        let arg = self.call.args.get(i).copied().ok_or_else(|| self.error(i, "missing"))?;
        Ok((i, arg))
    }

    fn error(&self, i: usize, what: &str) -> DeviceError {
        DeviceError::Invalid(format!(
            "kernel `{}`: parameter {i}: {what} (the call has {} parameters)",
            self.call.kernel.name(),
            self.call.args.len()
        ))
    }

    /// The next argument as a slice of `T` (writable or not), checked against its buffer.
    fn slice<T: BufferElement>(&mut self, write: bool) -> Result<(*mut T, usize), DeviceError> {
        let (i, arg) = self.next()?;
        let slice = match (arg, write) {
            (Arg::Read(s), false) | (Arg::Write(s), true) if s.dtype == T::DTYPE => s,
            (other, _) => {
                let want = if write { "a writable" } else { "a read-only" };
                return Err(self.error(
                    i,
                    &format!("{other:?} where the kernel takes {want} {:?} slice", T::DTYPE),
                ));
            }
        };
        let name = self.call.kernel.params().get(i).map_or("?", |p| p.name);
        let what = format!("kernel `{}` parameter {i} `{name}`", self.call.kernel.name());
        let pointer = self.device.pointer(slice, &what)?.cast::<T>();
        if write {
            self.written.push(BufferName {
                name: name.to_string(),
                base: pointer as usize,
            });
        }
        Ok((pointer, slice.len))
    }

    /// The next argument as a value: `take` returns it when the argument has the right kind.
    fn value<V>(&mut self, want: &str, take: impl Fn(Arg) -> Option<V>) -> Result<V, DeviceError> {
        let (i, arg) = self.next()?;
        take(arg).ok_or_else(|| self.error(i, &format!("{arg:?} where the kernel takes {want}")))
    }
}

impl ArgSource<'static> for SimArgs<'_> {
    type Error = DeviceError;

    fn read<T: BufferElement>(&mut self) -> Result<Global<'static, T>, DeviceError> {
        let (ptr, len) = self.slice::<T>(false)?;
        // SAFETY: a checked slice of a device vector, which outlives the launch (the simulator
        // runs it to completion before `launch` returns).
        Ok(unsafe { Global::from_raw(ptr, len) })
    }

    fn write<T: BufferElement>(&mut self) -> Result<GlobalMut<'static, T>, DeviceError> {
        let (ptr, len) = self.slice::<T>(true)?;
        // SAFETY: as for `read`.
        Ok(unsafe { GlobalMut::from_raw(ptr, len) })
    }

    fn u32(&mut self) -> Result<u32, DeviceError> {
        self.value("a u32", |a| if let Arg::U32(v) = a { Some(v) } else { None })
    }

    fn f32(&mut self) -> Result<f32, DeviceError> {
        self.value("an f32", |a| if let Arg::F32(v) = a { Some(v) } else { None })
    }

    fn ddim(&mut self) -> Result<DdimCoefficients, DeviceError> {
        self.value(
            "DDIM coefficients",
            |a| if let Arg::Ddim(v) = a { Some(v) } else { None },
        )
    }

    fn taylor(&mut self) -> Result<TaylorCoefficients, DeviceError> {
        self.value("Taylor coefficients", |a| {
            if let Arg::Taylor(v) = a { Some(v) } else { None }
        })
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
