//! The GPU side: [`NvptxCtx`] (special registers, `bar.sync`, `shfl.sync`, a per-kernel
//! `.shared` buffer through inline PTX) and one `#[no_mangle] unsafe extern "ptx-kernel"` entry
//! point per kernel. Entry points take only `Copy` parameters and return nothing, as Rust-CUDA's
//! `#[kernel]` requires, and do nothing but build the context and call the kernel body.
//!
//! Safety contract of every entry point: launched with the geometry of the kernel's `*_dims`
//! function, and every buffer valid for the element count it carries and for the indices the
//! kernel body computes from the scalar parameters (the host simulator checks exactly this).

use core::arch::asm;
use core::arch::nvptx;

use crate::ddim::DdimCoefficients;
use crate::global::{Global, GlobalMut};
use crate::taylor::TaylorCoefficients;
use crate::thread::{SharedWord, ThreadCtx};
use crate::{
    attention, clusca, clusters, ddim, embed, final_layer, flow, gather, gemm, guidance, norm, pdds, residual, taylor,
    tetc,
};

/// The hardware thread. Built only inside an entry point, with that kernel's shared buffer.
pub struct NvptxCtx {
    shared: *mut u32,
}

impl NvptxCtx {
    /// # Safety
    /// `shared` is null (the kernel uses no shared memory) or the generic address of this
    /// kernel's `.shared` buffer.
    #[inline(always)]
    pub unsafe fn new(shared: *mut u32) -> Self {
        Self { shared }
    }
}

/// Declares a `.shared` buffer of `$bytes` bytes named `$name` (once per kernel: the entry
/// point is the only place that expands it) and yields its generic address.
macro_rules! shared_buffer {
    ($name:literal, $bytes:expr) => {{
        let address: u64;
        // SAFETY: declares a buffer and converts its address; no memory is touched.
        unsafe {
            asm!(
                concat!(".shared .align 16 .b8 ", $name, "[{bytes}];"),
                concat!("cvta.shared.u64 {address}, ", $name, ";"),
                bytes = const $bytes,
                address = out(reg64) address,
            )
        };
        address as *mut u32
    }};
}

impl ThreadCtx for NvptxCtx {
    #[inline(always)]
    fn thread_idx_x(&self) -> u32 {
        unsafe { nvptx::_thread_idx_x() as u32 }
    }
    #[inline(always)]
    fn thread_idx_y(&self) -> u32 {
        unsafe { nvptx::_thread_idx_y() as u32 }
    }
    #[inline(always)]
    fn thread_idx_z(&self) -> u32 {
        unsafe { nvptx::_thread_idx_z() as u32 }
    }
    #[inline(always)]
    fn block_idx_x(&self) -> u32 {
        unsafe { nvptx::_block_idx_x() as u32 }
    }
    #[inline(always)]
    fn block_idx_y(&self) -> u32 {
        unsafe { nvptx::_block_idx_y() as u32 }
    }
    #[inline(always)]
    fn block_idx_z(&self) -> u32 {
        unsafe { nvptx::_block_idx_z() as u32 }
    }
    #[inline(always)]
    fn block_dim_x(&self) -> u32 {
        unsafe { nvptx::_block_dim_x() as u32 }
    }
    #[inline(always)]
    fn block_dim_y(&self) -> u32 {
        unsafe { nvptx::_block_dim_y() as u32 }
    }
    #[inline(always)]
    fn block_dim_z(&self) -> u32 {
        unsafe { nvptx::_block_dim_z() as u32 }
    }
    #[inline(always)]
    fn grid_dim_x(&self) -> u32 {
        unsafe { nvptx::_grid_dim_x() as u32 }
    }
    #[inline(always)]
    fn grid_dim_y(&self) -> u32 {
        unsafe { nvptx::_grid_dim_y() as u32 }
    }
    #[inline(always)]
    fn grid_dim_z(&self) -> u32 {
        unsafe { nvptx::_grid_dim_z() as u32 }
    }

    #[inline(always)]
    fn sync_threads(&self) {
        unsafe { nvptx::_syncthreads() }
    }

    #[inline(always)]
    fn shfl_xor_f32(&self, value: f32, lane_mask: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.bfly.b32 {r}, {v}, {m}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                m = in(reg32) lane_mask,
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shfl_down_f32(&self, value: f32, delta: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.down.b32 {r}, {v}, {d}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                d = in(reg32) delta,
            )
        };
        f32::from_bits(r)
    }

    #[inline(always)]
    fn shfl_idx_f32(&self, value: f32, src_lane: u32) -> f32 {
        let r: u32;
        unsafe {
            asm!(
                "shfl.sync.idx.b32 {r}, {v}, {l}, 0x1f, 0xffffffff;",
                r = out(reg32) r,
                v = in(reg32) value.to_bits(),
                l = in(reg32) src_lane,
            )
        };
        f32::from_bits(r)
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

/// A context for kernels without shared memory.
#[inline(always)]
fn no_shared() -> NvptxCtx {
    // SAFETY: such kernels never touch shared memory.
    unsafe { NvptxCtx::new(core::ptr::null_mut()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn timestep_features(t: Global<'_, f32>, out: GlobalMut<'_, f32>) {
    embed::timestep_features(&no_shared(), t, out);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn linear_rows(
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    in_features: u32,
    out_features: u32,
) {
    embed::linear_rows::<_, false>(&no_shared(), x, w, bias, out, rows, in_features, out_features);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn linear_rows_silu(
    x: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    rows: u32,
    in_features: u32,
    out_features: u32,
) {
    embed::linear_rows::<_, true>(&no_shared(), x, w, bias, out, rows, in_features, out_features);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn label_embed_silu(
    t_emb: Global<'_, f32>,
    table: Global<'_, f32>,
    labels: Global<'_, u32>,
    silu_c: GlobalMut<'_, f32>,
    hidden: u32,
) {
    embed::label_embed_silu(&no_shared(), t_emb, table, labels, silu_c, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn patch_embed(
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
    let shared = shared_buffer!("patch_embed_smem", embed::PATCH_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    embed::patch_embed(&ctx, x, w, bias, pos, out, channels, side, patch, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn layer_norm_modulate(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_bias(
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    let shared = shared_buffer!("gemm_bias_smem", gemm::GEMM_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    gemm::gemm_bias(&ctx, a, w, bias, out, m, n, k);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_bias_gelu(
    a: Global<'_, f32>,
    w: Global<'_, f32>,
    bias: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    m: u32,
    n: u32,
    k: u32,
) {
    let shared = shared_buffer!("gemm_bias_gelu_smem", gemm::GEMM_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    gemm::gemm_bias_gelu(&ctx, a, w, bias, out, m, n, k);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_bias_gated_residual(
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
    let shared = shared_buffer!("gemm_bias_gated_residual_smem", gemm::GEMM_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    gemm::gemm_bias_gated_residual(&ctx, a, w, bias, x, gate, m, n, k, tokens, gate_stride, gate_offset);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn attention(
    qkv: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
) {
    let shared = shared_buffer!("attention_smem", attention::ATTN_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    attention::attention(&ctx, qkv, out, tokens, heads, head_dim, scale);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn unpatchify(
    tokens: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    out_channels: u32,
    side: u32,
    patch: u32,
) {
    final_layer::unpatchify(&no_shared(), tokens, out, batch, out_channels, side, patch);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn cfg_mix(
    out: GlobalMut<'_, f32>,
    pairs: u32,
    out_channels: u32,
    pixels: u32,
    scale: f32,
) {
    guidance::cfg_mix(&no_shared(), out, pairs, out_channels, pixels, scale);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn ddim_step(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gated_add(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn flow_euler_step(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn taylor_update(
    factors: GlobalMut<'_, f32>,
    new: Global<'_, f32>,
    len: u32,
    stored: u32,
    max_order: u32,
    gap: f32,
) {
    taylor::taylor_update(&no_shared(), factors, new, len, stored, max_order, gap);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn taylor_predict(
    factors: Global<'_, f32>,
    out: GlobalMut<'_, f32>,
    len: u32,
    stored: u32,
    coef: TaylorCoefficients,
) {
    taylor::taylor_predict(&no_shared(), factors, out, len, stored, coef);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn taylor_predict_gated_add(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn row_normalize(x: Global<'_, f32>, out: GlobalMut<'_, f32>, rows: u32, dim: u32) {
    tetc::row_normalize(&no_shared(), x, out, rows, dim);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn similarity(xn: Global<'_, f32>, s: GlobalMut<'_, f32>, tokens: u32, dim: u32) {
    let shared = shared_buffer!("similarity_smem", gemm::GEMM_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    tetc::similarity(&ctx, xn, s, tokens, dim);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn similarity_ema(
    s: Global<'_, f32>,
    smoothed: GlobalMut<'_, f32>,
    total: u32,
    alpha: f32,
    has_previous: u32,
) {
    tetc::similarity_ema(&no_shared(), s, smoothed, total, alpha, has_previous);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn kmedoids_assign(
    s: Global<'_, f32>,
    medoids: Global<'_, u32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    tetc::kmedoids_assign(&no_shared(), s, medoids, labels, batch, tokens, clusters);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn kmedoids_update(
    s: Global<'_, f32>,
    labels: Global<'_, u32>,
    medoids: Global<'_, u32>,
    next: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
) {
    let shared = shared_buffer!("kmedoids_update_smem", tetc::MEDOID_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    tetc::kmedoids_update(&ctx, s, labels, medoids, next, tokens, clusters);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn center_random_proxies(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn cluster_counts(
    labels: Global<'_, u32>,
    counts: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    clusters::cluster_counts(&no_shared(), labels, counts, batch, tokens, clusters);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn cluster_members(
    labels: Global<'_, u32>,
    ranks: Global<'_, u32>,
    members: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
) {
    clusters::cluster_members(&no_shared(), labels, ranks, members, batch, tokens, clusters);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn kmeans_assign_l1(
    x: Global<'_, f32>,
    centroids: Global<'_, f32>,
    labels: GlobalMut<'_, u32>,
    batch: u32,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    clusca::kmeans_assign_l1(&no_shared(), x, centroids, labels, batch, tokens, clusters, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn kmeans_update(
    x: Global<'_, f32>,
    labels: Global<'_, u32>,
    centroids: Global<'_, f32>,
    next: GlobalMut<'_, f32>,
    moved: GlobalMut<'_, u32>,
    tokens: u32,
    clusters: u32,
    hidden: u32,
) {
    let shared = shared_buffer!("kmeans_update_smem", clusca::KMEANS_SHARED_BYTES);
    let ctx = unsafe { NvptxCtx::new(shared) };
    clusca::kmeans_update(&ctx, x, labels, centroids, next, moved, tokens, clusters, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn commit_rows(
    src: Global<'_, f32>,
    dst: GlobalMut<'_, f32>,
    mask: Global<'_, u32>,
    total: u32,
    row_len: u32,
) {
    clusca::commit_rows(&no_shared(), src, dst, mask, total, row_len);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn clusca_propagate(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gather_rows(
    src: Global<'_, f32>,
    indices: Global<'_, u32>,
    out: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    gather::gather_rows(&no_shared(), src, indices, out, batch, tokens, per_row, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn scatter_rows(
    rows: Global<'_, f32>,
    indices: Global<'_, u32>,
    dst: GlobalMut<'_, f32>,
    batch: u32,
    tokens: u32,
    per_row: u32,
    hidden: u32,
) {
    gather::scatter_rows(&no_shared(), rows, indices, dst, batch, tokens, per_row, hidden);
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn pdds_proxy_residuals(
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
        &no_shared(),
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

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn pdds_update(
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
        &no_shared(),
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
