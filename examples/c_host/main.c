/* A C host of libresca (capi/include/resca.h): the CPU reference's forward and ResCa sampling
 * checked against the official PyTorch outputs of tests/vectors/tiny, then a DiT forward and a
 * ResCa sparse step launched kernel by kernel through the interface: on the CPU simulator over
 * host memory (the forward checked against the official output), and on a GPU through the CUDA
 * driver API (a context and a stream of this program's own) where there is one, checked against
 * the simulator. Without a GPU it prints `SKIP: GPU path: <why>`.
 *
 * Usage: c_host [VECTORS_DIR]   (default tests/vectors/tiny; run from the repository root)
 * RESCA_PTX_ARCH=sm_80 loads the sm_80 PTX module on a newer GPU instead of the newest it runs.
 * Exit status: 0 when every check passes. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_driver.h"
#include "resca.h"
#include "tensors.h"

/* ---- failing loudly ---------------------------------------------------------------------- */

static void die(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fprintf(stderr, "c_host: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\n");
    va_end(args);
    exit(1);
}

/* Every libresca call: on failure, its status and the thread's message. */
static void check(RescaStatus status, const char *what) {
    if (status != RESCA_STATUS_OK)
        die("%s: %s: %s", what, resca_status_name((int32_t)status), resca_last_error());
}

/* ---- where the kernels run ---------------------------------------------------------------- */

/* Host memory and the simulator (`resca_sim_launch`), or device memory and the GPU
 * (`resca_gpu_launch` on this program's context and stream). Buffers are addresses either way,
 * as `RescaArg.address` takes them. */
typedef struct Backend {
    const char *name;
    CudaDriver *cuda; /* NULL: the simulator */
    RescaGpu *kernels;
    CUstream stream;
} Backend;

static void cuda_check(const Backend *b, CUresult result, const char *what) {
    if (result != 0) die("%s: %s", what, cuda_error(b->cuda, result));
}

static uint64_t backend_alloc(const Backend *b, size_t bytes) {
    if (!b->cuda) {
        void *p = calloc(bytes ? bytes : 1, 1);
        if (!p) die("out of memory");
        return (uint64_t)(uintptr_t)p;
    }
    CUdeviceptr p = 0;
    cuda_check(b, b->cuda->cuMemAlloc(&p, bytes ? bytes : 4), "cuMemAlloc");
    cuda_check(b, b->cuda->cuMemsetD8(p, 0, bytes ? bytes : 4), "cuMemsetD8");
    return (uint64_t)p;
}

static void backend_free(const Backend *b, uint64_t p) {
    if (!b->cuda)
        free((void *)(uintptr_t)p);
    else
        cuda_check(b, b->cuda->cuMemFree((CUdeviceptr)p), "cuMemFree");
}

static uint64_t backend_upload(const Backend *b, const void *data, size_t bytes) {
    uint64_t p = backend_alloc(b, bytes);
    if (!b->cuda)
        memcpy((void *)(uintptr_t)p, data, bytes);
    else
        cuda_check(b, b->cuda->cuMemcpyHtoD((CUdeviceptr)p, data, bytes), "cuMemcpyHtoD");
    return p;
}

static void backend_download(const Backend *b, void *out, uint64_t p, size_t bytes) {
    if (!b->cuda) {
        memcpy(out, (const void *)(uintptr_t)p, bytes);
        return;
    }
    cuda_check(b, b->cuda->cuStreamSynchronize(b->stream), "cuStreamSynchronize");
    cuda_check(b, b->cuda->cuMemcpyDtoH(out, (CUdeviceptr)p, bytes), "cuMemcpyDtoH");
}

static void backend_launch(const Backend *b, const char *kernel, const RescaArg *args, size_t count) {
    char what[128];
    snprintf(what, sizeof what, "%s launch of `%s`", b->name, kernel);
    if (!b->cuda)
        check(resca_sim_launch(kernel, args, count), what);
    else
        check(resca_gpu_launch(b->kernels, b->stream, kernel, args, count), what);
}

/* ---- kernel arguments, named as the kernel table names them (docs/linking.md) -------------- */

static RescaArg buffer(const char *name, uint32_t kind, uint64_t address, size_t len) {
    RescaArg arg = {.name = name, .kind = kind, .address = address, .len = len};
    return arg;
}
#define F32S(name, address, len) buffer(name, RESCA_ARG_BUFFER_F32, address, len)
#define U32S(name, address, len) buffer(name, RESCA_ARG_BUFFER_U32, address, len)

static RescaArg u32_arg(const char *name, size_t value) {
    RescaArg arg = {.name = name, .kind = RESCA_ARG_U32, .value_u32 = (uint32_t)value};
    return arg;
}

static RescaArg f32_arg(const char *name, float value) {
    RescaArg arg = {.name = name, .kind = RESCA_ARG_F32, .value_f32 = value};
    return arg;
}

#define LAUNCH(backend, kernel, ...)                                              \
    do {                                                                          \
        RescaArg args_[] = {__VA_ARGS__};                                         \
        backend_launch(backend, kernel, args_, sizeof args_ / sizeof args_[0]);   \
    } while (0)

/* ---- the model on a backend ---------------------------------------------------------------- */

typedef struct Linear {
    uint64_t weight, bias;
    size_t in, out;
} Linear;

typedef struct Block {
    Linear ada_ln, qkv, proj, fc1, fc2;
} Block;

typedef struct Model {
    RescaModelConfig c;
    size_t d, heads, head_dim, patch_features;
    Linear patch, t_in, t_out, final_ada_ln, final_linear;
    uint64_t pos, table;
    size_t table_len;
    Block blocks[16];
} Model;

static uint64_t upload_tensor(const Backend *b, const TensorFile *file, const char *name, size_t expected) {
    Tensor t;
    if (tensor_find(file, name, "F32", &t)) exit(1);
    if (expected && t.len != expected) die("%s: %zu elements, %zu expected", name, t.len, expected);
    return backend_upload(b, t.data, t.len * sizeof(float));
}

static Linear upload_linear(const Backend *b, const TensorFile *file, const char *prefix, size_t in, size_t out) {
    char name[128];
    Linear l = {.in = in, .out = out};
    snprintf(name, sizeof name, "%s.weight", prefix);
    l.weight = upload_tensor(b, file, name, in * out);
    snprintf(name, sizeof name, "%s.bias", prefix);
    l.bias = upload_tensor(b, file, name, out);
    return l;
}

static Model upload_model(const Backend *b, const TensorFile *file, RescaModelConfig c) {
    Model m;
    memset(&m, 0, sizeof m);
    m.c = c;
    m.d = c.hidden_size;
    m.heads = c.num_heads;
    m.head_dim = m.d / m.heads;
    m.patch_features = (size_t)c.in_channels * c.patch_size * c.patch_size;
    if (c.depth > 16) die("the example holds at most 16 blocks");
    m.patch = upload_linear(b, file, "x_embedder.proj", m.patch_features, m.d);
    m.pos = upload_tensor(b, file, "pos_embed", (size_t)c.tokens * m.d);
    m.t_in = upload_linear(b, file, "t_embedder.mlp.0", 256, m.d);
    m.t_out = upload_linear(b, file, "t_embedder.mlp.2", m.d, m.d);
    m.table_len = ((size_t)c.num_classes + 1) * m.d;
    m.table = upload_tensor(b, file, "y_embedder.embedding_table.weight", m.table_len);
    for (uint32_t l = 0; l < c.depth; l++) {
        char prefix[64];
        Block *blk = &m.blocks[l];
        snprintf(prefix, sizeof prefix, "blocks.%u.adaLN_modulation.1", l);
        blk->ada_ln = upload_linear(b, file, prefix, m.d, 6 * m.d);
        snprintf(prefix, sizeof prefix, "blocks.%u.attn.qkv", l);
        blk->qkv = upload_linear(b, file, prefix, m.d, 3 * m.d);
        snprintf(prefix, sizeof prefix, "blocks.%u.attn.proj", l);
        blk->proj = upload_linear(b, file, prefix, m.d, m.d);
        snprintf(prefix, sizeof prefix, "blocks.%u.mlp.fc1", l);
        blk->fc1 = upload_linear(b, file, prefix, m.d, 4 * m.d);
        snprintf(prefix, sizeof prefix, "blocks.%u.mlp.fc2", l);
        blk->fc2 = upload_linear(b, file, prefix, 4 * m.d, m.d);
    }
    m.final_ada_ln = upload_linear(b, file, "final_layer.adaLN_modulation.1", m.d, 2 * m.d);
    size_t width = (size_t)c.patch_size * c.patch_size * c.out_channels;
    m.final_linear = upload_linear(b, file, "final_layer.linear", m.d, width);
    return m;
}

static void free_linear(const Backend *b, Linear l) {
    backend_free(b, l.weight);
    backend_free(b, l.bias);
}

static void free_model(const Backend *b, Model *m) {
    free_linear(b, m->patch);
    free_linear(b, m->t_in);
    free_linear(b, m->t_out);
    free_linear(b, m->final_ada_ln);
    free_linear(b, m->final_linear);
    backend_free(b, m->pos);
    backend_free(b, m->table);
    for (uint32_t l = 0; l < m->c.depth; l++) {
        free_linear(b, m->blocks[l].ada_ln);
        free_linear(b, m->blocks[l].qkv);
        free_linear(b, m->blocks[l].proj);
        free_linear(b, m->blocks[l].fc1);
        free_linear(b, m->blocks[l].fc2);
    }
}

/* `out (rows, out) = x W^T + b` as a GEMV per output feature, SiLU'd for `kernel` = _silu. */
static void linear_rows(const Backend *b, const char *kernel, Linear l, uint64_t x, uint64_t out, size_t rows) {
    LAUNCH(b, kernel, F32S("x", x, rows * l.in), F32S("w", l.weight, l.in * l.out), F32S("bias", l.bias, l.out),
           F32S("out", out, rows * l.out), u32_arg("rows", rows), u32_arg("in_features", l.in),
           u32_arg("out_features", l.out));
}

/* `out (rows, out) = epilogue(a W^T + b)` on the tiled GEMM. */
static void gemm(const Backend *b, const char *kernel, Linear l, uint64_t a, uint64_t out, size_t rows) {
    LAUNCH(b, kernel, F32S("a", a, rows * l.in), F32S("w", l.weight, l.in * l.out), F32S("bias", l.bias, l.out),
           F32S("out", out, rows * l.out), u32_arg("m", rows), u32_arg("n", l.out), u32_arg("k", l.in));
}

/* `x += gate * (a W^T + b)`, the gate of each row's sample at `gate_offset` of `modulation`. */
static void gemm_gated(const Backend *b, const Model *m, Linear l, uint64_t a, uint64_t x, uint64_t modulation,
                       size_t batch, size_t gate_offset) {
    size_t rows = batch * m->c.tokens;
    LAUNCH(b, "gemm_bias_gated_residual", F32S("a", a, rows * l.in), F32S("w", l.weight, l.in * l.out),
           F32S("bias", l.bias, l.out), F32S("x", x, rows * l.out), F32S("gate", modulation, batch * 6 * m->d),
           u32_arg("m", rows), u32_arg("n", l.out), u32_arg("k", l.in), u32_arg("tokens", m->c.tokens),
           u32_arg("gate_stride", 6 * m->d), u32_arg("gate_offset", gate_offset));
}

/* `out = LN(x) (1 + scale) + shift` for `rows` token rows grouped by `tokens` per sample. */
static void layer_norm_modulate(const Backend *b, const Model *m, uint64_t x, uint64_t modulation,
                                size_t modulation_len, uint64_t out, size_t rows, size_t tokens, size_t stride,
                                size_t shift, size_t scale) {
    LAUNCH(b, "layer_norm_modulate", F32S("x", x, rows * m->d), F32S("modulation", modulation, modulation_len),
           F32S("out", out, rows * m->d), u32_arg("rows", rows), u32_arg("hidden", m->d), u32_arg("tokens", tokens),
           u32_arg("mod_stride", stride), u32_arg("shift_offset", shift), u32_arg("scale_offset", scale));
}

/* The activations of a forward over `batch` rows. */
typedef struct State {
    size_t batch;
    uint64_t image, t, labels, features, t_hidden, t_emb, silu_c, tokens, modulation, normed, qkv, heads, hidden,
        final_mod, final_tokens, out;
} State;

/* A DiT forward, kernel by kernel, as resca-host's pipeline launches it (fused gated residuals);
 * leaves the last block's modulation and the final hidden state in `s`. Returns the output
 * (batch, out_channels, S, S) in host memory (the caller frees it). */
static float *forward(const Backend *b, const Model *m, State *s, const float *x, const float *t,
                      const uint32_t *labels, size_t batch) {
    RescaModelConfig c = m->c;
    size_t d = m->d, n = c.tokens, rows = batch * n, side = c.input_size;
    size_t image_len = batch * c.in_channels * side * side;
    size_t out_len = batch * c.out_channels * side * side;
    size_t width = (size_t)c.patch_size * c.patch_size * c.out_channels;
    memset(s, 0, sizeof *s);
    s->batch = batch;
    s->image = backend_upload(b, x, image_len * sizeof(float));
    s->t = backend_upload(b, t, batch * sizeof(float));
    s->labels = backend_upload(b, labels, batch * sizeof(uint32_t));
    s->features = backend_alloc(b, batch * 256 * sizeof(float));
    s->t_hidden = backend_alloc(b, batch * d * sizeof(float));
    s->t_emb = backend_alloc(b, batch * d * sizeof(float));
    s->silu_c = backend_alloc(b, batch * d * sizeof(float));
    s->tokens = backend_alloc(b, rows * d * sizeof(float));
    s->modulation = backend_alloc(b, batch * 6 * d * sizeof(float));
    s->normed = backend_alloc(b, rows * d * sizeof(float));
    s->qkv = backend_alloc(b, rows * 3 * d * sizeof(float));
    s->heads = backend_alloc(b, rows * d * sizeof(float));
    s->hidden = backend_alloc(b, rows * 4 * d * sizeof(float));
    s->final_mod = backend_alloc(b, batch * 2 * d * sizeof(float));
    s->final_tokens = backend_alloc(b, rows * width * sizeof(float));
    s->out = backend_alloc(b, out_len * sizeof(float));

    /* Conditioning: timestep features, the t-embedder MLP, the label embedding, SiLU. */
    LAUNCH(b, "timestep_features", F32S("t", s->t, batch), F32S("out", s->features, batch * 256));
    linear_rows(b, "linear_rows_silu", m->t_in, s->features, s->t_hidden, batch);
    linear_rows(b, "linear_rows", m->t_out, s->t_hidden, s->t_emb, batch);
    LAUNCH(b, "label_embed_silu", F32S("t_emb", s->t_emb, batch * d), F32S("table", m->table, m->table_len),
           U32S("labels", s->labels, batch), F32S("silu_c", s->silu_c, batch * d), u32_arg("hidden", d));
    /* Tokens: patch embedding + bias + pos_embed. */
    LAUNCH(b, "patch_embed", F32S("x", s->image, image_len), F32S("w", m->patch.weight, d * m->patch_features),
           F32S("bias", m->patch.bias, d), F32S("pos", m->pos, n * d), F32S("out", s->tokens, rows * d),
           u32_arg("channels", c.in_channels), u32_arg("side", side), u32_arg("patch", c.patch_size),
           u32_arg("hidden", d));
    for (uint32_t l = 0; l < c.depth; l++) {
        const Block *blk = &m->blocks[l];
        linear_rows(b, "linear_rows", blk->ada_ln, s->silu_c, s->modulation, batch);
        /* x += gate_msa * proj(attn(modulate(LN(x), shift_msa, scale_msa))) */
        layer_norm_modulate(b, m, s->tokens, s->modulation, batch * 6 * d, s->normed, rows, n, 6 * d, 0, d);
        gemm(b, "gemm_bias", blk->qkv, s->normed, s->qkv, rows);
        LAUNCH(b, "flash_attention", F32S("qkv", s->qkv, rows * 3 * d), F32S("out", s->heads, rows * d),
               u32_arg("tokens", n), u32_arg("heads", m->heads), u32_arg("head_dim", m->head_dim),
               f32_arg("scale", 1.0f / sqrtf((float)m->head_dim)));
        gemm_gated(b, m, blk->proj, s->heads, s->tokens, s->modulation, batch, 2 * d);
        /* x += gate_mlp * fc2(GELU(fc1(modulate(LN(x), shift_mlp, scale_mlp)))) */
        layer_norm_modulate(b, m, s->tokens, s->modulation, batch * 6 * d, s->normed, rows, n, 6 * d, 3 * d, 4 * d);
        gemm(b, "gemm_bias_gelu", blk->fc1, s->normed, s->hidden, rows);
        gemm_gated(b, m, blk->fc2, s->hidden, s->tokens, s->modulation, batch, 5 * d);
    }
    /* Final layer: adaLN (shift, scale), LN + modulate, linear, unpatchify. */
    linear_rows(b, "linear_rows", m->final_ada_ln, s->silu_c, s->final_mod, batch);
    layer_norm_modulate(b, m, s->tokens, s->final_mod, batch * 2 * d, s->normed, rows, n, 2 * d, 0, d);
    gemm(b, "gemm_bias", m->final_linear, s->normed, s->final_tokens, rows);
    LAUNCH(b, "unpatchify", F32S("tokens", s->final_tokens, rows * width), F32S("out", s->out, out_len),
           u32_arg("batch", batch), u32_arg("out_channels", c.out_channels), u32_arg("side", side),
           u32_arg("patch", c.patch_size));
    float *out = malloc(out_len * sizeof(float));
    backend_download(b, out, s->out, out_len * sizeof(float));
    return out;
}

static void free_state(const Backend *b, State *s) {
    uint64_t all[] = {s->image, s->t, s->labels, s->features, s->t_hidden, s->t_emb, s->silu_c, s->tokens,
                      s->modulation, s->normed, s->qkv, s->heads, s->hidden, s->final_mod, s->final_tokens, s->out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) backend_free(b, all[i]);
}

/* Deterministic values in [-1, 1]. */
static void fill(float *v, size_t len, uint32_t seed) {
    uint32_t state = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        v[i] = (float)(state % 20001) / 10000.0f - 1.0f;
    }
}

/* One ResCa sparse step of block 0 on the forward's final state `s`, as resca-host's caching
 * engine runs it: the attention branch predicted from its Taylor cache, the MLP of K proxy
 * tokens per sample (gathered, normalised, fc1, fc2), the proxies' residuals, the implicit
 * Euler (PDDS) update of every token from its proxy, the proxies scattered back, the gated
 * residual. The caches hold deterministic values (two stored factors, order 1, DDIM's
 * counting-down sign). Returns the new hidden state (batch N, D) in host memory. */
static float *resca_sparse_step(const Backend *b, const Model *m, const State *s, size_t clusters) {
    size_t batch = s->batch, n = m->c.tokens, d = m->d, rows = batch * n, k = clusters;
    const Block *blk = &m->blocks[0];
    size_t factors_len = 2 * rows * d;
    float *values = malloc(factors_len * sizeof(float));
    uint32_t *labels = malloc(rows * sizeof(uint32_t));
    uint32_t *proxies = malloc(batch * k * sizeof(uint32_t));
    for (size_t r = 0; r < rows; r++) labels[r] = (uint32_t)((r % n) % k); /* token i in cluster i mod K */
    for (size_t i = 0; i < batch * k; i++) proxies[i] = (uint32_t)(i % k);  /* token c leads cluster c */
    fill(values, factors_len, 7);
    uint64_t attention_cache = backend_upload(b, values, factors_len * sizeof(float));
    fill(values, factors_len, 8);
    uint64_t mlp_cache = backend_upload(b, values, factors_len * sizeof(float));
    uint64_t labels_buffer = backend_upload(b, labels, rows * sizeof(uint32_t));
    uint64_t proxies_buffer = backend_upload(b, proxies, batch * k * sizeof(uint32_t));
    uint64_t gathered = backend_alloc(b, batch * k * d * sizeof(float));
    uint64_t normed = backend_alloc(b, batch * k * d * sizeof(float));
    uint64_t hidden = backend_alloc(b, batch * k * 4 * d * sizeof(float));
    uint64_t fresh = backend_alloc(b, batch * k * d * sizeof(float));
    uint64_t residuals = backend_alloc(b, batch * k * d * sizeof(float));
    uint64_t simulated = backend_alloc(b, rows * d * sizeof(float));
    float coefficients[8];
    /* One step past the last full step, counting down: distance -1. */
    check(resca_taylor_coefficients(-1.0f, coefficients), "resca_taylor_coefficients");
    /* The kernel reads them from a device buffer, so that a captured graph can replay the step. */
    uint64_t coefficients_buffer = backend_upload(b, coefficients, sizeof coefficients);
    const float sign = -1.0f;
    size_t modulation_len = batch * 6 * d;

    LAUNCH(b, "taylor_predict_gated_add", F32S("x", s->tokens, rows * d), F32S("factors", attention_cache, factors_len),
           F32S("gate", s->modulation, modulation_len), u32_arg("rows", rows), u32_arg("hidden", d),
           u32_arg("tokens", n), u32_arg("gate_stride", 6 * d), u32_arg("gate_offset", 2 * d), u32_arg("stored", 2),
           F32S("coef", coefficients_buffer, 8));
    LAUNCH(b, "gather_rows", F32S("src", s->tokens, rows * d), U32S("indices", proxies_buffer, batch * k),
           F32S("out", gathered, batch * k * d), u32_arg("batch", batch), u32_arg("tokens", n),
           u32_arg("per_row", k), u32_arg("hidden", d));
    layer_norm_modulate(b, m, gathered, s->modulation, modulation_len, normed, batch * k, k, 6 * d, 3 * d, 4 * d);
    gemm(b, "gemm_bias_gelu", blk->fc1, normed, hidden, batch * k);
    gemm(b, "gemm_bias", blk->fc2, hidden, fresh, batch * k);
    LAUNCH(b, "pdds_proxy_residuals", F32S("fresh", fresh, batch * k * d), F32S("cache", mlp_cache, factors_len),
           U32S("proxies", proxies_buffer, batch * k), F32S("residuals", residuals, batch * k * d),
           u32_arg("batch", batch), u32_arg("tokens", n), u32_arg("clusters", k), u32_arg("hidden", d),
           u32_arg("order", 1), u32_arg("stored", 2), f32_arg("sign", sign));
    /* PDDS for every token, the proxies' fresh rows in their places, then x += gate * out: one launch. */
    LAUNCH(b, "pdds_update", F32S("cache", mlp_cache, factors_len), U32S("labels", labels_buffer, rows),
           U32S("proxies", proxies_buffer, batch * k), F32S("residuals", residuals, batch * k * d),
           F32S("fresh", fresh, batch * k * d), F32S("out", simulated, rows * d), F32S("x", s->tokens, rows * d),
           F32S("gate", s->modulation, modulation_len), u32_arg("batch", batch), u32_arg("tokens", n),
           u32_arg("clusters", k), u32_arg("hidden", d), u32_arg("order", 1), u32_arg("stored", 2),
           f32_arg("sign", sign), u32_arg("solver", 0), u32_arg("gate_stride", 6 * d), u32_arg("gate_offset", 5 * d));

    float *out = malloc(rows * d * sizeof(float));
    backend_download(b, out, s->tokens, rows * d * sizeof(float));
    uint64_t all[] = {attention_cache, mlp_cache, labels_buffer, proxies_buffer, gathered, normed,
                      hidden, fresh, residuals, simulated, coefficients_buffer};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) backend_free(b, all[i]);
    free(values);
    free(labels);
    free(proxies);
    return out;
}

/* ---- comparisons ---------------------------------------------------------------------------- */

static double max_abs_diff(const float *a, const float *b, size_t len) {
    double worst = 0;
    for (size_t i = 0; i < len; i++) {
        double diff = fabs((double)a[i] - (double)b[i]);
        if (diff != diff) return INFINITY; /* NaN */
        if (diff > worst) worst = diff;
    }
    return worst;
}

static double max_abs(const float *a, size_t len) {
    double worst = 0;
    for (size_t i = 0; i < len; i++)
        if (fabs((double)a[i]) > worst) worst = fabs((double)a[i]);
    return worst;
}

static size_t not_identical(const float *a, const float *b, size_t len) {
    size_t count = 0;
    for (size_t i = 0; i < len; i++) count += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return count;
}

static int failures = 0;

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

/* ---- the program ------------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/vectors/tiny";
    char path[1024];
    if (resca_api_version() != RESCA_API_VERSION)
        die("libresca speaks interface %u, this program was built for %u", resca_api_version(), RESCA_API_VERSION);
    printf("libresca %s (interface %u), %zu kernels\n", resca_version(), resca_api_version(), resca_kernel_count());

    TensorFile weights_file, forward_file, ddim_file, resca_file;
    snprintf(path, sizeof path, "%s/weights.safetensors", dir);
    if (tensor_file_open(&weights_file, path)) return 1;
    RescaModel *model = NULL;
    check(resca_model_load(path, &model), "resca_model_load");
    RescaModelConfig c;
    check(resca_model_config(model, &c), "resca_model_config");
    snprintf(path, sizeof path, "%s/forward.safetensors", dir);
    if (tensor_file_open(&forward_file, path)) return 1;
    Tensor x, t64, y64, expected;
    if (tensor_find(&forward_file, "x", "F32", &x) || tensor_find(&forward_file, "t", "I64", &t64) ||
        tensor_find(&forward_file, "y", "I64", &y64) || tensor_find(&forward_file, "out", "F32", &expected))
        return 1;
    size_t batch = t64.len;
    float *t = malloc(batch * sizeof(float));
    uint32_t *labels = malloc(batch * sizeof(uint32_t));
    for (size_t i = 0; i < batch; i++) {
        t[i] = (float)((const int64_t *)t64.data)[i];
        labels[i] = (uint32_t)((const int64_t *)y64.data)[i];
    }

    /* CPU reference: the forward against the official output. */
    float *cpu_out = malloc(expected.len * sizeof(float));
    check(resca_forward(model, batch, x.data, x.len, t, batch, y64.data, y64.len, cpu_out, expected.len),
          "resca_forward");
    double err = max_abs_diff(cpu_out, expected.data, expected.len);
    printf("CPU forward: max |out - official| = %.2e (budget 1e-5)\n", err);
    expect(err < 1e-5, "CPU forward within 1e-5 of the official output");

    /* CPU reference: guided DDIM-50 with ResCa as the released code runs it, against the
     * released code's run (its clusterings differ through near ties: 1e-2 of max|x|). */
    snprintf(path, sizeof path, "%s/ddim.safetensors", dir);
    if (tensor_file_open(&ddim_file, path)) return 1;
    snprintf(path, sizeof path, "%s/resca_i4_o1_k4_p0.0_ie_center.safetensors", dir);
    if (tensor_file_open(&resca_file, path)) return 1;
    Tensor noise, noise_labels, official;
    if (tensor_find(&ddim_file, "noise", "F32", &noise) || tensor_find(&ddim_file, "y", "I64", &noise_labels) ||
        tensor_find(&resca_file, "x", "F32", &official))
        return 1;
    RescaSampleOptions options;
    resca_sample_options_default(&options);
    options.method = RESCA_METHOD_RESCA;
    options.interval = 4;
    options.clusters = 4;
    options.alpha = 0.6f;
    options.residuals = RESCA_RESIDUALS_OFFICIAL;
    float *sample = malloc(noise.len * sizeof(float));
    check(resca_sample(model, &options, noise_labels.len, noise.data, noise.len, noise_labels.data,
                       noise_labels.len, sample, noise.len),
          "resca_sample");
    /* official x: (51, 4, C, S, S); the samples are the first two rows of the last state. */
    const float *official_last = (const float *)official.data + 50 * (official.len / 51);
    err = max_abs_diff(sample, official_last, noise.len) / max_abs(official_last, noise.len);
    printf("CPU ResCa sampling (DDIM-50, N=4, K=4): max |x - released code's| / max|x| = %.2e (budget 1e-2)\n", err);
    expect(err < 1e-2, "CPU ResCa sampling within 1e-2 of the released code's run");

    /* The kernels through the interface on the simulator (host memory). */
    Backend sim = {.name = "simulator"};
    Model sim_model = upload_model(&sim, &weights_file, c);
    State sim_state;
    float *sim_out = forward(&sim, &sim_model, &sim_state, x.data, t, labels, batch);
    err = max_abs_diff(sim_out, expected.data, expected.len);
    printf("kernels on the simulator, forward: max |out - official| = %.2e (budget 1e-5)\n", err);
    expect(err < 1e-5, "simulated forward within 1e-5 of the official output");
    size_t clusters = 4, hidden_len = batch * c.tokens * c.hidden_size;
    float *sim_step = resca_sparse_step(&sim, &sim_model, &sim_state, clusters);
    printf("kernels on the simulator, ResCa sparse step (block 0, K=%zu): max |x| = %.3g\n", clusters,
           max_abs(sim_step, hidden_len));
    expect(max_abs(sim_step, hidden_len) < INFINITY, "a finite sparse step");

    /* The same launches on a GPU, this program's context and stream. */
    CudaDriver cuda;
    char why[256] = "";
    int count = 0;
    CUdevice device = 0;
    RescaGpu *kernels = NULL;
    RescaStatus opened = RESCA_STATUS_NO_GPU;
    CUcontext context = NULL;
    if (cuda_driver_load(&cuda, why, sizeof why) == 0) {
        if (cuda.cuInit(0) != 0 || cuda.cuDeviceGetCount(&count) != 0 || count == 0)
            snprintf(why, sizeof why, "the CUDA driver reports no GPU");
        else {
            cuda.cuDeviceGet(&device, 0);
            Backend probe = {.name = "gpu", .cuda = &cuda};
            cuda_check(&probe, cuda.cuCtxCreate(&context, 0, device), "cuCtxCreate");
            /* RESCA_PTX_ARCH=sm_80 loads the Ampere module on a newer GPU (NULL: the newest). */
            opened = resca_gpu_open(context, getenv("RESCA_PTX_ARCH"), &kernels);
            if (opened == RESCA_STATUS_NO_GPU) snprintf(why, sizeof why, "%s", resca_last_error());
            else check(opened, "resca_gpu_open");
        }
    }
    if (opened != RESCA_STATUS_OK) {
        printf("SKIP: GPU path: %s\n", why);
    } else {
        Backend gpu = {.name = "gpu", .cuda = &cuda, .kernels = kernels};
        cuda_check(&gpu, cuda.cuStreamCreate(&gpu.stream, 0 /* CU_STREAM_DEFAULT: ordered after the legacy stream's copies */), "cuStreamCreate");
        printf("GPU: %s\n", resca_gpu_describe(kernels));
        Model gpu_model = upload_model(&gpu, &weights_file, c);
        State gpu_state;
        float *gpu_out = forward(&gpu, &gpu_model, &gpu_state, x.data, t, labels, batch);
        err = max_abs_diff(gpu_out, sim_out, expected.len);
        size_t differing = not_identical(gpu_out, sim_out, expected.len);
        printf("kernels on the GPU, forward: max |gpu - simulator| = %.2e, %zu of %zu values not identical; "
               "max |gpu - official| = %.2e\n",
               err, differing, expected.len, max_abs_diff(gpu_out, expected.data, expected.len));
        expect(err <= 1e-6 * fmax(1.0, max_abs(sim_out, expected.len)), "GPU forward within 1e-6 of the simulator");
        float *gpu_step = resca_sparse_step(&gpu, &gpu_model, &gpu_state, clusters);
        err = max_abs_diff(gpu_step, sim_step, hidden_len);
        differing = not_identical(gpu_step, sim_step, hidden_len);
        printf("kernels on the GPU, ResCa sparse step: max |gpu - simulator| = %.2e, %zu of %zu values not "
               "identical\n",
               err, differing, hidden_len);
        expect(err <= 1e-6 * fmax(1.0, max_abs(sim_step, hidden_len)), "GPU sparse step within 1e-6 of the simulator");
        free_state(&gpu, &gpu_state);
        free_model(&gpu, &gpu_model);
        cuda_check(&gpu, cuda.cuStreamDestroy(gpu.stream), "cuStreamDestroy");
        check(resca_gpu_close(kernels), "resca_gpu_close");
        free(gpu_out);
        free(gpu_step);
    }
    if (context) cuda.cuCtxDestroy(context);

    free_state(&sim, &sim_state);
    free_model(&sim, &sim_model);
    free(sim_out);
    free(sim_step);
    free(sample);
    free(cpu_out);
    free(t);
    free(labels);
    resca_model_free(model);
    tensor_file_close(&weights_file);
    tensor_file_close(&forward_file);
    tensor_file_close(&ddim_file);
    tensor_file_close(&resca_file);
    if (failures) {
        printf("c_host: %d check(s) failed\n", failures);
        return 1;
    }
    printf("c_host: every check passed\n");
    return 0;
}
