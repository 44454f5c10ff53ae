"""PyTorch side of `cargo bench -p resca-host --bench gpu`: the same workloads on the same GPU.

* the DiT-XL/2 forward pass (batch 2), float32;
* 50-step guided DDIM (2 samples, so 4 model rows; cfg 1.5) with full compute;
* the same with ResCa's work per step (N = 3 and N = 5, K = 16): full steps run the dense model,
  cache each block's attention output (first-order Taylor) and MLP output, and cluster the last
  block's hidden state (cosine similarity, EMA 0.6, K-medoids with linspace init, at most 8
  iterations); sparse steps predict attention from the Taylor cache, run the MLP on the K proxy
  tokens only and move every other token's MLP output by its proxy's change (first-order,
  implicit-Euler form). This reproduces ResCa's cost profile in PyTorch; it is not checked
  numerically against the Rust reference (the Rust runs are).

The model is written from the specification (docs/algorithms.md section 1), as in
`bench/pytorch_dit_forward.py`; random weights (speed only).

`--precision` picks the arithmetic: `fp32` (the default: float32 with TF32 off, the anchor of
the exact kernels), `tf32` (float32 tensors, TF32 matmuls and convolutions) or `bf16` (weights
converted to bfloat16 once, activations by autocast, float32 accumulation inside the matmuls;
the sampler's state stays float32).

    python3 bench/pytorch_gpu.py [--device cuda] [--preset DiT-XL/2] [--steps 50] [--runs 10]
                                 [--precision fp32|tf32|bf16] [--json]
    python3 bench/pytorch_gpu.py --device cpu --preset tiny --steps 6 --runs 1   # smoke test
"""
import argparse
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# (hidden, depth, heads, side, patch, channels, classes)
PRESETS = {
    "DiT-XL/2": (1152, 28, 16, 32, 2, 4, 1000),
    "DiT-L/2": (1024, 24, 16, 32, 2, 4, 1000),
    "DiT-B/2": (768, 12, 12, 32, 2, 4, 1000),
    "DiT-S/2": (384, 12, 6, 32, 2, 4, 1000),
    "tiny": (64, 2, 4, 8, 2, 4, 10),
}


def modulate(x, shift, scale):
    d = x.shape[-1]
    return F.layer_norm(x, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ada = nn.Linear(d, 6 * d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def attn(self, h):
        b, n, d = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))

    def mlp(self, h):
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    def __init__(self, d, depth, heads, side, patch, channels, classes):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.x_embed = nn.Conv2d(channels, d, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (side // patch) ** 2, d) * 0.02, requires_grad=False)
        self.t1, self.t2 = nn.Linear(256, d), nn.Linear(d, d)
        self.y = nn.Embedding(classes + 1, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, patch * patch * 2 * channels)
        self.null = classes

    def condition(self, t, y):
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32, device=t.device) / 128)
        args = t[:, None].float() * freqs[None]
        t_emb = self.t2(F.silu(self.t1(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))))
        return F.silu(t_emb + self.y(y))

    def head(self, tokens, silu_c):
        b = tokens.shape[0]
        shift, scale = self.final_ada(silu_c).chunk(2, dim=1)
        out = self.final(modulate(tokens, shift, scale))
        g = int(out.shape[1] ** 0.5)
        out = out.reshape(b, g, g, self.patch, self.patch, -1)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(b, -1, g * self.patch, g * self.patch)

    def forward(self, x, t, y, cache=None):
        """Dense forward; with `cache` (a ResCaCache) it runs the step the cache schedules."""
        tokens = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos
        silu_c = self.condition(t, y)
        for i, block in enumerate(self.blocks):
            sh1, sc1, g1, sh2, sc2, g2 = block.ada(silu_c).chunk(6, dim=1)
            if cache is None or cache.full:
                a = block.attn(modulate(tokens, sh1, sc1))
                tokens = tokens + g1[:, None] * a
                m = block.mlp(modulate(tokens, sh2, sc2))
                if cache is not None:
                    cache.store(i, a, m)
            else:
                tokens = tokens + g1[:, None] * cache.predict_attn(i)
                h = modulate(cache.gather(tokens), sh2, sc2)
                m = cache.drive(i, block.mlp(h))
            tokens = tokens + g2[:, None] * m
        if cache is not None and cache.full:
            cache.cluster(tokens)
        return self.head(tokens, silu_c)


class ResCaCache:
    """Per-block caches and the clustering of ResCa (see the module docstring)."""

    def __init__(self, interval, clusters, first_enhance=2, alpha=0.6, iters=8):
        self.interval, self.k, self.first_enhance, self.alpha, self.iters = interval, clusters, first_enhance, alpha, iters
        self.attn, self.attn_d, self.mlp = {}, {}, {}
        self.smoothed, self.labels, self.proxies = None, None, None
        self.full, self.last_full, self.step = True, 0, 0

    def begin(self, step):
        self.step = step
        self.full = step < self.first_enhance or (step - self.first_enhance) % self.interval == 0
        if self.full:
            self.gap = step - self.last_full
            self.last_full = step

    def store(self, i, a, m):
        if i in self.attn and self.gap > 0:
            self.attn_d[i] = (a - self.attn[i]) / -self.gap
        self.attn[i], self.mlp[i] = a, m

    def predict_attn(self, i):
        d = -(self.step - self.last_full)
        return self.attn[i] + (self.attn_d[i] * d if i in self.attn_d else 0)

    def gather(self, tokens):
        idx = self.proxies[:, :, None].expand(-1, -1, tokens.shape[-1])
        return torch.gather(tokens, 1, idx)

    def drive(self, i, proxy_out):
        cached = self.mlp[i]
        idx = self.proxies[:, :, None].expand(-1, -1, cached.shape[-1])
        change = proxy_out - torch.gather(cached, 1, idx)  # (B, K, D)
        lab = self.labels[:, :, None].expand(-1, -1, cached.shape[-1])
        out = cached + torch.gather(change, 1, lab)
        self.mlp[i] = out
        return out

    def cluster(self, x):
        xn = x / (x.norm(dim=-1, keepdim=True) + 1e-6)
        s = xn @ xn.transpose(1, 2)
        self.smoothed = s if self.smoothed is None else self.alpha * s + (1 - self.alpha) * self.smoothed
        s = self.smoothed
        b, n, _ = s.shape
        medoids = torch.linspace(0, n - 1, self.k, device=x.device).round().long()[None].repeat(b, 1)
        for _ in range(self.iters):
            labels = torch.gather(s, 2, medoids[:, None, :].expand(-1, n, -1)).argmax(dim=2)  # (B, N)
            onehot = F.one_hot(labels, self.k).float()  # (B, N, K)
            sums = s @ onehot  # (B, N, K): similarity of token i to cluster k's members
            score = torch.where(onehot > 0, sums, torch.full_like(sums, -math.inf))
            best = score.argmax(dim=1)  # (B, K)
            empty = onehot.sum(dim=1) == 0
            new = torch.where(empty, medoids, best)
            if torch.equal(new, medoids):
                break
            medoids = new
        self.labels = torch.gather(s, 2, medoids[:, None, :].expand(-1, n, -1)).argmax(dim=2)
        self.proxies = medoids


def ddim_schedule(steps):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    ts = list(range(0, 1000, 1000 // steps))[::-1]
    return ts, abar


def sample(model, noise, labels, steps, scale, method=None):
    ts, abar = ddim_schedule(steps)
    x = noise
    y = torch.cat([labels, torch.full_like(labels, model.null)])
    for step, t in enumerate(ts):
        if method is not None:
            method.begin(step)
        xx = torch.cat([x, x])
        out = model(xx, torch.full((xx.shape[0],), t, device=x.device), y, method).float()
        eps, _ = out[:, : model.channels], out[:, model.channels :]
        cond, uncond = eps.chunk(2)
        eps = uncond + scale * (cond - uncond)
        a = abar[t].item()
        a_prev = abar[ts[step + 1]].item() if step + 1 < len(ts) else 1.0
        x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * eps
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def timed(fn, runs, device):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    result = None
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="DiT-XL/2")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sample-runs", type=int, default=3)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("SKIP: pytorch_gpu.py: no CUDA device visible to PyTorch (use --device cpu)")
    torch.manual_seed(0)
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev = args.device
    d, depth, heads, side, patch, channels, classes = PRESETS[args.preset]
    model = DiT(d, depth, heads, side, patch, channels, classes).to(dev).eval()
    arithmetic = contextlib.nullcontext()
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
        arithmetic = torch.autocast(device_type=dev, dtype=torch.bfloat16)
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
               "preset": args.preset, "precision": args.precision, "tf32": tf32}
    with torch.inference_mode(), arithmetic:
        x = torch.randn(2, channels, side, side, device=dev)
        t = torch.full((2,), 500, device=dev)
        y = torch.arange(2, device=dev)
        med, best, _ = timed(lambda: model(x, t, y), args.runs, dev)
        results["forward_b2_ms"] = {"median": med * 1e3, "min": best * 1e3}
        noise = torch.randn(2, channels, side, side, device=dev)
        labels = torch.tensor([207 % classes, 360 % classes], device=dev)
        runs = {}
        full_med, _, full_x = timed(lambda: sample(model, noise, labels, args.steps, args.cfg_scale), args.sample_runs, dev)
        runs["full"] = {"median_s": full_med}
        for n in (3, 5):
            med, _, xs = timed(
                lambda: sample(model, noise, labels, args.steps, args.cfg_scale, ResCaCache(n, 16)),
                args.sample_runs,
                dev,
            )
            rmse = (xs - full_x).pow(2).mean().sqrt().item()
            runs[f"resca N={n} K=16"] = {"median_s": med, "speedup": full_med / med, "rmse_vs_full": rmse}
        results["ddim_guided"] = {"steps": args.steps, "samples": 2, "cfg_scale": args.cfg_scale, "runs": runs}
    if args.json:
        print(json.dumps(results))
    else:
        described = {"fp32": "float32 (TF32 off)", "tf32": "float32 with TF32 matmuls", "bf16": "bfloat16 weights, autocast"}
        print(f"PyTorch {results['torch']} on {results['device']}, {args.preset}, {described[args.precision]}")
        f = results["forward_b2_ms"]
        print(f"forward, batch 2: median {f['median']:.2f} ms (min {f['min']:.2f})")
        for name, r in runs.items():
            extra = f", {r['speedup']:.2f}x, RMSE vs full {r['rmse_vs_full']:.4f}" if "speedup" in r else ""
            print(f"{args.steps}-step guided DDIM, {name}: {r['median_s']:.3f} s{extra}")


if __name__ == "__main__":
    main()
