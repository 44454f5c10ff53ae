"""Checks dit.py (model, forward_with_cfg, DDIM-50) against the tensors made by the official
PyTorch code in tests/vectors/tiny (see its README.md). Usage: python3 check_vectors.py [DIR]"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dit import DiT, ddim_sample, ddim_timestep_map

d = sys.argv[1] if len(sys.argv) > 1 else "../tests/vectors/tiny"
torch.set_num_threads(1)
with safe_open(f"{d}/weights.safetensors", "pt") as f:
    meta = f.metadata()
cfg = json.loads(meta["config"]) if "config" in meta else None
print("config", cfg)
m = DiT(input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
        hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0), num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"])
w = load_file(f"{d}/weights.safetensors")
missing = set(m.state_dict()) ^ set(w)
assert not missing, f"key mismatch: {missing}"
m.load_state_dict(w)
m.eval()
ref_pe = w["pos_embed"]
fresh = DiT(input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
            hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
            num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"])
print("pos_embed max diff", (fresh.pos_embed - ref_pe).abs().max().item())
fw = load_file(f"{d}/forward.safetensors")
with torch.no_grad():
    out = m(fw["x"], fw["t"], fw["y"])
    print("forward max diff", (out - fw["out"]).abs().max().item(), "max|out|", fw["out"].abs().max().item())
    o = m.forward_with_cfg(fw["cfg.x"], fw["cfg.t"], fw["cfg.y"], 1.5)
    print("cfg max diff", (o - fw["cfg.out"]).abs().max().item())
dd = load_file(f"{d}/ddim.safetensors")
print("timestep map equal", ddim_timestep_map() == dd["sched.timestep_map"].tolist())
x = ddim_sample(m, dd["noise"], dd["y"], 1.0, null_label=cfg["num_classes"])
ref = dd["plain.x"][-1]
print("plain DDIM final rel diff", ((x - ref).abs().max() / ref.abs().max()).item())
x = ddim_sample(m, dd["cfg.noise"][:2], dd["cfg.y"][:2], 1.5, null_label=cfg["num_classes"])
ref = dd["cfg.x"][-1][:2]
print("guided DDIM final rel diff", ((x - ref).abs().max() / ref.abs().max()).item())
