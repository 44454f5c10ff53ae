//! Rust-CUDA entry points (feature `nvvm`): the same kernel bodies behind cuda_std-style
//! `#[kernel] pub unsafe fn` entry points with a [`ThreadCtx`] over cuda_std's thread, shared
//! memory and warp APIs, for `rustc_codegen_nvvm` / `cuda_builder` (see docs/gpu.md, "Rust-CUDA
//! (cuda_builder)"). Entry names and parameters are those of the `nvptx` module (and of
//! `ptx/manifest.json`), so the host launches either PTX the same way.
//!
//! What is verified here: with `--features nvvm` this module type-checks on the host against
//! crates.io `cuda_std` 0.2.2, whose GPU-only functions (`#[gpu_only]`) compile to
//! `unimplemented!` bodies off the GPU. What is not: NVVM code generation (the Rust-CUDA toolchain,
//! LLVM 7 with `rustc-dev`, was not available to build), so no PTX from this path has been
//! produced or run.
//!
//! Differences from the `nvptx` module that a user of this path should know: rustc_codegen_nvvm
//! contracts multiplies and adds into FMAs by default, so results differ from the simulator's in
//! the last bits (compare with tolerances), and shared memory comes from `shared_array!`.
//!
//! Safety contract of every entry point (as in the `nvptx` module): launched with the geometry of
//! the kernel's `*_dims` function, and every buffer valid for the element count it carries and
//! for the indices the kernel body computes from the scalar parameters.

// The contract above is the `# Safety` section of every entry point.
#![allow(clippy::missing_safety_doc)]

use cuda_std::{gpu_only, kernel, shared_array, thread};

use crate::ddim::DdimCoefficients;
use crate::global::{Global, GlobalMut};
use crate::taylor::TaylorCoefficients;
use crate::thread::{SharedWord, ThreadCtx};
use crate::{
    attention, clusca, clusters, ddim, embed, final_layer, flow, gather, gemm, guidance, norm, pdds, residual, taylor,
    tetc,
};

/// The hardware thread through cuda_std. Built only inside an entry point, with that kernel's
/// `shared_array!` buffer (or null for kernels without shared memory).
pub struct NvvmCtx {
    shared: *mut u32,
}

impl NvvmCtx {
    #[inline(always)]
    fn new(shared: *mut u32) -> Self {
        Self { shared }
    }
}

/// `shfl.sync.<mode>.b32` over the full warp (cuda_std 0.2.2 has no shuffle functions).
macro_rules! shuffle {
    ($name:ident, $mode:literal) => {
        #[gpu_only]
        #[inline(always)]
        fn $name(value: u32, operand: u32) -> u32 {
            let r: u32;
            unsafe {
                core::arch::asm!(
                    concat!("shfl.sync.", $mode, ".b32 {r}, {v}, {o}, 0x1f, 0xffffffff;"),
                    r = out(reg32) r,
                    v = in(reg32) value,
                    o = in(reg32) operand,
                )
            };
            r
        }
    };
}

shuffle!(shfl_bfly, "bfly");
shuffle!(shfl_down, "down");
shuffle!(shfl_idx, "idx");

impl ThreadCtx for NvvmCtx {
    #[inline(always)]
    fn thread_idx_x(&self) -> u32 {
        thread::thread_idx_x()
    }
    #[inline(always)]
    fn thread_idx_y(&self) -> u32 {
        thread::thread_idx_y()
    }
    #[inline(always)]
    fn thread_idx_z(&self) -> u32 {
        thread::thread_idx_z()
    }
    #[inline(always)]
    fn block_idx_x(&self) -> u32 {
        thread::block_idx_x()
    }
    #[inline(always)]
    fn block_idx_y(&self) -> u32 {
        thread::block_idx_y()
    }
    #[inline(always)]
    fn block_idx_z(&self) -> u32 {
        thread::block_idx_z()
    }
    #[inline(always)]
    fn block_dim_x(&self) -> u32 {
        thread::block_dim_x()
    }
    #[inline(always)]
    fn block_dim_y(&self) -> u32 {
        thread::block_dim_y()
    }
    #[inline(always)]
    fn block_dim_z(&self) -> u32 {
        thread::block_dim_z()
    }
    #[inline(always)]
    fn grid_dim_x(&self) -> u32 {
        thread::grid_dim_x()
    }
    #[inline(always)]
    fn grid_dim_y(&self) -> u32 {
        thread::grid_dim_y()
    }
    #[inline(always)]
    fn grid_dim_z(&self) -> u32 {
        thread::grid_dim_z()
    }

    #[inline(always)]
    fn sync_threads(&self) {
        thread::sync_threads()
    }

    #[inline(always)]
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        f32::from_bits(shfl_bfly(value.to_bits(), lane_mask))
    }

    #[inline(always)]
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        f32::from_bits(shfl_down(value.to_bits(), delta))
    }

    #[inline(always)]
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        f32::from_bits(shfl_idx(value.to_bits(), src_lane))
    }

    #[inline(always)]
    fn shared_load<T: SharedWord>(&self, index: usize) -> T {
        T::from_word(unsafe { *self.shared.add(index) })
    }

    #[inline(always)]
    fn shared_store<T: SharedWord>(&self, index: usize, value: T) {
        unsafe { *self.shared.add(index) = value.to_word() }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, buffer: Global<'_, T>, index: usize) -> T {
        unsafe { *buffer.as_ptr().add(index) }
    }

    #[inline(always)]
    fn store<T: Copy>(&self, buffer: GlobalMut<'_, T>, index: usize, value: T) {
        unsafe { *buffer.as_mut_ptr().add(index) = value }
    }
}

#[kernel]
pub unsafe fn timestep_features(t: Global<'_, f32>, out: GlobalMut<'_, f32>) {
    embed::timestep_features(&NvvmCtx::new(core::ptr::null_mut()), t, out);
}

#[kernel]
pub unsafe fn linear_rows(
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    in_features: u32,
    out_features: u32,
) {
    embed::linear_rows::<_, false>(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        w,
        bias,
        out,
        rows,
        in_features,
        out_features,
    );
}

#[kernel]
pub unsafe fn linear_rows_silu(
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    in_features: u32,
    out_features: u32,
) {
    embed::linear_rows::<_, true>(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        w,
        bias,
        out,
        rows,
        in_features,
        out_features,
    );
}

#[kernel]
pub unsafe fn label_embed_silu(
    t_emb: Global<'_, f32>,
    table: Global<'_, f32>,
    labels: Global<'_, u32>,
    silu_c: GlobalMut<'_, f32>,
    hidden: u32,
) {
    embed::label_embed_silu(
        &NvvmCtx::new(core::ptr::null_mut()),
        t_emb,
        table,
        labels,
        silu_c,
        hidden,
    );
}

#[kernel]
pub unsafe fn patch_embed(
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    pos: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    channels: u32,
    side: u32,
    patch: u32,
    hidden: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; embed::PATCH_SHARED_BYTES as usize / 4]);
    embed::patch_embed(&ctx, x, w, bias, pos, out, channels, side, patch, hidden);
}

#[kernel]
pub unsafe fn layer_norm_modulate(
    x: Global<'_, f32>,
    modulation: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    mod_stride: u32,
    shift_offset: u32,
    scale_offset: u32,
) {
    norm::layer_norm_modulate(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        modulation,
        out,
        rows,
        hidden,
        tokens,
        mod_stride,
        shift_offset,
        scale_offset,
    );
}

#[kernel]
pub unsafe fn gemm_bias(
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; gemm::GEMM_SHARED_BYTES as usize / 4]);
    gemm::gemm_bias(&ctx, a, w, bias, out, m, n, k);
}

#[kernel]
pub unsafe fn gemm_bias_gelu(
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; gemm::GEMM_SHARED_BYTES as usize / 4]);
    gemm::gemm_bias_gelu(&ctx, a, w, bias, out, m, n, k);
}

#[kernel]
pub unsafe fn gemm_bias_gated_residual(
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    x: GlobalMut<'_, f32>,
    gate: Global<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; gemm::GEMM_SHARED_BYTES as usize / 4]);
    gemm::gemm_bias_gated_residual(&ctx, a, w, bias, x, gate, m, n, k, tokens, gate_stride, gate_offset);
}

#[kernel]
pub unsafe fn attention(
    qkv: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; attention::ATTN_SHARED_BYTES as usize / 4]);
    attention::attention(&ctx, qkv, out, tokens, heads, head_dim, scale);
}

#[kernel]
pub unsafe fn unpatchify(
    tokens: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    out_channels: u32,
    side: u32,
    patch: u32,
) {
    final_layer::unpatchify(
        &NvvmCtx::new(core::ptr::null_mut()),
        tokens,
        out,
        batch,
        out_channels,
        side,
        patch,
    );
}

#[kernel]
pub unsafe fn cfg_mix(out: GlobalMut<'_, f32>, pairs: u32, out_channels: u32, pixels: u32, scale: f32) {
    guidance::cfg_mix(
        &NvvmCtx::new(core::ptr::null_mut()),
        out,
        pairs,
        out_channels,
        pixels,
        scale,
    );
}

#[kernel]
pub unsafe fn ddim_step(
    x: Global<'_, f32>,
    model_out: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    total: u32,
    channels: u32,
    out_channels: u32,
    pixels: u32,
    coef: DdimCoefficients,
) {
    ddim::ddim_step(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        model_out,
        out,
        total,
        channels,
        out_channels,
        pixels,
        coef,
    );
}

#[kernel]
pub unsafe fn gated_add(
    x: GlobalMut<'_, f32>,
    branch: Global<'_, f32>,
    gate: Global<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
) {
    residual::gated_add(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        branch,
        gate,
        rows,
        hidden,
        tokens,
        gate_stride,
        gate_offset,
    );
}

#[kernel]
pub unsafe fn flow_euler_step(
    x: Global<'_, f32>,
    model_out: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    total: u32,
    channels: u32,
    out_channels: u32,
    pixels: u32,
    dt: f32,
) {
    flow::flow_euler_step(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        model_out,
        out,
        total,
        channels,
        out_channels,
        pixels,
        dt,
    );
}

#[kernel]
pub unsafe fn taylor_update(
    factors: GlobalMut<'_, f32>,
    new: Global<'_, f32>,
    len: u32,
    stored: u32,
    max_order: u32,
    gap: f32,
) {
    taylor::taylor_update(
        &NvvmCtx::new(core::ptr::null_mut()),
        factors,
        new,
        len,
        stored,
        max_order,
        gap,
    );
}

#[kernel]
pub unsafe fn taylor_predict(
    factors: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    len: u32,
    stored: u32,
    coef: TaylorCoefficients,
) {
    taylor::taylor_predict(&NvvmCtx::new(core::ptr::null_mut()), factors, out, len, stored, coef);
}

#[kernel]
pub unsafe fn taylor_predict_gated_add(
    x: GlobalMut<'_, f32>,
    factors: Global<'_, f32>,
    gate: Global<'_, f32>,
    rows: u32,
    hidden: u32,
    tokens: u32,
    gate_stride: u32,
    gate_offset: u32,
    stored: u32,
    coef: TaylorCoefficients,
) {
    taylor::taylor_predict_gated_add(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        factors,
        gate,
        rows,
        hidden,
        tokens,
        gate_stride,
        gate_offset,
        stored,
        coef,
    );
}

#[kernel]
pub unsafe fn row_normalize(x: Global<'_, f32>, out: GlobalMut<'_, f32>, rows: u32, dim: u32) {
    tetc::row_normalize(&NvvmCtx::new(core::ptr::null_mut()), x, out, rows, dim);
}

#[kernel]
pub unsafe fn similarity(xn: Global<'_, f32>, s: GlobalMut<'_, f32>, tokens: u32, dim: u32) {
    let ctx = NvvmCtx::new(shared_array![u32; gemm::GEMM_SHARED_BYTES as usize / 4]);
    tetc::similarity(&ctx, xn, s, tokens, dim);
}

#[kernel]
pub unsafe fn similarity_ema(
    s: Global<'_, f32>,
    smoothed: GlobalMut<'_, f32>,
    total: u32,
    alpha: f32,
    has_previous: u32,
) {
    tetc::similarity_ema(
        &NvvmCtx::new(core::ptr::null_mut()),
        s,
        smoothed,
        total,
        alpha,
        has_previous,
    );
}

#[kernel]
pub unsafe fn kmedoids_assign(
    s: Global<'_, f32>,
    medoids: Global<'_, u32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    tetc::kmedoids_assign(
        &NvvmCtx::new(core::ptr::null_mut()),
        s,
        medoids,
        labels,
        batch,
        tokens,
        clusters,
    );
}

#[kernel]
pub unsafe fn kmedoids_update(
    s: Global<'_, f32>,
    labels: Global<'_, u32>,
    medoids: Global<'_, u32>,
    next: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; tetc::MEDOID_SHARED_BYTES as usize / 4]);
    tetc::kmedoids_update(&ctx, s, labels, medoids, next, tokens, clusters);
}

#[kernel]
pub unsafe fn center_random_proxies(
    s: Global<'_, f32>,
    labels: Global<'_, u32>,
    medoids: Global<'_, u32>,
    uniforms: Global<'_, f64>,
    proxies: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    tetc::center_random_proxies(
        &NvvmCtx::new(core::ptr::null_mut()),
        s,
        labels,
        medoids,
        uniforms,
        proxies,
        batch,
        tokens,
        clusters,
    );
}

#[kernel]
pub unsafe fn cluster_counts(
    labels: Global<'_, u32>,
    counts: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    clusters::cluster_counts(
        &NvvmCtx::new(core::ptr::null_mut()),
        labels,
        counts,
        batch,
        tokens,
        clusters,
    );
}

#[kernel]
pub unsafe fn cluster_members(
    labels: Global<'_, u32>,
    ranks: Global<'_, u32>,
    members: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    clusters::cluster_members(
        &NvvmCtx::new(core::ptr::null_mut()),
        labels,
        ranks,
        members,
        batch,
        tokens,
        clusters,
    );
}

#[kernel]
pub unsafe fn kmeans_assign_l1(
    x: Global<'_, f32>,
    centroids: Global<'_, f32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    clusca::kmeans_assign_l1(
        &NvvmCtx::new(core::ptr::null_mut()),
        x,
        centroids,
        labels,
        batch,
        tokens,
        clusters,
        hidden,
    );
}

#[kernel]
pub unsafe fn kmeans_update(
    x: Global<'_, f32>,
    labels: Global<'_, u32>,
    centroids: Global<'_, f32>,
    next: GlobalMut<'_, f32>,
    moved: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    let ctx = NvvmCtx::new(shared_array![u32; clusca::KMEANS_SHARED_BYTES as usize / 4]);
    clusca::kmeans_update(&ctx, x, labels, centroids, next, moved, tokens, clusters, hidden);
}

#[kernel]
pub unsafe fn commit_rows(
    src: Global<'_, f32>,
    dst: GlobalMut<'_, f32>,
    mask: Global<'_, u32>,
    total: u32,
    row_len: u32,
) {
    clusca::commit_rows(&NvvmCtx::new(core::ptr::null_mut()), src, dst, mask, total, row_len);
}

#[kernel]
pub unsafe fn clusca_propagate(
    cache0: GlobalMut<'_, f32>,
    fresh: Global<'_, f32>,
    labels: Global<'_, u32>,
    picks: Global<'_, u32>,
    ranks: Global<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    gamma: f32,
) {
    clusca::clusca_propagate(
        &NvvmCtx::new(core::ptr::null_mut()),
        cache0,
        fresh,
        labels,
        picks,
        ranks,
        batch,
        tokens,
        clusters,
        hidden,
        gamma,
    );
}

#[kernel]
pub unsafe fn gather_rows(
    src: Global<'_, f32>,
    indices: Global<'_, u32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    gather::gather_rows(
        &NvvmCtx::new(core::ptr::null_mut()),
        src,
        indices,
        out,
        batch,
        tokens,
        per_row,
        hidden,
    );
}

#[kernel]
pub unsafe fn scatter_rows(
    rows: Global<'_, f32>,
    indices: Global<'_, u32>,
    dst: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    gather::scatter_rows(
        &NvvmCtx::new(core::ptr::null_mut()),
        rows,
        indices,
        dst,
        batch,
        tokens,
        per_row,
        hidden,
    );
}

#[kernel]
pub unsafe fn pdds_proxy_residuals(
    fresh: Global<'_, f32>,
    cache: Global<'_, f32>,
    proxies: Global<'_, u32>,
    residuals: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    order: u32,
    stored: u32,
    sign: f32,
) {
    pdds::proxy_residuals(
        &NvvmCtx::new(core::ptr::null_mut()),
        fresh,
        cache,
        proxies,
        residuals,
        batch,
        tokens,
        clusters,
        hidden,
        order,
        stored,
        sign,
    );
}

#[kernel]
pub unsafe fn pdds_update(
    cache: Global<'_, f32>,
    labels: Global<'_, u32>,
    proxies: Global<'_, u32>,
    residuals: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
    order: u32,
    stored: u32,
    sign: f32,
    solver: u32,
) {
    pdds::pdds_update(
        &NvvmCtx::new(core::ptr::null_mut()),
        cache,
        labels,
        proxies,
        residuals,
        out,
        batch,
        tokens,
        clusters,
        hidden,
        order,
        stored,
        sign,
        solver,
    );
}
