"""Quick look at a checkpoint's EMA weights: 2 samples per class, DDIM-50, one cfg scale -> PNG."""
import sys

import torch

import pngio
from dit import ddim_sample
from sample import load_dit

torch.set_num_threads(1)
w, png, cfg_scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
clip = len(sys.argv) > 4 and sys.argv[4] == 'clip'
m, cfg = load_dit(w)
y = torch.arange(10).repeat_interleave(2)
x = ddim_sample(m, torch.randn(20, 1, 32, 32, generator=torch.Generator().manual_seed(0)), y, cfg_scale, clip=clip)
pngio.write_gray_png(png, pngio.grid(x.numpy(), 2, 10, scale=3) if False else pngio.grid(x.view(10, 2, 1, 32, 32).transpose(0, 1).reshape(20, 1, 32, 32).numpy(), 2, 10, scale=3))
