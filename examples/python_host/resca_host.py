#!/usr/bin/env python3
"""A Python host of libresca through ctypes (no binding package): the CPU reference's forward and
ResCa sampling checked against the official PyTorch outputs of tests/vectors/tiny, then a DiT
forward launched kernel by kernel through the interface on the CPU simulator (checked against the
official output) and, where PyTorch sees a GPU, on CUDA tensors (`data_ptr()`, PyTorch's current
context and `torch.cuda.current_stream().cuda_stream`), checked against the simulator.

Arrays: PyTorch tensors when torch is installed, else numpy arrays (the CPU path and the
simulator need nothing more; `pip install numpy`). Without a GPU, or without torch, it prints
`SKIP: GPU path: <why>`.

Usage: python3 examples/python_host/resca_host.py [--library target/debug/libresca.so]
                                                  [--vectors tests/vectors/tiny]
Exit status 0 when every check passes.
"""

import argparse
import ctypes
import json
import math
import struct
import sys
from pathlib import Path

try:
    import torch
except ImportError:
    torch = None
try:
    import numpy
except ImportError:
    numpy = None

# ---- the interface (capi/include/resca.h) ---------------------------------------------------

RESCA_API_VERSION = 1
RESCA_STATUS_OK = 0
RESCA_STATUS_NO_GPU = 3
RESCA_ARG_BUFFER_F32, RESCA_ARG_BUFFER_U32 = 1, 2
RESCA_ARG_U32, RESCA_ARG_F32 = 4, 5
RESCA_METHOD_RESCA = 4
RESCA_RESIDUALS_OFFICIAL = 1


class RescaArg(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("kind", ctypes.c_uint32),
        ("address", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("value_u32", ctypes.c_uint32),
        ("value_f32", ctypes.c_float),
        ("coefficients", ctypes.c_float * 8),
    ]


class RescaModelConfig(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint32)
        for name in (
            "input_size", "patch_size", "in_channels", "out_channels", "hidden_size",
            "depth", "num_heads", "num_classes", "tokens", "learn_sigma",
        )
    ]


class RescaSampleOptions(ctypes.Structure):
    _fields_ = [
        ("sampler", ctypes.c_uint32), ("steps", ctypes.c_uint32), ("flow_shift", ctypes.c_float),
        ("cfg_scale", ctypes.c_float), ("method", ctypes.c_uint32), ("interval", ctypes.c_uint32),
        ("first_enhance", ctypes.c_uint32), ("order", ctypes.c_uint32), ("clusters", ctypes.c_uint32),
        ("alpha", ctypes.c_float), ("solver", ctypes.c_uint32), ("proxy", ctypes.c_uint32),
        ("residuals", ctypes.c_uint32), ("clustering", ctypes.c_uint32), ("propagation", ctypes.c_float),
        ("kmedoids_iters", ctypes.c_uint32), ("seed", ctypes.c_uint64),
    ]


def load_library(path):
    lib = ctypes.CDLL(str(path))
    p, size, u32, f32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_float
    signatures = {
        "resca_api_version": ([], u32),
        "resca_version": ([], ctypes.c_char_p),
        "resca_last_error": ([], ctypes.c_char_p),
        "resca_status_name": ([ctypes.c_int32], ctypes.c_char_p),
        "resca_model_load": ([ctypes.c_char_p, p], ctypes.c_int),
        "resca_model_free": ([p], None),
        "resca_model_config": ([p, p], ctypes.c_int),
        "resca_forward": ([p, size, p, size, p, size, p, size, p, size], ctypes.c_int),
        "resca_sample_options_default": ([p], None),
        "resca_sample": ([p, p, size, p, size, p, size, p, size], ctypes.c_int),
        "resca_sim_launch": ([ctypes.c_char_p, p, size], ctypes.c_int),
        "resca_gpu_open": ([p, ctypes.c_char_p, p], ctypes.c_int),
        "resca_gpu_close": ([p], ctypes.c_int),
        "resca_gpu_describe": ([p], ctypes.c_char_p),
        "resca_gpu_launch": ([p, p, ctypes.c_char_p, p, size], ctypes.c_int),
    }
    for name, (arguments, result) in signatures.items():
        function = getattr(lib, name)
        function.argtypes = arguments
        function.restype = result
    return lib


class RescaError(RuntimeError):
    pass


def check(lib, status, what):
    if status != RESCA_STATUS_OK:
        name = lib.resca_status_name(status).decode()
        raise RescaError(f"{what}: {name}: {lib.resca_last_error().decode()}")


# ---- arrays: torch tensors or numpy arrays --------------------------------------------------


class Arrays:
    """Host (and, with torch, device) arrays of float32 / int64 / uint32 values."""

    def __init__(self, kind, device="cpu"):
        self.kind, self.device = kind, device

    def from_bytes(self, raw, dtype, shape):
        if self.kind == "torch":
            t = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}[dtype]
            return torch.frombuffer(bytearray(raw), dtype=t).reshape(shape).to(self.device)
        t = {"F32": numpy.float32, "F64": numpy.float64, "I64": numpy.int64}[dtype]
        return numpy.frombuffer(raw, dtype=t).reshape(shape).copy()

    def zeros(self, n, dtype="f32"):
        if self.kind == "torch":
            return torch.zeros(n, dtype=torch.float32 if dtype == "f32" else torch.int32, device=self.device)
        return numpy.zeros(n, dtype=numpy.float32 if dtype == "f32" else numpy.uint32)

    def labels(self, values):
        """uint32 labels (torch: int32 of the same bits, labels being non-negative)."""
        if self.kind == "torch":
            return torch.tensor(list(values), dtype=torch.int32, device=self.device)
        return numpy.array(list(values), dtype=numpy.uint32)

    def floats(self, values):
        if self.kind == "torch":
            return torch.tensor(list(values), dtype=torch.float32, device=self.device)
        return numpy.array(list(values), dtype=numpy.float32)

    def to(self, array, device):
        return array.to(device) if self.kind == "torch" else array


def address(array):
    """The address of an array's first element: `data_ptr()` of a tensor, `ctypes.data` of numpy."""
    return array.data_ptr() if hasattr(array, "data_ptr") else array.ctypes.data


def numel(array):
    return array.numel() if hasattr(array, "numel") else array.size


def contiguous(array):
    if hasattr(array, "contiguous"):
        return array.contiguous()
    return numpy.ascontiguousarray(array)


def as_list(array):
    if hasattr(array, "cpu"):
        return array.detach().cpu().reshape(-1).tolist()
    return array.reshape(-1).tolist()


def max_abs_diff(a, b):
    return max((abs(x - y) for x, y in zip(as_list(a), as_list(b))), default=0.0)


def not_identical(a, b):
    pack = lambda values: struct.pack(f"{len(values)}f", *values)
    xs, ys = pack(as_list(a)), pack(as_list(b))
    return sum(xs[i : i + 4] != ys[i : i + 4] for i in range(0, len(xs), 4))


def read_safetensors(path, arrays):
    raw = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = arrays.from_bytes(raw[start + begin : start + end], info["dtype"], info["shape"])
    return tensors


# ---- kernel launches ------------------------------------------------------------------------


class U32(int):
    pass


class F32(float):
    pass


def kernel_args(**parameters):
    """`RescaArg`s from keyword arguments in the kernel table's order (docs/linking.md): arrays
    become buffers (float32, or uint32 labels and indices), `U32`/`F32` values."""
    args = (RescaArg * len(parameters))()
    for arg, (name, value) in zip(args, parameters.items()):
        arg.name = name.encode()
        if isinstance(value, U32):
            arg.kind, arg.value_u32 = RESCA_ARG_U32, int(value)
        elif isinstance(value, F32):
            arg.kind, arg.value_f32 = RESCA_ARG_F32, float(value)
        else:
            floats = str(getattr(value, "dtype", "")).endswith("float32")
            arg.kind = RESCA_ARG_BUFFER_F32 if floats else RESCA_ARG_BUFFER_U32
            arg.address, arg.len = address(value), numel(value)
    return args


class Simulator:
    name = "simulator"

    def __init__(self, lib):
        self.lib = lib

    def launch(self, kernel, **parameters):
        args = kernel_args(**parameters)
        check(self.lib, self.lib.resca_sim_launch(kernel.encode(), args, len(args)), f"simulated `{kernel}`")


class Gpu:
    name = "gpu"

    def __init__(self, lib, handle):
        self.lib, self.handle = lib, handle

    def launch(self, kernel, **parameters):
        args = kernel_args(**parameters)
        stream = torch.cuda.current_stream().cuda_stream
        status = self.lib.resca_gpu_launch(self.handle, ctypes.c_void_p(stream), kernel.encode(), args, len(args))
        check(self.lib, status, f"GPU launch of `{kernel}`")


def forward(runner, arrays, config, weights, x, t, labels):
    """A DiT forward, kernel by kernel, as resca-host's pipeline launches it; returns `out`."""
    c = config
    b, n, d = len(t), c.tokens, c.hidden_size
    heads, head_dim = c.num_heads, c.hidden_size // c.num_heads
    rows, side, p = b * n, c.input_size, c.patch_size
    width = p * p * c.out_channels
    w = lambda name: contiguous(weights[name]).reshape(-1)
    z = arrays.zeros
    features, t_hidden, t_emb, silu_c = z(b * 256), z(b * d), z(b * d), z(b * d)
    tokens, modulation, normed, qkv = z(rows * d), z(b * 6 * d), z(rows * d), z(rows * 3 * d)
    attended, hidden, final_mod, final_tokens = z(rows * d), z(rows * 4 * d), z(b * 2 * d), z(rows * width)
    out = z(b * c.out_channels * side * side)
    x, t, labels = contiguous(x).reshape(-1), contiguous(t), contiguous(labels)

    def linear_rows(kernel, prefix, x_in, out_, rows_, in_features, out_features):
        runner.launch(kernel, x=x_in, w=w(prefix + ".weight"), bias=w(prefix + ".bias"), out=out_,
                      rows=U32(rows_), in_features=U32(in_features), out_features=U32(out_features))

    def gemm(kernel, prefix, a, out_, m, n_out, k):
        runner.launch(kernel, a=a, w=w(prefix + ".weight"), bias=w(prefix + ".bias"), out=out_,
                      m=U32(m), n=U32(n_out), k=U32(k))

    def gemm_gated(prefix, a, k, gate_offset):
        runner.launch("gemm_bias_gated_residual", a=a, w=w(prefix + ".weight"), bias=w(prefix + ".bias"),
                      x=tokens, gate=modulation, m=U32(rows), n=U32(d), k=U32(k), tokens=U32(n),
                      gate_stride=U32(6 * d), gate_offset=U32(gate_offset))

    def layer_norm_modulate(mod, stride, shift, scale):
        runner.launch("layer_norm_modulate", x=tokens, modulation=mod, out=normed, rows=U32(rows),
                      hidden=U32(d), tokens=U32(n), mod_stride=U32(stride), shift_offset=U32(shift),
                      scale_offset=U32(scale))

    runner.launch("timestep_features", t=t, out=features)
    linear_rows("linear_rows_silu", "t_embedder.mlp.0", features, t_hidden, b, 256, d)
    linear_rows("linear_rows", "t_embedder.mlp.2", t_hidden, t_emb, b, d, d)
    runner.launch("label_embed_silu", t_emb=t_emb, table=w("y_embedder.embedding_table.weight"), labels=labels,
                  silu_c=silu_c, hidden=U32(d))
    runner.launch("patch_embed", x=x, w=w("x_embedder.proj.weight"), bias=w("x_embedder.proj.bias"),
                  pos=w("pos_embed"), out=tokens, channels=U32(c.in_channels), side=U32(side), patch=U32(p),
                  hidden=U32(d))
    for l in range(c.depth):
        block = f"blocks.{l}"
        linear_rows("linear_rows", f"{block}.adaLN_modulation.1", silu_c, modulation, b, d, 6 * d)
        layer_norm_modulate(modulation, 6 * d, 0, d)
        gemm("gemm_bias", f"{block}.attn.qkv", normed, qkv, rows, 3 * d, d)
        runner.launch("flash_attention", qkv=qkv, out=attended, tokens=U32(n), heads=U32(heads),
                      head_dim=U32(head_dim), scale=F32(struct.unpack("f", struct.pack("f", 1 / math.sqrt(head_dim)))[0]))
        gemm_gated(f"{block}.attn.proj", attended, d, 2 * d)
        layer_norm_modulate(modulation, 6 * d, 3 * d, 4 * d)
        gemm("gemm_bias_gelu", f"{block}.mlp.fc1", normed, hidden, rows, 4 * d, d)
        gemm_gated(f"{block}.mlp.fc2", hidden, 4 * d, 5 * d)
    linear_rows("linear_rows", "final_layer.adaLN_modulation.1", silu_c, final_mod, b, d, 2 * d)
    layer_norm_modulate(final_mod, 2 * d, 0, d)
    gemm("gemm_bias", "final_layer.linear", normed, final_tokens, rows, width, d)
    runner.launch("unpatchify", tokens=final_tokens, out=out, batch=U32(b), out_channels=U32(c.out_channels),
                  side=U32(side), patch=U32(p))
    return out


# ---- the program ----------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[2]
    parser.add_argument("--library", default=root / "target/debug/libresca.so")
    parser.add_argument("--vectors", default=root / "tests/vectors/tiny")
    parser.add_argument("--numpy", action="store_true", help="numpy arrays even where torch is installed")
    options = parser.parse_args()
    kind = "torch" if torch is not None and not options.numpy else "numpy"
    if kind == "numpy" and numpy is None:
        sys.exit("resca_host.py needs torch or numpy for its arrays (pip install numpy)")
    lib = load_library(options.library)
    if lib.resca_api_version() != RESCA_API_VERSION:
        sys.exit(f"libresca speaks interface {lib.resca_api_version()}, this script {RESCA_API_VERSION}")
    arrays = Arrays(kind)
    print(f"libresca {lib.resca_version().decode()} (interface {lib.resca_api_version()}), arrays: {arrays.kind}")
    vectors = Path(options.vectors)
    failures = []

    def expect(ok, what):
        if not ok:
            print(f"FAILED: {what}", file=sys.stderr)
            failures.append(what)

    # CPU reference: the forward against the official output.
    model = ctypes.c_void_p()
    check(lib, lib.resca_model_load(str(vectors / "weights.safetensors").encode(), ctypes.byref(model)), "load")
    config = RescaModelConfig()
    check(lib, lib.resca_model_config(model, ctypes.byref(config)), "resca_model_config")
    forward_file = read_safetensors(vectors / "forward.safetensors", arrays)
    x, t64, y64, expected = (forward_file[k] for k in ("x", "t", "y", "out"))
    batch = len(t64)
    t = arrays.floats(float(v) for v in as_list(t64))
    out = arrays.zeros(numel(expected))
    status = lib.resca_forward(model, batch, address(contiguous(x)), numel(x), address(t), batch, address(y64),
                               batch, address(out), numel(out))
    check(lib, status, "resca_forward")
    err = max_abs_diff(out, expected)
    print(f"CPU forward: max |out - official| = {err:.2e} (budget 1e-5)")
    expect(err < 1e-5, "CPU forward within 1e-5 of the official output")

    # CPU reference: ResCa as the released code runs it, against the released code's run.
    ddim = read_safetensors(vectors / "ddim.safetensors", arrays)
    official = read_safetensors(vectors / "resca_i4_o1_k4_p0.0_ie_center.safetensors", arrays)["x"]
    noise, noise_labels = ddim["noise"], ddim["y"]
    sample_options = RescaSampleOptions()
    lib.resca_sample_options_default(ctypes.byref(sample_options))
    sample_options.method, sample_options.interval, sample_options.clusters = RESCA_METHOD_RESCA, 4, 4
    sample_options.alpha, sample_options.residuals = 0.6, RESCA_RESIDUALS_OFFICIAL
    sample = arrays.zeros(numel(noise))
    status = lib.resca_sample(model, ctypes.byref(sample_options), len(noise_labels), address(noise), numel(noise),
                              address(noise_labels), len(noise_labels), address(sample), numel(sample))
    check(lib, status, "resca_sample")
    last = as_list(official[50][: len(noise_labels)])
    err = max(abs(a - b) for a, b in zip(as_list(sample), last)) / max(abs(v) for v in last)
    print(f"CPU ResCa sampling (DDIM-50, N=4, K=4): max |x - released code's| / max|x| = {err:.2e} (budget 1e-2)")
    expect(err < 1e-2, "CPU ResCa sampling within 1e-2 of the released code's run")

    # The kernels through the interface, on the simulator.
    weights = read_safetensors(vectors / "weights.safetensors", arrays)
    labels = arrays.labels(int(v) for v in as_list(y64))
    simulated = forward(Simulator(lib), arrays, config, weights, x, t, labels)
    err = max_abs_diff(simulated, expected)
    print(f"kernels on the simulator, forward: max |out - official| = {err:.2e} (budget 1e-5)")
    expect(err < 1e-5, "simulated forward within 1e-5 of the official output")

    # The same launches on the GPU PyTorch uses, on its current stream.
    if kind == "numpy":
        why = "torch is not installed" if torch is None else "--numpy given"
        print(f"SKIP: GPU path: {why} (the CPU path ran on numpy arrays)")
    elif not torch.cuda.is_available():
        print("SKIP: GPU path: PyTorch sees no CUDA device")
    else:
        torch.zeros(1, device="cuda")  # PyTorch's context is current on this thread from here on
        handle = ctypes.c_void_p()
        status = lib.resca_gpu_open(None, None, ctypes.byref(handle))
        if status == RESCA_STATUS_NO_GPU:
            print(f"SKIP: GPU path: {lib.resca_last_error().decode()}")
        else:
            check(lib, status, "resca_gpu_open")
            print(f"GPU: {lib.resca_gpu_describe(handle).decode()}")
            gpu_arrays = Arrays("torch", "cuda")
            on_gpu = {name: tensor.to("cuda") for name, tensor in weights.items()}
            result = forward(Gpu(lib, handle), gpu_arrays, config, on_gpu, x.to("cuda"), t.to("cuda"),
                             labels.to("cuda"))
            torch.cuda.synchronize()
            err = max_abs_diff(result, simulated)
            scale = max(1.0, max(abs(v) for v in as_list(simulated)))
            print(f"kernels on the GPU, forward: max |gpu - simulator| = {err:.2e}, "
                  f"{not_identical(result, simulated)} of {numel(result)} values not identical; "
                  f"max |gpu - official| = {max_abs_diff(result, expected):.2e}")
            expect(err <= 1e-6 * scale, "GPU forward within 1e-6 of the simulator")
            check(lib, lib.resca_gpu_close(handle), "resca_gpu_close")
    lib.resca_model_free(model)
    if failures:
        print(f"resca_host.py: {len(failures)} check(s) failed")
        return 1
    print("resca_host.py: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
