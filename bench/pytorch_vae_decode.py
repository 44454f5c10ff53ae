"""Side-by-side anchor for `cargo bench -p resca-reference --bench vae_decode`: diffusers'
`AutoencoderKL.decode` in the sd-vae configuration (sd-vae-ft-ema / sd-vae-ft-mse: widths 128, 256,
512, 512, 2 layers per block, 32 groups), random weights, float32, on the CPU.

    python3 bench/pytorch_vae_decode.py --serve --threads 2   # what the Rust benchmark starts
    python3 bench/pytorch_vae_decode.py --threads 2 --runs 3   # standalone: 256 and 512

In `--serve` mode it reads one image side per line on standard input (256 or 512), decodes one
latent of side/8 and prints the seconds the decode took, so that the benchmark alternates runs of
both implementations in one process pair.
"""
import argparse
import statistics
import sys
import time

import torch
from diffusers import AutoencoderKL


def sd_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
    ).eval()


def decode_seconds(vae, side):
    latents = torch.randn(1, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(side))
    start = time.perf_counter()
    with torch.no_grad():
        vae.decode(latents / 0.18215)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vae = sd_vae()
    if args.serve:
        print(f"ready torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        for line in sys.stdin:
            print(f"{decode_seconds(vae, int(line)):.6f}", flush=True)
        return
    for side in (256, 512):
        decode_seconds(vae, side)
        times = [decode_seconds(vae, side) for _ in range(args.runs)]
        print(f"{side}x{side}: median {statistics.median(times):.3f} s over {args.runs} runs")


if __name__ == "__main__":
    main()
