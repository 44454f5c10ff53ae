//! Global-memory kernel parameters: a pointer and an element count, `#[repr(C)]` and `Copy` so
//! that they can be passed by value to a PTX entry point (and to a cuda_std `#[kernel]`).
//!
//! A kernel body never dereferences them itself: it goes through [`crate::ThreadCtx::load`] and
//! [`crate::ThreadCtx::store`], which the host simulator bounds-checks and the GPU context turns
//! into plain loads and stores.

use core::marker::PhantomData;

/// A read-only global buffer of `len` elements.
#[repr(C)]
pub struct Global<'a, T> {
    ptr: *const T,
    len: usize,
    _borrow: PhantomData<&'a [T]>,
}

/// A writable global buffer of `len` elements. Copies alias (every GPU thread holds one): writes
/// from different threads to the same element are the kernel's responsibility, as in CUDA.
#[repr(C)]
pub struct GlobalMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

impl<T> Clone for Global<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Global<'_, T> {}
impl<T> Clone for GlobalMut<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GlobalMut<'_, T> {}

impl<'a, T> Global<'a, T> {
    /// Borrows a host slice (the simulator's device memory).
    pub fn new(slice: &'a [T]) -> Self {
        Self {
            ptr: slice.as_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// A buffer from a raw device pointer.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `len` elements for `'a`.
    pub unsafe fn from_raw(ptr: *const T, len: usize) -> Self {
        Self {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }

    /// An empty buffer, for parameters a kernel variant does not read.
    pub fn empty() -> Self {
        Self {
            ptr: core::ptr::NonNull::dangling().as_ptr(),
            len: 0,
            _borrow: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_ptr(&self) -> *const T {
        self.ptr
    }
}

impl<'a, T> GlobalMut<'a, T> {
    /// Borrows a host slice mutably (the simulator's device memory).
    pub fn new(slice: &'a mut [T]) -> Self {
        Self {
            ptr: slice.as_mut_ptr(),
            len: slice.len(),
            _borrow: PhantomData,
        }
    }

    /// A buffer from a raw device pointer.
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` elements for `'a`.
    pub unsafe fn from_raw(ptr: *mut T, len: usize) -> Self {
        Self {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_ptr(&self) -> *mut T {
        self.ptr
    }

    /// The same memory, read-only (for kernels that update a buffer in place).
    pub fn as_global(&self) -> Global<'a, T> {
        Global {
            ptr: self.ptr,
            len: self.len,
            _borrow: PhantomData,
        }
    }
}
