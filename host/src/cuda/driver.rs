//! The CUDA driver through cudarc, which loads libcuda at run time (`dynamic-loading`): the
//! workspace builds and tests without CUDA, and [`probe`] turns a missing driver or GPU into a
//! [`CudaUnavailable`] before any call that would make cudarc panic.
//!
//! [`Cudarc`] is the [`Driver`] of [`super::CudaDevice`]: the device's primary context, the
//! committed PTX module for its compute capability JIT-compiled by the driver
//! (`cuModuleLoadDataEx`, with the JIT's error log in the error), and every operation on the
//! context's null stream, in issue order.

use std::ffi::{CString, c_void};
use std::sync::Arc;

use cudarc::driver::{CudaContext, result, sys};
use resca_gpu_kernels::LaunchDims;
use resca_gpu_kernels::ptx::{MODULES, PtxModule, module_for};

use super::gpu::{Driver, FunctionAttributes};

/// Why the CUDA backend cannot run here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CudaUnavailable {
    /// libcuda could not be loaded.
    #[error("no CUDA driver found (libcuda.so / libcuda.so.1 could not be loaded; is the NVIDIA driver installed?)")]
    NoDriver,
    /// The driver is there but reports no usable GPU.
    #[error("no CUDA GPU found ({0})")]
    NoDevice(String),
    /// The driver failed otherwise.
    #[error("the CUDA driver failed: {0}")]
    Driver(String),
}

/// One GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor).
    pub compute_capability: (u32, u32),
    pub total_memory_bytes: usize,
    pub multiprocessors: i32,
    /// The newest committed PTX module it runs (`None`: older than sm_80), which the CUDA
    /// backend loads unless `RESCA_PTX_ARCH` names another ([`chosen_module`]).
    pub ptx_arch: Option<&'static str>,
}

/// The driver and its GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaInfo {
    /// `cuDriverGetVersion`: 1000 * major + 10 * minor (12040 is CUDA 12.4).
    pub driver_version: i32,
    pub devices: Vec<GpuInfo>,
}

impl CudaInfo {
    /// "12.4".
    pub fn driver_version_string(&self) -> String {
        format!("{}.{}", self.driver_version / 1000, (self.driver_version % 1000) / 10)
    }
}

/// A driver error as `NAME: description`.
pub fn driver_error(e: result::DriverError) -> String {
    let name = e.error_name().map(|n| n.to_string_lossy().into_owned());
    let text = e.error_string().map(|n| n.to_string_lossy().into_owned());
    match (name, text) {
        (Ok(name), Ok(text)) => format!("{name}: {text}"),
        _ => format!("{:?}", e.0),
    }
}

/// Whether libcuda can be loaded (`RESCA_CUDA_DISABLE=1` pretends it cannot, for tests).
pub fn driver_present() -> bool {
    if std::env::var_os("RESCA_CUDA_DISABLE").is_some_and(|v| v == "1") {
        return false;
    }
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// The driver version and every GPU, or why there is none. Never panics: with libcuda present,
/// a symbol the driver lacks (cudarc panics then) is caught and reported as a driver failure.
pub fn probe() -> Result<CudaInfo, CudaUnavailable> {
    if !driver_present() {
        return Err(CudaUnavailable::NoDriver);
    }
    quietly(probe_driver).unwrap_or_else(|| {
        Err(CudaUnavailable::Driver(
            "the driver lacks a function cudarc needs".into(),
        ))
    })
}

thread_local! {
    /// Whether a panic on this thread is being caught by [`quietly`].
    static PANIC_CAUGHT_QUIETLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic (cudarc panics where libcuda lacks a function it needs) into
/// `None` without the panic message and backtrace that the default hook prints before
/// `catch_unwind` returns: the caller reports the failure in words. Panics on other threads, and
/// outside `f`, are reported as before.
pub fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Option<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANIC_CAUGHT_QUIETLY.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was_quiet = PANIC_CAUGHT_QUIETLY.with(|quiet| quiet.replace(true));
    let result = std::panic::catch_unwind(f);
    PANIC_CAUGHT_QUIETLY.with(|quiet| quiet.set(was_quiet));
    result.ok()
}

fn probe_driver() -> Result<CudaInfo, CudaUnavailable> {
    if let Err(e) = result::init() {
        return Err(match e.0 {
            sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => CudaUnavailable::NoDevice(driver_error(e)),
            _ => CudaUnavailable::Driver(format!("cuInit: {}", driver_error(e))),
        });
    }
    let mut driver_version = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .map_err(|e| CudaUnavailable::Driver(format!("cuDriverGetVersion: {}", driver_error(e))))?;
    let count = result::device::get_count().map_err(|e| CudaUnavailable::Driver(driver_error(e)))?;
    if count <= 0 {
        return Err(CudaUnavailable::NoDevice(format!(
            "driver {}.{} reports no devices",
            driver_version / 1000,
            (driver_version % 1000) / 10
        )));
    }
    let mut devices = Vec::new();
    for ordinal in 0..count {
        let failed = |e: result::DriverError| CudaUnavailable::Driver(format!("device {ordinal}: {}", driver_error(e)));
        let dev = result::device::get(ordinal).map_err(failed)?;
        let attribute = |a| {
            // SAFETY: `dev` is a device handle of this driver.
            unsafe { result::device::get_attribute(dev, a) }.map_err(failed)
        };
        use sys::CUdevice_attribute_enum as A;
        let major = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32;
        let minor = attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32;
        devices.push(GpuInfo {
            ordinal: ordinal as usize,
            name: result::device::get_name(dev).map_err(failed)?,
            compute_capability: (major, minor),
            // SAFETY: as above.
            total_memory_bytes: unsafe { result::device::total_mem(dev) }.map_err(failed)?,
            multiprocessors: attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            ptx_arch: module_for(major, minor).map(|m| m.arch),
        });
    }
    Ok(CudaInfo {
        driver_version,
        devices,
    })
}

/// The GPU `ordinal` of a probed driver, with its PTX module, or why it cannot run the kernels.
pub fn select_gpu(info: &CudaInfo, ordinal: usize) -> Result<(&GpuInfo, &'static PtxModule), CudaUnavailable> {
    let gpu = info.devices.get(ordinal).ok_or_else(|| {
        CudaUnavailable::NoDevice(format!(
            "device {ordinal} requested, the driver reports {}",
            info.devices.len()
        ))
    })?;
    let (major, minor) = gpu.compute_capability;
    let module = chosen_module(major, minor).map_err(|e| CudaUnavailable::NoDevice(format!("{}: {e}", gpu.name)))?;
    Ok((gpu, module))
}

/// The committed PTX module a GPU of compute capability `major.minor` loads: the newest it can
/// run, or the one `RESCA_PTX_ARCH` names (`sm_80` on a Hopper GPU runs the Ampere module there,
/// JIT-compiled for the newer chip, so that one GPU can check both modules).
pub fn chosen_module(major: u32, minor: u32) -> Result<&'static PtxModule, String> {
    module_choice(major, minor, std::env::var("RESCA_PTX_ARCH").ok().as_deref())
}

/// The committed PTX module for a GPU of compute capability `major.minor`: the one named by
/// `forced` (`sm_80`, `sm_90`; none or empty: the newest the GPU runs), or why there is none.
pub fn module_choice(major: u32, minor: u32, forced: Option<&str>) -> Result<&'static PtxModule, String> {
    let too_old = || format!("sm_{major}{minor}, and the kernels need sm_80 or later");
    let Some(arch) = forced.filter(|a| !a.is_empty()) else {
        return module_for(major, minor).ok_or_else(too_old);
    };
    let module = MODULES.iter().find(|m| m.arch == arch).ok_or_else(|| {
        let known: Vec<&str> = MODULES.iter().map(|m| m.arch).collect();
        format!(
            "RESCA_PTX_ARCH={arch} names no PTX module (there are {})",
            known.join(", ")
        )
    })?;
    if module.compute > 10 * major + minor {
        return Err(format!(
            "RESCA_PTX_ARCH={arch} is newer than this GPU, sm_{major}{minor}"
        ));
    }
    Ok(module)
}

/// The device to use: `RESCA_CUDA_DEVICE` (an ordinal), else 0.
pub fn default_ordinal() -> usize {
    std::env::var("RESCA_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// JIT-compiles `module` into the context current on the calling thread
/// (`cuModuleLoadDataEx`, with the JIT's error log in the error).
pub fn load_module(module: &PtxModule) -> Result<sys::CUmodule, String> {
    let source = CString::new(module.ptx).map_err(|_| format!("{}: a NUL byte in the PTX", module.file))?;
    let mut log = vec![0u8; 16 * 1024];
    let mut options = [
        sys::CUjit_option_enum::CU_JIT_ERROR_LOG_BUFFER,
        sys::CUjit_option_enum::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
    ];
    let mut values = [log.as_mut_ptr().cast::<c_void>(), log.len() as *mut c_void];
    let mut handle = std::ptr::null_mut();
    // SAFETY: a NUL-terminated PTX image and two JIT options with their values (a buffer and
    // its size passed by value, as the driver API specifies); a context is current (the
    // caller's contract).
    let loaded = unsafe {
        sys::cuModuleLoadDataEx(
            &mut handle,
            source.as_ptr().cast(),
            options.len() as u32,
            options.as_mut_ptr(),
            values.as_mut_ptr(),
        )
    }
    .result();
    if let Err(e) = loaded {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        return Err(format!(
            "JIT-compiling {} failed: {}: {}",
            module.file,
            driver_error(e),
            String::from_utf8_lossy(&log[..end]).trim()
        ));
    }
    Ok(handle)
}

/// What the driver compiled for `function` (registers, static shared and local memory, the
/// largest block).
///
/// # Safety
/// `function` is a function of a module loaded in a live context.
pub unsafe fn function_attributes(function: sys::CUfunction) -> Result<FunctionAttributes, String> {
    use sys::CUfunction_attribute_enum as A;
    let get = |a| {
        // SAFETY: the caller's contract.
        unsafe { result::function::get_function_attribute(function, a) }.map_err(driver_error)
    };
    Ok(FunctionAttributes {
        registers: get(A::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
        static_shared_bytes: get(A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
        local_bytes: get(A::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
        max_threads_per_block: get(A::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
    })
}

/// The cudarc binding: a primary context, the loaded module, the null stream.
pub struct Cudarc {
    ctx: Arc<CudaContext>,
    module: sys::CUmodule,
}

impl Cudarc {
    /// Retains device `ordinal`'s primary context and JIT-loads `module` on it.
    pub fn new(ordinal: usize, module: &PtxModule) -> Result<Self, String> {
        let ctx = quietly(|| CudaContext::new(ordinal))
            .ok_or_else(|| format!("device {ordinal}: the driver lacks a function cudarc needs"))?
            .map_err(|e| format!("device {ordinal}: {}", driver_error(e)))?;
        let handle = load_module(module)?;
        Ok(Self { ctx, module: handle })
    }

    fn bind(&self) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(driver_error)
    }

    fn stream() -> sys::CUstream {
        std::ptr::null_mut()
    }
}

impl Driver for Cudarc {
    type Function = sys::CUfunction;
    const NAME: &'static str = "cuda";

    fn alloc_zeroed(&mut self, bytes: usize) -> Result<u64, String> {
        self.bind()?;
        // SAFETY: a fresh allocation, zeroed in stream order before any use.
        unsafe {
            let address = result::malloc_sync(bytes).map_err(driver_error)?;
            result::memset_d8_async(address, 0, bytes, Self::stream()).map_err(driver_error)?;
            Ok(address)
        }
    }

    fn free(&mut self, address: u64) -> Result<(), String> {
        self.bind()?;
        self.synchronize()?;
        // SAFETY: an allocation of `alloc_zeroed`, freed once, after the work using it.
        unsafe { result::free_sync(address) }.map_err(driver_error)
    }

    fn upload(&mut self, dst: u64, src: &[u8]) -> Result<(), String> {
        self.bind()?;
        // SAFETY: `dst` holds `src.len()` bytes (checked by the device); the synchronous copy
        // has read `src` when it returns and is ordered after the null stream's work.
        unsafe { result::memcpy_htod_sync(dst, src) }.map_err(driver_error)
    }

    fn download(&mut self, dst: &mut [u8], src: u64) -> Result<(), String> {
        self.bind()?;
        // SAFETY: as for `upload`; the copy waits for the null stream's work.
        unsafe { result::memcpy_dtoh_sync(dst, src) }.map_err(driver_error)
    }

    fn copy(&mut self, dst: u64, src: u64, bytes: usize) -> Result<(), String> {
        self.bind()?;
        // SAFETY: both ranges are within live allocations and do not overlap (checked).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, Self::stream()) }.map_err(driver_error)
    }

    fn function(&mut self, name: &str) -> Result<Self::Function, String> {
        self.bind()?;
        let name = CString::new(name).map_err(|_| "a NUL byte in a kernel name".to_string())?;
        // SAFETY: the module is loaded and lives as long as `self`.
        unsafe { result::module::get_function(self.module, name) }.map_err(driver_error)
    }

    fn attributes(&mut self, function: &Self::Function) -> Result<FunctionAttributes, String> {
        // SAFETY: a function of the loaded module, which lives as long as `self`.
        unsafe { function_attributes(*function) }
    }

    unsafe fn launch(
        &mut self,
        function: &Self::Function,
        dims: LaunchDims,
        params: &[*mut c_void],
    ) -> Result<(), String> {
        self.bind()?;
        let mut params = params.to_vec();
        let (g, b) = (dims.grid, dims.block);
        // SAFETY: the caller's contract.
        unsafe {
            result::launch_kernel(
                *function,
                (g.x, g.y, g.z),
                (b.x, b.y, b.z),
                dims.shared_bytes,
                Self::stream(),
                &mut params,
            )
        }
        .map_err(driver_error)
    }

    fn set_max_dynamic_shared(&mut self, function: &Self::Function, bytes: u32) -> Result<(), String> {
        self.bind()?;
        let attribute = sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: a function of the loaded module.
        unsafe { result::function::set_function_attribute(*function, attribute, bytes as i32) }.map_err(driver_error)
    }

    fn synchronize(&mut self) -> Result<(), String> {
        self.bind()?;
        // SAFETY: the null stream of the current context.
        unsafe { result::stream::synchronize(Self::stream()) }.map_err(driver_error)
    }
}

impl Drop for Cudarc {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: loaded once, unloaded once; the device freed its buffers before.
            let _ = unsafe { result::module::unload(self.module) };
        }
    }
}

#[cfg(test)]
mod quiet_panic_tests {
    use super::quietly;

    #[test]
    fn a_caught_panic_becomes_none_and_values_pass_through() {
        assert_eq!(quietly(|| 7), Some(7));
        assert_eq!(quietly(|| -> i32 { panic!("a missing libcuda symbol") }), None);
        // The flag is reset: a later panic outside `quietly` still reaches the previous hook
        // (not observable here without replacing the hook; the flag itself is checked).
        assert!(!super::PANIC_CAUGHT_QUIETLY.with(std::cell::Cell::get));
    }
}

#[cfg(test)]
mod module_choice_tests {
    use super::module_choice;

    #[test]
    fn the_newest_module_a_gpu_runs_unless_one_is_named() {
        let arch = |major, minor, forced| module_choice(major, minor, forced).map(|m| m.arch);
        assert_eq!(arch(9, 0, None), Ok("sm_90"));
        assert_eq!(arch(8, 6, None), Ok("sm_80"));
        assert_eq!(arch(10, 0, Some("")), Ok("sm_90"));
        // The Ampere module on a Hopper GPU, JIT-compiled there.
        assert_eq!(arch(9, 0, Some("sm_80")), Ok("sm_80"));
        assert_eq!(arch(9, 0, Some("sm_90")), Ok("sm_90"));
    }

    #[test]
    fn an_old_gpu_or_a_wrong_module_name_is_a_clear_error() {
        let error = |major, minor, forced| module_choice(major, minor, forced).unwrap_err();
        assert_eq!(error(7, 5, None), "sm_75, and the kernels need sm_80 or later");
        assert_eq!(
            error(8, 6, Some("sm_90")),
            "RESCA_PTX_ARCH=sm_90 is newer than this GPU, sm_86"
        );
        assert_eq!(
            error(9, 0, Some("sm_70")),
            "RESCA_PTX_ARCH=sm_70 names no PTX module (there are sm_80, sm_90)"
        );
    }
}
