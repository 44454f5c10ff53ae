"""DDIM-50 samples from the exported DiT (docs/algorithms.md section 2), a PNG grid (row = class 0..9) and the
classifier's accuracy / Frechet distance on the samples for several guidance scales.

python3 sample.py --weights out/dit-mnist.safetensors --classifier out/classifier.safetensors \
    --cfg 1.0,1.5,2.0,3.0,4.0 --per-class 50 --grid-cfg 3.0 --png out/samples.png
"""
import argparse
import json
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import pngio
from classifier import feature_stats, frechet_distance, load_classifier
from dit import DiT, ddim_sample


def load_dit(path):
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    m = DiT(input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
            hidden_size=cfg["hidden_size"], depth=cfg["depth"], num_heads=cfg["num_heads"],
            mlp_ratio=cfg["mlp_ratio"], num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"])
    m.load_state_dict(load_file(path), strict=True)
    return m.eval(), cfg


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default="out/dit-mnist.safetensors")
    p.add_argument("--classifier", default="out/classifier.safetensors")
    p.add_argument("--cfg", default="1.0,1.5,2.0,3.0,4.0")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--grid-cfg", type=float, default=None)
    p.add_argument("--png", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default="data/package")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model, cfg = load_dit(a.weights)
    clf, mu_r, sig_r = load_classifier(a.classifier)
    n = 10 * a.per_class
    labels = torch.arange(10).repeat_interleave(a.per_class)
    noise = torch.randn((n, cfg["in_channels"], cfg["input_size"], cfg["input_size"]),
                        generator=torch.Generator().manual_seed(a.seed))
    results = []
    import data
    xtr, ytr, _, _ = data.load(a.data)
    sel = np.random.default_rng(a.seed).choice(len(xtr), n, replace=False)
    with torch.no_grad():
        xr = torch.from_numpy(xtr[sel])
        racc = (clf(xr).argmax(1) == torch.from_numpy(ytr[sel])).float().mean().item()
    mu, sig = feature_stats(clf, xr)
    r = {"reference": f"{n} real training digits", "accuracy": round(racc, 4), "frechet": round(frechet_distance(mu, sig, mu_r, sig_r), 3)}
    results.append(r)
    print(json.dumps(r), flush=True)
    for s in [float(v) for v in a.cfg.split(",")]:
        t0 = time.time()
        xs = torch.cat([ddim_sample(model, noise[i: i + 250], labels[i: i + 250], s, null_label=cfg["num_classes"])
                        for i in range(0, n, 250)])
        with torch.no_grad():
            pred = clf(xs.clamp(-1, 1)).argmax(1)
        acc = (pred == labels).float().mean().item()
        per = [(pred[labels == c] == c).float().mean().item() for c in range(10)]
        mu, sig = feature_stats(clf, xs.clamp(-1, 1))
        fd = frechet_distance(mu, sig, mu_r, sig_r)
        r = {"cfg": s, "n": n, "accuracy": round(acc, 4), "per_class": [round(v, 3) for v in per],
             "frechet": round(fd, 3), "seconds": round(time.time() - t0)}
        results.append(r)
        print(json.dumps(r), flush=True)
        if a.png and (a.grid_cfg is None or a.grid_cfg == s):  # --png may contain {cfg}
            k = min(a.per_class, 10)
            sel = torch.cat([xs[c * a.per_class: c * a.per_class + k] for c in range(10)])
            pngio.write_gray_png(a.png.format(cfg=s), pngio.grid(sel.numpy(), 10, k))
    if a.json:
        from safetensors import safe_open
        with safe_open(a.weights, "np") as f:
            step = f.metadata().get("step", "?")
        report = {
            "weights": f"{a.weights} (EMA, step {step})",
            "sampler": "DDIM-50, eta 0, no clipping, guided (forward_with_cfg), noise seed "
                       f"{a.seed}; samples clamped to [-1,1] before the classifier",
            "reference": results[0],
            "results": results[1:],
        }
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
