/*
 * resca.h: the C interface of resca (libresca.a, libresca.so), for C, C++ and Python hosts.
 * Generated from capi/src by cbindgen (capi/tests/header.rs); do not edit by hand.
 * How to link it, the context/stream contract and every kernel's parameters: docs/linking.md.
 */

#ifndef RESCA_H
#define RESCA_H

#include <stddef.h>
#include <stdint.h>

// The interface version of this header; compare it with `resca_api_version()` at startup.
#define RESCA_API_VERSION 1

// `RescaSampleOptions.sampler`: DDIM (eta 0), DiT's sampler.
#define RESCA_SAMPLER_DDIM 0

// `RescaSampleOptions.sampler`: flow matching, Euler steps.
#define RESCA_SAMPLER_FLOW 1

// `RescaSampleOptions.method`: every block of every step.
#define RESCA_METHOD_FULL 0

// `RescaSampleOptions.method`: reuse the last full step's branch outputs.
#define RESCA_METHOD_FORA 1

// `RescaSampleOptions.method`: Taylor prediction of every branch (order 0-4).
#define RESCA_METHOD_TAYLORSEER 2

// `RescaSampleOptions.method`: K-means clusters, one member per cluster recomputed.
#define RESCA_METHOD_CLUSCA 3

// `RescaSampleOptions.method`: residual caching: TETC clusters, K proxies, PDDS.
#define RESCA_METHOD_RESCA 4

// `RescaSampleOptions.solver`: implicit Euler (ResCa-IE).
#define RESCA_SOLVER_IE 0

// `RescaSampleOptions.solver`: implicit Taylor of order `order` (ResCa-IT, 1-4).
#define RESCA_SOLVER_IT 1

// `RescaSampleOptions.solver`: BDF2 (ResCa-IB).
#define RESCA_SOLVER_BDF2 2

// `RescaSampleOptions.proxy`: the cluster's medoid.
#define RESCA_PROXY_MEDOID 0

// `RescaSampleOptions.proxy`: a member drawn around the medoid, weighted by similarity.
#define RESCA_PROXY_CENTER_RANDOM 1

// `RescaSampleOptions.residuals`: one-step residuals, as the paper's equations.
#define RESCA_RESIDUALS_PAPER 0

// `RescaSampleOptions.residuals`: the released code's scaling by the full-step gap.
#define RESCA_RESIDUALS_OFFICIAL 1

// `RescaSampleOptions.clustering`: TETC, the EMA of the similarity over full steps.
#define RESCA_CLUSTERING_TRAJECTORY 0

// `RescaSampleOptions.clustering`: the current similarity only (ablation).
#define RESCA_CLUSTERING_FEATURE 1

// `RescaArg.kind`: a buffer of `float` (a `Global<f32>` / `GlobalMut<f32>` parameter).
#define RESCA_ARG_BUFFER_F32 1

// `RescaArg.kind`: a buffer of `uint32_t`.
#define RESCA_ARG_BUFFER_U32 2

// `RescaArg.kind`: a buffer of `double`.
#define RESCA_ARG_BUFFER_F64 3

// `RescaArg.kind`: a `uint32_t` value (`value_u32`).
#define RESCA_ARG_U32 4

// `RescaArg.kind`: a `float` value (`value_f32`).
#define RESCA_ARG_F32 5

// `RescaArg.kind`: `DdimCoefficients` (`coefficients[0..4]`: recip, recip_m1, sqrt_prev,
// sqrt_one_minus_prev).
#define RESCA_ARG_DDIM 6

// `RescaArg.kind`: `TaylorCoefficients` (`coefficients[0..8]`: scale1, power1, scale2,
// power2, scale3, power3, scale4, power4).
#define RESCA_ARG_TAYLOR 7

// What a call returned. Every failure also leaves its message for the calling thread, which
// `resca_last_error` returns.
typedef enum RescaStatus {
  // Success.
  RESCA_STATUS_OK = 0,
  // An argument was refused: a null pointer, a length that does not match, an unknown kernel
  // or parameter, a value out of range.
  RESCA_STATUS_INVALID_ARGUMENT = 1,
  // A file could not be read or is not a model.
  RESCA_STATUS_IO = 2,
  // No CUDA driver, no GPU, or a GPU older than sm_80.
  RESCA_STATUS_NO_GPU = 3,
  // The CUDA driver reported an error.
  RESCA_STATUS_CUDA = 4,
  // The kernel simulator found an error in a launch (out-of-bounds access, race).
  RESCA_STATUS_KERNEL = 5,
  // A bug of the library (a caught panic); the message says where.
  RESCA_STATUS_INTERNAL = 6,
} RescaStatus;

// The kernels loaded into a host's CUDA context (opaque).
typedef struct RescaGpu RescaGpu;

// A DiT loaded on the host (opaque).
typedef struct RescaModel RescaModel;

// A model's shapes.
typedef struct RescaModelConfig {
  // Latent side S (images are S x S).
  uint32_t input_size;
  uint32_t patch_size;
  // C: channels of the input `x` and of the noise.
  uint32_t in_channels;
  // Channels of the model output: 2 C with a learned sigma, else C.
  uint32_t out_channels;
  uint32_t hidden_size;
  uint32_t depth;
  uint32_t num_heads;
  // Classes; the label `num_classes` is the null label of guidance.
  uint32_t num_classes;
  // Tokens per image: (S / patch)².
  uint32_t tokens;
  // 1 when the output holds a learned sigma.
  uint32_t learn_sigma;
} RescaModelConfig;

// How `resca_sample` samples: start from `resca_sample_options_default` and change fields.
typedef struct RescaSampleOptions {
  // `RESCA_SAMPLER_*`.
  uint32_t sampler;
  uint32_t steps;
  // Time shift of the flow sampler's grid (1: uniform).
  float flow_shift;
  // Classifier-free guidance, used when above 1 as DiT's sample.py does: the batch `[x; x]`
  // with labels `[y; null]`, every row integrated, the conditional half returned.
  float cfg_scale;
  // `RESCA_METHOD_*`.
  uint32_t method;
  // N: a full step every `interval` steps after the first ones.
  uint32_t interval;
  // Full steps at the start (DiT 2; FLUX-style flow 3).
  uint32_t first_enhance;
  // Taylor order (TaylorSeer, ClusCa: 0-4); ResCa's order M with `RESCA_SOLVER_IT` (1-4).
  uint32_t order;
  // K clusters (ClusCa, ResCa).
  uint32_t clusters;
  // TETC's EMA weight of the current similarity, in [0, 1].
  float alpha;
  // `RESCA_SOLVER_*` (ResCa).
  uint32_t solver;
  // `RESCA_PROXY_*` (ResCa).
  uint32_t proxy;
  // `RESCA_RESIDUALS_*` (ResCa).
  uint32_t residuals;
  // `RESCA_CLUSTERING_*` (ResCa).
  uint32_t clustering;
  // ClusCa's propagation ratio gamma, in [0, 1].
  float propagation;
  // K-medoids iterations at most (ResCa).
  uint32_t kmedoids_iters;
  // Seed of the method's random choices (center-random proxies, ClusCa's members).
  uint64_t seed;
} RescaSampleOptions;

// One kernel argument, for the parameter of the same position in the kernel table (see
// docs/linking.md for every kernel's parameters).
//
// Ownership: the library reads the struct and `name` during the call only. `address` is the
// host's memory (device memory for `resca_gpu_launch`, host memory for `resca_sim_launch`); the
// library never frees it and keeps no reference to it after the call returns (a GPU launch
// reads it later, in stream order, as any kernel launch does).
typedef struct RescaArg {
  // The parameter's name as the kernel table declares it (checked), NUL-terminated.
  const char *name;
  // `RESCA_ARG_*`: what the argument is (checked against the parameter's kind).
  uint32_t kind;
  // Buffers: the address of the first element (may be 0 only when `len` is 0).
  uint64_t address;
  // Buffers: the number of elements from `address` that the kernel may touch.
  uint64_t len;
  // `RESCA_ARG_U32`: the value.
  uint32_t value_u32;
  // `RESCA_ARG_F32`: the value.
  float value_f32;
  // `RESCA_ARG_DDIM` (4 used) and `RESCA_ARG_TAYLOR` (8 used): the struct's fields in order.
  float coefficients[8];
} RescaArg;

// The geometry of a launch, as `cuLaunchKernel` takes it.
typedef struct RescaLaunchDims {
  uint32_t grid[3];
  uint32_t block[3];
  // Static shared memory per block, in bytes (the kernel declares it: no dynamic shared
  // memory is passed).
  uint32_t shared_bytes;
  // 0 when the sizes make the launch empty: nothing is launched then.
  uint32_t launched;
} RescaLaunchDims;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// The interface version of the library (equal to the header's `RESCA_API_VERSION` when both
// come from the same build).
uint32_t resca_api_version(void);

// The library's version, `"0.1.0"` (the workspace's), a static string (never free it).
const char *resca_version(void);

// The number of kernels in the table (`resca_kernel_name` for each).
size_t resca_kernel_count(void);

// The PTX entry name of kernel `index` (0 .. `resca_kernel_count()`), a static string, or null
// past the end.
const char *resca_kernel_name(size_t index);

// Loads a DiT from a safetensors file (the official `state_dict` key names; the config from
// the file's metadata, else inferred from the shapes).
//
// # Safety
// `path` is NUL-terminated; `out` points to writable memory for one pointer (null refused).
//
// Ownership: `*out` receives a model the host owns: release it with `resca_model_free`. On
// failure `*out` is set to null. The file is read during the call only.
enum RescaStatus resca_model_load(const char *path, struct RescaModel **out);

// Loads the model built into the library: a class-conditional DiT trained on MNIST digits
// (32x32x1 latents, patch 2, 256 tokens, 10 classes), the `resca` CLI's default; it needs
// guidance 4.0 for legible digits.
//
// # Safety
// `out` points to writable memory for one pointer (null refused).
//
// Ownership: as `resca_model_load`.
enum RescaStatus resca_model_load_default(struct RescaModel **out);

// Releases a model (null: nothing to do).
//
// # Safety
// `model` is null or a model of `resca_model_load*`, not yet released and not in use by
// another thread; it is invalid afterwards.
void resca_model_free(struct RescaModel *model);

// The shapes of a model.
//
// # Safety
// `model` is a model of `resca_model_load*`; `out` points to writable memory for one
// `RescaModelConfig`. Null pointers are refused.
enum RescaStatus resca_model_config(const struct RescaModel *model, struct RescaModelConfig *out);

// `model(x, t, y)` on the CPU: `x` (batch, C, S, S), `timesteps` (batch) the model's time
// inputs (DDIM: 0..999), `labels` (batch) class labels (`num_classes` is the null label); `out`
// (batch, out_channels, S, S). All arrays are C-contiguous float32 / int64 host memory, lengths
// in elements.
//
// # Safety
// `model` is a model of `resca_model_load*`; each pointer points to its length of elements
// (`out` writable). Null pointers and lengths that do not match `batch` are refused.
//
// Ownership: everything stays the caller's; the library keeps no pointer after the call.
enum RescaStatus resca_forward(const struct RescaModel *model,
                               size_t batch,
                               const float *x,
                               size_t x_len,
                               const float *timesteps,
                               size_t timesteps_len,
                               const int64_t *labels,
                               size_t labels_len,
                               float *out,
                               size_t out_len);

// DiT's `forward_with_cfg` on the CPU, as upstream: the batch `[x; x]` from the first half of
// `x`, `labels` as given (`[y; null]`), guidance at `cfg_scale` on the first three channels,
// every row of `out` written. `batch` must be even; the arrays as for `resca_forward`.
//
// # Safety
// As `resca_forward`.
//
// Ownership: as `resca_forward`.
enum RescaStatus resca_forward_with_cfg(const struct RescaModel *model,
                                        size_t batch,
                                        const float *x,
                                        size_t x_len,
                                        const float *timesteps,
                                        size_t timesteps_len,
                                        const int64_t *labels,
                                        size_t labels_len,
                                        float cfg_scale,
                                        float *out,
                                        size_t out_len);

// The default sampling options (see `RescaSampleOptions`).
//
// # Safety
// `out` is null (nothing is written) or points to writable memory for one `RescaSampleOptions`.
void resca_sample_options_default(struct RescaSampleOptions *out);

// Samples `batch` images on the CPU from `noise` (batch, C, S, S) with `labels` (batch) as
// `options` say, and writes the final samples to `out` (batch, C, S, S); the arrays as for
// `resca_forward`. The same run as `resca sample --backend reference` with those settings.
//
// # Safety
// `model` is a model of `resca_model_load*`; `options` points to one `RescaSampleOptions`; each
// array points to its length of elements (`out` writable). Null pointers and lengths that do
// not match `batch` are refused.
//
// Ownership: everything stays the caller's; the library keeps no pointer after the call.
enum RescaStatus resca_sample(const struct RescaModel *model,
                              const struct RescaSampleOptions *options,
                              size_t batch,
                              const float *noise,
                              size_t noise_len,
                              const int64_t *labels,
                              size_t labels_len,
                              float *out,
                              size_t out_len);

// The message of the last call that failed on the calling thread (an empty string before any
// failure). Successful calls leave it as it is.
//
// Ownership: the string belongs to the library. It stays valid, unchanged, until the next
// failing call on the same thread; copy it to keep it longer. Never free it.
const char *resca_last_error(void);

// The name of a status (`"RESCA_STATUS_INVALID_ARGUMENT"`; `"unknown status"` for a value
// that is none), a static string (never free it).
const char *resca_status_name(int32_t status);

// Loads the kernels into the host's CUDA context: the committed PTX module for the context's
// GPU (`arch` null: the newest it runs, `sm_90` on Hopper and later, else `sm_80`; or the one
// named, `"sm_80"` or `"sm_90"`), JIT-compiled by the driver, with all the kernels of the table.
//
// `context` is a `CUcontext` of the host, or null for the one current on the calling thread (a
// PyTorch program's, after it has used CUDA). The library makes no context of its own: it
// pushes the host's around each of its calls and pops it again.
//
// # Safety
// `context` is null or a live `CUcontext`; `arch` is null or NUL-terminated; `out` points to
// writable memory for one pointer (null is refused).
//
// Ownership: `*out` receives a handle the host owns: release it with `resca_gpu_close`, before
// destroying the context. On failure `*out` is set to null.
enum RescaStatus resca_gpu_open(void *context, const char *arch, struct RescaGpu **out);

// Unloads the kernels' module from the host's context and releases the handle (null: nothing
// to do). The context itself is left as it is.
//
// # Safety
// `gpu` is null or a handle of `resca_gpu_open`, not yet closed, with no launch of another
// thread in progress; its context is still alive. The handle is invalid afterwards.
enum RescaStatus resca_gpu_close(struct RescaGpu *gpu);

// The GPU and the PTX module of a handle, in words (`"NVIDIA H100 80GB HBM3 (sm_90, PTX
// sm_90)"`), or null for a null handle.
//
// # Safety
// `gpu` is null or an open handle.
//
// Ownership: the string belongs to the handle and lives until `resca_gpu_close`.
const char *resca_gpu_describe(const struct RescaGpu *gpu);

// Launches `kernel` on `stream` (a `CUstream` of the handle's context; null: its default
// stream) with the host's device buffers and values: the arguments are checked (names, kinds,
// every buffer long enough for the sizes, docs/linking.md), the geometry is computed by the
// kernel's launch function of `resca-host`, the same one the Rust backends use, and the kernel
// is launched asynchronously. An empty launch (a zero size) launches nothing.
//
// # Safety
// `gpu` is an open handle; `stream` is null or a live stream of its context; `kernel` is
// NUL-terminated; `args` points to `count` arguments (their `name`s NUL-terminated) whose
// buffer addresses are device memory of the context, valid for `len` elements until the
// kernel has run.
//
// Ownership: everything stays the caller's; the library keeps no pointer after the call.
enum RescaStatus resca_gpu_launch(const struct RescaGpu *gpu,
                                  void *stream,
                                  const char *kernel,
                                  const struct RescaArg *args,
                                  size_t count);

// The launch geometry of `kernel` for these arguments, as `resca_gpu_launch` would launch it:
// the arguments are checked exactly as for a launch (names, kinds, lengths), nothing runs and
// no memory is read. For hosts that launch the committed PTX themselves.
//
// # Safety
// `kernel` is a NUL-terminated string; `args` points to `count` arguments (their `name`s
// NUL-terminated); `out` points to writable memory for one `RescaLaunchDims`. Null pointers are
// refused.
//
// Ownership: everything stays the caller's; the library keeps no pointer.
enum RescaStatus resca_launch_dims(const char *kernel,
                                   const struct RescaArg *args,
                                   size_t count,
                                   struct RescaLaunchDims *out);

// Runs one launch on the CPU simulator of `resca-host` over host memory: the same kernel body,
// geometry and checks as a GPU launch, with every access bounds-checked and every race between
// threads reported (`RESCA_STATUS_KERNEL`). Buffers are host memory (`address` a pointer cast to
// an integer); the buffers the kernel writes are written back when it succeeds (a failed launch
// leaves them unchanged). Buffers may overlap as on a GPU (an in-place step passes the same
// buffer twice). Slow: for testing a host without a GPU, and as the reference a GPU launch is
// compared with.
//
// # Safety
// As `resca_launch_dims`; every buffer's `address` points to `len` readable elements of its
// type, and to writable ones for the parameters the kernel writes (`GlobalMut`).
//
// Ownership: everything stays the caller's; the library keeps no pointer after the call.
enum RescaStatus resca_sim_launch(const char *kernel, const struct RescaArg *args, size_t count);

// The `TaylorCoefficients` of a prediction `distance` steps past the last full step (the
// sampler's step index of the last full step minus the current one), as the pipeline computes
// them, into `out[0..8]` (the `coefficients` of a `RESCA_ARG_TAYLOR` argument).
//
// # Safety
// `out` points to 8 writable floats (null refused).
enum RescaStatus resca_taylor_coefficients(float distance, float *out);

// The `DdimCoefficients` of DDIM step `index` (counting down from `steps - 1` to 0, as the
// sampler does) of a `steps`-step schedule, as the pipeline computes them, into `out[0..4]`
// (the `coefficients` of a `RESCA_ARG_DDIM` argument).
//
// # Safety
// `out` points to 4 writable floats (null refused).
enum RescaStatus resca_ddim_coefficients(uint32_t steps, uint32_t index, float *out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* RESCA_H */
