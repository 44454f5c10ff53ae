//! The kernels on a GPU the host already drives: the committed PTX JIT-loaded into the host's
//! CUDA context (never a context of the library's own), and every launch issued on the host's
//! stream with the host's device pointers. libcuda is loaded at run time (cudarc's dynamic
//! loading, as the CUDA backend of `resca-host`), so the library links and runs without CUDA; the
//! GPU entry points then fail with `RESCA_STATUS_NO_GPU`.
//!
//! Contract with the host:
//! * the host owns the context: the library pushes it around each of its driver calls and pops
//!   it again (the thread's current context is the same after the call), loads one module into
//!   it at `resca_gpu_open` and unloads it at `resca_gpu_close`, and never creates, retains,
//!   destroys or resets a context;
//! * launches are asynchronous on the given stream, in the stream's order; the host synchronises
//!   as it would after its own launches, and keeps the buffers alive until the kernels are done;
//! * a `RescaGpu` may be used from several threads at once (it is not changed after opening).

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};

use cudarc::driver::sys;
use resca_gpu_kernels::ptx::PtxModule;
use resca_host::cuda::driver::{driver_error, driver_present, function_attributes, load_module, module_choice};
use resca_host::cuda::gpu::check_dims;
use resca_host::cuda::params::{ParamLayout, layouts, pack};
use resca_host::cuda::{CudaUnavailable, FunctionAttributes};
use resca_host::pipeline::device::{DeviceError, Kernel};

use crate::error::{Error, RescaStatus, Result, entry};
use crate::kernels::{RescaArg, Value, c_str, element_bytes, placement_by_position, plan, read_call};

/// The kernels loaded into a host's CUDA context (opaque).
pub struct RescaGpu {
    context: sys::CUcontext,
    module: sys::CUmodule,
    kernels: HashMap<Kernel, LoadedKernel>,
    description: CString,
}

struct LoadedKernel {
    function: sys::CUfunction,
    attributes: FunctionAttributes,
    params: Vec<ParamLayout>,
}

fn cuda(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::new(RescaStatus::Cuda, format!("{what}: {}", driver_error(e)))
}

/// `context` current on the calling thread until dropped (then the previous one again).
struct Current;

impl Current {
    fn push(context: sys::CUcontext) -> Result<Self> {
        // SAFETY: a context handle of the host, which it keeps alive (the API's contract).
        unsafe { sys::cuCtxPushCurrent_v2(context) }
            .result()
            .map_err(cuda("making the host's context current"))?;
        Ok(Current)
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let mut popped = std::ptr::null_mut();
        // SAFETY: pops the context `push` pushed on this thread.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Unloads a module of the context current on the calling thread (on an error path of `open`).
struct LoadedModule(sys::CUmodule);

impl Drop for LoadedModule {
    fn drop(&mut self) {
        // SAFETY: a module this library loaded, unloaded once.
        let _ = unsafe { sys::cuModuleUnload(self.0) };
    }
}

impl RescaGpu {
    /// Loads the kernels into `context` (null: the one current on the calling thread).
    fn open(context: sys::CUcontext, arch: Option<&str>) -> Result<Self> {
        if !driver_present() {
            return Err(Error::new(RescaStatus::NoGpu, CudaUnavailable::NoDriver.to_string()));
        }
        // SAFETY: initialising the driver API twice is allowed (the host has done it already).
        unsafe { sys::cuInit(0) }.result().map_err(|e| {
            Error::new(
                RescaStatus::NoGpu,
                CudaUnavailable::Driver(format!("cuInit: {}", driver_error(e))).to_string(),
            )
        })?;
        let context = if context.is_null() {
            let mut current = std::ptr::null_mut();
            // SAFETY: writes one handle.
            unsafe { sys::cuCtxGetCurrent(&mut current) }
                .result()
                .map_err(cuda("cuCtxGetCurrent"))?;
            if current.is_null() {
                return Err(Error::invalid(
                    "resca_gpu_open: no context given and none is current on the calling thread",
                ));
            }
            current
        } else {
            context
        };
        let _current = Current::push(context)?;
        let mut device = 0;
        // SAFETY: writes one device handle of the current context.
        unsafe { sys::cuCtxGetDevice(&mut device) }
            .result()
            .map_err(cuda("cuCtxGetDevice"))?;
        let attribute = |a| {
            let mut value = 0;
            // SAFETY: writes one int for a device of this driver.
            unsafe { sys::cuDeviceGetAttribute(&mut value, a, device) }
                .result()
                .map_err(cuda("cuDeviceGetAttribute"))
                .map(|()| value)
        };
        use sys::CUdevice_attribute_enum as A;
        let major = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32;
        let minor = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32;
        let mut name = [0 as c_char; 256];
        // SAFETY: writes at most `name.len()` bytes, NUL-terminated.
        unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, device) }
            .result()
            .map_err(cuda("cuDeviceGetName"))?;
        // SAFETY: NUL-terminated by the driver.
        let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let ptx: &'static PtxModule = module_choice(major, minor, arch).map_err(|e| match arch {
            Some(_) => Error::invalid(format!("resca_gpu_open: {e}")),
            None => Error::new(RescaStatus::NoGpu, format!("{name}: {e}")),
        })?;
        let module = LoadedModule(load_module(ptx).map_err(|e| Error::new(RescaStatus::Cuda, e))?);
        let all_layouts = layouts(ptx).map_err(|e| Error::new(RescaStatus::Internal, e))?;
        let mut kernels = HashMap::new();
        for &kernel in Kernel::ALL {
            let entry = CString::new(kernel.name()).expect("kernel names have no NUL");
            let mut function = std::ptr::null_mut();
            // SAFETY: the module is loaded in the current context; writes one handle.
            unsafe { sys::cuModuleGetFunction(&mut function, module.0, entry.as_ptr()) }
                .result()
                .map_err(cuda(&format!("loading kernel `{}` from {}", kernel.name(), ptx.file)))?;
            // SAFETY: a function of the module just loaded.
            let attributes = unsafe { function_attributes(function) }.map_err(|e| Error::new(RescaStatus::Cuda, e))?;
            let params = all_layouts[&kernel].clone();
            kernels.insert(
                kernel,
                LoadedKernel {
                    function,
                    attributes,
                    params,
                },
            );
        }
        let description = format!("{name} (sm_{major}{minor}, PTX {})", ptx.arch);
        let handle = module.0;
        std::mem::forget(module);
        Ok(Self {
            context,
            module: handle,
            kernels,
            description: CString::new(description.replace('\0', "?")).expect("no NUL left"),
        })
    }

    /// Launches `call` on `stream` (null: the context's default stream).
    fn launch(&self, stream: sys::CUstream, call: &crate::kernels::HostCall) -> Result<()> {
        let _current = Current::push(self.context)?;
        if !stream.is_null() {
            let mut owner = std::ptr::null_mut();
            // SAFETY: a stream handle of the host; writes one context handle.
            unsafe { sys::cuStreamGetCtx(stream, &mut owner) }
                .result()
                .map_err(cuda("cuStreamGetCtx"))?;
            if owner != self.context {
                return Err(Error::invalid(
                    "resca_gpu_launch: the stream belongs to another context than the one the kernels were \
                     loaded into",
                ));
            }
        }
        let address = |i: usize, offset: usize| -> std::result::Result<u64, DeviceError> {
            match call.values.get(i) {
                Some(Value::Buffer(b)) => Ok(b.address + (offset * element_bytes(b.dtype)) as u64),
                _ => Err(DeviceError::Invalid(format!("no buffer argument {i}"))),
            }
        };
        let placement = placement_by_position(call);
        plan(call, &placement, &mut |launched| {
            let kernel = &self.kernels[&launched.kernel];
            check_dims(launched, kernel.attributes)?;
            let params = pack(launched, &kernel.params, |slice, _| address(slice.id, slice.offset))?;
            if launched.dims.grid.count() == 0 {
                return Ok(());
            }
            let mut pointers: Vec<*mut c_void> = params.iter().map(|p| p.0.as_ptr() as *mut c_void).collect();
            let (g, b) = (launched.dims.grid, launched.dims.block);
            // SAFETY: `pointers` point to the entry point's parameters in its declared layout
            // (checked by `pack` against the PTX); every buffer was checked to hold what the sizes
            // say the kernel touches, and is the host's device memory (the API's contract). The
            // driver copies the parameters before returning.
            unsafe {
                sys::cuLaunchKernel(
                    kernel.function,
                    g.x,
                    g.y,
                    g.z,
                    b.x,
                    b.y,
                    b.z,
                    0,
                    stream,
                    pointers.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result()
            .map_err(|e| {
                DeviceError::Backend(format!(
                    "launching kernel `{}`: {}",
                    launched.kernel.name(),
                    driver_error(e)
                ))
            })
        })
        .map_err(|e| match e {
            DeviceError::Backend(message) => Error::new(RescaStatus::Cuda, message),
            DeviceError::Kernel(inner) => Error::new(RescaStatus::Kernel, inner.to_string()),
            DeviceError::Invalid(message) => Error::invalid(message),
        })?;
        Ok(())
    }
}

/// Loads the kernels into the host's CUDA context: the committed PTX module for the context's
/// GPU (`arch` null: the newest it runs, `sm_90` on Hopper and later, else `sm_80`; or the one
/// named, `"sm_80"` or `"sm_90"`), JIT-compiled by the driver, with all the kernels of the table.
///
/// `context` is a `CUcontext` of the host, or null for the one current on the calling thread (a
/// PyTorch program's, after it has used CUDA). The library makes no context of its own: it
/// pushes the host's around each of its calls and pops it again.
///
/// # Safety
/// `context` is null or a live `CUcontext`; `arch` is null or NUL-terminated; `out` points to
/// writable memory for one pointer (null is refused).
///
/// Ownership: `*out` receives a handle the host owns: release it with `resca_gpu_close`, before
/// destroying the context. On failure `*out` is set to null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_gpu_open(
    context: *mut c_void,
    arch: *const c_char,
    out: *mut *mut RescaGpu,
) -> RescaStatus {
    entry(|| {
        if out.is_null() {
            return Err(Error::invalid("resca_gpu_open: `out` is a null pointer"));
        }
        // SAFETY: checked non-null; the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        let arch = if arch.is_null() {
            None
        } else {
            // SAFETY: the caller's contract.
            Some(unsafe { c_str(arch, "resca_gpu_open: `arch`") }?)
        };
        let gpu = RescaGpu::open(context.cast(), arch)?;
        // SAFETY: as above.
        unsafe { out.write(Box::into_raw(Box::new(gpu))) };
        Ok(())
    })
}

/// Unloads the kernels' module from the host's context and releases the handle (null: nothing
/// to do). The context itself is left as it is.
///
/// # Safety
/// `gpu` is null or a handle of `resca_gpu_open`, not yet closed, with no launch of another
/// thread in progress; its context is still alive. The handle is invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_gpu_close(gpu: *mut RescaGpu) -> RescaStatus {
    entry(|| {
        if gpu.is_null() {
            return Ok(());
        }
        // SAFETY: a handle of `resca_gpu_open` (the caller's contract), released once.
        let gpu = unsafe { Box::from_raw(gpu) };
        let _current = Current::push(gpu.context)?;
        // SAFETY: the module this handle loaded, unloaded once.
        unsafe { sys::cuModuleUnload(gpu.module) }
            .result()
            .map_err(cuda("unloading the kernels' module"))
    })
}

/// The GPU and the PTX module of a handle, in words (`"NVIDIA H100 80GB HBM3 (sm_90, PTX
/// sm_90)"`), or null for a null handle.
///
/// # Safety
/// `gpu` is null or an open handle.
///
/// Ownership: the string belongs to the handle and lives until `resca_gpu_close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_gpu_describe(gpu: *const RescaGpu) -> *const c_char {
    // SAFETY: the caller's contract.
    match unsafe { gpu.as_ref() } {
        Some(gpu) => gpu.description.as_ptr(),
        None => std::ptr::null(),
    }
}

/// Launches `kernel` on `stream` (a `CUstream` of the handle's context; null: its default
/// stream) with the host's device buffers and values: the arguments are checked (names, kinds,
/// every buffer long enough for the sizes, docs/linking.md), the geometry is computed by the
/// kernel's launch function of `resca-host`, the same one the Rust backends use, and the kernel
/// is launched asynchronously. An empty launch (a zero size) launches nothing.
///
/// # Safety
/// `gpu` is an open handle; `stream` is null or a live stream of its context; `kernel` is
/// NUL-terminated; `args` points to `count` arguments (their `name`s NUL-terminated) whose
/// buffer addresses are device memory of the context, valid for `len` elements until the
/// kernel has run.
///
/// Ownership: everything stays the caller's; the library keeps no pointer after the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn resca_gpu_launch(
    gpu: *const RescaGpu,
    stream: *mut c_void,
    kernel: *const c_char,
    args: *const RescaArg,
    count: usize,
) -> RescaStatus {
    entry(|| {
        // SAFETY: the caller's contract.
        let Some(gpu) = (unsafe { gpu.as_ref() }) else {
            return Err(Error::invalid("resca_gpu_launch: `gpu` is a null pointer"));
        };
        // SAFETY: the caller's contract.
        let call = unsafe { read_call(kernel, args, count) }?;
        gpu.launch(stream.cast(), &call)
    })
}
