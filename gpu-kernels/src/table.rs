//! The kernel table: every kernel's entry point declared once, in [`kernel_table!`](crate::kernel_table).
//!
//! One entry names the kernel (the [`Kernel`] variant and the PTX entry name), lists its
//! parameters in launch order, names its body and, where it has one, its static shared memory:
//!
//! ```text
//! /// `out = A W^T + b` (one line on what the kernel computes).
//! GemmBias = gemm_bias(
//!     a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>, m: u32, n: u32, k: u32,
//! ) => gemm::gemm_bias, shared gemm::GEMM_SHARED_BYTES;
//! ```
//!
//! Parameter types: `Global<T>` (read-only buffer) and `GlobalMut<T>` (writable buffer) of
//! `f32`, `u32` or `f64`; `u32`; `f32`; `DdimCoefficients`; `TaylorCoefficients`. The body is
//! `module::function` of this crate (a turbofish is allowed: `embed::linear_rows::<_, true>`),
//! called as `body(&ctx, parameters...)`. `shared module::CONST` declares the kernel's `.shared`
//! buffer of `CONST` bytes (named `<entry>_smem` in the PTX); `dynamic_shared module::CONST`
//! gives it the module's dynamic shared memory instead (the `.extern .shared` array
//! `resca_dynamic_smem`), sized by each launch's `shared_bytes` up to `CONST` bytes (which may
//! exceed the 48 KiB of static shared memory); without either the kernel has none.
//!
//! Everything else is expanded from the table:
//! * the PTX entry points (`nvptx` module, `#[unsafe(no_mangle)] unsafe extern "ptx-kernel"`);
//! * the Rust-CUDA `#[kernel]` entry points (`nvvm` module, feature `nvvm`);
//! * [`KERNELS`], [`Kernel`] with its [`Kernel::params`] signature and
//!   [`Kernel::static_shared_bytes`], which `resca-host` uses as its kernel enum and to check
//!   and pack every launch (`cuda::params`);
//! * [`Kernel::bind`] and [`BoundKernel::run`]: a call's arguments turned into the body's
//!   parameters, for the host simulator;
//! * in `resca-host`, one argument struct per kernel (`pipeline::launch::args`), whose fields
//!   are the parameters by name, so a launch cannot pass them in the wrong order or kind.
//!
//! # Adding a kernel
//! 1. Write the body in its module (a generic `fn body<C: ThreadCtx>(ctx: &C, ...)`, plus a
//!    `*_dims` function for its launch geometry and, if it uses shared memory, a `*_SHARED_BYTES`
//!    constant); a new module is declared in `lib.rs`.
//! 2. Add one entry to the table below (anywhere; the order is that of [`KERNELS`]).
//! 3. For the pipeline, add a typed launch function to `resca-host`'s `pipeline/launch.rs` that
//!    checks the sizes, computes the geometry with the `*_dims` function and calls
//!    `launch(dev, dims, args::YourKernel { .. })`.
//! 4. Rebuild the PTX and its manifest with `bash scripts/build-ptx.sh` (nightly toolchain) and
//!    commit `gpu-kernels/ptx/`; `bash scripts/build-ptx.sh --check` then says they are up to
//!    date, and `cargo test -p resca-gpu-kernels --test ptx` checks the committed PTX against the
//!    table on stable.
//! 5. Test it on the simulator against the reference (`resca-host`'s `tests/sim_*.rs`). The
//!    pipeline workload of `resca-host`'s `tests/support` must launch every kernel of the table:
//!    `tests/cuda_backend.rs` packs each launch as the CUDA backend would, and `tests/cuda_gpu.rs`
//!    compares each kernel on a GPU with the simulator.
//!
//! Nothing else names a kernel: the simulator, the CUDA backend and the manifest follow the table.
//!
//! Kernels that share a body but differ in a compile-time choice are separate entries over the
//! same function (`linear_rows` / `linear_rows_silu`); the host launches such variants with one
//! argument struct through `launch_as`.
//!
//! # Adding a parameter type
//! A parameter type the table does not know yet (another buffer element type, another struct
//! passed by value) needs: a [`DType`] or [`ParamKind`] variant (with its size and manifest
//! name), its arms in `__kernel_param!` (below), an [`ArgSource`] method for a struct, and on the
//! host an `Arg` variant, its arms in `pipeline::launch`'s `arg_field!`, the simulator's
//! `ArgSource` and the CUDA backend's `cuda::params::pack` (and, for an element type, the host's
//! `Element` impl and each device's buffer storage).

use crate::ddim::DdimCoefficients;
use crate::global::{Global, GlobalMut};
use crate::taylor::TaylorCoefficients;
use crate::thread::ThreadCtx;

/// Calls `$callback! { entries }` with the kernel table (see the [module docs](crate::table) for
/// the entry syntax). Every list of kernels in the workspace is such an expansion.
#[macro_export]
macro_rules! kernel_table {
    ($callback:ident) => {
        $callback! {
            /// Sinusoidal timestep features (B, 256) of the model times `t` (B).
            TimestepFeatures = timestep_features(t: Global<f32>, out: GlobalMut<f32>)
                => embed::timestep_features;
            /// `out (rows, out_f) = x W^T + b`: the GEMV of the t-embedder.
            LinearRows = linear_rows(
                x: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                rows: u32, in_features: u32, out_features: u32,
            ) => embed::linear_rows::<_, false>;
            /// `out = SiLU(x W^T + b)`: the t-embedder's first layer and adaLN.
            LinearRowsSilu = linear_rows_silu(
                x: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                rows: u32, in_features: u32, out_features: u32,
            ) => embed::linear_rows::<_, true>;
            /// `silu_c (B, D) = SiLU(t_emb + table[labels])`.
            LabelEmbedSilu = label_embed_silu(
                t_emb: Global<f32>, table: Global<f32>, labels: Global<u32>, silu_c: GlobalMut<f32>,
                hidden: u32,
            ) => embed::label_embed_silu;
            /// Patch embedding + bias + pos_embed: images (B, C, S, S) to tokens (B N, D).
            PatchEmbed = patch_embed(
                x: Global<f32>, w: Global<f32>, bias: Global<f32>, pos: Global<f32>, out: GlobalMut<f32>,
                channels: u32, side: u32, patch: u32, hidden: u32,
            ) => embed::patch_embed, shared embed::PATCH_SHARED_BYTES;
            /// `out = LN(x) (1 + scale) + shift` for token rows.
            LayerNormModulate = layer_norm_modulate(
                x: Global<f32>, modulation: Global<f32>, out: GlobalMut<f32>,
                rows: u32, hidden: u32, tokens: u32, mod_stride: u32, shift_offset: u32, scale_offset: u32,
            ) => norm::layer_norm_modulate;
            /// `out (M, N) = A (M, K) W^T + b`.
            GemmBias = gemm_bias(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm::gemm_bias, shared gemm::GEMM_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)`.
            GemmBiasGelu = gemm_bias_gelu(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm::gemm_bias_gelu, shared gemm::GEMM_SHARED_BYTES;
            /// `x (M, N) += gate * (A W^T + b)`, row r gated by its sample's gate.
            GemmBiasGatedResidual = gemm_bias_gated_residual(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm::gemm_bias_gated_residual, shared gemm::GEMM_SHARED_BYTES;
            /// `out (M, N) = A W^T + b`: exact FMA GEMM, 128 x 128 tiles, 8 x 8 per thread.
            Gemm128Bias = gemm128_bias(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tiled::gemm_bias::<_, 8>, shared gemm_tiled::GEMM128_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)`: exact FMA GEMM, 128 x 128 tiles.
            Gemm128BiasGelu = gemm128_bias_gelu(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tiled::gemm_bias_gelu::<_, 8>, shared gemm_tiled::GEMM128_SHARED_BYTES;
            /// `x += gate * (A W^T + b)`: exact FMA GEMM, 128 x 128 tiles.
            Gemm128BiasGatedResidual = gemm128_bias_gated_residual(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tiled::gemm_bias_gated_residual::<_, 8>, shared gemm_tiled::GEMM128_SHARED_BYTES;
            /// `out (M, N) = A W^T + b`: exact FMA GEMM, 64 x 64 tiles, 4 x 4 per thread.
            Gemm64Bias = gemm64_bias(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tiled::gemm_bias::<_, 4>, shared gemm_tiled::GEMM64_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)`: exact FMA GEMM, 64 x 64 tiles.
            Gemm64BiasGelu = gemm64_bias_gelu(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tiled::gemm_bias_gelu::<_, 4>, shared gemm_tiled::GEMM64_SHARED_BYTES;
            /// `x += gate * (A W^T + b)`: exact FMA GEMM, 64 x 64 tiles.
            Gemm64BiasGatedResidual = gemm64_bias_gated_residual(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tiled::gemm_bias_gated_residual::<_, 4>, shared gemm_tiled::GEMM64_SHARED_BYTES;
            /// `partials[z] = A W^T` over the z-th range of `k_per_split` k (split-K, few rows).
            GemmSplitkPartial = gemm_splitk_partial(
                a: Global<f32>, w: Global<f32>, partials: GlobalMut<f32>,
                m: u32, n: u32, k: u32, k_per_split: u32,
            ) => gemm_tiled::gemm_splitk_partial, shared gemm_tiled::GEMM64_SHARED_BYTES;
            /// `out = sum_z partials[z] + b`, summed in split order.
            GemmSplitkBias = gemm_splitk_bias(
                partials: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>, m: u32, n: u32, splits: u32,
            ) => gemm_tiled::gemm_splitk_bias;
            /// `out = GELU_tanh(sum_z partials[z] + b)`, summed in split order.
            GemmSplitkBiasGelu = gemm_splitk_bias_gelu(
                partials: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>, m: u32, n: u32, splits: u32,
            ) => gemm_tiled::gemm_splitk_bias_gelu;
            /// `x += gate * (sum_z partials[z] + b)`, summed in split order.
            GemmSplitkBiasGatedResidual = gemm_splitk_bias_gated_residual(
                partials: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, splits: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tiled::gemm_splitk_bias_gated_residual;
            /// `out = A W^T + b` on TF32 tensor cores.
            GemmTf32Bias = gemm_tf32_bias(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias::<_, { $crate::gemm_tc::TF32 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)` on TF32 tensor cores.
            GemmTf32BiasGelu = gemm_tf32_bias_gelu(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias_gelu::<_, { $crate::gemm_tc::TF32 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `x += gate * (A W^T + b)` on TF32 tensor cores.
            GemmTf32BiasGatedResidual = gemm_tf32_bias_gated_residual(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tc::gemm_tc_bias_gated_residual::<_, { $crate::gemm_tc::TF32 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `out = A W^T + b` on 3xTF32 tensor cores (FP32-level accuracy).
            GemmTf32X3Bias = gemm_tf32x3_bias(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias::<_, { $crate::gemm_tc::TF32X3 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)` on 3xTF32 tensor cores (FP32-level accuracy).
            GemmTf32X3BiasGelu = gemm_tf32x3_bias_gelu(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias_gelu::<_, { $crate::gemm_tc::TF32X3 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `x += gate * (A W^T + b)` on 3xTF32 tensor cores (FP32-level accuracy).
            GemmTf32X3BiasGatedResidual = gemm_tf32x3_bias_gated_residual(
                a: Global<f32>, w: Global<f32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tc::gemm_tc_bias_gated_residual::<_, { $crate::gemm_tc::TF32X3 }, f32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `out = A W^T + b` on BF16 tensor cores (W packed at upload).
            GemmBf16Bias = gemm_bf16_bias(
                a: Global<f32>, w: Global<u32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias::<_, { $crate::gemm_tc::BF16 }, u32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `out = GELU_tanh(A W^T + b)` on BF16 tensor cores (W packed at upload).
            GemmBf16BiasGelu = gemm_bf16_bias_gelu(
                a: Global<f32>, w: Global<u32>, bias: Global<f32>, out: GlobalMut<f32>,
                m: u32, n: u32, k: u32,
            ) => gemm_tc::gemm_tc_bias_gelu::<_, { $crate::gemm_tc::BF16 }, u32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// `x += gate * (A W^T + b)` on BF16 tensor cores (W packed at upload).
            GemmBf16BiasGatedResidual = gemm_bf16_bias_gated_residual(
                a: Global<f32>, w: Global<u32>, bias: Global<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                m: u32, n: u32, k: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => gemm_tc::gemm_tc_bias_gated_residual::<_, { $crate::gemm_tc::BF16 }, u32>, dynamic_shared gemm_tc::TC_MAX_SHARED_BYTES;
            /// Multi-head attention, FlashAttention-2 style: `qkv` (B N, 3 H hd) to `out` (B N, H hd).
            FlashAttention = flash_attention(
                qkv: Global<f32>, out: GlobalMut<f32>, tokens: u32, heads: u32, head_dim: u32, scale: f32,
            ) => attention::flash_attention, shared attention::ATTN_SHARED_BYTES;
            /// Multi-head attention on TF32 tensor cores (`q k^T` and `p v` on `mma.sync`).
            FlashAttentionTf32 = flash_attention_tf32(
                qkv: Global<f32>, out: GlobalMut<f32>, tokens: u32, heads: u32, head_dim: u32, scale: f32,
            ) => attention_tc::flash_attention_tc::<_, { $crate::gemm_tc::TF32 }>, dynamic_shared attention_tc::ATTN_TC_MAX_SHARED_BYTES;
            /// Multi-head attention on 3xTF32 tensor cores (FP32-level accuracy).
            FlashAttentionTf32X3 = flash_attention_tf32x3(
                qkv: Global<f32>, out: GlobalMut<f32>, tokens: u32, heads: u32, head_dim: u32, scale: f32,
            ) => attention_tc::flash_attention_tc::<_, { $crate::gemm_tc::TF32X3 }>, dynamic_shared attention_tc::ATTN_TC_MAX_SHARED_BYTES;
            /// Multi-head attention on BF16 tensor cores.
            FlashAttentionBf16 = flash_attention_bf16(
                qkv: Global<f32>, out: GlobalMut<f32>, tokens: u32, heads: u32, head_dim: u32, scale: f32,
            ) => attention_tc::flash_attention_tc::<_, { $crate::gemm_tc::BF16 }>, dynamic_shared attention_tc::ATTN_TC_MAX_SHARED_BYTES;
            /// Final-layer tokens (B N, p p C_out) to images (B, C_out, S, S).
            Unpatchify = unpatchify(
                tokens: Global<f32>, out: GlobalMut<f32>, batch: u32, out_channels: u32, side: u32, patch: u32,
            ) => final_layer::unpatchify;
            /// Classifier-free guidance in place on a (2 pairs, C_out, pixels) model output.
            CfgMix = cfg_mix(out: GlobalMut<f32>, pairs: u32, out_channels: u32, pixels: u32, scale: f32)
                => guidance::cfg_mix;
            /// One DDIM step.
            DdimStep = ddim_step(
                x: Global<f32>, model_out: Global<f32>, out: GlobalMut<f32>,
                total: u32, channels: u32, out_channels: u32, pixels: u32, coef: DdimCoefficients,
            ) => ddim::ddim_step;
            /// `x (rows, D) += gate * branch`, row r gated by its sample's gate.
            GatedAdd = gated_add(
                x: GlobalMut<f32>, branch: Global<f32>, gate: Global<f32>,
                rows: u32, hidden: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
            ) => residual::gated_add;
            /// One flow Euler step `out = x + dt v`.
            FlowEulerStep = flow_euler_step(
                x: Global<f32>, model_out: Global<f32>, out: GlobalMut<f32>,
                total: u32, channels: u32, out_channels: u32, pixels: u32, dt: f32,
            ) => flow::flow_euler_step;
            /// The Taylor-cache update with a new output.
            TaylorUpdate = taylor_update(
                factors: GlobalMut<f32>, new: Global<f32>, len: u32, stored: u32, max_order: u32, gap: f32,
            ) => taylor::taylor_update;
            /// `out = sum_i F_i d^i / i!` over the stored factors.
            TaylorPredict = taylor_predict(
                factors: Global<f32>, out: GlobalMut<f32>, len: u32, stored: u32, coef: TaylorCoefficients,
            ) => taylor::taylor_predict;
            /// `x += gate * prediction` for token rows.
            TaylorPredictGatedAdd = taylor_predict_gated_add(
                x: GlobalMut<f32>, factors: Global<f32>, gate: Global<f32>,
                rows: u32, hidden: u32, tokens: u32, gate_stride: u32, gate_offset: u32,
                stored: u32, coef: Global<f32>,
            ) => taylor::taylor_predict_gated_add;
            /// `out[r] = x[r] / max(|x[r]|, 1e-6)`.
            RowNormalize = row_normalize(x: Global<f32>, out: GlobalMut<f32>, rows: u32, dim: u32)
                => tetc::row_normalize;
            /// `s (B, N, N) = xn_b xn_b^T`.
            Similarity = similarity(xn: Global<f32>, s: GlobalMut<f32>, tokens: u32, dim: u32)
                => tetc::similarity, shared gemm::GEMM_SHARED_BYTES;
            /// `smoothed = alpha s + (1 - alpha) smoothed`, or `s` without a previous one.
            SimilarityEma = similarity_ema(
                s: Global<f32>, smoothed: GlobalMut<f32>, total: u32, alpha: f32, has_previous: u32,
            ) => tetc::similarity_ema;
            /// `labels[b, i] = argmax_c s[b, i, medoids[b, c]]`.
            KmedoidsAssign = kmedoids_assign(
                s: Global<f32>, medoids: Global<u32>, labels: GlobalMut<u32>, batch: u32, tokens: u32, clusters: u32,
            ) => tetc::kmedoids_assign;
            /// The medoid update into `next`.
            KmedoidsUpdate = kmedoids_update(
                s: Global<f32>, labels: Global<u32>, medoids: Global<u32>, next: GlobalMut<u32>,
                tokens: u32, clusters: u32,
            ) => tetc::kmedoids_update, shared tetc::MEDOID_SHARED_BYTES;
            /// `center-random` proxies from the host's uniform numbers.
            CenterRandomProxies = center_random_proxies(
                s: Global<f32>, labels: Global<u32>, medoids: Global<u32>, uniforms: Global<f64>,
                proxies: GlobalMut<u32>, batch: u32, tokens: u32, clusters: u32,
            ) => tetc::center_random_proxies;
            /// `counts[b, c]`: the size of cluster c of batch row b.
            ClusterCounts = cluster_counts(
                labels: Global<u32>, counts: GlobalMut<u32>, batch: u32, tokens: u32, clusters: u32,
            ) => clusters::cluster_counts;
            /// `members[b, c]`: the member of rank `ranks[b, c]` of cluster c.
            ClusterMembers = cluster_members(
                labels: Global<u32>, ranks: Global<u32>, members: GlobalMut<u32>,
                batch: u32, tokens: u32, clusters: u32,
            ) => clusters::cluster_members;
            /// K-means assignment by L1 distance.
            KmeansAssignL1 = kmeans_assign_l1(
                x: Global<f32>, centroids: Global<f32>, labels: GlobalMut<u32>,
                batch: u32, tokens: u32, clusters: u32, hidden: u32,
            ) => clusca::kmeans_assign_l1;
            /// K-means centroid update into `next`, with the per-(row, cluster) `moved` flags.
            KmeansUpdate = kmeans_update(
                x: Global<f32>, labels: Global<u32>, centroids: Global<f32>, next: GlobalMut<f32>,
                moved: GlobalMut<u32>, tokens: u32, clusters: u32, hidden: u32,
            ) => clusca::kmeans_update, shared clusca::KMEANS_SHARED_BYTES;
            /// `dst[b] = src[b]` for the batch rows with `mask[b] != 0`.
            CommitRows = commit_rows(
                src: Global<f32>, dst: GlobalMut<f32>, mask: Global<u32>, total: u32, row_len: u32,
            ) => clusca::commit_rows;
            /// ClusCa's propagation into the order-0 MLP cache.
            CluscaPropagate = clusca_propagate(
                cache0: GlobalMut<f32>, fresh: Global<f32>, labels: Global<u32>, picks: Global<u32>,
                ranks: Global<u32>, batch: u32, tokens: u32, clusters: u32, hidden: u32, gamma: f32,
            ) => clusca::clusca_propagate;
            /// `out[b K + c] = src[b N + indices[b K + c]]`.
            GatherRows = gather_rows(
                src: Global<f32>, indices: Global<u32>, out: GlobalMut<f32>,
                batch: u32, tokens: u32, per_row: u32, hidden: u32,
            ) => gather::gather_rows;
            /// `dst[b N + indices[b K + c]] = rows[b K + c]` (last cluster wins).
            ScatterRows = scatter_rows(
                rows: Global<f32>, indices: Global<u32>, dst: GlobalMut<f32>,
                batch: u32, tokens: u32, per_row: u32, hidden: u32,
            ) => gather::scatter_rows;
            /// The proxies' residuals of orders 1..=`order`.
            PddsProxyResiduals = pdds_proxy_residuals(
                fresh: Global<f32>, cache: Global<f32>, proxies: Global<u32>, residuals: GlobalMut<f32>,
                batch: u32, tokens: u32, clusters: u32, hidden: u32, order: u32, stored: u32, sign: f32,
            ) => pdds::proxy_residuals;
            /// The proxies' fresh rows and the implicit update (IE / IT / BDF2) of every other row,
            /// then `x += gate * out`.
            PddsUpdate = pdds_update(
                cache: Global<f32>, labels: Global<u32>, proxies: Global<u32>, residuals: Global<f32>,
                fresh: Global<f32>, out: GlobalMut<f32>, x: GlobalMut<f32>, gate: Global<f32>,
                batch: u32, tokens: u32, clusters: u32, hidden: u32,
                order: u32, stored: u32, sign: f32, solver: u32, gate_stride: u32, gate_offset: u32,
            ) => pdds::pdds_update;
        }
    };
}

/// Maps a table parameter type (`Global<f32>`, `u32`, ...) to what an expansion needs: its Rust
/// type (`type 'a; ...`), its [`ParamKind`] (`kind ...`), or the [`ArgSource`] call that reads it
/// (`bind args; ...`).
#[doc(hidden)]
#[macro_export]
macro_rules! __kernel_param {
    (type $lt:lifetime; Global<$t:ident>) => { $crate::Global<$lt, $t> };
    (type $lt:lifetime; GlobalMut<$t:ident>) => { $crate::GlobalMut<$lt, $t> };
    (type $lt:lifetime; u32) => { u32 };
    (type $lt:lifetime; f32) => { f32 };
    (type $lt:lifetime; DdimCoefficients) => { $crate::ddim::DdimCoefficients };
    (type $lt:lifetime; TaylorCoefficients) => { $crate::taylor::TaylorCoefficients };

    (kind Global<$t:ident>) => { $crate::ParamKind::Read(<$t as $crate::BufferElement>::DTYPE) };
    (kind GlobalMut<$t:ident>) => { $crate::ParamKind::Write(<$t as $crate::BufferElement>::DTYPE) };
    (kind u32) => { $crate::ParamKind::U32 };
    (kind f32) => { $crate::ParamKind::F32 };
    (kind DdimCoefficients) => { $crate::ParamKind::Ddim };
    (kind TaylorCoefficients) => { $crate::ParamKind::Taylor };

    (bind $args:ident; Global<$t:ident>) => { $args.read::<$t>()? };
    (bind $args:ident; GlobalMut<$t:ident>) => { $args.write::<$t>()? };
    (bind $args:ident; u32) => { $args.u32()? };
    (bind $args:ident; f32) => { $args.f32()? };
    (bind $args:ident; DdimCoefficients) => { $args.ddim()? };
    (bind $args:ident; TaylorCoefficients) => { $args.taylor()? };
}

/// Element types of kernel buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U32,
    F64,
}

/// A type kernel buffers hold.
pub trait BufferElement: Copy {
    const DTYPE: DType;
}

impl BufferElement for f32 {
    const DTYPE: DType = DType::F32;
}
impl BufferElement for u32 {
    const DTYPE: DType = DType::U32;
}
impl BufferElement for f64 {
    const DTYPE: DType = DType::F64;
}

/// What one entry-point parameter is. Layouts as the entry points take them: `Read` / `Write`
/// are a [`Global`] / [`GlobalMut`] (`#[repr(C)]` pointer to the first element, then the length
/// as a u64: 16 bytes), `U32` / `F32` plain 4-byte values, `Ddim` / `Taylor` the `#[repr(C)]`
/// coefficient structs (4 and 8 f32s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `Global<T>`: a read-only buffer.
    Read(DType),
    /// `GlobalMut<T>`: a writable buffer.
    Write(DType),
    U32,
    F32,
    Ddim,
    Taylor,
}

impl ParamKind {
    /// Bytes of the parameter (its Rust type's size, which the PTX declaration must match).
    pub const fn size(self) -> usize {
        match self {
            ParamKind::Read(_) => size_of::<Global<'_, f32>>(),
            ParamKind::Write(_) => size_of::<GlobalMut<'_, f32>>(),
            ParamKind::U32 => size_of::<u32>(),
            ParamKind::F32 => size_of::<f32>(),
            ParamKind::Ddim => size_of::<DdimCoefficients>(),
            ParamKind::Taylor => size_of::<TaylorCoefficients>(),
        }
    }

    /// The Rust type of the entry point's parameter, as `gpu-kernels/ptx/manifest.json` records it.
    pub const fn rust_type(self) -> &'static str {
        match self {
            ParamKind::Read(DType::F32) => "Global<'_, f32>",
            ParamKind::Read(DType::U32) => "Global<'_, u32>",
            ParamKind::Read(DType::F64) => "Global<'_, f64>",
            ParamKind::Write(DType::F32) => "GlobalMut<'_, f32>",
            ParamKind::Write(DType::U32) => "GlobalMut<'_, u32>",
            ParamKind::Write(DType::F64) => "GlobalMut<'_, f64>",
            ParamKind::U32 => "u32",
            ParamKind::F32 => "f32",
            ParamKind::Ddim => "DdimCoefficients",
            ParamKind::Taylor => "TaylorCoefficients",
        }
    }
}

/// One parameter of an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    /// The Rust parameter name.
    pub name: &'static str,
    pub kind: ParamKind,
}

/// Where [`Kernel::bind`] takes a call's arguments from, in parameter order: each method yields
/// the next parameter, or an error when the call's next argument is not of that kind.
pub trait ArgSource<'a> {
    type Error;
    fn read<T: BufferElement>(&mut self) -> Result<Global<'a, T>, Self::Error>;
    fn write<T: BufferElement>(&mut self) -> Result<GlobalMut<'a, T>, Self::Error>;
    fn u32(&mut self) -> Result<u32, Self::Error>;
    fn f32(&mut self) -> Result<f32, Self::Error>;
    fn ddim(&mut self) -> Result<DdimCoefficients, Self::Error>;
    fn taylor(&mut self) -> Result<TaylorCoefficients, Self::Error>;
}

/// The static shared memory of an entry: `shared module::CONST`, or none.
macro_rules! static_shared_bytes {
    () => {
        0
    };
    (shared $module:ident :: $bytes:ident) => {
        crate::$module::$bytes
    };
    (dynamic_shared $module:ident :: $bytes:ident) => {
        0
    };
}

/// The most dynamic shared memory an entry is launched with: `dynamic_shared module::CONST`, or
/// none.
macro_rules! dynamic_shared_bytes {
    () => {
        0
    };
    (shared $module:ident :: $bytes:ident) => {
        0
    };
    (dynamic_shared $module:ident :: $bytes:ident) => {
        crate::$module::$bytes
    };
}

macro_rules! declare_kernels {
    ($(
        $(#[$attr:meta])*
        $variant:ident = $name:ident($($param:ident: $kind:ident $(<$elem:ident>)?),* $(,)?)
            => $module:ident :: $body:ident $(::<$($generic:tt),*>)?
            $(, $shared_kind:ident $shared_module:ident :: $shared_bytes:ident)?;
    )*) => {
        /// Every kernel entry point, in the order of [`KERNELS`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($(#[$attr])* $variant,)*
        }

        /// The name of every PTX entry point, as a driver looks them up in the modules that
        /// `scripts/build-ptx.sh` writes to `gpu-kernels/ptx/resca_kernels.sm_{80,90}.ptx` (see
        /// [`ptx`](crate::ptx)).
        pub const KERNELS: &[&str] = &[$(stringify!($name)),*];

        impl Kernel {
            pub const ALL: &[Kernel] = &[$(Kernel::$variant),*];

            /// The PTX entry name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => stringify!($name),)*
                }
            }

            /// The entry point's parameters, in launch order.
            pub const fn params(self) -> &'static [Param] {
                match self {
                    $(Kernel::$variant => {
                        const PARAMS: &[Param] = &[$(Param {
                            name: stringify!($param),
                            kind: $crate::__kernel_param!(kind $kind $(<$elem>)?),
                        }),*];
                        PARAMS
                    })*
                }
            }

            /// Bytes of the entry point's `.shared` buffer (0 without one).
            pub const fn static_shared_bytes(self) -> u32 {
                match self {
                    $(Kernel::$variant => static_shared_bytes!($($shared_kind $shared_module::$shared_bytes)?),)*
                }
            }

            /// The most dynamic shared memory the entry point is launched with (0 for a kernel
            /// without dynamic shared memory): a launch gives its size as
            /// [`LaunchDims::shared_bytes`](crate::LaunchDims), and the CUDA backend raises the
            /// function's `MAX_DYNAMIC_SHARED_SIZE_BYTES` to this when it is above 48 KiB.
            pub const fn dynamic_shared_bytes(self) -> u32 {
                match self {
                    $(Kernel::$variant => dynamic_shared_bytes!($($shared_kind $shared_module::$shared_bytes)?),)*
                }
            }

            /// The kernel with its parameters taken from `args`, in order (for a launch on the host).
            pub fn bind<'a, S: ArgSource<'a>>(self, args: &mut S) -> Result<BoundKernel<'a>, S::Error> {
                Ok(match self {
                    $(Kernel::$variant => BoundKernel::$variant {
                        $($param: $crate::__kernel_param!(bind args; $kind $(<$elem>)?),)*
                    },)*
                })
            }
        }

        /// A kernel with its parameters: what one thread of a launch runs ([`Kernel::bind`]).
        #[derive(Clone, Copy)]
        pub enum BoundKernel<'a> {
            $($variant { $($param: $crate::__kernel_param!(type 'a; $kind $(<$elem>)?)),* },)*
        }

        impl BoundKernel<'_> {
            /// Runs the kernel body as the thread `ctx`.
            #[inline]
            pub fn run<C: ThreadCtx>(&self, ctx: &C) {
                match *self {
                    $(BoundKernel::$variant { $($param),* } => {
                        crate::$module::$body $(::<$($generic),*>)? (ctx, $($param),*)
                    })*
                }
            }
        }
    };
}

crate::kernel_table!(declare_kernels);
