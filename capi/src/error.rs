//! Errors across the boundary: every entry point returns a [`RescaStatus`], keeps the message of
//! its failure for the calling thread ([`resca_last_error`]), and catches any panic so that none
//! unwinds into the host.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call returned. Every failure also leaves its message for the calling thread, which
/// `resca_last_error` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescaStatus {
    /// Success.
    Ok = 0,
    /// An argument was refused: a null pointer, a length that does not match, an unknown kernel
    /// or parameter, a value out of range.
    InvalidArgument = 1,
    /// A file could not be read or is not a model.
    Io = 2,
    /// No CUDA driver, no GPU, or a GPU older than sm_80.
    NoGpu = 3,
    /// The CUDA driver reported an error.
    Cuda = 4,
    /// The kernel simulator found an error in a launch (out-of-bounds access, race).
    Kernel = 5,
    /// A bug of the library (a caught panic); the message says where.
    Internal = 6,
}

/// A failure: its status and its message.
#[derive(Debug)]
pub struct Error {
    pub status: RescaStatus,
    pub message: String,
}

impl Error {
    pub fn new(status: RescaStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A refused argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(RescaStatus::InvalidArgument, message)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A NUL inside a message (from a file name, say) would end the C string early: shown as `?`.
    let text = CString::new(message.replace('\0', "?")).expect("no NUL left");
    let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = text);
}

/// Runs the body of an entry point: its result becomes the status, its error the thread's last
/// message, and a panic an [`RescaStatus::Internal`] error instead of an unwind into the host.
pub fn entry(body: impl FnOnce() -> Result<()>) -> RescaStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => RescaStatus::Ok,
        Ok(Err(error)) => {
            set_last_error(&error.message);
            error.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            set_last_error(&format!("internal error in libresca (please report it): {what}"));
            RescaStatus::Internal
        }
    }
}

/// The message of the last call that failed on the calling thread (an empty string before any
/// failure). Successful calls leave it as it is.
///
/// Ownership: the string belongs to the library. It stays valid, unchanged, until the next
/// failing call on the same thread; copy it to keep it longer. Never free it.
#[unsafe(no_mangle)]
pub extern "C" fn resca_last_error() -> *const c_char {
    // `try_with`: no panic even while the thread's storage is being torn down.
    LAST_ERROR
        .try_with(|last| last.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The name of a status (`"RESCA_STATUS_INVALID_ARGUMENT"`; `"unknown status"` for a value
/// that is none), a static string (never free it).
#[unsafe(no_mangle)]
pub extern "C" fn resca_status_name(status: i32) -> *const c_char {
    let name: &'static [u8] = match status {
        0 => b"RESCA_STATUS_OK\0",
        1 => b"RESCA_STATUS_INVALID_ARGUMENT\0",
        2 => b"RESCA_STATUS_IO\0",
        3 => b"RESCA_STATUS_NO_GPU\0",
        4 => b"RESCA_STATUS_CUDA\0",
        5 => b"RESCA_STATUS_KERNEL\0",
        6 => b"RESCA_STATUS_INTERNAL\0",
        _ => b"unknown status\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last() -> String {
        // SAFETY: the library's NUL-terminated message.
        unsafe { CStr::from_ptr(resca_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let status = entry(|| panic!("an index out of range"));
        assert_eq!(status, RescaStatus::Internal);
        assert!(last().contains("internal error in libresca"), "{}", last());
        assert!(last().contains("an index out of range"), "{}", last());
        let status = entry(|| Err(Error::new(RescaStatus::Io, "a file\0with a NUL")));
        assert_eq!(status, RescaStatus::Io);
        assert_eq!(last(), "a file?with a NUL");
        assert_eq!(entry(|| Ok(())), RescaStatus::Ok);
        assert_eq!(last(), "a file?with a NUL", "a success leaves the message");
    }

    #[test]
    fn every_status_has_its_name() {
        // SAFETY: static NUL-terminated names.
        let name = |s: i32| {
            unsafe { CStr::from_ptr(resca_status_name(s)) }
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(name(RescaStatus::Ok as i32), "RESCA_STATUS_OK");
        assert_eq!(name(RescaStatus::Kernel as i32), "RESCA_STATUS_KERNEL");
        assert_eq!(name(RescaStatus::Internal as i32), "RESCA_STATUS_INTERNAL");
        assert_eq!(name(42), "unknown status");
    }
}
