//! Pure-ndarray CPU reference of DiT and the ResCa caching methods (work in progress).

// Links OpenBLAS, which ndarray's `blas` feature calls for every large matrix product.
extern crate blas_src;
