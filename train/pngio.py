"""Minimal 8-bit grayscale PNG writer (no PIL needed)."""
import struct
import zlib

import numpy as np


def write_gray_png(path, img):
    """img: (H, W) uint8."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def grid(images, rows, cols, pad=2, scale=2):
    """images: (rows*cols, 1, H, W) float in [-1, 1] -> uint8 grid, upscaled by `scale`."""
    n, _, H, W = images.shape
    g = np.zeros((rows * (H + pad) + pad, cols * (W + pad) + pad), dtype=np.uint8) + 128
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        im = np.clip((images[i, 0] + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        g[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = im
    return np.kron(g, np.ones((scale, scale), dtype=np.uint8))
