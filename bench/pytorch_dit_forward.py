"""Side-by-side anchor for `cargo bench -p resca-reference --bench dit_forward`: the same DiT
forward pass (docs/algorithms.md section 1) in PyTorch, random weights, float32, on the CPU.

The module below is written from the specification (not copied from facebookresearch/DiT): the
same layers and shapes, timm-style attention via `scaled_dot_product_attention`.

    python3 bench/pytorch_dit_forward.py [--threads 2] [--runs 5] [--preset DiT-XL/2]
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"DiT-XL/2": (1152, 28, 16), "DiT-L/2": (1024, 24, 16), "DiT-B/2": (768, 12, 12), "DiT-S/2": (384, 12, 6)}


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ada = nn.Linear(d, 6 * d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x, silu_c):
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(silu_c).chunk(6, dim=1)
        h = F.layer_norm(x, (d,), eps=1e-6) * (1 + sc1[:, None]) + sh1[:, None]
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + g1[:, None] * self.proj(a)
        h = F.layer_norm(x, (d,), eps=1e-6) * (1 + sc2[:, None]) + sh2[:, None]
        return x + g2[:, None] * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    def __init__(self, d, depth, heads, side=32, patch=2, channels=4, classes=1000):
        super().__init__()
        self.patch = patch
        self.x_embed = nn.Conv2d(channels, d, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (side // patch) ** 2, d) * 0.02, requires_grad=False)
        self.t1, self.t2 = nn.Linear(256, d), nn.Linear(d, d)
        self.y = nn.Embedding(classes + 1, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, patch * patch * 2 * channels)

    def forward(self, x, t, y):
        b = x.shape[0]
        tokens = self.x_embed(x).flatten(2).transpose(1, 2) + self.pos
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = t[:, None].float() * freqs[None]
        t_emb = self.t2(F.silu(self.t1(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))))
        silu_c = F.silu(t_emb + self.y(y))
        for block in self.blocks:
            tokens = block(tokens, silu_c)
        shift, scale = self.final_ada(silu_c).chunk(2, dim=1)
        d = tokens.shape[-1]
        out = self.final(F.layer_norm(tokens, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None])
        g = int(out.shape[1] ** 0.5)
        out = out.reshape(b, g, g, self.patch, self.patch, -1)
        return torch.einsum("nhwpqc->nchpwq", out).reshape(b, -1, g * self.patch, g * self.patch)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--preset", default="DiT-XL/2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DiT(*PRESETS[args.preset]).eval()
    print(f"PyTorch {torch.__version__}, {args.threads} threads, {args.preset}")
    with torch.inference_mode():
        for batch in (1, 2):
            x = torch.randn(batch, 4, 32, 32)
            t = torch.full((batch,), 500)
            y = torch.arange(batch)
            model(x, t, y)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                model(x, t, y)
                times.append(time.perf_counter() - start)
            print(f"batch {batch}: min {min(times):.3f} s, median {statistics.median(times):.3f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
