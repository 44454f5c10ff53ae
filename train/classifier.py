"""Small CNN digit classifier on 32x32 images in [-1, 1]; its 128-wide penultimate features
(`features`) feed the Frechet distance, its logits measure the class accuracy of generated samples.

Architecture (exactly; all convs 3x3, stride 1, zero padding 1; maxpool 2x2 stride 2):
  x (B,1,32,32) -> conv1 1->32  -> ReLU -> maxpool -> (B,32,16,16)
                -> conv2 32->64 -> ReLU -> maxpool -> (B,64,8,8)
                -> conv3 64->64 -> ReLU -> maxpool -> (B,64,4,4)
                -> flatten channel-major (index c*16 + h*4 + w) -> (B,1024)
                -> fc1 1024->128 -> ReLU = features (B,128)
                -> fc2 128->10 = logits
Keys: conv{1,2,3}.weight [out,in,3,3], conv{1,2,3}.bias [out], fc1.weight [128,1024], fc1.bias,
fc2.weight [10,128], fc2.bias; plus fid.mu [128], fid.sigma [128,128] (float32; mean and unbiased
covariance of `features` over the 1,000 real test digits).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import data


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(1024, 128)
        self.fc2 = nn.Linear(128, 10)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.features(x))


def load_classifier(path):
    from safetensors.torch import load_file
    sd = load_file(path)
    m = Classifier()
    m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fid.")})
    return m.eval(), sd["fid.mu"].double().numpy(), sd["fid.sigma"].double().numpy()


def frechet_distance(mu1, s1, mu2, s2):
    """||mu1-mu2||^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)), the matrix square root via eigenvalues of
    s1^(1/2) s2 s1^(1/2) (symmetric PSD), in float64."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


@torch.no_grad()
def feature_stats(model, x, bs=500):
    f = torch.cat([model.features(x[i: i + bs]) for i in range(0, len(x), bs)]).double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def augment(x, gen):
    """Random integer shifts of up to 2 pixels (background -1 filled in)."""
    B = x.shape[0]
    xp = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx = torch.randint(0, 5, (B,), generator=gen)
    dy = torch.randint(0, 5, (B,), generator=gen)
    return torch.stack([xp[i, :, dy[i]: dy[i] + 32, dx[i]: dx[i] + 32] for i in range(B)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/package")
    p.add_argument("--out", default="out/classifier.safetensors")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--augment", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    xtr, ytr, xte, yte = (torch.from_numpy(v) for v in data.load(a.data))
    m = Classifier()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = a.epochs * (len(xtr) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.time()
    for ep in range(a.epochs):
        m.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr) - 63, 64):
            idx = perm[i: i + 64]
            loss = F.cross_entropy(m(augment(xtr[idx], gen) if a.augment else xtr[idx]), ytr[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        m.eval()
        with torch.no_grad():
            acc = (m(xte).argmax(1) == yte).float().mean().item()
        print(f"epoch {ep + 1} loss {loss.item():.4f} test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
    mu, sigma = feature_stats(m, xte)
    with torch.no_grad():
        tr_acc = (m(xtr).argmax(1) == ytr).float().mean().item()
    sd = {k: v.detach().float().contiguous() for k, v in m.state_dict().items()}
    sd["fid.mu"] = torch.from_numpy(mu).float()
    sd["fid.sigma"] = torch.from_numpy(sigma).float()
    meta = {"architecture": "see train/classifier.py docstring / train/README.md",
            "test_accuracy": f"{acc:.4f}", "train_accuracy": f"{tr_acc:.4f}", "seed": str(a.seed),
            "input": "(B,1,32,32) float32 in [-1,1], MNIST padded 28->32 by 2 px, background -1"}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    save_file(sd, a.out + ".tmp", metadata=meta)
    os.replace(a.out + ".tmp", a.out)
    print(json.dumps({"test_accuracy": acc, "train_accuracy": tr_acc, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
