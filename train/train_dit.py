"""Train the class-conditional pixel-space DiT on MNIST (DDPM epsilon objective, linear betas).

python3 train_dit.py --data data/package --out runs/dit --steps 12000
Writes checkpoints (runs/.../ckpt.pt, resumable) and the EMA weights as safetensors with the
official DiT key names plus a JSON config (also stored in the safetensors metadata, key `config`).
"""
import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import data
from dit import DiT, alphas_cumprod


def config_of(a):
    return {"input_size": 32, "patch_size": a.patch, "in_channels": 1, "hidden_size": a.hidden,
            "depth": a.depth, "num_heads": a.heads, "mlp_ratio": 4.0, "num_classes": 10,
            "learn_sigma": False}


def export(model, cfg, path_st, path_json, extra=None):
    sd = {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(cfg)}
    if extra:
        meta.update({k: str(v) for k, v in extra.items()})
    tmp = path_st + ".tmp"
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path_st)
    with open(path_json, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/package")
    p.add_argument("--out", default="runs/dit")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--emb-lr-mult", type=float, default=1.0)
    p.add_argument("--decay-from", type=int, default=0)
    p.add_argument("--decay-to", type=int, default=0)
    p.add_argument("--lr-min", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--bench", type=int, default=0, help="only time this many steps")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)

    xtr, ytr, _, _ = data.load(a.data)
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    cfg = config_of(a)
    model = DiT(input_size=32, patch_size=a.patch, in_channels=1, hidden_size=a.hidden, depth=a.depth,
                num_heads=a.heads, class_dropout_prob=0.1, num_classes=10, learn_sigma=False)
    ema = copy.deepcopy(model).eval()
    for q in ema.parameters():
        q.requires_grad_(False)
    nparam = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"config {cfg}; trainable parameters {nparam}", flush=True)
    table = model.y_embedder.embedding_table.weight
    rest = [q for q in model.parameters() if q.requires_grad and q is not table]
    groups = [{"params": rest, "mult": 1.0}]
    if a.emb_lr_mult != 1.0:  # the label table learns a.emb_lr_mult times faster
        groups.append({"params": [table], "mult": a.emb_lr_mult})
    else:
        groups[0]["params"] = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0)
    sab = torch.from_numpy(np.sqrt(alphas_cumprod())).float()
    s1ab = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod())).float()
    gen = torch.Generator().manual_seed(a.seed + 1)  # data order, t, noise, label dropout

    step, elapsed, log = 0, 0.0, []
    ck = os.path.join(a.out, "ckpt.pt")
    if os.path.exists(ck) and not a.bench:
        st = torch.load(ck, weights_only=False)
        model.load_state_dict(st["model"]); ema.load_state_dict(st["ema"])
        if len(st["opt"]["param_groups"]) == len(opt.param_groups):
            opt.load_state_dict(st["opt"])
        else:  # the group layout changed (--emb-lr-mult): keep each parameter's Adam state
            one = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.0)
            one.load_state_dict(st["opt"])
            for q, v in one.state.items():
                opt.state[q] = v
        gen.set_state(st["gen"]); step, elapsed, log = st["step"], st["elapsed"], st["log"]
        print(f"resumed at step {step}", flush=True)

    model.train()
    perm, pos = torch.randperm(len(xtr), generator=gen), 0
    run_loss, run_n, t0 = 0.0, 0, time.time()
    last = time.time()
    total = a.bench if a.bench else a.steps
    while step < total:
        if pos + a.batch > len(perm):
            perm, pos = torch.randperm(len(xtr), generator=gen), 0
        idx = perm[pos: pos + a.batch]; pos += a.batch
        x0, y = xtr[idx], ytr[idx]
        t = torch.randint(0, 1000, (a.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sab[t].view(-1, 1, 1, 1) * x0 + s1ab[t].view(-1, 1, 1, 1) * noise
        lr = a.lr * min(1.0, (step + 1) / a.warmup)
        if a.decay_to > a.decay_from and step >= a.decay_from:  # linear decay to lr_min
            f = min(1.0, (step - a.decay_from) / (a.decay_to - a.decay_from))
            lr = a.lr + f * (a.lr_min - a.lr)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        loss = F.mse_loss(model(xt, t, y, generator=gen), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
        step += 1
        run_loss += loss.item(); run_n += 1
        now = time.time(); elapsed += now - last; last = now
        if step % 100 == 0 or step == total:
            log.append((step, run_loss / run_n, elapsed))
            print(f"step {step} loss {run_loss / run_n:.4f} lr {lr:.2e} elapsed {elapsed / 60:.1f} min "
                  f"({elapsed / step:.3f} s/step overall)", flush=True)
            run_loss, run_n = 0.0, 0
        if a.bench:
            continue
        if step % a.ckpt_every == 0 or step == total:
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        "gen": gen.get_state(), "step": step, "elapsed": elapsed, "log": log,
                        "args": vars(a)}, ck + ".tmp")
            os.replace(ck + ".tmp", ck)
            export(ema, cfg, os.path.join(a.out, "dit-mnist.safetensors"), os.path.join(a.out, "dit-mnist.json"),
                   {"step": step, "train_seconds": round(elapsed), "ema_decay": a.ema, "seed": a.seed,
                    "final_loss_avg100": round(log[-1][1], 5) if log else ""})
    if a.bench:
        print(f"bench: {(time.time() - t0) / total:.3f} s/step at batch {a.batch}", flush=True)


if __name__ == "__main__":
    main()
