//! [`GpuDevice`]: the pipeline's [`Device`] on a real GPU, over a small [`Driver`] trait (raw
//! device memory, copies, module functions, launches) that the cudarc binding
//! ([`super::driver::Cudarc`]) and, with the `cust` feature, Rust-CUDA's `cust`
//! ([`super::cust_driver::Cust`]) implement. Everything else (buffer bookkeeping, bounds and
//! type checks, parameter packing, launch checks) is here once, so both bindings run the same
//! launches.

use std::collections::HashMap;
use std::ffi::c_void;

use resca_gpu_kernels::LaunchDims;
use resca_gpu_kernels::ptx::PtxModule;

use super::params::{ParamLayout, layouts, pack};
use crate::pipeline::device::{
    Buffer, DType, Device, DeviceError, Element, Graph, GraphOp, Kernel, KernelCall, MAX_STATIC_SHARED_BYTES, Mark,
    RawSlice, Slice,
};

/// What ptxas/the driver report about a loaded kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionAttributes {
    pub registers: i32,
    pub static_shared_bytes: i32,
    pub local_bytes: i32,
    pub max_threads_per_block: i32,
}

/// The raw operations a CUDA binding provides, all on one stream (in order). Addresses are device
/// pointers as u64; errors are the driver's messages.
pub trait Driver {
    /// A loaded kernel.
    type Function;
    /// The backend name for statistics.
    const NAME: &'static str;

    /// `bytes` of zero-filled device memory (`bytes > 0`).
    fn alloc_zeroed(&mut self, bytes: usize) -> Result<u64, String>;
    /// Releases an allocation once the work issued so far has finished with it.
    fn free(&mut self, address: u64) -> Result<(), String>;
    /// Host to device; returns when `src` may be reused.
    fn upload(&mut self, dst: u64, src: &[u8]) -> Result<(), String>;
    /// Device to host, after the work issued so far.
    fn download(&mut self, dst: &mut [u8], src: u64) -> Result<(), String>;
    /// Device to device, in stream order.
    fn copy(&mut self, dst: u64, src: u64, bytes: usize) -> Result<(), String>;
    /// The entry point `name` of the loaded module.
    fn function(&mut self, name: &str) -> Result<Self::Function, String>;
    fn attributes(&mut self, function: &Self::Function) -> Result<FunctionAttributes, String>;
    /// Launches with `dims.shared_bytes` of dynamic shared memory (0 for the kernels that
    /// declare theirs statically).
    ///
    /// # Safety
    /// `params` point to the kernel's parameters, laid out as its entry point declares them,
    /// and every address in them is valid for what the kernel does with it.
    unsafe fn launch(
        &mut self,
        function: &Self::Function,
        dims: LaunchDims,
        params: &[*mut c_void],
    ) -> Result<(), String>;
    /// Lets `function` be launched with up to `bytes` of dynamic shared memory
    /// (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`; needed above 48 KiB).
    fn set_max_dynamic_shared(&mut self, function: &Self::Function, bytes: u32) -> Result<(), String>;
    /// Waits for everything issued so far (reports asynchronous kernel faults).
    fn synchronize(&mut self) -> Result<(), String>;

    /// Records a timing event after the work issued so far, without waiting; `None` where the
    /// binding has no events (the device then synchronizes to time).
    fn record_event(&mut self) -> Result<Option<u64>, String> {
        Ok(None)
    }

    /// Milliseconds from event `start` to event `end` (both of [`Driver::record_event`]),
    /// waiting for `end`; both events are released.
    fn event_elapsed_ms(&mut self, start: u64, end: u64) -> Result<f32, String> {
        Err(format!(
            "events {start:#x} and {end:#x}: this binding records no events"
        ))
    }

    /// Starts capturing the stream's work into a graph (nothing runs until it is launched).
    fn begin_capture(&mut self) -> Result<(), String> {
        Err("this binding captures no graphs".into())
    }

    /// Ends the capture: the handle of the instantiated graph.
    fn end_capture(&mut self) -> Result<u64, String> {
        Err("this binding captures no graphs".into())
    }

    /// Launches an instantiated graph of [`Driver::end_capture`] on the stream.
    fn launch_graph(&mut self, graph: u64) -> Result<(), String> {
        Err(format!("graph {graph:#x}: this binding launches no graphs"))
    }
}

struct GpuBuffer {
    address: u64,
    len: usize,
    dtype: DType,
    live: bool,
}

struct LoadedKernel<F> {
    function: F,
    params: Vec<ParamLayout>,
    attributes: FunctionAttributes,
}

/// A GPU as the pipeline's device: buffers by id, launches checked against the PTX signatures.
pub struct GpuDevice<D: Driver> {
    driver: D,
    module: &'static PtxModule,
    kernels: HashMap<Kernel, LoadedKernel<D::Function>>,
    buffers: Vec<GpuBuffer>,
    launches: usize,
    description: String,
    /// The operations of the graph being captured ([`Device::begin_capture`]).
    capture: Option<Vec<GraphOp>>,
}

fn backend(what: &str) -> impl Fn(String) -> DeviceError + '_ {
    move |e| DeviceError::Backend(format!("{what}: {e}"))
}

fn element_size(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::U32 => 4,
        DType::F64 => 8,
    }
}

fn bytes_of<T: Element>(data: &[T]) -> &[u8] {
    // SAFETY: `Element`s are f32, u32 and f64: plain data without padding.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

fn bytes_of_mut<T: Element>(data: &mut [T]) -> &mut [u8] {
    // SAFETY: as for `bytes_of`; every bit pattern is a valid f32, u32 or f64.
    unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

impl<D: Driver> GpuDevice<D> {
    /// Loads every kernel of `module` (already loaded into `driver`) with its parameter list.
    pub fn new(mut driver: D, module: &'static PtxModule, description: String) -> Result<Self, DeviceError> {
        let layouts = layouts(module).map_err(DeviceError::Invalid)?;
        let mut kernels = HashMap::new();
        for &kernel in Kernel::ALL {
            let what = format!("loading kernel `{}` from {}", kernel.name(), module.file);
            let function = driver.function(kernel.name()).map_err(backend(&what))?;
            let attributes = driver.attributes(&function).map_err(backend(&what))?;
            if kernel.dynamic_shared_bytes() > MAX_STATIC_SHARED_BYTES {
                driver
                    .set_max_dynamic_shared(&function, kernel.dynamic_shared_bytes())
                    .map_err(backend(&what))?;
            }
            let params = layouts[&kernel].clone();
            kernels.insert(
                kernel,
                LoadedKernel {
                    function,
                    params,
                    attributes,
                },
            );
        }
        Ok(Self {
            driver,
            module,
            kernels,
            buffers: Vec::new(),
            launches: 0,
            description,
            capture: None,
        })
    }

    /// An error for `what`, an operation that a graph capture cannot hold, inside one.
    fn outside_capture(&self, what: &str) -> Result<(), DeviceError> {
        match self.capture {
            Some(_) => Err(DeviceError::Invalid(format!(
                "{}: {what} inside a graph capture (a captured step must not need the host)",
                D::NAME
            ))),
            None => Ok(()),
        }
    }

    /// The PTX module the kernels came from.
    pub fn module(&self) -> &'static PtxModule {
        self.module
    }

    /// The GPU and driver, in words.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Registers, shared and local memory of a kernel as the driver compiled it.
    pub fn attributes(&self, kernel: Kernel) -> FunctionAttributes {
        self.kernels[&kernel].attributes
    }

    /// Kernel launches so far.
    pub fn launches(&self) -> usize {
        self.launches
    }

    /// Elements held by live buffers.
    pub fn resident_elements(&self) -> usize {
        self.buffers.iter().filter(|b| b.live).map(|b| b.len).sum()
    }

    /// The device address of a checked slice.
    fn address(&self, slice: RawSlice, what: &str) -> Result<u64, DeviceError> {
        let buffer = self
            .buffers
            .get(slice.id)
            .filter(|b| b.live)
            .ok_or_else(|| DeviceError::Invalid(format!("{what}: no buffer {}", slice.id)))?;
        if buffer.dtype != slice.dtype {
            return Err(DeviceError::Invalid(format!(
                "{what}: buffer {} holds {:?}, the slice is {:?}",
                slice.id, buffer.dtype, slice.dtype
            )));
        }
        let end = slice.offset.checked_add(slice.len);
        if end.is_none_or(|end| end > buffer.len) {
            return Err(DeviceError::Invalid(format!(
                "{what}: elements {}..{} of buffer {} of {} elements",
                slice.offset,
                slice.offset.saturating_add(slice.len),
                slice.id,
                buffer.len
            )));
        }
        Ok(buffer.address + (slice.offset * element_size(slice.dtype)) as u64)
    }
}

/// Checks a launch's geometry against what the kernel was compiled for (its attributes as the
/// driver reports them): the threads per block and the static shared memory.
pub fn check_dims(call: &KernelCall, attributes: FunctionAttributes) -> Result<(), DeviceError> {
    let name = call.kernel.name();
    let threads = call.dims.block.count();
    if threads == 0 || threads > attributes.max_threads_per_block as u64 {
        return Err(DeviceError::Invalid(format!(
            "kernel `{name}`: {threads} threads per block, the compiled kernel allows {}",
            attributes.max_threads_per_block
        )));
    }
    if call.kernel.dynamic_shared_bytes() > 0 {
        // Dynamic shared memory: the kernel table's bound (KernelCall::check) is what the
        // function's limit was raised to.
        return Ok(());
    }
    if call.dims.shared_bytes as i64 > attributes.static_shared_bytes as i64 {
        return Err(DeviceError::Invalid(format!(
            "kernel `{name}`: the launch expects {} bytes of shared memory, the kernel declares {}",
            call.dims.shared_bytes, attributes.static_shared_bytes
        )));
    }
    Ok(())
}

impl<D: Driver> Device for GpuDevice<D> {
    fn name(&self) -> &'static str {
        D::NAME
    }

    fn alloc<T: Element>(&mut self, len: usize) -> Result<Buffer<T>, DeviceError> {
        self.outside_capture("an allocation")?;
        let bytes = len
            .checked_mul(element_size(T::DTYPE))
            .ok_or_else(|| DeviceError::Invalid(format!("alloc of {len} elements overflows")))?;
        // Empty buffers get no memory (the driver refuses zero-byte allocations).
        let address = if bytes == 0 {
            0
        } else {
            self.driver
                .alloc_zeroed(bytes)
                .map_err(backend(&format!("allocating {bytes} bytes")))?
        };
        self.buffers.push(GpuBuffer {
            address,
            len,
            dtype: T::DTYPE,
            live: true,
        });
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
        let address = self.address(dst.raw(), "upload")?;
        if data.is_empty() {
            return Ok(());
        }
        self.driver.upload(address, bytes_of(data)).map_err(backend("upload"))
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
        let address = self.address(src.raw(), "download")?;
        if out.is_empty() {
            return Ok(());
        }
        self.driver
            .download(bytes_of_mut(out), address)
            .map_err(backend("download"))
    }

    fn copy<T: Element>(&mut self, src: Slice<T>, dst: Slice<T>) -> Result<(), DeviceError> {
        if src.len != dst.len {
            return Err(DeviceError::Invalid(format!(
                "copy of {} elements into a slice of {}",
                src.len, dst.len
            )));
        }
        let from = self.address(src.raw(), "copy")?;
        let to = self.address(dst.raw(), "copy")?;
        let bytes = src.len * element_size(T::DTYPE);
        if src.id == dst.id {
            let (a, b) = (src.offset, dst.offset);
            if a < b + dst.len && b < a + src.len {
                return Err(DeviceError::Invalid(format!(
                    "copy between overlapping parts of buffer {}",
                    src.id
                )));
            }
        }
        if bytes == 0 {
            return Ok(());
        }
        self.driver.copy(to, from, bytes).map_err(backend("copy"))?;
        if let Some(ops) = self.capture.as_mut() {
            ops.push(GraphOp::Copy {
                src: src.raw(),
                dst: dst.raw(),
            });
        }
        Ok(())
    }

    fn free(&mut self, id: usize) -> Result<(), DeviceError> {
        self.outside_capture("a free")?;
        let buffer = self
            .buffers
            .get_mut(id)
            .filter(|b| b.live)
            .ok_or_else(|| DeviceError::Invalid(format!("free: no buffer {id}")))?;
        buffer.live = false;
        let address = buffer.address;
        if address != 0 {
            self.driver.free(address).map_err(backend("free"))?;
        }
        Ok(())
    }

    fn launch(&mut self, call: &KernelCall) -> Result<(), DeviceError> {
        let kernel = &self.kernels[&call.kernel];
        let attributes = kernel.attributes;
        check_dims(call, attributes)?;
        let params = pack(call, &kernel.params, |slice, what| self.address(slice, what))?;
        if call.dims.grid.count() == 0 {
            return Ok(());
        }
        let pointers: Vec<*mut c_void> = params.iter().map(|p| p.0.as_ptr() as *mut c_void).collect();
        let function = &self.kernels[&call.kernel].function;
        // SAFETY: `params` hold the entry point's parameters in its declared layout (checked by
        // `pack` against the PTX and the manifest) and every slice is within a live buffer of its
        // element type; the kernels index only within the lengths they are given (the simulator
        // checks the same launches). `params` outlive the call, which copies them.
        let mut dims = call.dims;
        if call.kernel.dynamic_shared_bytes() == 0 {
            dims.shared_bytes = 0; // declared statically: no dynamic shared memory
        }
        let launched = unsafe { self.driver.launch(function, dims, &pointers) };
        launched.map_err(backend(&format!("launching kernel `{}`", call.kernel.name())))?;
        match self.capture.as_mut() {
            // Captured into the graph, not run.
            Some(ops) => ops.push(GraphOp::Launch(call.clone())),
            None => self.launches += 1,
        }
        Ok(())
    }

    fn synchronize(&mut self) -> Result<(), DeviceError> {
        self.outside_capture("a synchronize")?;
        self.driver.synchronize().map_err(backend("synchronize"))
    }

    fn graphs_pay_off(&self) -> bool {
        true
    }

    fn begin_capture(&mut self) -> Result<(), DeviceError> {
        self.outside_capture("a capture")?;
        self.driver
            .begin_capture()
            .map_err(backend("beginning a graph capture"))?;
        self.capture = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&mut self) -> Result<Graph, DeviceError> {
        let ops = self
            .capture
            .take()
            .ok_or_else(|| DeviceError::Invalid(format!("{}: end_capture without begin_capture", D::NAME)))?;
        let id = self.driver.end_capture().map_err(backend("ending a graph capture"))?;
        Ok(Graph { id, ops })
    }

    fn launch_graph(&mut self, graph: &Graph) -> Result<(), DeviceError> {
        self.outside_capture("a graph launch")?;
        self.driver
            .launch_graph(graph.id)
            .map_err(backend(&format!("launching graph {}", graph.id)))?;
        self.launches += graph.ops.iter().filter(|op| matches!(op, GraphOp::Launch(_))).count();
        Ok(())
    }

    fn mark(&mut self) -> Result<Mark, DeviceError> {
        self.outside_capture("a timing mark")?;
        match self.driver.record_event().map_err(backend("recording an event"))? {
            Some(event) => Ok(Mark::Event(event)),
            None => {
                self.synchronize()?;
                Ok(Mark::Host(std::time::Instant::now()))
            }
        }
    }

    fn seconds_between(&mut self, start: Mark, end: Mark) -> Result<f64, DeviceError> {
        match (start, end) {
            (Mark::Event(start), Mark::Event(end)) => {
                let ms = (self.driver.event_elapsed_ms(start, end)).map_err(backend("timing events"))?;
                Ok(f64::from(ms) / 1e3)
            }
            (Mark::Host(start), Mark::Host(end)) => Ok(end.saturating_duration_since(start).as_secs_f64()),
            _ => Err(DeviceError::Invalid(format!(
                "the marks {start:?} and {end:?} are of different kinds"
            ))),
        }
    }
}

impl<D: Driver> Drop for GpuDevice<D> {
    fn drop(&mut self) {
        for buffer in self.buffers.iter_mut().filter(|b| b.live && b.address != 0) {
            buffer.live = false;
            // Nothing to report to: a failed free at teardown leaves the memory to the context.
            let _ = self.driver.free(buffer.address);
        }
    }
}
