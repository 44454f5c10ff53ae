//! The GPU entry points where there is no driver (`RESCA_CUDA_DISABLE=1` pretends so on any
//! machine): a clear `RESCA_STATUS_NO_GPU`, never a panic; and null handles refused. The GPU
//! path itself runs in the example hosts on a GPU machine (scripts/gpu-run-bundle.sh).

use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

use resca::RescaStatus;
use resca::error::resca_last_error;
use resca::gpu::{resca_gpu_launch, resca_gpu_open};

fn last_error() -> String {
    // SAFETY: the library's NUL-terminated message.
    unsafe { CStr::from_ptr(resca_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn without_a_driver_opening_fails_with_the_reason_and_null_handles_are_refused() {
    // SAFETY: the only test of this process, and it starts no thread before this.
    unsafe { std::env::set_var("RESCA_CUDA_DISABLE", "1") };
    let mut gpu = std::ptr::dangling_mut::<resca::gpu::RescaGpu>();
    // SAFETY: a place for the handle; no context is touched without a driver.
    let status = unsafe { resca_gpu_open(null_mut(), null(), &mut gpu) };
    assert_eq!(status, RescaStatus::NoGpu, "{}", last_error());
    assert!(last_error().contains("no CUDA driver found"), "{}", last_error());
    assert!(gpu.is_null(), "the handle is set to null on failure");
    let kernel = CString::new("gemm_bias").unwrap();
    // SAFETY: a null handle is refused before anything else is read.
    let status = unsafe { resca_gpu_launch(null(), null_mut(), kernel.as_ptr(), null(), 0) };
    assert_eq!(status, RescaStatus::InvalidArgument);
    assert!(last_error().contains("`gpu` is a null pointer"), "{}", last_error());
    // SAFETY: a null `out` is refused.
    let status = unsafe { resca_gpu_open(null_mut(), null(), null_mut()) };
    assert_eq!(status, RescaStatus::InvalidArgument);
}
