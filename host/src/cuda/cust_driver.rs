//! The same device over Rust-CUDA's host crate `cust` (feature `cust`): [`Cust`] is a
//! [`Driver`], so [`CustDevice`] = `GpuDevice<Cust>` runs exactly the launches of the cudarc
//! backend (same parameter packing and checks, same PTX module choice).
//!
//! cust links libcuda when the program is built (its build script needs a CUDA install, or
//! `CUDA_LIBRARY_PATH` pointing at a folder with a `lib64/libcuda.so`), which is why it is not the
//! default backend; `scripts/ci-gpu-checks.sh` compile-checks it against a stub library. cust
//! owns the context and the module; memory, copies and launches go through `cust::sys` (the raw
//! driver API it links) on the null stream, as the cudarc binding does.

use std::ffi::c_void;

use cust::context::{Context, CurrentContext};
use cust::device::{Device as CuDevice, DeviceAttribute};
use cust::module::Module;
use cust::sys;
use resca_gpu_kernels::LaunchDims;
use resca_gpu_kernels::ptx::PtxModule;

use super::driver::chosen_module;
use super::gpu::{Driver, FunctionAttributes, GpuDevice};
use super::{CudaUnavailable, OpenError};
use crate::pipeline::DeviceError;

/// The pipeline's device on a GPU through cust.
pub type CustDevice = GpuDevice<Cust>;

fn check(result: sys::CUresult) -> Result<(), String> {
    if result == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{result:?}"))
    }
}

/// The cust binding: a context (kept current on the thread that uses it) and the loaded module.
pub struct Cust {
    // Dropped in this order: the module, then its context.
    module: Module,
    context: Context,
}

impl Cust {
    /// Creates a context on GPU `ordinal` and JIT-loads the PTX module for its compute capability.
    pub fn new(ordinal: u32) -> Result<(Self, &'static PtxModule, String), OpenError> {
        // Errors by name (`{:?}`): cust's `Display` asks the driver for the text and panics
        // when a broken driver cannot give it.
        let unavailable = |e: cust::error::CudaError| CudaUnavailable::Driver(format!("{e:?}"));
        cust::init(cust::CudaFlags::empty()).map_err(|e| match e {
            cust::error::CudaError::NoDevice => CudaUnavailable::NoDevice(format!("{e:?}")),
            other => unavailable(other),
        })?;
        let device = CuDevice::get_device(ordinal).map_err(unavailable)?;
        let major = device
            .get_attribute(DeviceAttribute::ComputeCapabilityMajor)
            .map_err(unavailable)? as u32;
        let minor = device
            .get_attribute(DeviceAttribute::ComputeCapabilityMinor)
            .map_err(unavailable)? as u32;
        let name = device.name().map_err(unavailable)?;
        let ptx = chosen_module(major, minor).map_err(|e| CudaUnavailable::NoDevice(format!("{name}: {e}")))?;
        let context = Context::new(device).map_err(unavailable)?;
        let module = Module::from_ptx(ptx.ptx, &[])
            .map_err(|e| DeviceError::Backend(format!("JIT-compiling {} failed: {e:?}", ptx.file)))?;
        let description = format!("{name} (sm_{major}{minor}, cust, PTX {})", ptx.arch);
        Ok((Self { module, context }, ptx, description))
    }

    fn bind(&self) -> Result<(), String> {
        CurrentContext::set_current(&self.context).map_err(|e| format!("{e:?}"))
    }
}

impl CustDevice {
    /// Opens GPU `ordinal` through cust and loads the kernels.
    pub fn open(ordinal: u32) -> Result<Self, OpenError> {
        if !super::driver::driver_present() {
            return Err(CudaUnavailable::NoDriver.into());
        }
        let (binding, module, description) = Cust::new(ordinal)?;
        Ok(GpuDevice::new(binding, module, description)?)
    }
}

impl Driver for Cust {
    type Function = sys::CUfunction;
    const NAME: &'static str = "cust";

    fn alloc_zeroed(&mut self, bytes: usize) -> Result<u64, String> {
        self.bind()?;
        let mut address = 0;
        // SAFETY: a fresh allocation, zeroed in stream order before any use.
        unsafe {
            check(sys::cuMemAlloc_v2(&mut address, bytes))?;
            check(sys::cuMemsetD8Async(address, 0, bytes, std::ptr::null_mut()))?;
        }
        Ok(address)
    }

    fn free(&mut self, address: u64) -> Result<(), String> {
        self.synchronize()?;
        // SAFETY: an allocation of `alloc_zeroed`, freed once, after the work using it.
        check(unsafe { sys::cuMemFree_v2(address) })
    }

    fn upload(&mut self, dst: u64, src: &[u8]) -> Result<(), String> {
        self.bind()?;
        // SAFETY: `dst` holds `src.len()` bytes (checked by the device); synchronous copy.
        check(unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) })
    }

    fn download(&mut self, dst: &mut [u8], src: u64) -> Result<(), String> {
        self.bind()?;
        // SAFETY: as for `upload`.
        check(unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) })
    }

    fn copy(&mut self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        self.bind()?;
        // SAFETY: both ranges within live allocations, not overlapping (checked by the device).
        check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, std::ptr::null_mut()) })
    }

    fn function(&mut self, name: &str) -> Result<Self::Function, String> {
        self.bind()?;
        let function = self.module.get_function(name).map_err(|e| format!("{e:?}"))?;
        Ok(function.to_raw())
    }

    fn attributes(&mut self, function: &Self::Function) -> Result<FunctionAttributes, String> {
        use sys::CUfunction_attribute_enum as A;
        let get = |a: A| {
            let mut value = 0;
            // SAFETY: a function of the loaded module.
            check(unsafe { sys::cuFuncGetAttribute(&mut value, a, *function) }).map(|()| value)
        };
        Ok(FunctionAttributes {
            registers: get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            static_shared_bytes: get(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            local_bytes: get(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
            max_threads_per_block: get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
        })
    }

    unsafe fn launch(
        &mut self,
        function: &Self::Function,
        dims: LaunchDims,
        params: &[*mut c_void],
    ) -> Result<(), String> {
        self.bind()?;
        let (g, b) = (dims.grid, dims.block);
        // SAFETY: the caller's contract.
        check(unsafe {
            sys::cuLaunchKernel(
                *function,
                g.x,
                g.y,
                g.z,
                b.x,
                b.y,
                b.z,
                dims.shared_bytes,
                std::ptr::null_mut(),
                params.as_ptr() as *mut *mut c_void,
                std::ptr::null_mut(),
            )
        })
    }

    fn set_max_dynamic_shared(&mut self, function: &Self::Function, bytes: u32) -> Result<(), String> {
        self.bind()?;
        let attribute = sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: a function of the loaded module.
        check(unsafe { sys::cuFuncSetAttribute(*function, attribute, bytes as i32) })
    }

    fn synchronize(&mut self) -> Result<(), String> {
        self.bind()?;
        // SAFETY: the null stream of the current context.
        check(unsafe { sys::cuStreamSynchronize(std::ptr::null_mut()) })
    }
}
